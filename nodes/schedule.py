"""The schedule node: a drop-in for `ToolNode` that runs an AI message's tool calls as a DAG.

**Contract.** Same as `langgraph.prebuilt.ToolNode`: the input is a state whose
`messages` end with an `AIMessage` carrying `tool_calls` (or a list of messages); the
output is `{"messages": [ToolMessage, ...]}`, one per call, in call order (a list for a
list input). It also writes the plan record (`PlanRecord`: DAG, critical path, timings)
to `plan_key` (default ``"plan"``; `None` to skip).

**References.** An argument may use an earlier call's result (`llmctx.runtime.dag`;
canonical form ``{"$ref": call_id, "path": "a.b"}``, see `REFERENCE_PROMPT`). The plan is
validated before anything runs; an invalid plan runs nothing and yields one error
`ToolMessage` per call naming the fault (`ToolScheduler.run` raises
`PlanValidationError`).

**Execution.** Each call starts as soon as its own dependencies finish (no waves); at
most `max_concurrency` tools run at once, sync and async alike (sync tools run in the
scheduler's threads, never in the event loop's default pool). Per-tool `RetryPolicy`
and timeout. A failed call yields an error `ToolMessage`; its dependents are skipped
with the reason. Progress is streamed as custom events (`stream_mode="custom"`):
``{"scheduler": "start"|"end"|"error"|"skipped"|"retry", "id", "name", ...}``.

**Durability.** Every call is a LangGraph `@task` inside a functional-API subgraph that
the node invokes, so its result is saved as a pending write under the graph's
checkpointer: when a crashed or interrupted run resumes, completed calls return their
saved result instead of running again. Tasks are issued in a deterministic topological
order (task ids depend on issue order), and each waits for its dependencies' futures
before taking a concurrency slot. `interrupt_before` names tools that ask a human
first (`interrupt()`); resume with `True` / ``{"action": "approve"}`` to run,
``{"action": "edit", "args": {...}}`` to run with other arguments, anything else to
reject (the call becomes an error `ToolMessage`, its dependents are skipped).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.tools import tool as create_tool
from langgraph._internal._runnable import RunnableCallable
from langgraph.config import get_config, get_stream_writer
from langgraph.errors import GraphBubbleUp, GraphInterrupt
from langgraph.func import entrypoint, task
from langgraph.types import RetryPolicy, interrupt

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
from llmctx.runtime.errors import ScheduleResumeError

__all__ = ["ScheduleResumeError", "ToolScheduler"]

_CTX = "__llmctx_scheduler_ctx"


def _content(value: Any) -> str | list[Any]:
    """ToolMessage content of a tool's raw output, as ToolNode renders it."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, dict) and "type" in v for v in value):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _is_async_tool(tool: BaseTool) -> bool:
    if isinstance(tool, StructuredTool):
        return tool.coroutine is not None
    return type(tool)._arun is not BaseTool._arun


def _invoke_sync(tool: BaseTool, args: dict[str, Any], config: RunnableConfig) -> Any:
    """Invoke `tool` from a worker thread; an async-only tool runs on its own loop."""
    if isinstance(tool, StructuredTool) and tool.func is None and tool.coroutine is not None:
        return asyncio.run(tool.ainvoke(args, config))
    return tool.invoke(args, config)


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
class _Run:
    """Everything one node run needs in its tasks (in memory, never checkpointed)."""

    sched: ToolScheduler
    plan: Plan
    config: RunnableConfig
    writer: Callable[[Any], None]
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: int = 0
    peak: int = 0
    sem: threading.BoundedSemaphore | None = None
    asem: asyncio.Semaphore | None = None
    _pool: concurrent.futures.ThreadPoolExecutor | None = None

    def emit(self, event: str, spec_id: str, name: str, **extra: Any) -> None:
        self.writer({"scheduler": event, "id": spec_id, "name": name, "t": time.time(), **extra})

    @property
    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self.lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=2 * self.sched.max_concurrency + 2,
                    thread_name_prefix="llmctx-tool",
                )
            return self._pool

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

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _outcome(status: str, start: float | None, end: float | None, attempts: int, **kw: Any):
    return {"status": status, "start": start, "end": end, "attempts": attempts, **kw}


def _prepare(run: _Run, i: int, deps: Mapping[str, Any]) -> dict[str, Any] | Any:
    """Arguments of call `i` with references substituted, or a skip/error outcome."""
    spec = run.plan.calls[i]
    values: dict[str, Any] = {}
    for dep_id, out in deps.items():
        if out["status"] != "ok":
            reason = f"skipped: call {dep_id!r} it depends on did not succeed ({out['status']})"
            run.emit("skipped", spec.id, spec.name, reason=reason)
            return _outcome("skipped", None, None, 0, reason=reason)
        values[dep_id] = out["value"]
    try:
        args = substitute(spec.args, values, run.plan.key_to_id)
    except ReferencePathError as exc:
        run.emit("error", spec.id, spec.name, error=str(exc))
        return _outcome("error", None, None, 0, error=f"ReferencePathError: {exc}")
    if spec.name in run.sched.interrupt_before:
        answer = interrupt(
            {"tool_call": {"id": spec.id, "name": spec.name, "args": args}, "scheduler": "approve?"}
        )
        if isinstance(answer, dict) and answer.get("action") == "edit":
            args = dict(answer.get("args") or {})
        elif not (
            answer is True or (isinstance(answer, dict) and answer.get("action") == "approve")
        ):
            why = answer.get("reason") if isinstance(answer, dict) else answer
            run.emit("rejected", spec.id, spec.name)
            return _outcome("rejected", None, None, 0, error=f"rejected by a human: {why}")
    return {"args": args}


def _dep_outcomes_sync(run: _Run, dep_futs: Mapping[str, Any]) -> dict[str, Any]:
    outs: dict[str, Any] = {}
    for dep_id, fut in dep_futs.items():
        try:
            outs[dep_id] = _checked(fut.result(), dep_id)
        except GraphBubbleUp:
            # An upstream call is waiting on a human: stop without saving anything, so
            # this call runs normally once the graph resumes.
            raise GraphInterrupt(()) from None
    return outs


def _checked(out: Any, call_id: str) -> Any:
    """`out` if it is the outcome of `call_id`: a saved result never goes to another call."""
    if isinstance(out, dict) and out.get("id") == call_id:
        return out
    got = out.get("id") if isinstance(out, dict) else type(out).__name__
    raise ScheduleResumeError(
        f"the saved result for tool call {call_id!r} belongs to {got!r}: the tool calls "
        "changed between the interrupted run and its resume; resume with the same message"
    )


def _run_call_sync(run: _Run, i: int, dep_futs: Mapping[str, Any]) -> dict[str, Any]:
    return {**_body_sync(run, i, dep_futs), "id": run.plan.calls[i].id}


async def _run_call_async(run: _Run, i: int, dep_futs: Mapping[str, Any]) -> dict[str, Any]:
    return {**(await _body_async(run, i, dep_futs)), "id": run.plan.calls[i].id}


def _body_sync(run: _Run, i: int, dep_futs: Mapping[str, Any]) -> dict[str, Any]:
    spec = run.plan.calls[i]
    prep = _prepare(run, i, _dep_outcomes_sync(run, dep_futs))
    if "args" not in prep:
        return prep
    tool = run.sched.tools_by_name[spec.name]
    cfg = get_config()  # this task's config: tools run nested in their durable task
    policy = run.sched.retry_for(spec.name)
    timeout = run.sched.timeout_for(spec.name)
    attempts, start = 0, time.time()
    run.emit("start", spec.id, spec.name)
    while True:
        attempts += 1
        try:
            with run.slot():
                if timeout is None:
                    value = _invoke_sync(tool, prep["args"], cfg)
                else:
                    ctx = contextvars.copy_context()
                    fut = run.pool.submit(ctx.run, _invoke_sync, tool, prep["args"], cfg)
                    try:
                        value = fut.result(timeout=timeout)
                    except concurrent.futures.TimeoutError:
                        raise TimeoutError(
                            f"tool {spec.name!r} timed out after {timeout:g}s"
                        ) from None
        except GraphBubbleUp:
            raise
        except Exception as exc:
            if policy and attempts < policy.max_attempts and _should_retry(policy, exc):
                run.emit("retry", spec.id, spec.name, attempt=attempts, error=repr(exc))
                time.sleep(_backoff(policy, attempts))
                continue
            run.emit("error", spec.id, spec.name, error=repr(exc))
            return _outcome("error", start, time.time(), attempts, error=_err(exc))
        end = time.time()
        run.emit("end", spec.id, spec.name, ms=(end - start) * 1000)
        return _outcome("ok", start, end, attempts, value=value)


async def _body_async(run: _Run, i: int, dep_futs: Mapping[str, Any]) -> dict[str, Any]:
    spec = run.plan.calls[i]
    outs: dict[str, Any] = {}
    for dep_id, fut in dep_futs.items():
        try:
            outs[dep_id] = _checked(await fut, dep_id)
        except GraphBubbleUp:
            raise GraphInterrupt(()) from None
    prep = _prepare(run, i, outs)
    if "args" not in prep:
        return prep
    tool = run.sched.tools_by_name[spec.name]
    cfg = get_config()  # this task's config: tools run nested in their durable task
    policy = run.sched.retry_for(spec.name)
    timeout = run.sched.timeout_for(spec.name)
    native = _is_async_tool(tool)
    loop = asyncio.get_running_loop()
    attempts, start = 0, time.time()
    run.emit("start", spec.id, spec.name)
    while True:
        attempts += 1
        try:
            async with run.aslot():
                if native:
                    coro = tool.ainvoke(prep["args"], cfg)
                else:
                    ctx = contextvars.copy_context()
                    coro = loop.run_in_executor(
                        run.pool, partial(ctx.run, tool.invoke, prep["args"], cfg)
                    )
                try:
                    value = await asyncio.wait_for(coro, timeout)
                except TimeoutError:
                    raise TimeoutError(f"tool {spec.name!r} timed out after {timeout:g}s") from None
        except GraphBubbleUp:
            raise
        except Exception as exc:
            if policy and attempts < policy.max_attempts and _should_retry(policy, exc):
                run.emit("retry", spec.id, spec.name, attempt=attempts, error=repr(exc))
                await asyncio.sleep(_backoff(policy, attempts))
                continue
            run.emit("error", spec.id, spec.name, error=repr(exc))
            return _outcome("error", start, time.time(), attempts, error=_err(exc))
        end = time.time()
        run.emit("end", spec.id, spec.name, ms=(end - start) * 1000)
        return _outcome("ok", start, end, attempts, value=value)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
    futs: dict[str, Any] = {}
    for i in run.plan.order:
        spec = run.plan.calls[i]
        futs[spec.id] = _sync_call(run, i, {d: futs[d] for d in spec.deps})
    results: list[Any] = [None] * len(run.plan.calls)
    errors: list[BaseException] = []
    for spec in run.plan.calls:
        try:
            results[spec.index] = _checked(futs[spec.id].result(), spec.id)
        except BaseException as exc:
            errors.append(exc)
    return _collect(results, errors)


@entrypoint()
async def _plan_async(call_ids: list[str]) -> list[Any]:
    run: _Run = get_config()["configurable"][_CTX]
    futs: dict[str, Any] = {}
    for i in run.plan.order:
        spec = run.plan.calls[i]
        futs[spec.id] = _async_call(run, i, {d: futs[d] for d in spec.deps})
    settled = await asyncio.gather(*(futs[s.id] for s in run.plan.calls), return_exceptions=True)
    errors = [r for r in settled if isinstance(r, BaseException)]
    results = _collect(list(settled), errors)
    return [_checked(r, s.id) for r, s in zip(results, run.plan.calls, strict=True)]


class ToolScheduler(RunnableCallable):
    """Run the last AI message's tool calls as a validated, bounded, durable DAG.

    `retry` and `timeout` are one value for every tool or a mapping tool name → value
    (key ``"*"`` for the rest); timeouts are seconds. `interrupt_before` names tools that
    need a human's approval first (needs a checkpointer).
    """

    def __init__(
        self,
        tools: Sequence[BaseTool | Callable[..., Any]],
        *,
        max_concurrency: int = 8,
        retry: RetryPolicy | Mapping[str, RetryPolicy] | None = None,
        timeout: float | Mapping[str, float] | None = None,
        interrupt_before: Sequence[str] = (),
        messages_key: str = "messages",
        plan_key: str | None = "plan",
        name: str = "tools",
    ) -> None:
        super().__init__(self._func, self._afunc, name=name, trace=False)
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.tools_by_name: dict[str, BaseTool] = {}
        for t in tools:
            bt = t if isinstance(t, BaseTool) else create_tool(t)
            self.tools_by_name[bt.name] = bt
        unknown = set(interrupt_before) - set(self.tools_by_name)
        if unknown:
            raise ValueError(f"interrupt_before names unknown tools {sorted(unknown)}")
        self.max_concurrency = max_concurrency
        self.retry = retry
        self.timeout = timeout
        self.interrupt_before = frozenset(interrupt_before)
        self.messages_key = messages_key
        self.plan_key = plan_key

    def retry_for(self, tool: str) -> RetryPolicy | None:
        if isinstance(self.retry, Mapping):
            return self.retry.get(tool, self.retry.get("*"))
        return self.retry

    def timeout_for(self, tool: str) -> float | None:
        if isinstance(self.timeout, Mapping):
            return self.timeout.get(tool, self.timeout.get("*"))
        return self.timeout

    # -- Python API ---------------------------------------------------------------

    def plan(self, tool_calls: Sequence[Mapping[str, Any]]) -> Plan:
        """Validate `tool_calls`; raises `PlanValidationError`."""
        return build_plan(tool_calls, self.tools_by_name)

    def run(
        self, tool_calls: Sequence[Mapping[str, Any]], config: RunnableConfig | None = None
    ) -> tuple[list[ToolMessage], PlanRecord]:
        """Run `tool_calls`; raises `PlanValidationError` before running anything."""
        plan = self.plan(tool_calls)
        run = self._new_run(plan, config or {})
        run.sem = threading.BoundedSemaphore(self.max_concurrency)
        try:
            outs = _plan_sync.invoke([c.id for c in plan.calls], self._child_config(run))
        finally:
            run.close()
        return self._finish(run, outs)

    async def arun(
        self, tool_calls: Sequence[Mapping[str, Any]], config: RunnableConfig | None = None
    ) -> tuple[list[ToolMessage], PlanRecord]:
        """Async `run`."""
        plan = self.plan(tool_calls)
        run = self._new_run(plan, config or {})
        run.asem = asyncio.Semaphore(self.max_concurrency)
        try:
            outs = await _plan_async.ainvoke([c.id for c in plan.calls], self._child_config(run))
        finally:
            run.close()
        return self._finish(run, outs)

    # -- node ---------------------------------------------------------------------

    def _func(self, input: Any, config: RunnableConfig) -> Any:
        calls = self._calls(input)
        try:
            msgs, record = self.run(calls, config)
        except PlanValidationError as exc:
            msgs, record = self._invalid(calls, exc)
        return self._output(input, msgs, record)

    async def _afunc(self, input: Any, config: RunnableConfig) -> Any:
        calls = self._calls(input)
        try:
            msgs, record = await self.arun(calls, config)
        except PlanValidationError as exc:
            msgs, record = self._invalid(calls, exc)
        return self._output(input, msgs, record)

    def _calls(self, input: Any) -> list[dict[str, Any]]:
        if isinstance(input, list):
            messages = input
        elif isinstance(input, Mapping):
            messages = input.get(self.messages_key, [])
        else:
            messages = getattr(input, self.messages_key, [])
        ai = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        if ai is None:
            raise ValueError(f"no AIMessage with tool calls in {self.messages_key!r}")
        return [dict(c) for c in ai.tool_calls]

    def _output(self, input: Any, msgs: list[ToolMessage], record: PlanRecord) -> Any:
        if isinstance(input, list):
            return msgs
        out: dict[str, Any] = {self.messages_key: msgs}
        if self.plan_key:
            out[self.plan_key] = record
        return out

    def _new_run(self, plan: Plan, config: RunnableConfig) -> _Run:
        try:
            writer = get_stream_writer()
        except RuntimeError:
            writer = _noop
        clean = {**config, "configurable": dict(config.get("configurable") or {})}
        clean["configurable"].pop(_CTX, None)
        return _Run(self, plan, clean, writer)

    def _child_config(self, run: _Run) -> RunnableConfig:
        cfg = dict(run.config)
        cfg["configurable"] = {**run.config.get("configurable", {}), _CTX: run}
        # Sync mode: a call waiting for its dependencies holds one executor thread, and
        # the scheduler's semaphore bounds the tools that run; this many threads never
        # delay a ready call (tasks are issued in topological order, FIFO, so no deadlock).
        waiting = sum(1 for c in run.plan.calls if c.deps)
        cfg["max_concurrency"] = self.max_concurrency + waiting + 2
        return cfg  # type: ignore[return-value]

    def _finish(self, run: _Run, outs: list[Any]) -> tuple[list[ToolMessage], PlanRecord]:
        msgs: list[ToolMessage] = []
        for spec, out in zip(run.plan.calls, outs, strict=True):
            if out["status"] == "ok":
                content: Any = _content(out["value"])
                status = "success"
            elif out["status"] == "skipped":
                content, status = f"Error: {out['reason']}", "error"
            else:
                content = f"Error: {out['error']}\n Please fix your mistakes."
                status = "error"
            msgs.append(
                ToolMessage(content=content, name=spec.name, tool_call_id=spec.id, status=status)
            )
        return msgs, self._record(run, outs)

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
                "level": run.plan.levels[spec.id],
                "status": out["status"],
                "start_ms": None if s is None else round((s - t0) * 1000, 3),
                "end_ms": None if e is None else round((e - t0) * 1000, 3),
                "attempts": out.get("attempts", 0),
            }
            if out.get("error") or out.get("reason"):
                rec["error"] = out.get("error") or out["reason"]
            calls.append(rec)
            weights[spec.id] = 0.0 if s is None or e is None else (e - s) * 1000
        path, length = critical_path({c.id: c.deps for c in run.plan.calls}, weights)
        ends = [c["end_ms"] for c in calls if c["end_ms"] is not None]
        return {
            "calls": calls,
            "critical_path": path,
            "critical_path_ms": round(length, 3),
            "makespan_ms": round(max(ends, default=0.0), 3),
            "depth": run.plan.depth,
            "max_concurrency": self.max_concurrency,
            "peak_concurrency": run.peak,
            "valid": True,
        }

    def _invalid(
        self, calls: list[dict[str, Any]], exc: PlanValidationError
    ) -> tuple[list[ToolMessage], PlanRecord]:
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
