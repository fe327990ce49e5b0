"""The schedule node: a `ToolNode` that runs an AI message's tool calls as a DAG.

**Contract.** `ToolScheduler` *is* a `langgraph.prebuilt.ToolNode` (a subclass), so it
goes wherever a ToolNode goes (a `StateGraph` node, `create_react_agent(tools=...)`)
and takes the same inputs: a state whose `messages` (or `messages_key`) end with an
`AIMessage` with `tool_calls`, a list of messages, a list of tool calls, or the
``tool_call_with_context`` payload of a `Send`. It returns what ToolNode returns:
``{"messages": [ToolMessage, ...]}`` in call order (a list for a list input) or, when a
tool returns a `Command`, the list of Commands and message updates that a StateGraph
applies in call order. Tool arguments are injected (`InjectedToolCallId`,
`InjectedState`, `InjectedStore`, `ToolRuntime`), a tool's `Command` is validated (it
must carry a `ToolMessage` for its call), a ``content_and_artifact`` tool keeps its
artifact, bad arguments become ToolNode's `ToolInvocationError` message, and
`handle_tool_errors`, `wrap_tool_call` and `awrap_tool_call` work as in ToolNode: all of
it is ToolNode's own code, so a message without references gives ToolNode's result.
On a state input the node also writes the plan record (`PlanRecord`: DAG, critical
path, timings) to `plan_key` (default ``"plan"``; `None` to skip; LangGraph ignores it
when the state has no such channel).

Two differences from ToolNode, on purpose: `handle_tool_errors` catches every error by
default (bad arguments give ToolNode's message, any other exception ToolNode's
``handle_tool_errors=True`` text), so one failing call does not abort its siblings;
pass a handler annotated ``(e: ToolInvocationError) -> str`` for ToolNode's default,
which re-raises execution errors. And an async-only tool also runs in a sync graph (on
an event loop of its own), where ToolNode fails.

**References.** An argument may use an earlier call's result (`llmctx.runtime.dag`;
canonical form ``{"$ref": call_id, "path": "a.b"}``, see `REFERENCE_PROMPT`). Injected
arguments are not the model's: they are dropped from the arguments before references
are looked for and filled in after substitution. The plan is validated before anything
runs; an invalid plan (reference to a missing call, cycle, ...) runs nothing and yields
one error `ToolMessage` per call naming the fault (`ToolScheduler.run` raises
`PlanValidationError`). An unknown tool is caught before anything runs too: `run`
raises `PlanValidationError` for it, while the node, like ToolNode, answers that call
with ToolNode's "not a valid tool" message, skips its dependents with the reason, and
runs the calls it does not affect.

**What a dependent receives.** The referenced call's return value, before it became
message text (a dict stays a dict). For a ``content_and_artifact`` tool that is the
content (the artifact stays on its `ToolMessage`); for a tool that returned a
`ToolMessage`, a `Command` or a list of them, it is the content of the `ToolMessage`
bound to the call. A call whose `ToolMessage` has status ``"error"``, or whose Command
carries no `ToolMessage` for it (e.g. ``Command(graph=Command.PARENT, goto=...)``), has
no result: its dependents are skipped with the reason.

**Execution.** Each call starts as soon as its own dependencies finish (no waves); at
most `max_concurrency` calls run at once, sync and async tools alike (in an async graph
sync tools run in a thread pool of their own, never the event loop's default pool).
Per-tool `RetryPolicy` and timeout apply around the tool's own body (`_run`/`_arun`),
so a retry re-runs the tool, not the argument validation; a call exhausting its retries
or timing out fails like any error (see `handle_tool_errors`; a sync tool that timed out
keeps its thread until it returns, as Python cannot stop a thread). The tools run with
the node's config, as in ToolNode, so what they stream and `interrupt()` act for the
node (`stream_mode="tools"` and ``"messages"`` see them). Progress is streamed as
custom events (``stream_mode="custom"``): ``{"scheduler": "start"|"end"|"error"|
"skipped"|"retry"|"rejected"|"invalid", "id", "name", ...}``.

**Durability.** With a checkpointer, every call is a LangGraph `@task` inside a
functional-API subgraph that the node invokes, so its result (the ToolMessage or
Command, plus the return value when another call uses it) is saved as a pending write
under the graph's checkpointer: when a crashed or interrupted run resumes, completed
calls return their saved result instead of running again (ToolNode runs them all
again). Tasks are issued in a deterministic topological order (task ids depend on
issue order), and each waits for its dependencies' futures before taking a
concurrency slot. `interrupt_before` names tools that ask a human first
(`interrupt()`); resume with `True` / ``{"action": "approve"}`` to run,
``{"action": "edit", "args": {...}}`` to run with other arguments, anything else to
reject (the call becomes an error `ToolMessage`, its dependents are skipped).

**Engines.** With a checkpointer, an async node runs that subgraph on LangGraph's async
engine and a sync node on the sync engine (so any saver works, sync-only ones too),
which starts a thread per call. Without one there is nothing to save and LangGraph's
task machinery would be pure overhead (~0.3 ms a call): the calls run as plain asyncio
tasks (a sync node, and `ToolScheduler.run`, on an event loop of their own), with the
same bounds, order, events and results; tools still run as in a sync graph.

Example::

    sched = ToolScheduler([search, summarize], max_concurrency=4, timeout={"search": 10})
    graph.add_node("tools", sched)  # where a ToolNode would go
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import ToolMessage, convert_to_messages
from langchain_core.messages.tool import ToolOutputMixin
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph._internal._constants import CONF, CONFIG_KEY_CHECKPOINTER, CONFIG_KEY_RUNTIME
from langgraph.config import get_config, get_stream_writer
from langgraph.errors import GraphBubbleUp, GraphInterrupt
from langgraph.func import entrypoint, task
from langgraph.prebuilt.tool_node import (
    TOOL_CALL_ERROR_TEMPLATE,
    AsyncToolCallWrapper,
    ToolCallRequest,
    ToolCallWrapper,
    ToolInvocationError,
    ToolNode,
    ToolRuntime,
)
from langgraph.runtime import DEFAULT_RUNTIME, Runtime
from langgraph.types import Command, RetryPolicy, interrupt

from llmctx.nodes._tool_runner import (
    CURRENT,
    CallPolicy,
    async_only,
    is_async_tool,
    pool,
    run_coroutine_sync,
    runner,
)
from llmctx.runtime.dag import (
    CallRecord,
    Plan,
    PlanRecord,
    PlanValidationError,
    ReferencePathError,
    build_plan,
    critical_path,
    substitute,
)
from llmctx.runtime.errors import ConfigError, ScheduleResumeError

__all__ = ["ScheduleResumeError", "ToolScheduler"]

_CTX = "__llmctx_scheduler_ctx"
_InputType = Literal["list", "dict", "tool_calls"]
_ErrorHandling = bool | str | Callable[..., str] | type[Exception] | tuple[type[Exception], ...]


def _catch_all(e: Exception) -> str:
    """The default `handle_tool_errors`: every error becomes an error ToolMessage.

    Bad arguments give ToolNode's `ToolInvocationError` text, anything else ToolNode's
    ``handle_tool_errors=True`` text.
    """
    if isinstance(e, ToolInvocationError):
        return e.message
    return TOOL_CALL_ERROR_TEMPLATE.format(error=repr(e))


# -- one run ------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything one node run needs in its tasks (in memory, never checkpointed)."""

    sched: ToolScheduler
    plan: Plan
    calls: list[dict[str, Any]]
    input_type: _InputType
    state: Any
    runtime: Runtime
    config: RunnableConfig
    writer: Callable[[Any], None]
    referenced: frozenset[int] = frozenset()
    sync_node: bool = False  # a sync node on the async engine: tools run as in sync mode
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: int = 0
    peak: int = 0
    sem: threading.BoundedSemaphore | None = None
    asem: asyncio.Semaphore | None = None

    @property
    def durable(self) -> bool:
        """Whether there is a checkpointer to save the calls' results to."""
        return self.config.get(CONF, {}).get(CONFIG_KEY_CHECKPOINTER) is not None

    def emit(self, event: str, spec_id: str, name: str, **extra: Any) -> None:
        self.writer({"scheduler": event, "id": spec_id, "name": name, "t": time.time(), **extra})

    def _enter(self) -> None:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)

    def _exit(self) -> None:
        with self.lock:
            self.active -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        assert self.sem is not None
        with self.sem:
            self._enter()
            try:
                yield
            finally:
                self._exit()

    @asynccontextmanager
    async def aslot(self) -> Any:
        assert self.asem is not None
        async with self.asem:
            self._enter()
            try:
                yield
            finally:
                self._exit()


def _outcome(status: str, start: float | None, end: float | None, attempts: int, **kw: Any):
    return {"status": status, "start": start, "end": end, "attempts": attempts, **kw}


def _failed(run: _Run, i: int, status: str, why: str, *, hint: bool = True) -> dict[str, Any]:
    """The outcome of a call that did not run: an error ToolMessage naming why."""
    spec = run.plan.calls[i]
    content = f"Error: {why}" + ("\n Please fix your mistakes." if hint else "")
    msg = ToolMessage(content=content, name=spec.name, tool_call_id=spec.id, status="error")
    return _outcome(status, None, None, 0, output=msg, error=why)


def _prepare(run: _Run, i: int, deps: Mapping[int, Any]) -> dict[str, Any]:
    """``{"args": ...}`` (references substituted, human approved) or a failed outcome."""
    spec = run.plan.calls[i]
    values: dict[str, Any] = {}
    for d, out in deps.items():
        dep = run.plan.calls[d]
        if out["status"] != "ok":
            reason = f"skipped: call {dep.id!r} it depends on did not succeed ({out['status']})"
        elif "value" not in out:
            reason = (
                f"skipped: call {dep.id!r} it depends on returned a Command without a "
                "ToolMessage for it, so it has no result to use"
            )
        else:
            values[dep.id] = out["value"]
            continue
        run.emit("skipped", spec.id, spec.name, reason=reason)
        return _failed(run, i, "skipped", reason, hint=False)
    try:
        args = substitute(spec.args, values, run.plan.key_to_id)
    except ReferencePathError as exc:
        run.emit("error", spec.id, spec.name, error=str(exc))
        return _failed(run, i, "error", f"ReferencePathError: {exc}")
    if spec.name in run.sched.interrupt_before:
        answer = interrupt(
            {"tool_call": {"id": spec.id, "name": spec.name, "args": args}, "scheduler": "approve?"}
        )
        if isinstance(answer, dict) and answer.get("action") == "edit":
            args = run.sched._model_args(spec.name, answer.get("args"))
        elif not (
            answer is True or (isinstance(answer, dict) and answer.get("action") == "approve")
        ):
            why = answer.get("reason") if isinstance(answer, dict) else answer
            run.emit("rejected", spec.id, spec.name)
            return _failed(run, i, "rejected", f"rejected by a human: {why}")
    return {"args": args}


def _checked(out: Any, run: _Run, i: int) -> Any:
    """`out` if it is the outcome of call `i`: a saved result never goes to another call."""
    call_id = run.plan.calls[i].id
    if isinstance(out, dict) and out.get("id") == call_id and out.get("index", i) == i:
        return out
    got = out.get("id") if isinstance(out, dict) else type(out).__name__
    raise ScheduleResumeError(
        f"the saved result for tool call {call_id!r} belongs to {got!r}: the tool calls "
        "changed between the interrupted run and its resume; resume with the same message"
    )


def _start(run: _Run, i: int, args: dict[str, Any]) -> tuple[Any, ToolRuntime, CallPolicy]:
    """The ToolCall, ToolRuntime and `CallPolicy` of call `i`, inside its task."""
    spec = run.plan.calls[i]
    sched = run.sched
    # The node's config, as ToolNode gives it (a copy per call, no run id): callbacks,
    # stream writers and `interrupt()` inside a tool act for the node, so what a tool
    # streams (`stream_mode="tools"`, "messages", "custom") reaches the graph's stream.
    cfg = {k: v for k, v in run.config.items() if k != "run_id"}
    cfg[CONF] = dict(cfg.get(CONF) or {})
    call = {**run.calls[i], "args": args, "type": "tool_call"}
    rt = run.runtime
    tool_runtime = ToolRuntime(
        state=run.state,
        tool_call_id=call.get("id"),
        config=cfg,  # type: ignore[arg-type]
        context=rt.context,
        store=rt.store,
        stream_writer=rt.stream_writer,
        tools=list(sched.tools_by_name.values()),
        execution_info=rt.execution_info,
        server_info=rt.server_info,
    )
    tool = sched.tools_by_name.get(spec.name)
    ctx = CallPolicy(
        spec.name,
        sched.retry_for(spec.name),
        sched.timeout_for(spec.name),
        native=tool is not None and is_async_tool(tool),
        on_retry=lambda n, exc: run.emit("retry", spec.id, spec.name, attempt=n, error=repr(exc)),
    )
    return call, tool_runtime, ctx


def _dispatch_sync(run: _Run, call: Any, tool_runtime: ToolRuntime) -> Any:
    sched = run.sched
    if async_only(sched.tools_by_name.get(call["name"])):
        return run_coroutine_sync(sched._arun_one(call, run.input_type, tool_runtime))
    return sched._run_one(call, run.input_type, tool_runtime)


async def _dispatch_async(run: _Run, call: Any, tool_runtime: ToolRuntime) -> Any:
    sched = run.sched
    tool = sched.tools_by_name.get(call["name"])
    if run.sync_node:
        sync_path = not async_only(tool)  # as `_dispatch_sync` decides
    else:
        sync_path = tool is not None and not is_async_tool(tool)
        sync_path = sync_path and sched._awrap_tool_call is None
    if sync_path:
        # ToolNode's sync path, in our own threads (the same result, and the event
        # loop's default pool is left alone).
        loop = asyncio.get_running_loop()
        fn = functools.partial(sched._run_one, call, run.input_type, tool_runtime)
        return await loop.run_in_executor(pool("tools"), contextvars.copy_context().run, fn)
    return await sched._arun_one(call, run.input_type, tool_runtime)


def _bound_message(output: Any, call_id: Any, key: str) -> ToolMessage | None:
    """The ToolMessage that answers `call_id` in a tool's normalized output."""
    if isinstance(output, ToolMessage):
        return output
    if isinstance(output, Command):
        update = output.update
        msgs = update.get(key, []) if isinstance(update, dict) else update
        if not isinstance(msgs, list):
            msgs = [msgs] if msgs else []
        try:
            msgs = convert_to_messages(msgs)
        except (ValueError, TypeError, NotImplementedError):
            return None
        return next(
            (m for m in msgs if isinstance(m, ToolMessage) and m.tool_call_id == call_id), None
        )
    if isinstance(output, list):
        for item in output:
            found = _bound_message(item, call_id, key)
            if found is not None and found.tool_call_id == call_id:
                return found
    return None


def _is_tool_output(value: Any) -> bool:
    return isinstance(value, ToolOutputMixin) or (
        isinstance(value, list) and bool(value) and isinstance(value[0], ToolOutputMixin)
    )


def _finished(
    run: _Run, i: int, ctx: CallPolicy, output: Any, start: float, end: float
) -> dict[str, Any]:
    """The outcome of a call that ran: its output, status and (if used) its value."""
    spec = run.plan.calls[i]
    attempts = max(ctx.attempts, 1)
    msg = _bound_message(output, run.calls[i].get("id"), run.sched._messages_key)
    if msg is not None and msg.status == "error":
        why = msg.content if isinstance(msg.content, str) else str(msg.content)
        run.emit("error", spec.id, spec.name, error=why)
        return _outcome("error", start, end, attempts, output=output, error=why)
    run.emit("end", spec.id, spec.name, ms=(end - start) * 1000)
    out = _outcome("ok", start, end, attempts, output=output)
    if i in run.referenced:
        tool = run.sched.tools_by_name.get(spec.name)
        if ctx.has_raw and not _is_tool_output(ctx.raw):
            raw = ctx.raw
            artifact = tool is not None and tool.response_format == "content_and_artifact"
            if artifact and isinstance(raw, tuple) and len(raw) == 2:
                raw = raw[0]
            out["value"] = raw
        elif msg is not None:
            out["value"] = msg.content
    return out


def _body_sync(run: _Run, i: int, dep_futs: Mapping[int, Any]) -> dict[str, Any]:
    outs: dict[int, Any] = {}
    for d, fut in dep_futs.items():
        try:
            outs[d] = _checked(fut.result(), run, d)
        except GraphBubbleUp:
            # An upstream call is waiting on a human: stop without saving anything, so
            # this call runs normally once the graph resumes.
            raise GraphInterrupt(()) from None
    prep = _prepare(run, i, outs)
    if "args" not in prep:
        return prep
    call, tool_runtime, ctx = _start(run, i, prep["args"])
    spec = run.plan.calls[i]
    token = CURRENT.set(ctx)
    try:
        with run.slot():
            start = time.time()
            run.emit("start", spec.id, spec.name)
            output = _dispatch_sync(run, call, tool_runtime)
            end = time.time()
    except GraphBubbleUp:
        raise
    except Exception as exc:  # not handled by `handle_tool_errors`: the node raises it
        run.emit("error", spec.id, spec.name, error=repr(exc))
        raise
    finally:
        CURRENT.reset(token)
    return _finished(run, i, ctx, output, start, end)


async def _body_async(run: _Run, i: int, dep_futs: Mapping[int, Any]) -> dict[str, Any]:
    outs: dict[int, Any] = {}
    for d, fut in dep_futs.items():
        try:
            outs[d] = _checked(await fut, run, d)
        except GraphBubbleUp:
            raise GraphInterrupt(()) from None
    prep = _prepare(run, i, outs)
    if "args" not in prep:
        return prep
    call, tool_runtime, ctx = _start(run, i, prep["args"])
    spec = run.plan.calls[i]
    token = CURRENT.set(ctx)
    try:
        async with run.aslot():
            start = time.time()
            run.emit("start", spec.id, spec.name)
            output = await _dispatch_async(run, call, tool_runtime)
            end = time.time()
    except GraphBubbleUp:
        raise
    except Exception as exc:
        run.emit("error", spec.id, spec.name, error=repr(exc))
        raise
    finally:
        CURRENT.reset(token)
    return _finished(run, i, ctx, output, start, end)


def _run_call_sync(run: _Run, i: int, dep_futs: Mapping[int, Any]) -> dict[str, Any]:
    return {**_body_sync(run, i, dep_futs), "id": run.plan.calls[i].id, "index": i}


async def _run_call_async(run: _Run, i: int, dep_futs: Mapping[int, Any]) -> dict[str, Any]:
    return {**(await _body_async(run, i, dep_futs)), "id": run.plan.calls[i].id, "index": i}


_sync_call = task(name="scheduled_tool_call")(_run_call_sync)
_async_call = task(name="scheduled_tool_call")(_run_call_async)


def _collect(results: list[Any], errors: list[BaseException]) -> list[Any]:
    real: dict[str, Any] = {}
    for e in errors:
        if isinstance(e, GraphInterrupt):
            for intr in e.args[0] or ():
                real.setdefault(getattr(intr, "id", str(len(real))), intr)
    if real:
        raise GraphInterrupt(tuple(real.values()))
    for e in errors:
        if not isinstance(e, GraphInterrupt):
            raise e
    return results


@entrypoint()
def _plan_sync(call_ids: list[str]) -> list[Any]:
    run: _Run = get_config()["configurable"][_CTX]
    futs: dict[int, Any] = {}
    for i in run.plan.order:
        spec = run.plan.calls[i]
        futs[i] = _sync_call(run, i, {d: futs[d] for d in spec.dep_indexes})
    results: list[Any] = [None] * len(run.plan.calls)
    errors: list[BaseException] = []
    for spec in run.plan.calls:
        try:
            results[spec.index] = _checked(futs[spec.index].result(), run, spec.index)
        except BaseException as exc:
            errors.append(exc)
    return _collect(results, errors)


async def _drive(run: _Run, issue: Callable[..., Any]) -> list[Any]:
    """Issue every call in plan order (`issue` returns an awaitable of its outcome) and
    gather the outcomes in call order."""
    futs: dict[int, Any] = {}
    for i in run.plan.order:
        spec = run.plan.calls[i]
        futs[i] = issue(run, i, {d: futs[d] for d in spec.dep_indexes})
        if not spec.dep_indexes:
            # Let the call start (its tool is handed to a thread or awaited) before the
            # next one is prepared: issuing costs ~0.3 ms a call, and without this the
            # first tool would wait for the whole plan to be issued. Issue order, and so
            # every task id, is unchanged.
            await asyncio.sleep(0)
    settled = await asyncio.gather(*(futs[s.index] for s in run.plan.calls), return_exceptions=True)
    errors = [r for r in settled if isinstance(r, BaseException)]
    results = _collect(list(settled), errors)
    return [_checked(r, run, s.index) for r, s in zip(results, run.plan.calls, strict=True)]


@entrypoint()
async def _plan_async(call_ids: list[str]) -> list[Any]:
    return await _drive(get_config()["configurable"][_CTX], _async_call)


def _direct_call(run: _Run, i: int, dep_futs: Mapping[int, Any]) -> asyncio.Task[Any]:
    return asyncio.ensure_future(_run_call_async(run, i, dep_futs))


def _runtime_of(config: RunnableConfig) -> Runtime:
    return config.get(CONF, {}).get(CONFIG_KEY_RUNTIME) or DEFAULT_RUNTIME


class ToolScheduler(ToolNode):
    """A `ToolNode` that runs the last AI message's tool calls as a validated, bounded,
    durable DAG (see the module docstring for the contract).

    `retry` and `timeout` are one value for every tool or a mapping tool name → value
    (key ``"*"`` for the rest); timeouts are seconds. `interrupt_before` names tools that
    need a human's approval first (needs a checkpointer). `handle_tool_errors`,
    `messages_key`, `wrap_tool_call`, `awrap_tool_call`, `name` and `tags` are
    ToolNode's; only the default of `handle_tool_errors` differs (it catches every
    error, see the module docstring).
    """

    def __init__(
        self,
        tools: Sequence[BaseTool | Callable[..., Any]],
        *,
        max_concurrency: int = 8,
        retry: RetryPolicy | Mapping[str, RetryPolicy] | None = None,
        timeout: float | Mapping[str, float] | None = None,
        interrupt_before: Sequence[str] = (),
        handle_tool_errors: _ErrorHandling = _catch_all,
        messages_key: str = "messages",
        plan_key: str | None = "plan",
        name: str = "tools",
        tags: list[str] | None = None,
        wrap_tool_call: ToolCallWrapper | None = None,
        awrap_tool_call: AsyncToolCallWrapper | None = None,
    ) -> None:
        super().__init__(
            tools,
            name=name,
            tags=tags,
            handle_tool_errors=handle_tool_errors,
            messages_key=messages_key,
            wrap_tool_call=wrap_tool_call,
            awrap_tool_call=awrap_tool_call,
        )
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be at least 1, got {max_concurrency}")
        unknown = set(interrupt_before) - set(self.tools_by_name)
        if unknown:
            raise ConfigError(
                f"interrupt_before names unknown tools {sorted(unknown)}; "
                f"use names of the scheduler's tools {sorted(self.tools_by_name)}"
            )
        self.max_concurrency = max_concurrency
        self.retry = retry
        self.timeout = timeout
        self.interrupt_before = frozenset(interrupt_before)
        self.plan_key = plan_key
        self._runners = {n: (t, runner(t)) for n, t in self.tools_by_name.items()}

    @property
    def messages_key(self) -> str:
        return self._messages_key

    def retry_for(self, tool: str) -> RetryPolicy | None:
        if isinstance(self.retry, Mapping):
            return self.retry.get(tool, self.retry.get("*"))
        return self.retry

    def timeout_for(self, tool: str) -> float | None:
        if isinstance(self.timeout, Mapping):
            return self.timeout.get(tool, self.timeout.get("*"))
        return self.timeout

    # -- Python API ---------------------------------------------------------------

    def plan(self, tool_calls: Sequence[Mapping[str, Any]], *, known_only: bool = False) -> Plan:
        """Validate `tool_calls`; raises `PlanValidationError` (`known_only`: for an
        unknown tool name too)."""
        calls = [
            {
                "id": c.get("id"),
                "name": c["name"],
                "args": self._model_args(c["name"], c.get("args")),
            }
            for c in tool_calls
        ]
        return build_plan(calls, self.tools_by_name if known_only else None)

    def run(
        self,
        tool_calls: Sequence[Mapping[str, Any]],
        config: RunnableConfig | None = None,
        *,
        state: Any = None,
    ) -> tuple[list[Any], PlanRecord]:
        """Run `tool_calls` outside a graph: one output per call (a `ToolMessage`, or the
        `Command` a tool returned) and the plan record. `state` is what `InjectedState`
        and `ToolRuntime.state` see. Raises `PlanValidationError` before running anything
        (unknown tool, missing or self reference, cycle)."""
        config = config or {}
        calls = [dict(c) for c in tool_calls]
        plan = self.plan(calls, known_only=True)
        run = self._new_run(plan, calls, "tool_calls", state or {}, _runtime_of(config), config)
        return self._execute_sync(run)

    async def arun(
        self,
        tool_calls: Sequence[Mapping[str, Any]],
        config: RunnableConfig | None = None,
        *,
        state: Any = None,
    ) -> tuple[list[Any], PlanRecord]:
        """Async `run`."""
        config = config or {}
        calls = [dict(c) for c in tool_calls]
        plan = self.plan(calls, known_only=True)
        run = self._new_run(plan, calls, "tool_calls", state or {}, _runtime_of(config), config)
        return await self._execute_async(run)

    # -- node ---------------------------------------------------------------------

    def _func(self, input: Any, config: RunnableConfig) -> Any:
        calls, input_type = self._parse_input(input)
        calls = [dict(c) for c in calls]
        state = self._extract_state(input, config)
        try:
            plan = self.plan(calls)
        except PlanValidationError as exc:
            return self._output(*self._invalid(calls, exc), input_type)
        run = self._new_run(plan, calls, input_type, state, _runtime_of(config), config)
        return self._output(*self._execute_sync(run), input_type)

    async def _afunc(self, input: Any, config: RunnableConfig) -> Any:
        calls, input_type = self._parse_input(input)
        calls = [dict(c) for c in calls]
        state = self._extract_state(input, config)
        try:
            plan = self.plan(calls)
        except PlanValidationError as exc:
            return self._output(*self._invalid(calls, exc), input_type)
        run = self._new_run(plan, calls, input_type, state, _runtime_of(config), config)
        return self._output(*(await self._execute_async(run)), input_type)

    # ToolNode executes `request.tool`: swap in its runner (same tool, with our policy).
    def _execute_tool_sync(
        self, request: ToolCallRequest, input_type: _InputType, config: RunnableConfig
    ) -> Any:
        return super()._execute_tool_sync(self._with_runner(request), input_type, config)

    async def _execute_tool_async(
        self, request: ToolCallRequest, input_type: _InputType, config: RunnableConfig
    ) -> Any:
        return await super()._execute_tool_async(self._with_runner(request), input_type, config)

    def _with_runner(self, request: ToolCallRequest) -> ToolCallRequest:
        tool = request.tool
        pair = self._runners.get(tool.name) if tool is not None else None
        if pair is not None and pair[0] is tool and pair[1] is not tool:
            return request.override(tool=pair[1])
        return request

    def _model_args(self, name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
        """The arguments the model wrote: injected ones (never the model's) dropped."""
        args = dict(args or {})
        injected = self._injected_args.get(name)
        if injected is None or not injected.all_injected_keys:
            return args
        return {k: v for k, v in args.items() if k not in injected.all_injected_keys}

    def _execute_sync(self, run: _Run) -> tuple[list[Any], PlanRecord]:
        if not run.durable:
            # Nothing to save: the calls run as asyncio tasks on an event loop of their
            # own (no thread per call, as the sync engine starts); the tools still run
            # exactly as in a sync graph.
            run.sync_node = True
            return run_coroutine_sync(self._execute_async(run))
        run.sem = threading.BoundedSemaphore(self.max_concurrency)
        outs = (
            _plan_sync.invoke([c.id for c in run.plan.calls], self._child_config(run))
            if run.calls
            else []
        )
        return [o["output"] for o in outs], self._record(run, outs)

    async def _execute_async(self, run: _Run) -> tuple[list[Any], PlanRecord]:
        run.asem = asyncio.Semaphore(self.max_concurrency)
        if not run.calls:
            outs: list[Any] = []
        elif run.durable:
            ids = [c.id for c in run.plan.calls]
            outs = await _plan_async.ainvoke(ids, self._child_config(run))
        else:  # nothing to save: LangGraph's task machinery would be pure overhead
            outs = await _drive(run, _direct_call)
        return [o["output"] for o in outs], self._record(run, outs)

    def _output(self, outputs: list[Any], record: PlanRecord, input_type: _InputType) -> Any:
        combined = self._combine_tool_outputs(outputs, input_type)
        if input_type != "dict" or not self.plan_key:
            return combined
        if isinstance(combined, dict):
            return {**combined, self.plan_key: record}
        return [*combined, {self.plan_key: record}]

    def _new_run(
        self,
        plan: Plan,
        calls: list[dict[str, Any]],
        input_type: _InputType,
        state: Any,
        runtime: Runtime,
        config: RunnableConfig,
    ) -> _Run:
        try:
            writer = get_stream_writer()
        except RuntimeError:
            writer = _noop
        clean = {**config, "configurable": dict(config.get("configurable") or {})}
        clean["configurable"].pop(_CTX, None)
        return _Run(
            self,
            plan,
            calls,
            input_type,
            state,
            runtime,
            clean,  # type: ignore[arg-type]
            writer,
            referenced=plan.referenced,
        )

    def _child_config(self, run: _Run) -> RunnableConfig:
        cfg = dict(run.config)
        cfg["configurable"] = {**run.config.get("configurable", {}), _CTX: run}
        # Sync mode: a call waiting for its dependencies holds one executor thread, and
        # the scheduler's semaphore bounds the tools that run; this many threads never
        # delay a ready call (tasks are issued in topological order, FIFO, so no deadlock).
        waiting = sum(1 for c in run.plan.calls if c.deps)
        cfg["max_concurrency"] = self.max_concurrency + waiting + 2
        return cfg  # type: ignore[return-value]

    def _record(self, run: _Run, outs: list[Any]) -> PlanRecord:
        starts = [o["start"] for o in outs if o.get("start") is not None]
        t0 = min(starts, default=0.0)
        calls: list[CallRecord] = []
        weights: dict[str, float] = {}
        for spec, out in zip(run.plan.calls, outs, strict=True):
            s, e = out.get("start"), out.get("end")
            rec: CallRecord = {
                "id": spec.id,
                "name": spec.name,
                "deps": list(spec.deps),
                "level": spec.level,
                "status": out["status"],
                "start_ms": None if s is None else round((s - t0) * 1000, 3),
                "end_ms": None if e is None else round((e - t0) * 1000, 3),
                "attempts": out.get("attempts", 0),
            }
            if out.get("error"):
                rec["error"] = out["error"]
            calls.append(rec)
            weights[str(spec.index)] = 0.0 if s is None or e is None else (e - s) * 1000
        deps = {str(c.index): [str(d) for d in c.dep_indexes] for c in run.plan.calls}
        path, length = critical_path(deps, weights)
        ends = [c["end_ms"] for c in calls if c["end_ms"] is not None]
        return {
            "calls": calls,
            "critical_path": [run.plan.calls[int(k)].id for k in path],
            "critical_path_ms": round(length, 3),
            "makespan_ms": round(max(ends, default=0.0), 3),
            "depth": run.plan.depth,
            "max_concurrency": self.max_concurrency,
            "peak_concurrency": run.peak,
            "valid": True,
        }

    def _invalid(
        self, calls: list[dict[str, Any]], exc: PlanValidationError
    ) -> tuple[list[Any], PlanRecord]:
        try:
            writer = get_stream_writer()
        except RuntimeError:
            writer = _noop
        bad = ", ".join(repr(c) for c in exc.problems)
        msgs, recs = [], []
        for i, c in enumerate(calls, start=1):
            cid = str(c.get("id") or f"call_{i}")
            why = exc.problems.get(cid) or (
                f"not run: the plan of this message is invalid (calls {bad}); nothing was run"
            )
            writer({"scheduler": "invalid", "id": cid, "name": c["name"], "error": why})
            msgs.append(
                ToolMessage(
                    content=f"Error: {why}\n Please fix your mistakes.",
                    name=c["name"],
                    tool_call_id=cid,
                    status="error",
                )
            )
            recs.append(
                CallRecord(
                    id=cid,
                    name=c["name"],
                    deps=[],
                    level=0,
                    status="invalid",
                    start_ms=None,
                    end_ms=None,
                    attempts=0,
                    error=why,
                )
            )
        record: PlanRecord = {
            "calls": recs,
            "critical_path": [],
            "critical_path_ms": 0.0,
            "makespan_ms": 0.0,
            "depth": 0,
            "max_concurrency": self.max_concurrency,
            "peak_concurrency": 0,
            "valid": False,
        }
        return msgs, record


def _noop(_: Any) -> None:
    return None
