"""ToolScheduler is a drop-in for LangGraph's `ToolNode`: the same graph, run once with
each node on the same AI message (no references), ends in the same state. Messages are
compared without the ids LangGraph generates; the store's contents are compared too;
when ToolNode raises, ToolScheduler raises the same exception."""

from __future__ import annotations

import asyncio
import operator
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, StructuredTool, ToolException, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import InjectedState, InjectedStore, ToolNode, ToolRuntime
from langgraph.prebuilt.tool_node import ToolCallRequest, ToolInvocationError
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, Send, interrupt
from pydantic import BaseModel

from llmctx.nodes.schedule import ToolScheduler

# ToolRuntime.context is a dataclass here; pydantic warns when LangChain serializes it.
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")

# -- tools ---------------------------------------------------------------------------


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool
def profile(name: str) -> dict:
    """A profile record."""
    return {"name": name, "tags": ["x", "y"]}


@tool
def blocks(text: str) -> list:
    """Content blocks."""
    return [{"type": "text", "text": text}]


def _upper(text: str) -> str:
    return text.upper()


async def _aupper(text: str) -> str:
    await asyncio.sleep(0)
    return text.upper()


# Sync and async implementations: ToolNode uses the one that matches the graph's mode.
aupper = StructuredTool.from_function(
    func=_upper, coroutine=_aupper, name="aupper", description="Upper-case."
)


@tool
async def aonly(text: str) -> str:
    """Lower-case, async only."""
    await asyncio.sleep(0)
    return text.lower()


@tool
def who(x: int, call_id: Annotated[str, InjectedToolCallId]) -> str:
    """Echo x with the tool-call id."""
    return f"{x}@{call_id}"


@tool
def whole_state(q: str, state: Annotated[dict, InjectedState]) -> str:
    """Read the whole state."""
    return f"{q}:{len(state['messages'])}:{state.get('foo')}"


@tool
def foo_field(q: str, foo: Annotated[str, InjectedState("foo")]) -> str:
    """Read one state field."""
    return f"{q}={foo}"


@tool
def remember(key: str, value: str, store: Annotated[Any, InjectedStore()]) -> str:
    """Write to the store."""
    store.put(("kv",), key, {"v": value})
    return f"saved {key}"


@tool
def with_runtime(q: str, runtime: ToolRuntime) -> str:
    """Read the tool runtime."""
    rt = runtime
    return f"{q}|{rt.tool_call_id}|{rt.context.user}|{len(rt.state['messages'])}|{bool(rt.store)}"


@tool
def switch_context(domain: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
    """Switch the context domain."""
    msg = ToolMessage(f"switched to {domain}", tool_call_id=tool_call_id)
    return Command(update={"switch": {"to": domain}, "messages": [msg]})


@tool
def hop(tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
    """Go to another node."""
    return Command(
        goto="after", update={"messages": [ToolMessage("hop", tool_call_id=tool_call_id)]}
    )


@tool
def two_parts(tool_call_id: Annotated[str, InjectedToolCallId]) -> list:
    """A Command and a ToolMessage."""
    return [Command(update={"foo": "two"}), ToolMessage("done", tool_call_id=tool_call_id)]


@tool
def bad_command() -> Command:
    """A Command without a ToolMessage (ToolNode rejects it)."""
    return Command(update={"foo": "nope"})


@tool
def own_message(tool_call_id: Annotated[str, InjectedToolCallId]) -> ToolMessage:
    """Return a ToolMessage directly."""
    return ToolMessage(content=[{"type": "text", "text": "own"}], tool_call_id=tool_call_id)


@tool(response_format="content_and_artifact")
def chart(n: int) -> tuple[str, dict]:
    """Content and artifact."""
    return f"{n} points", {"points": list(range(n))}


@tool
def boom(n: int) -> int:
    """Always raises."""
    raise ValueError(f"boom {n}")


def _te(n: int) -> int:
    raise ToolException(f"tool says no to {n}")


handled = StructuredTool.from_function(
    _te, name="handled", description="Raises a handled ToolException.", handle_tool_error=True
)

TOOLS = [
    add,
    profile,
    blocks,
    aupper,
    who,
    whole_state,
    foo_field,
    remember,
    with_runtime,
    switch_context,
    hop,
    two_parts,
    bad_command,
    own_message,
    chart,
    boom,
    handled,
    aonly,
]


def _c(cid: str, tool_name: str, **args: Any) -> dict[str, Any]:
    return {"id": cid, "name": tool_name, "args": args, "type": "tool_call"}


# -- graphs --------------------------------------------------------------------------


@dataclass
class Ctx:
    user: str


class State(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    foo: str
    switch: dict
    visited: Annotated[list[str], operator.add]


def _after(state: State) -> dict[str, Any]:
    return {"visited": ["after"]}


def _graph(node: Any, store: InMemoryStore, checkpointer: Any = None) -> Any:
    g = StateGraph(State, context_schema=Ctx)
    g.add_node("tools", node)
    g.add_node("after", _after)
    g.add_edge(START, "tools")
    g.add_edge("tools", END)
    g.add_edge("after", END)
    return g.compile(store=store, checkpointer=checkpointer)


def _norm(value: Any) -> Any:
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, ToolMessage | AIMessage | HumanMessage):
        return (type(value).__name__, value.model_dump(exclude={"id"}))
    return value


def _outcome(app: Any, inp: Any, mode: str, store: InMemoryStore, **kw: Any) -> Any:
    if mode.endswith("durable"):
        kw["config"] = {"configurable": {"thread_id": "t"}}
    try:
        if mode in ("sync", "durable"):
            out = app.invoke(inp, **kw)
        else:
            out = asyncio.run(app.ainvoke(inp, **kw))
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))
    state = {k: _norm(v) for k, v in out.items()} if isinstance(out, dict) else _norm(out)
    saved = sorted((i.key, i.value["v"]) for i in store.search(("kv",)))
    return state, saved


def _both(calls: list[dict[str, Any]], mode: str, **opts: Any) -> tuple[Any, Any]:
    results = []
    for cls in (ToolNode, ToolScheduler):
        store = InMemoryStore()
        saver = InMemorySaver() if mode.endswith("durable") else None
        app = _graph(cls(TOOLS, **opts), store, saver)
        inp = {
            "messages": [HumanMessage("hi", id="h"), AIMessage("", id="ai", tool_calls=calls)],
            "foo": "bar",
        }
        results.append(_outcome(app, inp, mode, store, context=Ctx(user="u1")))
    return results[0], results[1]


# -- the battery ---------------------------------------------------------------------

_CASES: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "plain sync and async": (
        [
            _c("1", "add", a=1, b=2),
            _c("2", "profile", name="ann"),
            _c("3", "blocks", text="t"),
            _c("4", "aupper", text="abc"),
        ],
        {},
    ),
    "injected arguments": (
        [
            _c("1", "who", x=3),
            _c("2", "whole_state", q="s"),
            _c("3", "foo_field", q="f"),
            _c("4", "remember", key="k", value="v"),
            _c("5", "with_runtime", q="r"),
        ],
        {},
    ),
    "forged injected argument is dropped": (
        [_c("1", "who", x=1, call_id="forged"), _c("2", "foo_field", q="q", foo="forged")],
        {},
    ),
    "command update mixed with messages": (
        [_c("1", "add", a=2, b=2), _c("2", "switch_context", domain="billing")],
        {},
    ),
    "command goto": ([_c("1", "hop"), _c("2", "profile", name="bo")], {}),
    "list of command and message": ([_c("1", "two_parts"), _c("2", "add", a=0, b=1)], {}),
    "command without its tool message, handled": (
        [_c("1", "bad_command")],
        {"handle_tool_errors": True},
    ),
    "command without its tool message, default": ([_c("1", "bad_command")], {}),
    "tool returns its own message": ([_c("1", "own_message")], {}),
    "content and artifact": ([_c("1", "chart", n=3), _c("2", "add", a=1, b=1)], {}),
    "bad arguments": ([_c("1", "add", a="x", b=2), _c("2", "add", a=1)], {}),
    "unknown tool": ([_c("1", "nosuch", q=1), _c("2", "add", a=1, b=2)], {}),
    "tool-level handled ToolException": ([_c("1", "handled", n=2)], {}),
    "duplicate ids": ([_c("same", "add", a=1, b=1), _c("same", "add", a=2, b=2)], {}),
    "no tool calls": ([], {}),
    "errors: True": (
        [_c("1", "boom", n=1), _c("2", "add", a=1, b=2)],
        {"handle_tool_errors": True},
    ),
    "errors: str": ([_c("1", "boom", n=1)], {"handle_tool_errors": "try again"}),
    "errors: exception type": ([_c("1", "boom", n=1)], {"handle_tool_errors": ValueError}),
    "errors: tuple of types": (
        [_c("1", "boom", n=1)],
        {"handle_tool_errors": (KeyError, ValueError)},
    ),
    "errors: type not matching raises": ([_c("1", "boom", n=1)], {"handle_tool_errors": KeyError}),
    "errors: False raises": (
        [_c("1", "boom", n=1), _c("2", "add", a=1, b=2)],
        {"handle_tool_errors": False},
    ),
    "errors: False raises on bad args": (
        [_c("1", "add", a="x", b=1)],
        {"handle_tool_errors": False},
    ),
}


def _typed_handler(e: ValueError) -> str:
    return f"handled {e}"


def _wrap(request: ToolCallRequest, execute: Any) -> Any:
    call = request.tool_call
    if call["name"] == "add":
        request = request.override(tool_call={**call, "args": {**call["args"], "b": 100}})
    return execute(request)


_CASES["errors: typed callable"] = ([_c("1", "boom", n=5)], {"handle_tool_errors": _typed_handler})
_CASES["wrap_tool_call"] = (
    [_c("1", "add", a=1, b=2), _c("2", "aupper", text="w")],
    {"wrap_tool_call": _wrap},
)


# "durable": a sync graph with a checkpointer, so the plan runs on the sync engine and
# every output goes through the checkpointer's serializer; "adurable": the async twin.
@pytest.mark.parametrize("mode", ["sync", "async", "durable", "adurable"])
@pytest.mark.parametrize("case", list(_CASES))
def test_same_final_state_as_toolnode(case: str, mode: str) -> None:
    calls, opts = _CASES[case]
    if case == "command without its tool message, default":
        # ToolNode's default re-raises execution errors; ours turns them into messages,
        # so run ours with ToolNode's default semantics spelled out.
        theirs = _both(calls, mode)[0]
        store = InMemoryStore()
        saver = InMemorySaver() if mode.endswith("durable") else None
        app = _graph(ToolScheduler(TOOLS, handle_tool_errors=_toolnode_default), store, saver)
        inp = {"messages": [HumanMessage("hi", id="h"), AIMessage("", id="ai", tool_calls=calls)]}
        ours = _outcome(app, {**inp, "foo": "bar"}, mode, store, context=Ctx(user="u1"))
    else:
        theirs, ours = _both(calls, mode, **opts)
    assert ours == theirs


def _toolnode_default(e: ToolInvocationError) -> str:
    """ToolNode's default semantics: bad arguments become a message, the rest raises."""
    return e.message


def test_the_battery_exercises_what_it_claims() -> None:
    """Guard against a vacuous comparison: the cases really produce these effects."""
    state, saved = _both(_CASES["injected arguments"][0], "sync")[1]
    texts = [m[1]["content"] for m in state["messages"][2:]]
    assert texts == ["3@1", "s:2:bar", "f=bar", "saved k", "r|5|u1|2|True"]
    assert saved == [("k", "v")]
    state, _ = _both(_CASES["command update mixed with messages"][0], "sync")[1]
    assert state["switch"] == {"to": "billing"} and state["messages"][-1][1]["content"] == (
        "switched to billing"
    )
    state, _ = _both(_CASES["command goto"][0], "sync")[1]
    assert state["visited"] == ["after"]
    state, _ = _both(_CASES["content and artifact"][0], "sync")[1]
    assert state["messages"][2][1]["artifact"] == {"points": [0, 1, 2]}
    calls, opts = _CASES["errors: False raises"]
    raised = _both(calls, "sync", **opts)[1]
    assert raised == ("raised", "ValueError", "boom 1")
    state, _ = _both(_CASES["bad arguments"][0], "sync")[1]
    assert "Error invoking tool 'add'" in state["messages"][2][1]["content"]


def test_defaults_differ_only_for_execution_errors() -> None:
    """Bad arguments: the same message. A raising tool: ToolNode raises, ours answers
    with ToolNode's ``handle_tool_errors=True`` message and the other calls still run."""
    calls = [_c("1", "boom", n=1), _c("2", "add", a=1, b=2)]
    theirs, ours = _both(calls, "sync")
    assert theirs == ("raised", "ValueError", "boom 1")
    as_true, _ = _both(calls, "sync", handle_tool_errors=True)
    assert ours == as_true
    assert ours[0]["messages"][2][1]["content"] == (
        "Error: ValueError('boom 1')\n Please fix your mistakes."
    )


def test_async_only_tool() -> None:
    """Async graph: the same. Sync graph: ToolNode cannot run it, ours runs it on an
    event loop of its own."""
    calls = [_c("1", "aonly", text="AbC"), _c("2", "add", a=1, b=2)]
    theirs, ours = _both(calls, "async")
    assert ours == theirs and ours[0]["messages"][2][1]["content"] == "abc"
    theirs, ours = _both(calls, "sync", handle_tool_errors=True)
    assert "does not support sync invocation" in theirs[0]["messages"][2][1]["content"]
    assert ours[0]["messages"][2:] == _both(calls, "async")[1][0]["messages"][2:]


# -- input forms ---------------------------------------------------------------------


class HistoryState(TypedDict):
    history: Annotated[list[AnyMessage], add_messages]


class ModelState(BaseModel):
    messages: Annotated[list[AnyMessage], add_messages]
    foo: str = "model"


def _calls() -> list[dict[str, Any]]:
    return [_c("1", "add", a=1, b=2), _c("2", "foo_field", q="q"), _c("3", "aupper", text="z")]


def _strip(messages: list[Any]) -> list[Any]:
    return [_norm(m) for m in messages]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_custom_messages_key(mode: str) -> None:
    calls = [_c("1", "add", a=1, b=2), _c("2", "aupper", text="z")]
    outs = []
    for cls in (ToolNode, ToolScheduler):
        g = StateGraph(HistoryState)
        g.add_node("tools", cls([add, aupper], messages_key="history"))
        g.add_edge(START, "tools")
        store = InMemoryStore()
        inp = {"history": [AIMessage("", id="ai", tool_calls=calls)]}
        outs.append(_outcome(g.compile(), inp, mode, store))
    assert outs[0] == outs[1] and len(outs[1][0]["history"]) == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_list_state(mode: str) -> None:
    calls = [_c("1", "add", a=1, b=2), _c("2", "switch_context", domain="x")]
    outs = []
    for cls in (ToolNode, ToolScheduler):
        g = StateGraph(Annotated[list[AnyMessage], add_messages])
        g.add_node("tools", cls([add, switch_context], handle_tool_errors=True))
        g.add_edge(START, "tools")
        outs.append(
            _outcome(g.compile(), [AIMessage("", id="ai", tool_calls=calls)], mode, InMemoryStore())
        )
    # A Command with a dict update is refused for a list input, by both, the same way.
    assert outs[0] == outs[1]
    assert "only when using dict" in outs[1][0][-1][1]["content"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_pydantic_state(mode: str) -> None:
    outs = []
    for cls in (ToolNode, ToolScheduler):
        g = StateGraph(ModelState)
        g.add_node("tools", cls([add, foo_field, aupper]))
        g.add_edge(START, "tools")
        inp = {"messages": [AIMessage("", id="ai", tool_calls=_calls())]}
        outs.append(_outcome(g.compile(), inp, mode, InMemoryStore()))
    assert outs[0] == outs[1]
    assert [m[1]["content"] for m in outs[1][0]["messages"][1:]] == ["3", "q=model", "Z"]


@pytest.mark.parametrize("payload", ["tool_call_with_context", "tool_calls"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_send_payloads(payload: str, mode: str) -> None:
    """One `Send` per call, as `create_react_agent` (v2) and `create_agent` dispatch."""

    def fan_out(state: State) -> list[Send]:
        calls = state["messages"][-1].tool_calls
        if payload == "tool_calls":
            return [Send("tools", [c]) for c in calls]
        return [
            Send("tools", {"__type": "tool_call_with_context", "tool_call": c, "state": state})
            for c in calls
        ]

    outs = []
    for cls in (ToolNode, ToolScheduler):
        g = StateGraph(State)
        g.add_node("tools", cls([add, foo_field, aupper, switch_context]))
        g.add_conditional_edges(START, fan_out, ["tools"])
        calls = [*_calls(), _c("4", "switch_context", domain="d")]
        inp = {"messages": [AIMessage("", id="ai", tool_calls=calls)], "foo": "sent"}
        outs.append(_outcome(g.compile(), inp, mode, InMemoryStore()))
    assert outs[0] == outs[1]
    contents = sorted(m[1]["content"] for m in outs[1][0]["messages"][1:])
    assert contents == ["3", "Z", "q=sent", "switched to d"]


def test_a_tool_schema_never_shows_injected_arguments() -> None:
    sched = ToolScheduler(TOOLS)
    for name, hidden in [
        ("who", "call_id"),
        ("whole_state", "state"),
        ("foo_field", "foo"),
        ("remember", "store"),
        ("with_runtime", "runtime"),
    ]:
        schema = sched.tools_by_name[name].tool_call_schema.model_json_schema()
        assert hidden not in schema.get("properties", {})
    assert isinstance(sched, ToolNode) and sched.tools_by_name["add"] is add


# -- streams and interrupts from inside tools ------------------------------------------


@tool
def chatty(n: int, runtime: ToolRuntime) -> int:
    """Streams progress three ways: the tools channel, the runtime writer, the config."""
    runtime.emit_output_delta(f"half of {n}")
    runtime.stream_writer({"progress": n})
    get_stream_writer()({"again": n})
    return n


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_what_tools_stream_reaches_the_graphs_stream(mode: str) -> None:
    calls = [_c("1", "chatty", n=1), _c("2", "chatty", n=2)]
    seen = []
    for cls in (ToolNode, ToolScheduler):
        g = StateGraph(State)
        g.add_node("tools", cls([chatty]))
        g.add_edge(START, "tools")
        app = g.compile()
        inp = {"messages": [AIMessage("", id="ai", tool_calls=calls)]}
        kw = {"stream_mode": ["tools", "custom"]}
        if mode == "sync":
            chunks = list(app.stream(inp, **kw))
        else:

            async def collect(app: Any, inp: Any, kw: dict[str, Any]) -> list[Any]:
                return [c async for c in app.astream(inp, **kw)]

            chunks = asyncio.run(collect(app, inp, kw))
        events = []
        for kind, data in chunks:
            if kind == "custom" and "scheduler" in data:
                continue  # the scheduler's own progress events (ToolNode has none)
            if kind == "tools":
                data = (data["event"], data["tool_call_id"], data.get("delta"))
            events.append((kind, repr(data)))
        seen.append(sorted(events))
    assert seen[0] == seen[1] and len(seen[1]) == 2 * 5  # 3 tools events, 2 custom


@tool
def confirm(action: str) -> str:
    """Ask a human before acting."""
    answer = interrupt({"confirm": action})
    return f"{action}: {answer}"


@pytest.mark.parametrize("mode", ["durable", "adurable"])
def test_interrupt_inside_a_tool_pauses_and_resumes_like_toolnode(mode: str) -> None:
    ran: list[str] = []

    @tool
    def count(n: int) -> int:
        """Count a run."""
        ran.append(str(n))
        return n

    calls = [_c("1", "confirm", action="deploy"), _c("2", "count", n=7)]
    results = []
    for cls in (ToolNode, ToolScheduler):
        ran.clear()
        g = StateGraph(State)
        g.add_node("tools", cls([confirm, count]))
        g.add_edge(START, "tools")
        app = g.compile(checkpointer=InMemorySaver())
        cfg = {"configurable": {"thread_id": "t"}}
        inp = {"messages": [AIMessage("", id="ai", tool_calls=calls)]}
        if mode == "durable":
            first = app.invoke(inp, cfg)
            last = app.invoke(Command(resume="yes"), cfg)
        else:
            first = asyncio.run(app.ainvoke(inp, cfg))
            last = asyncio.run(app.ainvoke(Command(resume="yes"), cfg))
        asked = sorted(repr(i.value) for i in first["__interrupt__"])
        results.append((asked, [_norm(m) for m in last["messages"]], len(ran)))
    (asked, msgs, _), (ours_asked, ours_msgs, ours_runs) = results
    assert set(ours_asked) == set(asked) == {"{'confirm': 'deploy'}"}
    assert ours_msgs == msgs and msgs[1][1]["content"] == "deploy: yes"
    # ToolNode may run `count` again on resume; the scheduler returns its saved result.
    assert ours_runs == 1


def test_a_model_called_inside_a_tool_streams_its_tokens_to_the_graph() -> None:
    @tool
    def ask(q: str) -> str:
        """Ask a model."""
        model = GenericFakeChatModel(messages=iter([AIMessage("hello world")]))
        return model.invoke(q).content

    calls = [_c("1", "ask", q="hi")]
    tokens = []
    for cls in (ToolNode, ToolScheduler):
        g = StateGraph(State)
        g.add_node("tools", cls([ask]))
        g.add_edge(START, "tools")
        inp = {"messages": [AIMessage("", id="ai", tool_calls=calls)]}
        tokens.append([m.content for m, _ in g.compile().stream(inp, stream_mode="messages")])
    assert tokens[0] == tokens[1] and tokens[1][:3] == ["hello", " ", "world"]
