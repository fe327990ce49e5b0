"""The scheduler: references, validation, DAG execution, bounds, retries, timeouts, the
ToolNode contract, streamed progress and the recorded plan."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Annotated, Any, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import InjectedState, ToolNode
from langgraph.types import Command, RetryPolicy

from llmctx.nodes.schedule import ToolScheduler
from llmctx.runtime.dag import (
    REFERENCE_PROMPT,
    PlanRecord,
    PlanValidationError,
    build_plan,
    critical_path,
    find_references,
    substitute,
)


class _PlanState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    plan: PlanRecord


# -- tools ---------------------------------------------------------------------------

_ran: list[str] = []
_lock = threading.Lock()
_active = {"now": 0, "peak": 0}


def _track(delta: int) -> None:
    with _lock:
        _active["now"] += delta
        _active["peak"] = max(_active["peak"], _active["now"])


@tool
def fetch(key: str, delay: float = 0.0) -> dict:
    """Fetch a record by key."""
    _track(1)
    try:
        time.sleep(delay)
        _ran.append(f"fetch:{key}")
        return {"key": key, "size": len(key), "tags": [key[:1], key[-1:]]}
    finally:
        _track(-1)


@tool
def echo(value: Any) -> Any:
    """Return the value."""
    _ran.append(f"echo:{value}")
    return value


@tool
async def aecho(value: Any, delay: float = 0.0) -> Any:
    """Return the value after an async sleep."""
    _track(1)
    try:
        await asyncio.sleep(delay)
        return value
    finally:
        _track(-1)


@pytest.fixture(autouse=True)
def _reset() -> None:
    _ran.clear()
    _active.update(now=0, peak=0)


def _ai(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [HumanMessage("go"), AIMessage("", tool_calls=list(calls))]}


def _call(cid: str, name: str, **args: Any) -> dict[str, Any]:
    return {"id": cid, "name": name, "args": args}


# "sync" and "async" run the plan as plain asyncio tasks (no checkpointer, nothing to
# save); "durable" / "adurable" run it in a sync / async graph with a checkpointer:
# LangGraph's sync / async engine, every call a durable task.
MODES = ["sync", "async", "durable", "adurable"]


def _run_in(mode: str, sched: ToolScheduler, calls: list[dict[str, Any]]) -> tuple[Any, Any]:
    if mode == "sync":
        return sched.run(calls)
    if mode == "async":
        return asyncio.run(sched.arun(calls))
    g = StateGraph(_PlanState)
    g.add_node("tools", sched)
    g.add_edge(START, "tools")
    app = g.compile(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "t"}}
    if mode == "durable":
        out = app.invoke(_ai(*calls), cfg)
    else:
        out = asyncio.run(app.ainvoke(_ai(*calls), cfg))
    return out["messages"][2:], out["plan"]


# -- references ----------------------------------------------------------------------


def test_three_reference_syntaxes_substitute_exactly() -> None:
    sched = ToolScheduler([fetch, echo])
    msgs, _ = sched.run(
        [
            _call("a", "fetch", key="alpha"),
            _call("s", "echo", value={"$ref": "a", "path": "size"}),  # structured
            _call("t", "echo", value={"$ref": "a", "path": "tags.1"}),
            _call("c", "echo", value="$1"),  # LLMCompiler, whole value keeps its type
            _call("d", "echo", value="${2} items, first $var1.tags.0$ for $5.99"),
            _call("n", "echo", value="$var1.key$"),  # NESTFUL
        ]
    )
    got = [m.content for m in msgs]
    assert got[1:] == [
        "5",
        "a",
        '{"key": "alpha", "size": 5, "tags": ["a", "a"]}',
        "5 items, first a for $5.99",
        "alpha",
    ]
    assert "fetch:alpha" in _ran and '{"$ref": "<id of the earlier call>"' in REFERENCE_PROMPT


def test_find_and_substitute_nested() -> None:
    args = {"x": [{"$ref": "c1", "path": "a.b"}, "$2"], "y": {"z": "$var1$"}}
    assert find_references(args) == [("c1", ("a", "b")), ("2", ()), ("var1", ())]
    out = substitute(
        args, {"c1": {"a": {"b": [1]}}, "c2": "two"}, {"c1": "c1", "2": "c2", "var1": "c1"}
    )
    assert out == {"x": [[1], "two"], "y": {"z": {"a": {"b": [1]}}}}


def test_bad_path_is_an_error_and_dependents_are_skipped() -> None:
    sched = ToolScheduler([fetch, echo])
    msgs, rec = sched.run(
        [
            _call("a", "fetch", key="k"),
            _call("b", "echo", value={"$ref": "a", "path": "nope"}),
            _call("c", "echo", value={"$ref": "b"}),
            _call("d", "echo", value="independent"),
        ]
    )
    assert msgs[1].status == "error" and "'nope'" in msgs[1].content and "size" in msgs[1].content
    assert (
        msgs[2].status == "error" and "call 'b'" in msgs[2].content and "skipped" in msgs[2].content
    )
    assert msgs[3].content == "independent"
    assert [c["status"] for c in rec["calls"]] == ["ok", "error", "skipped", "ok"]


# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calls", "bad", "needle"),
    [
        ([_call("a", "echo", value={"$ref": "zz"})], {"a"}, "missing call 'zz'"),
        ([_call("a", "echo", value="$1")], {"a"}, "itself"),
        (
            [_call("a", "echo", value="$2"), _call("b", "echo", value="$1"), _call("c", "echo")],
            {"a", "b"},
            "cycle",
        ),
        (
            [_call("a", "echo"), _call("a", "echo"), _call("b", "echo", value="$var1$")],
            {"b"},
            "several calls share",
        ),
    ],
)
def test_validation_errors(calls: list[dict[str, Any]], bad: set[str], needle: str) -> None:
    sched = ToolScheduler([echo])
    with pytest.raises(PlanValidationError) as err:
        sched.run(calls)
    assert set(err.value.problems) == bad and needle in str(err.value)
    # the node: one error ToolMessage per call, nothing runs, never hangs
    t0 = time.perf_counter()
    out = sched.invoke(_ai(*calls))
    assert time.perf_counter() - t0 < 2
    assert len(out["messages"]) == len(calls) and _ran == []
    assert all(m.status == "error" for m in out["messages"])
    first_bad = next(m for m in out["messages"] if m.tool_call_id in bad)
    assert needle in first_bad.content
    assert out["plan"]["valid"] is False


def test_build_plan_levels_and_order() -> None:
    plan = build_plan([_call("c", "x", v="$2"), _call("b", "x", v="$3"), _call("a", "x")], {"x"})
    assert [plan.calls[i].id for i in plan.order] == ["a", "b", "c"]
    assert plan.levels == {"a": 0, "b": 1, "c": 2} and plan.depth == 3
    # Calls that can start go first, the one starting the longest chain before the others.
    plan = build_plan(
        [_call("leaf", "x"), _call("r", "x"), _call("c", "x", v="$r$"), _call("d", "x", v="$c$")]
    )
    assert [plan.calls[i].id for i in plan.order] == ["r", "leaf", "c", "d"]


def test_critical_path() -> None:
    deps = {"a": [], "b": [], "c": ["a"], "d": ["b", "c"]}
    assert critical_path(deps, {"a": 1, "b": 5, "c": 1, "d": 1}) == (["b", "d"], 6.0)
    assert critical_path(deps, {"a": 3, "b": 1, "c": 3, "d": 1}) == (["a", "c", "d"], 7.0)


# -- execution -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_call_starts_when_its_own_deps_finish_not_in_waves(mode: str) -> None:
    sched = ToolScheduler([fetch, echo])
    calls = [
        _call("fast", "fetch", key="f", delay=0.02),
        _call("slow", "fetch", key="s", delay=0.3),
        _call("next", "fetch", key={"$ref": "fast", "path": "key"}, delay=0.02),
    ]
    msgs, rec = _run_in(mode, sched, calls)
    by = {c["id"]: c for c in rec["calls"]}
    assert by["next"]["start_ms"] < by["slow"]["end_ms"] - 150
    assert rec["critical_path"] == ["slow"] and rec["makespan_ms"] < 400
    assert [m.tool_call_id for m in msgs] == ["fast", "slow", "next"]


@pytest.mark.parametrize("mode", MODES)
def test_max_concurrency_bounds_sync_and_async_tools(mode: str) -> None:
    sched = ToolScheduler([fetch, aecho], max_concurrency=2)
    calls = [_call(f"s{i}", "fetch", key=f"k{i}", delay=0.03) for i in range(4)]
    calls += [_call(f"a{i}", "aecho", value=i, delay=0.03) for i in range(4)]
    _, rec = _run_in(mode, sched, calls)
    assert _active["peak"] == 2 and rec["peak_concurrency"] == 2
    assert rec["makespan_ms"] >= 4 * 30 - 5  # 8 calls of 30 ms, two at a time


def test_eight_independent_calls_run_in_parallel() -> None:
    sched = ToolScheduler([fetch], max_concurrency=8)
    calls = [_call(f"c{i}", "fetch", key=f"k{i}", delay=0.1) for i in range(8)]
    t0 = time.perf_counter()
    sched.run(calls)
    assert time.perf_counter() - t0 < 0.3


def test_retry_policy_and_timeout_per_tool() -> None:
    attempts: list[int] = []

    @tool
    def flaky(n: int) -> int:
        """Fails twice, then works."""
        attempts.append(n)
        if len(attempts) < 3:
            raise ConnectionError("transient")
        return n

    @tool
    def sleepy(n: int) -> int:
        """Too slow."""
        time.sleep(0.5)
        return n

    sched = ToolScheduler(
        [flaky, sleepy, echo],
        retry={"flaky": RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False)},
        timeout={"sleepy": 0.05},
    )
    t0 = time.perf_counter()
    msgs, rec = sched.run(
        [
            _call("f", "flaky", n=7),
            _call("s", "sleepy", n=1),
            _call("after", "echo", value={"$ref": "s"}),
        ]
    )
    assert time.perf_counter() - t0 < 0.4
    assert msgs[0].content == "7" and rec["calls"][0]["attempts"] == 3
    assert msgs[1].status == "error" and "timed out after 0.05s" in msgs[1].content
    assert "call 's'" in msgs[2].content and rec["calls"][2]["status"] == "skipped"


def test_failed_call_without_retry_policy_is_an_error_message() -> None:
    @tool
    def broken(n: int) -> int:
        """Always fails."""
        raise ValueError(f"bad n={n}")

    msgs, _ = ToolScheduler([broken]).run([_call("b", "broken", n=3)])
    assert msgs[0].status == "error" and msgs[0].content == (
        "Error: ValueError('bad n=3')\n Please fix your mistakes."
    )


# -- drop-in for ToolNode --------------------------------------------------------------


def _graph(node: Any, state: type = MessagesState) -> Any:
    g = StateGraph(state)
    g.add_node("tools", node)
    g.add_edge(START, "tools")
    return g.compile()


def test_same_output_as_toolnode_in_a_messages_state_graph() -> None:
    calls = [_call("a", "fetch", key="x"), _call("b", "echo", value="hi")]
    ours = _graph(ToolScheduler([fetch, echo], plan_key=None)).invoke(_ai(*calls))
    theirs = _graph(ToolNode([fetch, echo])).invoke(_ai(*calls))
    strip = [(m.content, m.name, m.tool_call_id, m.status) for m in ours["messages"][2:]]
    assert strip == [(m.content, m.name, m.tool_call_id, m.status) for m in theirs["messages"][2:]]
    # a list input gives a list output, as with ToolNode
    out = ToolScheduler([echo]).invoke([AIMessage("", tool_calls=[_call("e", "echo", value=1)])])
    assert isinstance(out, list) and isinstance(out[0], ToolMessage) and out[0].content == "1"


def test_plan_record_and_progress_events_stream() -> None:
    app = _graph(ToolScheduler([fetch, echo]), _PlanState)
    calls = [_call("a", "fetch", key="abc", delay=0.01), _call("b", "echo", value="$1")]
    events = [ev for ev in app.stream(_ai(*calls), stream_mode="custom")]
    kinds = [(e["scheduler"], e["id"]) for e in events]
    assert kinds == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
    state = app.invoke(_ai(*calls))
    plan = state["plan"]
    assert plan["valid"] and plan["critical_path"] == ["a", "b"] and plan["depth"] == 2
    assert [c["deps"] for c in plan["calls"]] == [[], ["a"]]
    assert plan["makespan_ms"] >= plan["critical_path_ms"] > 0


def test_async_graph_path() -> None:
    app = _graph(ToolScheduler([aecho, echo]), _PlanState)
    calls = [
        _call("a", "aecho", value={"k": 1}),
        _call("b", "echo", value={"$ref": "a", "path": "k"}),
    ]
    out = asyncio.run(app.ainvoke(_ai(*calls)))
    assert [m.content for m in out["messages"][2:]] == ['{"k": 1}', "1"]


def test_prices_are_text_but_braced_and_labelled_references_must_exist() -> None:
    sched = ToolScheduler([echo])
    msgs, _ = sched.run([_call("a", "echo", value="$100-$200"), _call("b", "echo", value="$1!")])
    assert [m.content for m in msgs] == ["$100-$200", "$100-$200!"]
    with pytest.raises(PlanValidationError, match="missing call '9'"):
        sched.run([_call("a", "echo", value="${9}")])
    # ids that are NESTFUL labels: `$var3$` names a label, not the 3rd position
    calls = [_call("var1", "echo", value=1), _call("var2", "echo"), _call("r", "echo", v="$var3$")]
    with pytest.raises(PlanValidationError, match="missing call 'var3'"):
        sched.run(calls)


# -- ToolNode features inside a DAG ---------------------------------------------------


class _Injected(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    plan: PlanRecord
    switch: dict


def test_injected_arguments_are_not_the_models_and_are_never_scanned() -> None:
    @tool
    def note(
        text: str,
        state: Annotated[dict, InjectedState],
        call_id: Annotated[str, InjectedToolCallId],
    ) -> str:
        """Note text, with the state's message count and the call id."""
        return f"{text}/{len(state['messages'])}/{call_id}"

    app = _graph(ToolScheduler([fetch, note]), _Injected)
    calls = [
        _call("a", "fetch", key="k1"),
        # `state` is forged by the model (with a reference to a missing call): dropped
        # before validation, then the real state is injected after substitution.
        _call("b", "note", text={"$ref": "a", "path": "key"}, state={"$ref": "zz"}),
    ]
    # The state itself holds reference-like text: it is injected as is, never parsed.
    inp = {"messages": [HumanMessage("use $1 and ${2}"), AIMessage("", tool_calls=calls)]}
    out = app.invoke(inp)
    assert [m.content for m in out["messages"][2:]] == [
        '{"key": "k1", "size": 2, "tags": ["k", "1"]}',
        "k1/2/b",
    ]
    assert out["plan"]["calls"][1]["deps"] == ["a"]


def test_dependents_of_a_command_see_its_tool_message_content() -> None:
    @tool
    def switch_context(domain: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Switch the context domain."""
        msg = ToolMessage(f"now in {domain}", tool_call_id=tool_call_id)
        return Command(update={"switch": {"to": domain}, "messages": [msg]})

    @tool
    def escalate(tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Hand over to the parent graph (no ToolMessage here)."""
        return Command(graph=Command.PARENT, goto="human")

    sched = ToolScheduler([switch_context, echo, escalate])
    calls = [
        _call("s", "switch_context", domain="billing"),
        _call("e", "echo", value={"$ref": "s"}),
        _call("x", "escalate"),
        _call("after", "echo", value="$3"),
    ]
    outs, rec = sched.run(calls)
    assert isinstance(outs[0], Command) and outs[1].content == "now in billing"
    assert [c["status"] for c in rec["calls"]] == ["ok", "ok", "ok", "skipped"]
    assert "returned a Command without a ToolMessage" in outs[3].content
    # In a graph: the Command's update lands in the state, the plan record too.
    state = _graph(ToolScheduler([switch_context, echo]), _Injected).invoke(_ai(*calls[:2]))
    assert state["switch"] == {"to": "billing"}
    assert [m.content for m in state["messages"][2:]] == ["now in billing", "now in billing"]
    assert state["plan"]["critical_path"] == ["s", "e"]


def test_references_get_the_return_value_and_artifact_tools_their_content() -> None:
    @tool(response_format="content_and_artifact")
    def chart(n: int) -> tuple[str, dict]:
        """A chart: text for the model, the points as the artifact."""
        return f"{n} points", {"points": list(range(n))}

    @tool
    def code() -> str:
        """A numeric-looking string."""
        return "0042"

    @tool
    def describe(record: dict, label: str, text: str) -> str:
        """Typed parameters: a dict and two strings."""
        return f"{sorted(record)}|{label}|{text}"

    sched = ToolScheduler([fetch, chart, code, describe])
    outs, _ = sched.run(
        [
            _call("f", "fetch", key="ab"),
            _call("c", "chart", n=2),
            _call("k", "code"),
            _call("d", "describe", record="$1", label="$3", text={"$ref": "c"}),
        ]
    )
    assert outs[1].artifact == {"points": [0, 1]} and outs[1].content == "2 points"
    assert outs[3].content == "['key', 'size', 'tags']|0042|2 points"


def test_unknown_tool_gets_toolnodes_message_and_its_dependents_are_skipped() -> None:
    app = _graph(ToolScheduler([echo]))
    calls = [_call("u", "nosuch"), _call("d", "echo", value="$1"), _call("o", "echo", value=1)]
    out = app.invoke(_ai(*calls))
    results = {m.tool_call_id: m for m in out["messages"] if isinstance(m, ToolMessage)}
    assert results["u"].content == "Error: nosuch is not a valid tool, try one of [echo]."
    assert results["d"].status == "error" and "skipped" in results["d"].content
    assert results["o"].content == "1"


def test_run_refuses_an_unknown_tool_before_running_anything() -> None:
    ran: list[int] = []

    @tool
    def count(value: int) -> int:
        """Counts its calls."""
        ran.append(value)
        return value

    with pytest.raises(PlanValidationError, match="unknown tool 'nosuch'"):
        ToolScheduler([count]).run([_call("o", "count", value=1), _call("u", "nosuch")])
    assert ran == []


def test_duplicate_ids_without_references_run_like_toolnode() -> None:
    outs, _ = ToolScheduler([echo]).run([_call("a", "echo", value=1), _call("a", "echo", value=2)])
    assert [(m.tool_call_id, m.content) for m in outs] == [("a", "1"), ("a", "2")]


def test_unhandled_error_raises_out_of_the_node() -> None:
    @tool
    def broken(n: int) -> int:
        """Always fails."""
        raise KeyError(n)

    app = _graph(ToolScheduler([broken, echo], handle_tool_errors=ValueError))
    with pytest.raises(KeyError):
        app.invoke(_ai(_call("b", "broken", n=1), _call("e", "echo", value="$1")))


@pytest.mark.parametrize("mode", MODES)
def test_retry_and_timeout_apply_to_async_and_sync_tools_in_both_modes(mode: str) -> None:
    tries: list[str] = []

    @tool
    async def aflaky(n: int) -> int:
        """Fails once, then works."""
        tries.append("a")
        if tries.count("a") < 2:
            raise ConnectionError("transient")
        return n

    @tool
    async def aslow(n: int) -> int:
        """Too slow."""
        await asyncio.sleep(0.5)
        return n

    @tool
    def sslow(n: int) -> int:
        """Too slow, sync."""
        time.sleep(0.5)
        return n

    sched = ToolScheduler(
        [aflaky, aslow, sslow],
        retry={"aflaky": RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False)},
        timeout={"aslow": 0.05, "sslow": 0.05},
    )
    calls = [_call("f", "aflaky", n=3), _call("a", "aslow", n=1), _call("s", "sslow", n=1)]
    t0 = time.perf_counter()
    outs, rec = _run_in(mode, sched, calls)
    assert time.perf_counter() - t0 < 0.4
    assert outs[0].content == "3" and rec["calls"][0]["attempts"] == 2
    assert "timed out after 0.05s" in outs[1].content and outs[1].status == "error"
    assert "timed out after 0.05s" in outs[2].content


def test_drop_in_for_create_react_agent() -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langgraph.prebuilt import create_react_agent

    class _Model(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    calls = [_call("a", "fetch", key="xy"), _call("b", "echo", value={"$ref": "a", "path": "size"})]
    model = _Model(messages=iter([AIMessage("", tool_calls=calls), AIMessage("done")]))
    with pytest.warns(Warning):  # create_react_agent is deprecated in LangGraph 1.x
        agent = create_react_agent(model, ToolScheduler([fetch, echo]), version="v1")
    out = agent.invoke({"messages": [HumanMessage("go")]})
    assert [m.content for m in out["messages"][2:]] == [
        '{"key": "xy", "size": 2, "tags": ["x", "y"]}',
        "2",
        "done",
    ]


@st.composite
def _dags(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Calls that refer to random earlier calls (structured or NESTFUL form), shuffled."""
    n = draw(st.integers(1, 12))
    calls = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        forms = [{"$ref": f"c{d}"} if k % 2 else f"$c{d}$" for k, d in enumerate(deps)]
        calls.append(_call(f"c{i}", "x", refs=forms))
    return draw(st.permutations(calls))


@given(_dags())
@settings(max_examples=150, deadline=None)
def test_plan_order_is_topological_deterministic_and_roots_first(calls: list[dict]) -> None:
    plan = build_plan(calls, {"x"})
    assert sorted(plan.order) == list(range(len(calls)))
    seen: set[int] = set()
    for i in plan.order:
        spec = plan.calls[i]
        assert set(spec.dep_indexes) <= seen  # every dependency is issued first
        assert spec.level == 1 + max((plan.calls[d].level for d in spec.dep_indexes), default=-1)
        seen.add(i)
    levels = [plan.calls[i].level for i in plan.order]
    assert levels == sorted(levels)  # every call that can start is issued before waiters
    assert build_plan(calls, {"x"}).order == plan.order
    # Closing any dependency chain into a loop is reported as a cycle, and nothing runs.
    deep = max(plan.calls, key=lambda c: c.level)
    if deep.level:
        root = plan.calls[deep.dep_indexes[0]]
        while root.dep_indexes:
            root = plan.calls[root.dep_indexes[0]]
        looped = [
            {**c, "args": {**c["args"], "back": {"$ref": deep.id}}} if c["id"] == root.id else c
            for c in calls
        ]
        with pytest.raises(PlanValidationError, match="cycle"):
            build_plan(looped, {"x"})
