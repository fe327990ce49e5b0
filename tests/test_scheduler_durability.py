"""Durability of the schedule node: a process killed mid-plan resumes without re-running
completed calls (real SQLite checkpointer, side-effect files), and a human-in-the-loop
interrupt before a chosen tool pauses and resumes the plan."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command

from llmctx.nodes.schedule import ToolScheduler
from llmctx.runtime.dag import PlanRecord

ROOT = Path(__file__).resolve().parents[1]

# The child builds a one-node graph (the scheduler) on a SQLite checkpointer. Every
# tool appends its call id to a side-effect file when it runs. `boom` kills the
# process (os._exit) on its first run, after a, b and c have finished; d needs boom.
_CHILD = textwrap.dedent(
    """
    import os, sqlite3, sys, time
    from pathlib import Path
    from typing import Annotated, TypedDict
    from langchain_core.messages import AIMessage, AnyMessage
    from langchain_core.tools import tool
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import START, StateGraph
    from langgraph.graph.message import add_messages
    from llmctx.nodes.schedule import ToolScheduler
    from llmctx.runtime.dag import PlanRecord
    from llmctx.runtime.savers import open_async_saver

    import asyncio
    work = Path(sys.argv[1]); mode = sys.argv[2]; flavour = sys.argv[3]

    def mark(name):
        with open(work / "ran.log", "a") as f:
            f.write(name + "\\n"); f.flush(); os.fsync(f.fileno())

    @tool
    def fetch(key: str) -> dict:
        \"\"\"Fetch a record.\"\"\"
        mark("fetch:" + key)
        return {"key": key, "size": len(key) * 10}

    @tool
    def double(n: int) -> int:
        \"\"\"Double n.\"\"\"
        mark(f"double:{n}")
        return 2 * n

    @tool
    def boom(n: int) -> int:
        \"\"\"Crash on the first run.\"\"\"
        mark(f"boom:{n}")
        time.sleep(0.4)
        if not (work / "crashed").exists():
            (work / "crashed").touch()
            os._exit(17)
        return n + 1

    class S(TypedDict):
        messages: Annotated[list[AnyMessage], add_messages]
        plan: PlanRecord

    g = StateGraph(S)
    g.add_node("tools", ToolScheduler([fetch, double, boom], max_concurrency=4))
    g.add_edge(START, "tools")
    conn = sqlite3.connect(work / "ckpt.sqlite", check_same_thread=False)
    app = g.compile(checkpointer=SqliteSaver(conn))
    cfg = {"configurable": {"thread_id": "t1"}}
    calls = [
        {"id": "a", "name": "fetch", "args": {"key": "alpha"}},
        {"id": "b", "name": "fetch", "args": {"key": "be"}},
        {"id": "c", "name": "double", "args": {"n": {"$ref": "a", "path": "size"}}},
        {"id": "x", "name": "boom", "args": {"n": {"$ref": "b", "path": "size"}}},
        {"id": "d", "name": "double", "args": {"n": "$4"}},
    ]
    if flavour == "reorder" and mode == "resume":  # simulate a changed plan on resume
        import llmctx.nodes.schedule as S
        _build = S.build_plan
        def _reordered(calls, names=None):
            plan = _build(calls, names)
            plan.order = [0, 1, 2, 3, 4]  # still topological, but a now gets b's task id
            return plan
        S.build_plan = _reordered

    def go(inp):
        if flavour in ("sync", "reorder"):  # langgraph's SqliteSaver
            return app.invoke(inp, cfg)

        async def main():  # llmctx's own saver, through its async API
            async with open_async_saver(work / "ws") as saver:
                aapp = g.compile(checkpointer=saver)
                return await aapp.ainvoke(inp, cfg)

        return asyncio.run(main())

    if mode == "start":
        go({"messages": [AIMessage("", tool_calls=calls)]})
    else:
        out = go(None)
        print([m.content for m in out["messages"][1:]])
    """
)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_killed_process_resumes_without_rerunning_completed_calls(
    tmp_path: Path, flavour: str
) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "start", flavour],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 17, first.stderr
    ran_before = (tmp_path / "ran.log").read_text().split()
    assert sorted(ran_before) == ["boom:20", "double:50", "fetch:alpha", "fetch:be"]

    second = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "resume", flavour],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr
    ran = (tmp_path / "ran.log").read_text().split()
    # Completed calls ran exactly once; the killed one ran again; its dependent once.
    assert ran.count("fetch:alpha") == 1
    assert ran.count("fetch:be") == 1
    assert ran.count("double:50") == 1
    assert ran.count("boom:20") == 2
    assert ran.count("double:21") == 1
    contents = ast.literal_eval(second.stdout.strip().splitlines()[-1])
    assert contents == [
        '{"key": "alpha", "size": 50}',
        '{"key": "be", "size": 20}',
        "100",
        "21",
        "42",
    ]


class _State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    plan: PlanRecord


def _hitl_graph(log: list[str]) -> Any:
    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        log.append(f"lookup:{q}")
        return q.upper()

    @tool
    def send_email(body: str) -> str:
        """Send an email (needs approval)."""
        log.append(f"send:{body}")
        return "sent"

    g = StateGraph(_State)
    g.add_node("tools", ToolScheduler([lookup, send_email], interrupt_before=["send_email"]))
    g.add_edge(START, "tools")
    return g.compile(checkpointer=InMemorySaver())


_HITL_CALLS = [
    {"id": "q", "name": "lookup", "args": {"q": "hello"}},
    {"id": "other", "name": "lookup", "args": {"q": "world"}},
    {"id": "m", "name": "send_email", "args": {"body": {"$ref": "q"}}},
]


def test_interrupt_before_tool_then_approve() -> None:
    log: list[str] = []
    app = _hitl_graph(log)
    cfg = {"configurable": {"thread_id": "h1"}}
    out = app.invoke({"messages": [AIMessage("", tool_calls=_HITL_CALLS)]}, cfg)
    # LangGraph reports an interrupt raised in a subgraph task once per level (same id).
    assert len({i.id for i in out["__interrupt__"]}) == 1
    intr = out["__interrupt__"][0]
    assert intr.value["tool_call"] == {"id": "m", "name": "send_email", "args": {"body": "HELLO"}}
    assert sorted(log) == ["lookup:hello", "lookup:world"]
    out = app.invoke(Command(resume=True), cfg)
    assert sorted(log) == ["lookup:hello", "lookup:world", "send:HELLO"]  # no re-runs
    msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert [m.content for m in msgs] == ["HELLO", "WORLD", "sent"]
    assert out["plan"]["valid"] and [c["status"] for c in out["plan"]["calls"]] == ["ok"] * 3


def test_interrupt_reject_and_edit() -> None:
    log: list[str] = []
    app = _hitl_graph(log)
    cfg = {"configurable": {"thread_id": "h2"}}
    app.invoke({"messages": [AIMessage("", tool_calls=_HITL_CALLS)]}, cfg)
    out = app.invoke(Command(resume={"action": "reject", "reason": "not now"}), cfg)
    last = out["messages"][-1]
    assert last.status == "error" and "rejected by a human: not now" in last.content
    assert "send:HELLO" not in log

    cfg = {"configurable": {"thread_id": "h3"}}
    app.invoke({"messages": [AIMessage("", tool_calls=_HITL_CALLS)]}, cfg)
    out = app.invoke(Command(resume={"action": "edit", "args": {"body": "edited"}}), cfg)
    assert out["messages"][-1].content == "sent" and log[-1] == "send:edited"


def test_saved_result_never_goes_to_another_call(tmp_path: Path) -> None:
    """Task ids follow issue order; if it changed on resume, fail loudly, never swap."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), str(tmp_path)]
    first = subprocess.run([*cmd, "start", "reorder"], env=env, capture_output=True, timeout=60)
    assert first.returncode == 17
    second = subprocess.run(
        [*cmd, "resume", "reorder"], env=env, capture_output=True, text=True, timeout=60
    )
    assert second.returncode != 0
    assert "ScheduleResumeError: the saved result for tool call 'a' belongs to 'b'" in second.stderr


class _SwitchState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    plan: PlanRecord
    switch: dict


def test_command_result_is_saved_and_applied_once_across_an_interrupt() -> None:
    """A tool returning a Command runs once; its saved Command is applied on resume and
    its ToolMessage content reaches the dependent that was waiting for approval."""
    log: list[str] = []

    @tool
    def switch_context(domain: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Switch the context domain."""
        log.append(f"switch:{domain}")
        msg = ToolMessage(f"now in {domain}", tool_call_id=tool_call_id)
        return Command(update={"switch": {"to": domain}, "messages": [msg]})

    @tool
    def send_email(body: str) -> str:
        """Send an email (needs approval)."""
        log.append(f"send:{body}")
        return "sent"

    g = StateGraph(_SwitchState)
    g.add_node(
        "tools", ToolScheduler([switch_context, send_email], interrupt_before=["send_email"])
    )
    g.add_edge(START, "tools")
    app = g.compile(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "c1"}}
    calls = [
        {"id": "s", "name": "switch_context", "args": {"domain": "billing"}},
        {"id": "m", "name": "send_email", "args": {"body": "$1"}},
    ]
    out = app.invoke({"messages": [AIMessage("", tool_calls=calls)]}, cfg)
    assert out["__interrupt__"][0].value["tool_call"]["args"] == {"body": "now in billing"}
    assert "switch" not in out  # nothing is applied before the node finishes
    out = app.invoke(Command(resume=True), cfg)
    assert log == ["switch:billing", "send:now in billing"]
    assert out["switch"] == {"to": "billing"}
    assert [m.content for m in out["messages"][1:]] == ["now in billing", "sent"]
    assert [c["status"] for c in out["plan"]["calls"]] == ["ok", "ok"]
