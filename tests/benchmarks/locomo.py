"""Benchmark: LoCoMo evidence recall of long-term memory, and evidence@budget of the pipeline.

For each conversation of a LoCoMo-format file and each budget B (cl100k tokens):

1. **Replay** the whole conversation through the context pipeline
   (`build_context_graph`: retrieve → budget → prune → summarize; extractive summarizer
   by default) with an in-memory checkpointer, one version per turn, three ways:
   - *without memory* (no store): the PR-4 pipeline;
   - *with memory*, once per retrieval mode: a `ChromaStore` (temp dir) as the graph's
     store, so the deferred `remember` node writes every turn (and summary) to memory
     and `retrieve` brings memories into the supporting tier. Modes: `lexical` (no
     embedder) and `hybrid` (the local all-MiniLM-L6-v2, when installed).
2. **Questions.** Each QA question becomes the next user message after the whole
   conversation, evaluated independently from the end-of-conversation state (a
   checkpointer-less copy of the graph, which writes nothing to memory, is invoked on
   the final messages and frame plus the question). The window is scored:
   - *evidence recall* (evidence@B): the fraction of the item's evidence turns present
     **verbatim** in the window: a `message` item without a `content` stand-in, or a
     retrieved `memory` item whose `message_id` is that turn (a raw turn);
   - *evidence text recall*: the fraction whose full turn text appears anywhere in the
     context text (also credits an extractive summary that kept a whole turn);
   - *answer containment* (categories 1, 2, 4), two ways, on the context text (question
     excluded), SQuAD-normalized (lowercase, no punctuation or articles):
     - *strict*: the normalized answer string occurs in the context (on word bounds);
     - *token*: the fraction of the answer's content tokens (function words left out,
       digits split from letters) that occur in the context, averaged over items.
     Strict is bounded by the data: LoCoMo's gold answers are often paraphrases or
     resolved dates ("The week before 2 April 2023" for a turn saying "last week"),
     which no context states verbatim. Each is reported with its *ceiling*, its value
     with the whole conversation as the context (turn texts alone, and with each
     session's date before it), and the recency peer's value shows what a context of
     that size contains by chance.
   Memory systems also get a diagnosis: where each evidence turn ended up (window,
   memory, retrieved but cut by `k` / `min_score` / room, not retrieved), the room the
   supporting tier leaves for memories, and what the window spends on each tier. A
   *what-if* run of the same state with `k=25, min_score=0` shows what a retrieval
   limited only by the room would keep.
3. **Peer**: `trim_messages(strategy="last", start_on="human", include_system=True)`
   with the exact cl100k counter, on the same system prompt, history and question.

**Recall.** On the memories the `remember` node wrote during the replay at the
reference budget (4000 when run, else the first budget; turns *and* summaries, as in
the product), evidence recall@1/5/10/25 by category and overall, for each QA item
(query: the question), of: ours (`HybridRetriever` defaults, lexical and hybrid), BM25
alone (plain bm25s: Lucene BM25, English stopwords, no stemming, over the same memory
texts) and dense alone (cosine of the same embedder's vectors). A hit counts when its
`message_id` is an evidence turn (`<sample_id>:<dia_id>`).

QA items whose evidence maps to no turn of the conversation are skipped (counted).

Run: `python -m tests.benchmarks.locomo --data ../shared/data/locomo/locomo_dev.json
[--budgets 2000 4000 8000] [--embedder auto|none|sentence-transformers|hash]
[--template general] [--summarizer extractive|fake] [--torch-threads N] [--smoke]`.
`--embedder auto` (default) runs lexical and hybrid when the local model loads, else
lexical only (the JSON says why); `hash` is a seeded stand-in embedder (smoke runs).
Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
from langchain_core.messages import (
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    trim_messages,
)
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.base import BaseStore

from llmctx.graphs import build_context_graph, replay
from llmctx.nodes import ContextConfig, memory_namespace, window_messages
from llmctx.nodes.retrieve import is_follow_up
from llmctx.runtime import ChromaStore, HybridRetriever
from llmctx.runtime.embeddings import Embedder
from llmctx.runtime.settings import Settings
from llmctx.runtime.summarizer import ExtractiveSummarizer
from llmctx.runtime.tokens import TokenCounter
from llmctx.runtime.transcripts import QAItem, Transcript
from llmctx.templates import TemplateRegistry
from tests.benchmarks._locomo_common import (
    RecordingSummaryModel,
    VectorCache,
    bench_counter,
    bench_settings,
    contains_answer,
    dated_texts,
    hashing_embedder,
    load_conversations,
    local_embedder,
    message_texts,
    normalize_text,
    set_torch_threads,
    token_containment,
    token_set,
    write_synthetic_locomo,
)

ANSWER_CATEGORIES = (1, 2, 4)
CATEGORY_NAMES = {
    1: "multi-hop",
    2: "temporal",
    3: "open-domain",
    4: "single-hop",
    5: "adversarial",
}
SYSTEMS = ("llmctx", "recency")
RECALL_KS = (1, 5, 10, 25)
REFERENCE_BUDGET = 4_000
WIDE_K = 25
"""The what-if retrieval: this many memories, no score floor, limited only by the room."""
DIAG_K = 25
_FOCUS_CHARS = 400  # as the retrieve node: the focus is the last 400 characters
TARGETS = {"recall@10": 75.0, "evidence@4000": 80.0, "answer_containment": 85.0}
"""The issue's targets; answer containment is checked both ways (strict and token)."""


@dataclass
class Mode:
    """One way of retrieving: `lexical` (no embedder) or `hybrid` (an embedder)."""

    name: str
    embedder: Embedder | None
    store: BaseStore | None = None
    diag: HybridRetriever | None = None

    @property
    def context(self) -> ContextConfig | None:
        return ContextConfig(embedder=self.embedder) if self.embedder is not None else None


class _Tally:
    """Per-item scores of one system at one budget, aggregated by category."""

    def __init__(self) -> None:
        self.recall: dict[int, list[float]] = defaultdict(list)
        self.text_recall: dict[int, list[float]] = defaultdict(list)
        self.answer: dict[int, list[float]] = defaultdict(list)
        self.answer_tokens: dict[int, list[float]] = defaultdict(list)
        self.containable: list[float] = []
        self.window_tokens: list[int] = []
        self.mix: Counter[str] = Counter()
        self.tiers: Counter[str] = Counter()
        self.seconds = 0.0
        self.replay_seconds = 0.0

    def add(
        self,
        category: int,
        recall: float,
        text_recall: float,
        answer: bool | None,
        containable: bool = False,
        answer_tokens: float | None = None,
    ) -> None:
        self.recall[category].append(recall)
        self.text_recall[category].append(text_recall)
        if answer_tokens is not None:
            self.answer_tokens[category].append(answer_tokens)
        if answer is not None:
            self.answer[category].append(float(answer))
            if containable:
                self.containable.append(float(answer))

    def report(self) -> dict[str, Any]:
        every = [v for vs in self.recall.values() for v in vs]
        every_text = [v for vs in self.text_recall.values() for v in vs]
        answers = [v for vs in self.answer.values() for v in vs]
        answer_tokens = [v for vs in self.answer_tokens.values() for v in vs]
        n = len(self.window_tokens)
        return {
            "evidence_recall": _pct(every),
            "evidence_text_recall": _pct(every_text),
            "answer_containment": _pct(answers),
            "answer_token_containment": _pct(answer_tokens),
            # Among the items whose answer string occurs somewhere in the conversation.
            "answer_containment_of_containable": _pct(self.containable),
            "by_category": {
                str(c): {
                    "name": CATEGORY_NAMES.get(c, "?"),
                    "items": len(self.recall[c]),
                    "evidence_recall": _pct(self.recall[c]),
                    "evidence_text_recall": _pct(self.text_recall[c]),
                    **(
                        {
                            "answer_containment": _pct(self.answer[c]),
                            "answer_token_containment": _pct(self.answer_tokens[c]),
                        }
                        if c in ANSWER_CATEGORIES
                        else {}
                    ),
                }
                for c in sorted(self.recall)
            },
            "max_window_tokens": max(self.window_tokens, default=0),
            "mean_window_mix": {k: round(v / n, 1) for k, v in sorted(self.mix.items())}
            if n
            else {},
            "mean_tier_tokens": {k: round(v / n, 1) for k, v in sorted(self.tiers.items())}
            if n and self.tiers
            else {},
            "mean_window_tokens": round(statistics.fmean(self.window_tokens), 1) if n else 0,
            "question_seconds": round(self.seconds, 2),
            "replay_seconds": round(self.replay_seconds, 2),
        }


@dataclass
class _Diag:
    """Where the evidence turns of a memory system's windows came from, or were lost."""

    k: int
    min_score: float
    fate: Counter[str] = field(default_factory=Counter)
    room: list[int] = field(default_factory=list)
    supporting_available: list[int] = field(default_factory=list)
    summary_tokens: list[int] = field(default_factory=list)
    memory_tokens: list[int] = field(default_factory=list)
    memory_items: list[int] = field(default_factory=list)
    memory_evidence_items: list[int] = field(default_factory=list)
    focus_recall: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    simulated: list[float] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        total = sum(self.fate.values())

        def mean(xs: list[int]) -> float:
            return round(statistics.fmean(xs), 1) if xs else 0.0

        return {
            "retrieval_k": self.k,
            "retrieval_min_score": self.min_score,
            "evidence_turns": total,
            "evidence_fate": dict(sorted(self.fate.items())),
            "evidence_fate_pct": {
                k: round(100.0 * v / total, 2) for k, v in sorted(self.fate.items())
            }
            if total
            else {},
            "mean_memory_room_tokens": mean(self.room),
            "mean_supporting_available_tokens": mean(self.supporting_available),
            "mean_summary_tokens": mean(self.summary_tokens),
            "mean_memory_tokens": mean(self.memory_tokens),
            "mean_memory_items": mean(self.memory_items),
            "mean_memory_items_that_are_evidence": mean(self.memory_evidence_items),
            # Evidence recall of the diagnostic search (window turns excluded, as the node
            # does) with the node's query (the question, plus the two turns before it as
            # focus for a follow-up), with that focus always, and with the question alone.
            "search_recall_pct": {k: _pct(v) for k, v in sorted(self.focus_recall.items())},
            # Simulated evidence@B: the k=25 window's verbatim turns plus question-only hits
            # (no focus) filling the memory room in rank order (an estimate, not a run).
            "simulated_evidence_recall_question_only_fill_room": _pct(self.simulated),
        }


def _pct(values: Sequence[float]) -> float | None:
    return round(100.0 * statistics.fmean(values), 2) if values else None


def _verbatim_ids(frame: dict[str, Any], evidence: dict[str, BaseMessage]) -> set[str]:
    """Evidence ids the window shows verbatim: the message itself, or its raw-turn memory."""
    present: set[str] = set()
    for item in frame.get("window", []):
        if item["kind"] == "message" and item.get("content") is None:
            present.add(item["id"])
        elif item["kind"] == "memory" and item.get("message_id"):
            present.add(str(item["message_id"]))
    return present & set(evidence)


def _window_mix(frame: dict[str, Any], position: dict[str, int]) -> Counter[str]:
    """Tokens of the window by kind; verbatim turns that a summary also covers apart."""
    spans = []
    for summary in frame.get("summaries", []):
        span = summary.get("span") or {}
        first, last = position.get(span.get("first", "")), position.get(span.get("last", ""))
        if first is not None and last is not None:
            spans.append((first, last))
    mix: Counter[str] = Counter()
    for item in frame.get("window", []):
        kind = item["kind"]
        if kind == "message" and item.get("content") is not None:
            kind = f"message_{item.get('shown', 'replaced')}"
        elif kind == "message":
            at = position.get(item["id"], -1)
            if any(a <= at <= b for a, b in spans):
                kind = "message_also_summarized"
        mix[kind] += int(item["tokens"])
    return mix


def _tier_tokens(frame: dict[str, Any]) -> Counter[str]:
    return Counter({name: int(t.get("used", 0)) for name, t in frame.get("tiers", {}).items()})


def _text_present(context: str, evidence: dict[str, BaseMessage]) -> int:
    """How many evidence turns occur whole in the (normalized) context text."""
    return sum(1 for m in evidence.values() if normalize_text(m.text) in context)


def _score(
    tally: _Tally,
    item: QAItem,
    evidence: dict[str, BaseMessage],
    verbatim: set[str],
    prompt: Sequence[BaseMessage],
    question_id: str,
    full_history: str,
) -> None:
    context = message_texts([m for m in prompt if m.id != question_id])
    n = len(evidence)
    scored = item.category in ANSWER_CATEGORIES
    answer = contains_answer(context, item.answer) if scored else None
    tally.add(
        item.category,
        len(verbatim) / n,
        _text_present(context, evidence) / n,
        answer,
        contains_answer(full_history, item.answer),
        token_containment(token_set(context), item.answer) if scored else None,
    )


def _score_window(
    tally: _Tally,
    asked: tuple[dict[str, Any], list[BaseMessage], float],
    *,
    item: QAItem,
    evidence: dict[str, BaseMessage],
    question_id: str,
    full_history: str,
    position: dict[str, int],
    budget: int,
    out: Counter[str] | dict[str, Any],
    counter: TokenCounter | None = None,
) -> None:
    """Score one question's window (`_ask`'s frame, prompt and seconds) for `tally`:
    its size, mix and tiers, budget overruns, count mismatches (with `counter`), then
    evidence and answer containment."""
    frame, prompt, seconds = asked
    tally.seconds += seconds
    window_tokens = int(frame["window_tokens"])
    tally.window_tokens.append(window_tokens)
    tally.mix.update(_window_mix(frame, position))
    tally.tiers.update(_tier_tokens(frame))
    if window_tokens > budget:
        out["question_over_budget"] += 1
    if counter is not None and counter.count_messages(prompt) != window_tokens:
        out["count_mismatches"] += 1
    verbatim = _verbatim_ids(frame, evidence)
    _score(tally, item, evidence, verbatim, prompt, question_id, full_history)


def _summarizer(kind: str, counter: TokenCounter) -> Any:
    if kind == "extractive":
        return ExtractiveSummarizer(counter)
    if kind == "fake":
        return RecordingSummaryModel()
    raise SystemExit(f"unknown --summarizer {kind!r}; use extractive or fake")


def _ask(
    graph: Any,
    messages: list[BaseMessage],
    frame: dict[str, Any],
    context: ContextConfig | None,
) -> tuple[dict[str, Any], list[BaseMessage], float]:
    """The frame and prompt for the question (the last message), and the seconds it took."""
    start = time.perf_counter()
    out = graph.invoke({"messages": messages, "context": frame}, context=context)["context"]
    prompt = window_messages({"messages": messages, "context": out})
    return out, prompt, time.perf_counter() - start


def run_conversation(
    transcript: Transcript,
    budget: int,
    *,
    template: Any,
    settings: Settings,
    counter: TokenCounter,
    summarizer_kind: str,
    tallies: dict[str, _Tally],
) -> dict[str, Any]:
    """Replay one conversation at one budget without memory, then score every question
    for the pipeline and the recency peer."""
    summarizer = _summarizer(summarizer_kind, counter)
    common = {"template": template, "budget": budget, "settings": settings}
    graph = build_context_graph(**common, summarizer=summarizer, checkpointer=InMemorySaver())
    asker = build_context_graph(**common, summarizer=summarizer)
    thread = f"{transcript.name}@{budget}"
    started = time.perf_counter()
    report = replay(transcript, graph, thread_id=thread)
    state = graph.get_state({"configurable": {"thread_id": thread}}).values
    replay_s = time.perf_counter() - started
    history: list[BaseMessage] = list(state["messages"])
    final_frame = state["context"]
    by_id = {str(m.id): m for m in history}
    position = {mid: i for i, mid in enumerate(by_id)}
    full = message_texts(history)
    system = SystemMessage(content=template.system_prompt.strip(), id="llmctx:system")

    ours, peer = tallies["llmctx"], tallies["recency"]
    ours.replay_seconds += replay_s
    out = {
        "name": transcript.name,
        "system": "llmctx",
        "budget": budget,
        "messages": len(history),
        "replay_s": round(replay_s, 2),
        "replay_max_window_tokens": report.max_window_tokens,
        "replay_over_budget_turns": sum(1 for t in report.turns if t.window_tokens > budget),
        "summaries": len(final_frame.get("summaries", [])),
        "questions": 0,
        "skipped": 0,
        "question_over_budget": 0,
        "count_mismatches": 0,
    }
    for index, item in enumerate(transcript.qa):
        evidence = {mid: by_id[mid] for mid in transcript.evidence_ids(item) if mid in by_id}
        if not evidence:
            out["skipped"] += 1
            continue
        out["questions"] += 1
        question = HumanMessage(content=item.question, id=f"{transcript.name}:qa{index}")
        messages = [*history, question]

        asked = _ask(asker, messages, final_frame, None)
        _score_window(
            ours,
            asked,
            item=item,
            evidence=evidence,
            question_id=str(question.id),
            full_history=full,
            position=position,
            budget=budget,
            out=out,
            counter=counter,
        )

        start = time.perf_counter()
        trimmed = trim_messages(
            [system, *messages],
            max_tokens=budget,
            strategy="last",
            token_counter=counter.count_messages,
            start_on="human",
            include_system=True,
        )
        peer.seconds += time.perf_counter() - start
        peer.window_tokens.append(counter.count_messages(trimmed))
        kept = {str(m.id) for m in trimmed} & set(evidence)
        _score(peer, item, evidence, kept, trimmed, str(question.id), full)
    if isinstance(summarizer, RecordingSummaryModel):
        out["summarizer_calls"] = len(summarizer.calls)
    return out


def _focus(messages: Sequence[BaseMessage]) -> str:
    """The retrieve node's focus for the last (user) message when it is a follow-up: the
    two turns before it."""
    before = [
        " ".join(m.text.split())
        for m in messages[-3:-1]
        if not isinstance(m, ToolMessage | SystemMessage)
    ]
    return " ".join(before)[-_FOCUS_CHARS:]


def _fate(
    mid: str,
    frame: dict[str, Any],
    ranks: dict[str, tuple[int, float]],
    shown_before: set[str],
    k: int,
    min_score: float,
) -> str:
    """Where one evidence turn ended up in (or why it is missing from) a memory window.

    `ranks` come from the diagnostic search (the retrieve node's query, focus and
    exclusions, `k=DIAG_K`, no score floor) on a fresh retriever over the same store.
    """
    for item in frame.get("window", []):
        if item["kind"] == "message" and item["id"] == mid and item.get("content") is None:
            return "window_verbatim"
        if item["kind"] == "memory" and item.get("message_id") == mid:
            return "memory"
    if any(it["kind"] == "message" and it["id"] == mid for it in frame.get("window", [])):
        return "window_placeholder"
    if any(m.get("message_id") == mid for m in frame.get("memories", [])):
        return "retrieved_no_room"
    hit = ranks.get(mid)
    if hit is None:
        if mid in shown_before:
            return "excluded_was_in_previous_window"
        return f"not_in_top_{DIAG_K}"
    rank, score = hit
    if rank <= k:
        # min_score, or a rank the product's index (built turn by turn) puts lower
        return "top_k_below_min_score" if score < min_score else "top_k_not_retrieved"
    return f"rank_{k + 1}_to_{DIAG_K}"


def run_memory_conversation(
    transcript: Transcript,
    budget: int,
    mode: Mode,
    *,
    template: Any,
    wide_template: Any,
    settings: Settings,
    counter: TokenCounter,
    summarizer_kind: str,
    tallies: dict[str, _Tally],
    diag: _Diag,
) -> dict[str, Any]:
    """Replay one conversation with memory (`mode`'s store and embedder), then score every
    question for the pipeline and for the what-if retrieval, and diagnose the misses."""
    assert mode.store is not None and mode.diag is not None
    summarizer = _summarizer(summarizer_kind, counter)
    user = f"{transcript.name}@{budget}"
    common = {
        "budget": budget,
        "settings": settings,
        "summarizer": summarizer,
        "store": mode.store,
        "user_id": user,
    }
    graph = build_context_graph(template=template, **common, checkpointer=InMemorySaver())
    asker = build_context_graph(template=template, **common, remember_turns=False)
    wide = build_context_graph(template=wide_template, **common, remember_turns=False)
    thread = f"{transcript.name}@{budget}:{mode.name}"
    started = time.perf_counter()
    report = replay(transcript, graph, thread_id=thread, context=mode.context)
    state = graph.get_state({"configurable": {"thread_id": thread}}).values
    replay_s = time.perf_counter() - started
    history: list[BaseMessage] = list(state["messages"])
    final_frame = state["context"]
    by_id = {str(m.id): m for m in history}
    position = {mid: i for i, mid in enumerate(by_id)}
    full = message_texts(history)
    namespace = memory_namespace(user, template.retrieval.namespaces[0])
    shown_before = {it["id"] for it in final_frame.get("window", []) if it["kind"] == "message"}

    name = f"memory_{mode.name}"
    ours, what_if = tallies[name], tallies[f"{name}_k{WIDE_K}"]
    ours.replay_seconds += replay_s
    out = {
        "name": transcript.name,
        "system": name,
        "budget": budget,
        "messages": len(history),
        "memories": len(_all_memories(mode.store, namespace)),
        "replay_s": round(replay_s, 2),
        "replay_max_window_tokens": report.max_window_tokens,
        "replay_over_budget_turns": sum(1 for t in report.turns if t.window_tokens > budget),
        "summaries": len(final_frame.get("summaries", [])),
        "questions": 0,
        "question_over_budget": 0,
        "count_mismatches": 0,
    }
    supporting_limit = template.budget.tiers.allocate(budget)["supporting"]
    for index, item in enumerate(transcript.qa):
        evidence = {mid: by_id[mid] for mid in transcript.evidence_ids(item) if mid in by_id}
        if not evidence:
            continue
        out["questions"] += 1
        question = HumanMessage(content=item.question, id=f"{transcript.name}:qa{index}")
        messages = [*history, question]
        qid = str(question.id)

        asked = _ask(asker, messages, final_frame, mode.context)
        frame = asked[0]
        _score_window(
            ours,
            asked,
            item=item,
            evidence=evidence,
            question_id=qid,
            full_history=full,
            position=position,
            budget=budget,
            out=out,
            counter=counter,
        )

        # Diagnosis: the same search as the retrieve node, deeper and without a floor.
        ranks: dict[str, tuple[int, float]] = {}
        plain_hits: list[Any] = []
        focus = _focus(messages) or None
        queries = (
            ("node_query", focus if is_follow_up(item.question) else None),
            ("with_focus", focus),
            ("question_only", None),
        )
        for label, focus in queries:
            hits = mode.diag.search(
                namespace, item.question, k=DIAG_K, focus=focus, exclude_ids=shown_before | {qid}
            )
            found = {h.message_id: (r, h.score) for r, h in enumerate(hits, 1) if h.message_id}
            if label == "node_query":
                ranks = found
            else:
                plain_hits = hits
            for k in (diag.k, 10, DIAG_K):
                got = sum(1 for mid in evidence if mid in found and found[mid][0] <= k)
                diag.focus_recall[f"{label}@{k}"].append(got / len(evidence))
        for mid in evidence:
            diag.fate[_fate(mid, frame, ranks, shown_before, diag.k, diag.min_score)] += 1
        window = frame.get("window", [])
        summary_tokens = sum(int(s["tokens"]) for s in window if s["kind"] == "summary")
        memories = [it for it in window if it["kind"] == "memory"]
        room = max(0, supporting_limit - summary_tokens)
        diag.room.append(room)
        diag.supporting_available.append(int(frame["tiers"]["supporting"]["available"]))
        diag.summary_tokens.append(summary_tokens)
        diag.memory_tokens.append(sum(int(m["tokens"]) for m in memories))
        diag.memory_items.append(len(memories))
        diag.memory_evidence_items.append(
            sum(1 for m in memories if m.get("message_id") in evidence)
        )

        asked = _ask(wide, messages, final_frame, mode.context)
        frame = asked[0]
        _score_window(
            what_if,
            asked,
            item=item,
            evidence=evidence,
            question_id=qid,
            full_history=full,
            position=position,
            budget=budget,
            out=out,
        )

        # Simulation: the what-if window's verbatim turns, plus the question-only hits
        # (no focus) that fit the memory room, in rank order.
        placed = {
            it["id"]
            for it in frame.get("window", [])
            if it["kind"] == "message" and it.get("content") is None
        }
        left = room
        for hit in plain_hits:
            text = _memory_text(hit.value, hit.text)
            tokens = counter.count_message(SystemMessage(content=text, id=f"m:{hit.key}"))
            if tokens <= left and hit.message_id:
                left -= tokens
                placed.add(hit.message_id)
        diag.simulated.append(len(placed & set(evidence)) / len(evidence))
    return out


def _memory_text(value: dict[str, Any], text: str) -> str:
    """A memory as the retrieve node renders it (`[kind from when] text`)."""
    when = value.get("when")
    kind = value.get("kind", "memory")
    return f"[{kind} from {when}] {text}" if when else f"[{kind}] {text}"


# -- recall ------------------------------------------------------------------------------


def _all_memories(store: BaseStore, namespace: tuple[str, ...]) -> list[Any]:
    items: list[Any] = []
    while True:
        page = store.search(namespace, limit=1000, offset=len(items))
        items.extend(page)
        if len(page) < 1000:
            return items


class _RecallTally:
    def __init__(self) -> None:
        self.hits: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.latency: list[float] = []

    def add(self, category: int, evidence: set[str], ranked: Sequence[str | None]) -> None:
        for k in RECALL_KS:
            found = evidence & {m for m in ranked[:k] if m is not None}
            self.hits[k][category].append(len(found) / len(evidence))

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f"@{k}": _pct([v for vs in self.hits[k].values() for v in vs]) for k in RECALL_KS
        }
        cats = sorted(self.hits[RECALL_KS[0]])
        out["by_category"] = {
            str(c): {
                "name": CATEGORY_NAMES.get(c, "?"),
                "items": len(self.hits[RECALL_KS[0]][c]),
                **{f"@{k}": _pct(self.hits[k][c]) for k in RECALL_KS},
            }
            for c in cats
        }
        if self.latency:
            ms = sorted(1000.0 * s for s in self.latency)
            out["search_ms_p50"] = round(statistics.median(ms), 2)
            out["search_ms_p95"] = round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 2)
        return out


def measure_recall(
    transcripts: Sequence[Transcript],
    store: BaseStore,
    user_of: dict[str, str],
    domain: str,
    embedder: Embedder | None,
) -> dict[str, Any]:
    """Evidence recall@k of ours and the peers over the memories in `store`."""
    kmax = max(RECALL_KS)
    lexical = HybridRetriever(store)
    hybrid = HybridRetriever(store, embedder=embedder) if embedder is not None else None
    tallies = {"ours_lexical": _RecallTally(), "bm25s": _RecallTally()}
    if hybrid is not None:
        tallies["ours_hybrid"] = _RecallTally()
        tallies["dense"] = _RecallTally()
    corpus = {"memories": 0, "turn_memories": 0, "summary_memories": 0, "items": 0}
    load_s = 0.0
    for t in transcripts:
        namespace = memory_namespace(user_of[t.name], domain)
        items = _all_memories(store, namespace)
        texts = [str(it.value.get("text", "")) for it in items]
        mids = [it.value.get("message_id") for it in items]
        corpus["memories"] += len(items)
        corpus["turn_memories"] += sum(1 for it in items if it.value.get("kind") == "turn")
        corpus["summary_memories"] += sum(1 for it in items if it.value.get("kind") == "summary")
        started = time.perf_counter()
        lexical.search(namespace, "warm up", k=1)  # index load, not a search
        if hybrid is not None:
            hybrid.search(namespace, "warm up", k=1)
        load_s += time.perf_counter() - started
        bm25 = bm25s.BM25()
        bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        matrix = None
        if embedder is not None:
            matrix = np.asarray(embedder.embed_documents(texts), dtype=np.float32)
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        for item in t.qa:
            evidence = set(t.evidence_ids(item))
            if not evidence:
                continue
            corpus["items"] += 1
            q = item.question
            for name, retriever in (("ours_lexical", lexical), ("ours_hybrid", hybrid)):
                if retriever is None:
                    continue
                began = time.perf_counter()
                hits = retriever.search(namespace, q, k=kmax)
                tallies[name].latency.append(time.perf_counter() - began)
                tallies[name].add(item.category, evidence, [h.message_id for h in hits])
            began = time.perf_counter()
            tokens = bm25s.tokenize([q], stopwords="en", show_progress=False, return_ids=False)
            scores = bm25.get_scores(tokens[0]) if tokens[0] else np.zeros(len(texts))
            order = [i for i in np.argsort(-scores, kind="stable")[:kmax] if scores[i] > 0]
            tallies["bm25s"].latency.append(time.perf_counter() - began)
            tallies["bm25s"].add(item.category, evidence, [mids[i] for i in order])
            if matrix is not None and embedder is not None:
                began = time.perf_counter()
                vector = np.asarray(embedder.embed_query(q), dtype=np.float32)
                sims = matrix @ (vector / max(float(np.linalg.norm(vector)), 1e-12))
                order = list(np.argsort(-sims, kind="stable")[:kmax])
                tallies["dense"].latency.append(time.perf_counter() - began)
                tallies["dense"].add(item.category, evidence, [mids[i] for i in order])
    return {
        "corpus": corpus,
        "index_load_s": round(load_s, 2),
        "systems": {name: tally.report() for name, tally in tallies.items()},
        "notes": {
            "ours_lexical": "HybridRetriever defaults, no embedder (BM25 + context + "
            "neighbors + recency/importance + MMR)",
            "ours_hybrid": "HybridRetriever defaults with the embedder (BM25 + dense, RRF, ...)",
            "bm25s": "plain bm25s: Lucene BM25 k1=1.5 b=0.75, English stopwords, no stemming",
            "dense": "cosine of the embedder's vectors alone",
            "query": "the question only (the pipeline adds the previous turns as focus); "
            "query vectors were already cached by the pipeline runs, so the latencies "
            "exclude query embedding (see the memory benchmark for that)",
        },
    }


# -- the run -----------------------------------------------------------------------------


def _wide_template(workspace: Path, base: Any) -> Any:
    """The base template with `k=WIDE_K, min_score=0` (a user template in `workspace`)."""
    folder = workspace / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{base.name}-wide"
    namespaces = ", ".join(base.retrieval.namespaces)
    (folder / f"{name}.yaml").write_text(
        f"name: {name}\nextends: {base.name}\n"
        f"retrieval: {{k: {WIDE_K}, min_score: 0.0, namespaces: [{namespaces}]}}\n",
        encoding="utf-8",
    )
    return TemplateRegistry(user_dir=folder).get(name)


def _modes(choice: str, smoke: bool) -> tuple[list[Mode], dict[str, Any], VectorCache | None]:
    """The retrieval modes to run, a description of the embedder, and its vector cache."""
    info: dict[str, Any] = {"requested": choice}
    if choice == "auto":
        choice = "hash" if smoke else "sentence-transformers"
        info["auto"] = True
    base: Embedder | None = None
    if choice == "none":
        info["note"] = "lexical only (--embedder none)"
    elif choice == "hash":
        base = hashing_embedder()
        info["note"] = "a seeded feature-hashing stand-in, not a model: hybrid numbers are not real"
    elif choice == "sentence-transformers":
        started = time.perf_counter()
        base, why = local_embedder()
        info["load_s"] = round(time.perf_counter() - started, 2)
        if base is None:
            if not info.get("auto"):
                raise SystemExit(f"--embedder sentence-transformers: {why}")
            info["unavailable"] = why
            info["note"] = "the local embedder is not installed: lexical only"
    modes = [Mode("lexical", None)]
    cache = None
    if base is not None:
        cache = VectorCache(base)
        modes.append(Mode("hybrid", cache.embedder))
        info["name"] = base.name
        info["dims"] = base.dims
    return modes, info, cache


def run(
    path: Path,
    budgets: Sequence[int],
    template_name: str,
    summarizer_kind: str,
    workspace: Path,
    modes: list[Mode],
    memory_budgets: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Every system at every budget (the memory systems at `memory_budgets`, default all),
    then recall on the memories written at the reference budget."""
    settings = bench_settings(workspace)
    counter = bench_counter()
    template = TemplateRegistry(user_dir=workspace / "templates").get(template_name)
    wide_template = _wide_template(workspace, template)
    policy = template.retrieval
    started = time.perf_counter()
    transcripts = load_conversations(path)
    for mode in modes:
        mode.store = ChromaStore(workspace / f"memory-{mode.name}")
        mode.diag = HybridRetriever(mode.store, embedder=mode.embedder)
    memory_budgets = list(memory_budgets or budgets)
    reference = REFERENCE_BUDGET if REFERENCE_BUDGET in memory_budgets else memory_budgets[0]
    results: dict[str, Any] = {}
    conversations: list[dict[str, Any]] = []
    memory_systems = [n for m in modes for n in (f"memory_{m.name}", f"memory_{m.name}_k{WIDE_K}")]
    for budget in budgets:
        systems = (*SYSTEMS, *memory_systems) if budget in memory_budgets else SYSTEMS
        tallies = {name: _Tally() for name in systems}
        diags = {
            m.name: _Diag(policy.k, policy.min_score) for m in modes if budget in memory_budgets
        }
        per: list[dict[str, Any]] = []
        for t in transcripts:
            per.append(
                run_conversation(
                    t,
                    budget,
                    template=template,
                    settings=settings,
                    counter=counter,
                    summarizer_kind=summarizer_kind,
                    tallies=tallies,
                )
            )
            for mode in modes if budget in memory_budgets else ():
                per.append(
                    run_memory_conversation(
                        t,
                        budget,
                        mode,
                        template=template,
                        wide_template=wide_template,
                        settings=settings,
                        counter=counter,
                        summarizer_kind=summarizer_kind,
                        tallies=tallies,
                        diag=diags[mode.name],
                    )
                )
        conversations.extend(per)
        reports = {name: tally.report() for name, tally in tallies.items()}
        ours, peer = reports["llmctx"], reports["recency"]
        plain = [p for p in per if p["system"] == "llmctx"]
        results[str(budget)] = {
            **reports,
            "evidence_recall_delta": _delta(ours["evidence_recall"], peer["evidence_recall"]),
            "answer_containment_delta": _delta(
                ours["answer_containment"], peer["answer_containment"]
            ),
            "memory_diagnosis": {name: d.report() for name, d in diags.items()},
            "replay_max_window_tokens": max(p["replay_max_window_tokens"] for p in per),
            "replay_over_budget_turns": sum(p["replay_over_budget_turns"] for p in per),
            "question_over_budget": sum(p["question_over_budget"] for p in per),
            "count_mismatches": sum(p["count_mismatches"] for p in per),
            "no_memory_replay_over_budget_turns": sum(p["replay_over_budget_turns"] for p in plain),
        }
        line = ", ".join(
            f"{name} {r['evidence_recall']}%/{r['answer_containment']}%/"
            f"{r['answer_token_containment']}%"
            for name, r in reports.items()
        )
        print(f"B={budget:>6} evidence/answers strict/token: {line}", file=sys.stderr)
    recall = None
    lexical = modes[0]
    hybrid = modes[1] if len(modes) > 1 else None
    if lexical.store is not None:
        recall = measure_recall(
            transcripts,
            lexical.store,
            {t.name: f"{t.name}@{reference}" for t in transcripts},
            policy.namespaces[0],
            hybrid.embedder if hybrid is not None else None,
        )
        recall["budget"] = reference
        recall["store"] = "the ChromaStore the remember node wrote during the lexical replay"
        line = ", ".join(f"{n} {r['@10']}%" for n, r in recall["systems"].items())
        print(f"recall@10 (B={reference} store): {line}", file=sys.stderr)
    for mode in modes:
        if mode.store is not None:
            mode.store.close()
    first = [c for c in conversations if c["budget"] == budgets[0] and c["system"] == "llmctx"]
    ceilings = {"text": _Tally(), "dated": _Tally()}
    for t in transcripts:
        fulls = {"text": message_texts(t.messages), "dated": dated_texts(t.messages)}
        by_id = {str(m.id): m for m in t.messages}
        for item in t.qa:
            evidence = {mid: by_id[mid] for mid in t.evidence_ids(item) if mid in by_id}
            if evidence and item.category in ANSWER_CATEGORIES:
                for name, full in fulls.items():
                    ceilings[name].add(
                        item.category,
                        1.0,
                        1.0,
                        contains_answer(full, item.answer),
                        answer_tokens=token_containment(token_set(full), item.answer),
                    )
    ceiling = ceilings["text"]
    answer_ceiling: dict[str, Any] = {
        "context": "the whole conversation: its turn texts ('text'), or with each "
        "session's date before it ('dated')"
    }
    for metric, key in (("strict", "answer_containment"), ("token", "answer_token_containment")):
        answer_ceiling[metric] = {
            name: {
                "all": tally.report()[key],
                **{str(c): v.get(key) for c, v in tally.report()["by_category"].items()},
            }
            for name, tally in ceilings.items()
        }
    return {
        "benchmark": "locomo",
        "data": str(path),
        "template": template.name,
        "retrieval": {"k": policy.k, "min_score": policy.min_score, "what_if_k": WIDE_K},
        "summarizer": summarizer_kind,
        "encoding": counter.encoding_name,
        "budgets": list(budgets),
        "memory_budgets": memory_budgets,
        "modes": [m.name for m in modes],
        "conversations": len(transcripts),
        "conversation_tokens": [counter.count_messages(t.messages) for t in transcripts],
        "qa_items": sum(len(t.qa) for t in transcripts),
        "evaluated_items": sum(c["questions"] for c in first),
        "skipped_no_evidence": sum(c["skipped"] for c in first),
        # The ceiling: answer containment with the whole conversation as the context.
        "answer_containment_full_history": {
            "all": ceiling.report()["answer_containment"],
            **{
                str(c): v.get("answer_containment")
                for c, v in ceiling.report()["by_category"].items()
            },
        },
        "answer_ceiling": answer_ceiling,
        "recall": recall,
        "results": results,
        "targets": _targets(recall, results),
        "per_conversation": conversations,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def _targets(recall: dict[str, Any] | None, results: dict[str, Any]) -> dict[str, Any]:
    """Each target, the value of every system that it applies to, and whether it is met."""

    def check(target: float, values: dict[str, float | None]) -> dict[str, Any]:
        return {
            "target": target,
            "values": values,
            "met": {k: v is not None and v >= target for k, v in values.items()},
        }

    out: dict[str, Any] = {}
    if recall is not None:
        values = {n: r["@10"] for n, r in recall["systems"].items()}
        out["recall@10"] = check(TARGETS["recall@10"], values)
    at = results.get(str(REFERENCE_BUDGET))
    if at is not None:
        systems = [k for k, v in at.items() if isinstance(v, dict) and "evidence_recall" in v]
        out["evidence@4000"] = check(
            TARGETS["evidence@4000"], {k: at[k]["evidence_recall"] for k in systems}
        )
        out["answer_containment@4000"] = check(
            TARGETS["answer_containment"], {k: at[k]["answer_containment"] for k in systems}
        )
        out["answer_token_containment@4000"] = check(
            TARGETS["answer_containment"],
            {k: at[k]["answer_token_containment"] for k in systems},
        )
    return out


def _delta(ours: float | None, peer: float | None) -> float | None:
    return None if ours is None or peer is None else round(ours - peer, 2)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a LoCoMo-format JSON file")
    parser.add_argument("--budgets", type=int, nargs="+", default=[2_000, 4_000, 8_000])
    parser.add_argument("--template", default="general")
    parser.add_argument("--summarizer", choices=["extractive", "fake"], default="extractive")
    parser.add_argument(
        "--embedder",
        choices=["auto", "none", "sentence-transformers", "hash"],
        default="auto",
        help="auto: lexical and hybrid (local MiniLM) when installed, else lexical only",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads for the local model"
    )
    parser.add_argument("--smoke", action="store_true", help="a seconds-long synthetic run")
    args = parser.parse_args(argv)
    threads = set_torch_threads(args.torch_threads) if args.embedder != "none" else None
    modes, embedder_info, cache = _modes(args.embedder, args.smoke)
    embedder_info["torch_threads"] = threads
    with tempfile.TemporaryDirectory(prefix="llmctx-locomo-") as tmp:
        workspace = Path(tmp) / ".llm"
        if args.smoke:
            data = write_synthetic_locomo(Path(tmp) / "synthetic_locomo.json")
            budgets, memory_budgets = [400, 800], [800]
        elif args.data is None:
            parser.error("--data PATH is required (or --smoke)")
        else:
            data, budgets, memory_budgets = args.data, args.budgets, None
        result = run(
            data, budgets, args.template, args.summarizer, workspace, modes, memory_budgets
        )
    if cache is not None:
        embedder_info["embedded_texts"] = cache.embedded
        embedder_info["embed_s"] = round(cache.seconds, 2)
    result["embedder"] = embedder_info
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if args.smoke:
        result["data"] = "synthetic"
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
