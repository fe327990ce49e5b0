"""The summarize node: trigger, incremental and hierarchical compaction, prompts,
`max_tokens`, hand-off, tool-safe chunking, errors, and undo through the versions API.

Chat models are langchain-core fakes whose inputs are recorded with a callback
handler; `_Recording` wraps a real summarizer to see what each call was asked.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatResult
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from llmctx.graphs import build_context_graph
from llmctx.nodes import window_messages
from llmctx.nodes._deps import NodeDeps
from llmctx.nodes.budget import assemble_window
from llmctx.nodes.pipeline import compress_frame
from llmctx.nodes.state import Frame
from llmctx.nodes.summarize import needs_summary, summarize_window
from llmctx.runtime import Settings, open_saver
from llmctx.runtime import versions as V
from llmctx.runtime.errors import SummarizerError
from llmctx.runtime.summarizer import (
    ChatModelSummarizer,
    ExtractiveSummarizer,
    Summarizer,
    SummaryResult,
)
from llmctx.templates import Template
from llmctx.templates.schema import PinPolicy, SummarizationPolicy
from tests._fakes import CallRecorder
from tests._strategies import (
    OFFLINE,
    base_deps,
    call_ids,
    check_frame,
    check_transition,
    forget_other_threads,
    make_deps,
)

BASE = base_deps()
COUNTER = BASE.counter


@pytest.fixture(autouse=True)
def _fresh_link_index() -> None:
    forget_other_threads()  # each test its own thread (see KNOWN_BUGS "link-index-shared")


def _template(base: Template | None = None, **summarization: Any) -> Template:
    base = base or BASE.template
    policy = base.summarization.model_copy(update=summarization)
    return base.model_copy(
        update={
            "name": "summ-test",
            "system_prompt": "Be brief.",
            "summarization": SummarizationPolicy(**policy.model_dump()),
        }
    )


def _deps(budget: int, summarizer: Summarizer | None = None, **summarization: Any) -> NodeDeps:
    deps = make_deps(BASE, _template(**summarization), budget)
    return deps if summarizer is None else _using(deps, summarizer)


def _using(deps: NodeDeps, summarizer: Summarizer) -> NodeDeps:
    from dataclasses import replace

    return replace(deps, summarizer=summarizer)


def _fake(reply: str, recorder: CallRecorder) -> ChatModelSummarizer:
    model = GenericFakeChatModel(messages=itertools.repeat(reply), callbacks=[recorder])
    return ChatModelSummarizer(model, COUNTER)


class _Recording(Summarizer):
    """A real summarizer, with every request and result kept for the test to read."""

    def __init__(self, inner: Summarizer) -> None:
        self.inner = inner
        self.calls: list[tuple[list[str], str, int, SummaryResult]] = []

    def summarize(self, texts: Sequence[str], *, prompt: str, max_tokens: int) -> SummaryResult:
        result = self.inner.summarize(texts, prompt=prompt, max_tokens=max_tokens)
        self.calls.append((list(texts), prompt, max_tokens, result))
        return result


def _turns(n: int, start: int = 0) -> list[BaseMessage]:
    """`n` turns (user, assistant), each message with a unique marker `msg-NNNNN`."""
    out: list[BaseMessage] = []
    for i in range(start, start + n):
        out.append(
            HumanMessage(
                f"msg-{2 * i:05d} Caroline asks about the budget of project {i % 7}. "
                "She wants the numbers before Friday.",
                id=f"h{i}",
            )
        )
        out.append(
            AIMessage(
                f"msg-{2 * i + 1:05d} The deploy of v2.{i} went fine; project {i % 7} "
                "is on track and the budget holds.",
                id=f"a{i}",
            )
        )
    return out


def _tokens(messages: Sequence[BaseMessage]) -> int:
    return sum(COUNTER.count_message(m) for m in messages)


# -- trigger --------------------------------------------------------------------------------


def test_the_token_trigger_fires_exactly_above_the_threshold() -> None:
    history = [*_turns(6), HumanMessage("and now?", id="q")]
    total = _tokens(history)
    at = _deps(4_000, trigger_tokens=total, target_tokens=total // 2)
    frame = assemble_window(history, at)
    assert frame["history_tokens"] == total
    assert not needs_summary(frame, at)  # exactly at the threshold: not over it
    over = _deps(4_000, trigger_tokens=total - 1, target_tokens=total // 2)
    assert needs_summary(assemble_window(history, over), over)
    # What is already summarized does not count again.
    covered = {**frame, "summarized": {"count": 2, "last_id": "a0", "tokens": 5}}
    assert not needs_summary(covered, over)
    assert needs_summary({**frame, "summarized": {"count": 0, "tokens": 0}}, over)

    assert compress_frame(history, at)["last_op"]["op"] != "summarize"
    assert compress_frame(history, over)["last_op"]["op"] == "summarize"


def test_the_fraction_trigger_fires_exactly_above_its_share_of_the_budget() -> None:
    history = [*_turns(6), HumanMessage("and now?", id="q")]
    total = _tokens(history)
    policy = {"trigger_tokens": 10 * total, "target_tokens": total, "trigger_fraction": 0.5}
    at = _deps(2 * total, **policy)  # the trigger is floor(budget * 0.5) == total
    assert at.template.summarization.thresholds(at.budget)[0] == total
    assert not needs_summary(assemble_window(history, at), at)
    over = _deps(2 * total - 2, **policy)  # trigger == total - 1
    assert needs_summary(assemble_window(history, over), over)
    # The lower of the two limits wins.
    low = _deps(2 * total, trigger_tokens=total - 1, target_tokens=1, trigger_fraction=0.5)
    assert needs_summary(assemble_window(history, low), low)


def test_a_disabled_policy_never_fires() -> None:
    history = [*_turns(6), HumanMessage("and now?", id="q")]
    deps = _deps(4_000, enabled=False, trigger_tokens=2, target_tokens=1)
    assert not needs_summary(assemble_window(history, deps), deps)


# -- incremental, linear ---------------------------------------------------------------------

MARKER = re.compile(r"msg-\d{5}")


def test_a_long_replay_sends_each_message_once_and_grows_linearly() -> None:
    recorder = CallRecorder()
    summarizer = _fake("The user and the assistant talked about budgets and deploys.", recorder)
    deps = _deps(1_200, summarizer, trigger_tokens=700, target_tokens=350, chunk_size=20)
    history: list[BaseMessage] = []
    frame: Frame = {}
    sent_tokens = 0
    seen = 0
    compactions = 0
    for turn in range(300):
        history.extend(_turns(1, turn))
        previous = frame
        frame = compress_frame(history, deps, frame)
        compactions += frame["last_op"]["op"] == "summarize"
        for sent, params in recorder.calls[seen:]:
            sent_tokens += COUNTER.count_messages(sent)
            assert params["max_tokens"] > 0
        seen = len(recorder.calls)
        if turn % 50 == 49:
            check_frame(history, frame, deps, where=f"turn {turn}")
            check_transition(history, previous, frame, where=f"turn {turn}")
            # Linear: what the summarizer read is bounded by the conversation itself.
            assert sent_tokens <= 1.5 * frame["history_tokens"], (turn, sent_tokens)
    assert compactions >= 10

    markers = [m for sent, _ in recorder.calls for m in MARKER.findall(str(sent[-1].content))]
    assert len(markers) == len(set(markers)), "a message was sent to the summarizer twice"
    summarized = frame["summarized"]["count"]
    assert summarized >= 500
    # Every summarized message was read once, and nothing newer than the boundary.
    expected = {MARKER.search(str(m.content)).group(0) for m in history[:summarized]}  # type: ignore[union-attr]
    assert set(markers) == expected
    assert any(s.get("level", 0) >= 1 for s in frame["summaries"])  # merged on the way


# -- hierarchical merge -------------------------------------------------------------------------


def test_summaries_over_their_tier_are_merged_a_level_up() -> None:
    summarizer = _Recording(ExtractiveSummarizer(COUNTER))
    deps = _deps(600, summarizer, trigger_tokens=300, target_tokens=150, chunk_size=4)
    history: list[BaseMessage] = []
    frame: Frame = {}
    known: dict[str, dict[str, Any]] = {}
    merged_seen = False
    for turn in range(60):
        history.extend(_turns(1, turn))
        previous = frame
        frame = compress_frame(history, deps, frame)
        check_frame(history, frame, deps, where=f"turn {turn}")
        if previous:
            check_transition(history, previous, frame, where=f"turn {turn}")
        pos = {str(m.id): i for i, m in enumerate(history)}
        reasons = {p["id"]: p["reason"] for p in frame["pruned"]}
        for summary in frame["summaries"]:
            if summary.get("level", 0) >= 1 and summary["id"] not in known:
                merged_seen = True
                # Children from earlier frames are known; a child made and merged in
                # the same compaction never reached a frame.
                children = [known[c] for c in summary["covers"] if c in known]
                assert len(summary["covers"]) >= 2 and children
                assert summary["level"] > max(c.get("level", 0) for c in children)
                if summary["covers"][0] in known:
                    assert summary["span"]["first"] == children[0]["span"]["first"]
                lo, hi = pos[summary["span"]["first"]], pos[summary["span"]["last"]]
                for child in children:
                    assert lo <= pos[child["span"]["first"]] <= pos[child["span"]["last"]] <= hi
                    if child["id"] in {p["id"] for p in previous.get("summaries", [])}:
                        assert "re-compressed" in reasons.get(child["id"], "")
            known[summary["id"]] = summary
        room = deps.template.budget.tiers.allocate(deps.budget)["supporting"]
        assert sum(s["tokens"] for s in frame["summaries"]) <= room
    assert merged_seen


def test_turns_a_compaction_pushes_out_are_handed_off() -> None:
    deps = _deps(600, trigger_tokens=300, target_tokens=150, chunk_size=4)
    history: list[BaseMessage] = []
    frames: list[Frame] = []
    for turn in range(14):
        history.extend(_turns(1, turn))
        frames.append(compress_frame(history, deps, frames[-1] if frames else None))
    before, after = frames[-2], frames[-1]
    assert after["last_op"]["op"] == "summarize"
    shown = {it["id"] for it in after["window"]}
    left = [it["id"] for it in before["window"] if it["id"] not in shown]
    assert {"h4", "a4"} <= set(left)
    assert {"h4", "a4"} <= {p["id"] for p in after["pruned"]}  # reported...
    assert {"h4", "a4"} <= {h["id"] for h in after["handoff"]}  # ...but not handed off


def test_a_merged_span_counts_every_message_between_first_and_last() -> None:
    history: list[BaseMessage] = [
        HumanMessage(f"note {i} about the budget of the project and its timeline", id=f"h{i}")
        for i in range(6)
    ]
    history[1] = HumanMessage("Caroline says hello", id="h1")  # pinned: never summarized
    template = _template(trigger_tokens=20, target_tokens=1, chunk_size=1).model_copy(
        update={"pinned": PinPolicy(patterns=("Caroline",))}
    )
    deps = make_deps(BASE, template, 200)
    frame = compress_frame(history, deps)
    (merged,) = [s for s in frame["summaries"] if s.get("level", 0) >= 1]
    pos = {m.id: i for i, m in enumerate(history)}
    span = merged["span"]
    assert (span["first"], span["last"]) == ("h0", "h4")
    assert span["count"] == pos[span["last"]] - pos[span["first"]] + 1


# -- prompts and max_tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["technical", "business"])
def test_the_templates_domain_prompt_reaches_the_model(name: str) -> None:
    from llmctx.templates import load_template

    domain = load_template(name)
    recorder = CallRecorder()
    template = _template(domain, trigger_tokens=300, target_tokens=100, chunk_size=6)
    deps = _using(make_deps(BASE, template, 1_000), _fake("A short summary.", recorder))
    history = [*_turns(12), HumanMessage("and now?", id="q")]
    frame = compress_frame(history, deps)
    assert frame["last_op"]["op"] == "summarize" and recorder.calls
    for sent, _ in recorder.calls:
        assert sent[0] == SystemMessage(domain.summarization.prompt)
        assert isinstance(sent[1], HumanMessage)
    other = "business" if name == "technical" else "technical"
    assert domain.summarization.prompt != load_template(other).summarization.prompt


def test_max_tokens_is_enforced_on_a_model_that_says_far_too_much() -> None:
    recorder = CallRecorder()
    chatty = _Recording(_fake("budget " * 5_000, recorder))
    deps = _deps(800, chatty, trigger_tokens=300, target_tokens=100, chunk_size=4)
    history = [*_turns(30), HumanMessage("and now?", id="q")]
    frame = compress_frame(history, deps)
    check_frame(history, frame, deps, where="chatty")
    assert chatty.calls and len(chatty.calls) == len(recorder.calls)
    for (_, _, cap, result), (_, params) in zip(chatty.calls, recorder.calls, strict=True):
        assert params["max_tokens"] == cap  # bound on the call
        assert result.tokens == COUNTER.count_text(result.text) <= cap  # and enforced
        assert result.text.endswith(" …")
    room = deps.template.budget.tiers.allocate(deps.budget)["supporting"]
    assert sum(s["tokens"] for s in frame["summaries"]) <= room


# -- hand-off and chunking ---------------------------------------------------------------------


def test_summarized_ids_are_handed_off() -> None:
    deps = _deps(800, trigger_tokens=300, target_tokens=100, chunk_size=4)
    history = [*_turns(20), HumanMessage("and now?", id="q")]
    frame = compress_frame(history, deps)
    assert frame["last_op"]["op"] == "summarize"
    handoff = {h["id"]: h["reason"] for h in frame["handoff"]}
    # A summarized turn the cache tier still shows verbatim has not left the context yet.
    verbatim = {
        it["id"] for it in frame["window"] if it["kind"] == "message" and "content" not in it
    }
    level0 = [s for s in frame["summaries"] if s.get("level", 0) == 0]
    for summary in level0:
        for mid in summary["covers"]:
            assert mid in verbatim or handoff[mid] == f"summarized into {summary['id']}"
    covered = frame["summarized"]["count"]
    assert covered and all(str(m.id) in handoff for m in history[:covered] if m.id not in verbatim)
    assert any(str(m.id) in handoff for m in history[:covered])
    assert history == [*_turns(20), HumanMessage("and now?", id="q")]  # history untouched


def _tool_history(interleaved: bool, invalid: bool = False) -> list[BaseMessage]:
    """Turns with three parallel calls answered out of order; with `invalid`, the
    second call's arguments did not parse (an invalid tool call, answered by an error)."""
    out: list[BaseMessage] = []
    for i in range(12):
        out.append(HumanMessage(f"msg-{i:05d} look up item {i} for Caroline", id=f"h{i}"))
        calls = [{"name": "lookup", "args": {"i": i, "k": k}, "id": f"c{i}_{k}"} for k in range(3)]
        bad = [
            {"name": "lookup", "args": "{'i", "id": c["id"], "error": "not valid JSON"}
            for c in calls[1:2]
            if invalid
        ]
        valid = [c for c in calls if c["id"] not in {b["id"] for b in bad}]
        out.append(AIMessage("", tool_calls=valid, invalid_tool_calls=bad, id=f"a{i}"))
        results = [
            ToolMessage(f"item {i}.{k}: " + "data " * 20, tool_call_id=f"c{i}_{k}", id=f"t{i}_{k}")
            for k in (2, 0, 1)  # answered out of order
        ]
        if interleaved:
            out.extend([results[0], HumanMessage(f"still waiting {i}", id=f"w{i}"), *results[1:]])
        else:
            out.extend(results)
        out.append(AIMessage(f"item {i} is fine", id=f"r{i}"))
    out.append(HumanMessage("summary please", id="q"))
    return out


def _split_units(history: list[BaseMessage], lo: int, hi: int) -> list[str]:
    """Tool units with members both inside and outside `history[lo:hi + 1]`."""
    inside = {str(m.id) for m in history[lo : hi + 1]}
    calls = {cid: str(m.id) for m in history for cid in call_ids(m)}
    split = []
    for m in history:
        if isinstance(m, ToolMessage):
            call = calls[m.tool_call_id]
            if (call in inside) != (str(m.id) in inside):
                split.append(f"{call}/{m.id}")
    return split


@pytest.mark.parametrize("chunk_unit", ["messages", "tokens"])
def test_chunks_never_split_a_tool_unit(chunk_unit: str) -> None:
    history = _tool_history(interleaved=False)
    for chunk_size in (1, 2, 5, 40):
        deps = _deps(
            900, trigger_tokens=200, target_tokens=50, chunk_size=chunk_size, chunk_unit=chunk_unit
        )
        frame = compress_frame(history, deps)
        check_frame(history, frame, deps, where=f"chunk {chunk_size}")
        pos = {str(m.id): i for i, m in enumerate(history)}
        assert frame["summaries"]
        for summary in frame["summaries"]:
            lo, hi = pos[summary["span"]["first"]], pos[summary["span"]["last"]]
            assert not _split_units(history, lo, hi), (chunk_size, summary["span"])
        assert not _split_units(history, 0, frame["summarized"]["count"] - 1)


@pytest.mark.parametrize("invalid", [False, True])
def test_chunks_never_split_an_interleaved_tool_unit(invalid: bool) -> None:
    history = _tool_history(interleaved=True, invalid=invalid)
    deps = _deps(900, trigger_tokens=200, target_tokens=50, chunk_size=2)
    frame = compress_frame(history, deps)
    check_frame(history, frame, deps, where="interleaved")
    pos = {str(m.id): i for i, m in enumerate(history)}
    assert frame["summaries"]
    for summary in frame["summaries"]:
        lo, hi = pos[summary["span"]["first"]], pos[summary["span"]["last"]]
        assert not _split_units(history, lo, hi), summary["span"]


# -- errors --------------------------------------------------------------------------------------


class _DownModel(BaseChatModel):
    """A chat model whose provider is down."""

    @property
    def _llm_type(self) -> str:
        return "down"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise ConnectionError("connection refused by 127.0.0.1:9")


def test_a_summarizer_failure_surfaces_as_a_summarizer_error() -> None:
    deps = _deps(
        800, ChatModelSummarizer(_DownModel(), COUNTER), trigger_tokens=300, target_tokens=100
    )
    history = [*_turns(20), HumanMessage("and now?", id="q")]
    frame = assemble_window(history, deps)
    with pytest.raises(SummarizerError, match="'down' failed: ConnectionError"):
        summarize_window(history, deps, frame, deps.summarizer)
    with pytest.raises(SummarizerError):
        compress_frame(history, deps)

    graph = build_context_graph(
        template=deps.template,
        budget=800,
        settings=Settings.load(tokenizer=OFFLINE, workspace="/tmp/.llmctx-summ-tests"),
        summarizer=_DownModel(),
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "down"}}
    with pytest.raises(SummarizerError):
        graph.invoke({"messages": history}, config)


# -- undo ----------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "embedded"])
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseCheckpointSaver]:
    if request.param == "memory":
        yield InMemorySaver()
    else:
        with open_saver(tmp_path / ".llm") as embedded:
            yield embedded


def test_rolling_back_before_a_compaction_restores_that_window_exactly(
    saver: BaseCheckpointSaver, tmp_path: Path
) -> None:
    template = _template(trigger_tokens=300, target_tokens=150, chunk_size=4)
    graph = build_context_graph(
        checkpointer=saver,
        template=template,
        budget=500,
        settings=Settings.load(tokenizer=OFFLINE, workspace=tmp_path / ".llm"),
    )
    thread = "undo"
    config = {"configurable": {"thread_id": thread}}
    turns = _turns(30)
    compacted = None
    for i in range(30):
        graph.invoke({"messages": turns[2 * i : 2 * i + 2]}, config)
        if graph.get_state(config).values["context"]["last_op"]["op"] == "summarize":
            compacted = i
            break
    assert compacted is not None, "no compaction in 30 turns"
    versions = V.history(saver, thread)
    assert versions[0].op == "summarize"
    before = V.get(saver, thread, versions[1].checkpoint_id)
    assert not before.frame.get("summaries")
    graph.invoke({"messages": _turns(2, 30)}, config)  # and the thread goes on

    V.rollback(graph, thread, before.version.checkpoint_id)
    state = graph.get_state(config).values
    restored = state["context"]
    assert {k: v for k, v in restored.items() if k != "last_op"} == {
        k: v for k, v in before.frame.items() if k != "last_op"
    }
    assert window_messages(state) == before.messages
    assert len(state["messages"]) == 2 * (compacted + 1) + 4  # history was not rewritten
