"""How one scheduled tool call runs: retry, timeout and its return value.

`ToolScheduler` executes tools through ToolNode's own code, which calls the tool's
`invoke`/`ainvoke`. To apply a per-call retry policy and timeout around the tool's body
(not around argument validation or message formatting) and to keep the body's return
value for the calls that refer to it (ToolNode only keeps the message text), the
scheduler invokes a *runner*: a copy of the tool whose class wraps `_run`/`_arun`
(`_runner_class`). The wrappers read the call's `CallPolicy` from the `CURRENT` context
variable; outside a scheduled call they only delegate, so a runner behaves exactly as
its tool. Threads come from two process-wide pools (`pool`), kept between runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import functools
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.tools import BaseTool, StructuredTool
from langgraph.errors import GraphBubbleUp
from langgraph.types import RetryPolicy

__all__ = [
    "CURRENT",
    "CallPolicy",
    "async_only",
    "is_async_tool",
    "pool",
    "run_coroutine_sync",
    "runner",
]

# -- threads ------------------------------------------------------------------------

_POOL_WORKERS = 64
_pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def pool(kind: Literal["tools", "timed"]) -> concurrent.futures.ThreadPoolExecutor:
    """A process-wide thread pool, started on first use and kept, so that no run pays
    for starting threads. ``"tools"`` runs sync tools for async graphs; ``"timed"`` runs
    the body of a tool that has a timeout. Two pools, so a thread of one never waits for
    a thread of the same pool (no starvation)."""
    executor = _pools.get(kind)
    if executor is None:
        with _pools_lock:
            executor = _pools.get(kind)
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=_POOL_WORKERS, thread_name_prefix=f"llmctx-{kind}"
                )
                _pools[kind] = executor
    return executor


def run_coroutine_sync(coro: Awaitable[Any]) -> Any:
    """Run `coro` to completion from sync code, on a fresh event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    ctx = contextvars.copy_context()  # this thread runs a loop: use another thread
    return pool("tools").submit(ctx.run, asyncio.run, coro).result()


# -- retry and timeout around a tool's own body --------------------------------------


def _should_retry(policy: RetryPolicy, exc: Exception) -> bool:
    retry_on = policy.retry_on
    if isinstance(retry_on, type) and issubclass(retry_on, Exception):
        return isinstance(exc, retry_on)
    if isinstance(retry_on, Sequence):
        return isinstance(exc, tuple(retry_on))
    return bool(retry_on(exc))


def _backoff(policy: RetryPolicy, attempt: int) -> float:
    delay = policy.initial_interval * policy.backoff_factor ** (attempt - 1)
    return min(delay, policy.max_interval)


@dataclass
class CallPolicy:
    """One call's policy, and the tool's return value once it has one.

    The scheduler sets it in `CURRENT` around the call; the tool's `_run`/`_arun` (see
    `_runner_class`) find it there, apply the retry policy and timeout, and keep the
    return value for the calls that refer to this one.
    """

    name: str
    policy: RetryPolicy | None
    timeout: float | None
    native: bool  # the tool has its own async implementation
    on_retry: Callable[[int, Exception], None]
    attempts: int = 0
    raw: Any = None
    has_raw: bool = False

    def _retry(self, exc: Exception) -> bool:
        policy = self.policy
        if policy is None or self.attempts >= policy.max_attempts:
            return False
        if not _should_retry(policy, exc):
            return False
        self.on_retry(self.attempts, exc)
        return True

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(f"tool {self.name!r} timed out after {self.timeout:g}s")

    def _keep(self, value: Any) -> Any:
        self.raw, self.has_raw = value, True
        return value

    def run_sync(self, body: Callable[[], Any]) -> Any:
        while True:
            self.attempts += 1
            try:
                if self.timeout is None:
                    return self._keep(body())
                fut = pool("timed").submit(contextvars.copy_context().run, body)
                try:
                    return self._keep(fut.result(timeout=self.timeout))
                except TimeoutError:
                    if fut.done():  # the tool itself raised TimeoutError
                        raise
                    raise self._timed_out() from None
            except GraphBubbleUp:
                raise
            except Exception as exc:
                if not self._retry(exc):
                    raise
                assert self.policy is not None
                time.sleep(_backoff(self.policy, self.attempts))

    async def run_async(self, body: Callable[[], Awaitable[Any]]) -> Any:
        while True:
            self.attempts += 1
            try:
                if self.timeout is None:
                    return self._keep(await body())
                try:
                    async with asyncio.timeout(self.timeout) as scope:
                        value = await body()
                except TimeoutError:
                    if scope.expired():
                        raise self._timed_out() from None
                    raise
                return self._keep(value)
            except GraphBubbleUp:
                raise
            except Exception as exc:
                if not self._retry(exc):
                    raise
                assert self.policy is not None
                await asyncio.sleep(_backoff(self.policy, self.attempts))


CURRENT: contextvars.ContextVar[CallPolicy | None] = contextvars.ContextVar(
    "llmctx_scheduled_call", default=None
)
_RUNNER_CLASSES: dict[type, type] = {}


def _runner_class(cls: type[BaseTool]) -> type[BaseTool]:
    """`cls` with `_run`/`_arun` wrapped to apply the current call's `CallPolicy`.

    Outside a scheduled call (no `CallPolicy`) the wrappers only delegate. Inside one,
    they clear it first, so a tool that invokes another tool does not apply the policy
    twice. `functools.wraps` keeps the signatures that LangChain inspects (``config``,
    ``run_manager``, injected arguments).
    """
    sub = _RUNNER_CLASSES.get(cls)
    if sub is not None:
        return sub
    orig_run, orig_arun = cls._run, cls._arun

    @functools.wraps(orig_run)
    def _run(self: BaseTool, *args: Any, **kwargs: Any) -> Any:
        call = CURRENT.get()
        if call is None:
            return orig_run(self, *args, **kwargs)
        token = CURRENT.set(None)
        try:
            return call.run_sync(functools.partial(orig_run, self, *args, **kwargs))
        finally:
            CURRENT.reset(token)

    @functools.wraps(orig_arun)
    async def _arun(self: BaseTool, *args: Any, **kwargs: Any) -> Any:
        call = CURRENT.get()
        if call is None or not call.native:  # a sync tool: LangChain runs `_run`
            return await orig_arun(self, *args, **kwargs)
        token = CURRENT.set(None)
        try:
            return await call.run_async(lambda: orig_arun(self, *args, **kwargs))
        finally:
            CURRENT.reset(token)

    namespace = {
        "_run": _run,
        "_arun": _arun,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    sub = type(cls)(cls.__name__, (cls,), namespace)
    _RUNNER_CLASSES[cls] = sub
    return sub


def runner(tool: BaseTool) -> BaseTool:
    """A copy of `tool` whose body applies retry, timeout and keeps its return value
    (the user's tool object is never changed)."""
    try:
        clone = copy.copy(tool)
        object.__setattr__(clone, "__class__", _runner_class(type(tool)))
    except Exception as exc:  # an exotic tool class: run it as it is
        warnings.warn(
            f"tool {tool.name!r} runs without retry, timeout or typed results for "
            f"references: its class cannot be extended ({exc!r})",
            stacklevel=3,
        )
        return tool
    return clone


def is_async_tool(tool: BaseTool) -> bool:
    if isinstance(tool, StructuredTool):
        return tool.coroutine is not None
    return type(tool)._arun is not BaseTool._arun


def async_only(tool: BaseTool | None) -> bool:
    return isinstance(tool, StructuredTool) and tool.func is None and tool.coroutine is not None
