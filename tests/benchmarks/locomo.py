"""Benchmark: evidence@budget on LoCoMo, the context pipeline vs a recency window.

For each conversation of a LoCoMo-format file and each budget B (cl100k tokens):

1. **Replay** the whole conversation through the context pipeline
   (`build_context_graph`: budget → prune → summarize; extractive summarizer by
   default) with an in-memory checkpointer, one version per turn.
2. **Questions.** Each QA question becomes the next user message after the whole
   conversation, evaluated independently from the end-of-conversation state (a
   checkpointer-less copy of the graph is invoked on the final messages and frame plus
   the question; nothing is written back to the thread). The window is assembled and
   scored:
   - *evidence recall*: the fraction of the item's evidence turns present **verbatim**
     in the window (a `message` item without a `content` stand-in, or a retrieved
     memory holding the raw turn text), averaged over items;
   - *evidence text recall*: the fraction whose full turn text appears anywhere in the
     context text (also credits an extractive summary that kept a whole turn);
   - *answer containment* (categories 1, 2, 4): the normalized answer string occurs in
     the context text (question excluded).
3. **Peer**: `trim_messages(strategy="last", start_on="human", include_system=True)`
   with the exact cl100k counter, on the same system prompt, history and question.

QA items whose evidence maps to no turn of the conversation are skipped (counted).

Run: `python -m tests.benchmarks.locomo --data ../shared/data/locomo/locomo_dev.json
[--budgets 2000 4000 8000] [--template general] [--summarizer extractive|fake] [--smoke]`.
Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, trim_messages
from langgraph.checkpoint.memory import InMemorySaver

from llmctx.graphs import build_context_graph, replay
from llmctx.nodes import window_messages
from llmctx.runtime.settings import Settings
from llmctx.runtime.summarizer import ExtractiveSummarizer
from llmctx.runtime.tokens import TokenCounter
from llmctx.runtime.transcripts import QAItem, Transcript
from llmctx.templates import TemplateRegistry
from tests.benchmarks._locomo_common import (
    RecordingSummaryModel,
    bench_counter,
    bench_settings,
    contains_answer,
    load_conversations,
    message_texts,
    normalize_text,
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


class _Tally:
    """Per-item scores of one system at one budget, aggregated by category."""

    def __init__(self) -> None:
        self.recall: dict[int, list[float]] = defaultdict(list)
        self.text_recall: dict[int, list[float]] = defaultdict(list)
        self.answer: dict[int, list[float]] = defaultdict(list)
        self.window_tokens: list[int] = []
        self.mix: Counter[str] = Counter()
        self.seconds = 0.0
        self.replay_seconds = 0.0

    def add(self, category: int, recall: float, text_recall: float, answer: bool | None) -> None:
        self.recall[category].append(recall)
        self.text_recall[category].append(text_recall)
        if answer is not None:
            self.answer[category].append(float(answer))

    def report(self) -> dict[str, Any]:
        def mean(values: list[float]) -> float | None:
            return round(100.0 * statistics.fmean(values), 2) if values else None

        every = [v for vs in self.recall.values() for v in vs]
        every_text = [v for vs in self.text_recall.values() for v in vs]
        answers = [v for vs in self.answer.values() for v in vs]
        return {
            "evidence_recall": mean(every),
            "evidence_text_recall": mean(every_text),
            "answer_containment": mean(answers),
            "by_category": {
                str(c): {
                    "name": CATEGORY_NAMES.get(c, "?"),
                    "items": len(self.recall[c]),
                    "evidence_recall": mean(self.recall[c]),
                    "evidence_text_recall": mean(self.text_recall[c]),
                    **(
                        {"answer_containment": mean(self.answer[c])}
                        if c in ANSWER_CATEGORIES
                        else {}
                    ),
                }
                for c in sorted(self.recall)
            },
            "max_window_tokens": max(self.window_tokens, default=0),
            "mean_window_mix": {
                k: round(v / len(self.window_tokens), 1) for k, v in sorted(self.mix.items())
            }
            if self.window_tokens
            else {},
            "mean_window_tokens": round(statistics.fmean(self.window_tokens), 1)
            if self.window_tokens
            else 0,
            "question_seconds": round(self.seconds, 2),
            "replay_seconds": round(self.replay_seconds, 2),
        }


def _verbatim_ids(frame: dict[str, Any], evidence: dict[str, BaseMessage]) -> set[str]:
    """Evidence ids the window shows verbatim: as the message itself or a raw-turn memory."""
    present: set[str] = set()
    memories: list[str] = []
    for item in frame.get("window", []):
        if item["kind"] == "message" and item.get("content") is None:
            present.add(item["id"])
        elif item["kind"] == "memory":
            memories.append(item.get("content") or "")
    for mid, message in evidence.items():
        if mid in present:
            continue
        text = message.text.strip()
        if text and any(item["id"] == mid or text in m for m in memories):
            present.add(mid)
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
) -> None:
    context = message_texts([m for m in prompt if m.id != question_id])
    n = len(evidence)
    answer = contains_answer(context, item.answer) if item.category in ANSWER_CATEGORIES else None
    tally.add(item.category, len(verbatim) / n, _text_present(context, evidence) / n, answer)


def _summarizer(kind: str, counter: TokenCounter) -> Any:
    if kind == "extractive":
        return ExtractiveSummarizer(counter)
    if kind == "fake":
        return RecordingSummaryModel()
    raise SystemExit(f"unknown --summarizer {kind!r}; use extractive or fake")


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
    """Replay one conversation at one budget, then score every question for both systems."""
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
    system = SystemMessage(content=template.system_prompt.strip(), id="llmctx:system")

    ours, peer = tallies["llmctx"], tallies["recency"]
    ours.replay_seconds += replay_s
    out = {
        "name": transcript.name,
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

        start = time.perf_counter()
        frame = asker.invoke({"messages": messages, "context": final_frame})["context"]
        prompt = window_messages({"messages": messages, "context": frame})
        ours.seconds += time.perf_counter() - start
        window_tokens = int(frame["window_tokens"])
        ours.window_tokens.append(window_tokens)
        ours.mix.update(_window_mix(frame, position))
        if window_tokens > budget:
            out["question_over_budget"] += 1
        if counter.count_messages(prompt) != window_tokens:
            out["count_mismatches"] += 1
        _score(ours, item, evidence, _verbatim_ids(frame, evidence), prompt, str(question.id))

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
        _score(peer, item, evidence, kept, trimmed, str(question.id))
    if isinstance(summarizer, RecordingSummaryModel):
        out["summarizer_calls"] = len(summarizer.calls)
    return out


def run(
    path: Path,
    budgets: Sequence[int],
    template_name: str,
    summarizer_kind: str,
    workspace: Path,
) -> dict[str, Any]:
    settings = bench_settings(workspace)
    counter = bench_counter()
    template = TemplateRegistry(user_dir=workspace / "templates").get(template_name)
    started = time.perf_counter()
    transcripts = load_conversations(path)
    results: dict[str, Any] = {}
    conversations: list[dict[str, Any]] = []
    for budget in budgets:
        tallies = {name: _Tally() for name in SYSTEMS}
        per = [
            run_conversation(
                t,
                budget,
                template=template,
                settings=settings,
                counter=counter,
                summarizer_kind=summarizer_kind,
                tallies=tallies,
            )
            for t in transcripts
        ]
        conversations.extend(per)
        ours, peer = tallies["llmctx"].report(), tallies["recency"].report()
        results[str(budget)] = {
            "llmctx": ours,
            "recency": peer,
            "evidence_recall_delta": _delta(ours["evidence_recall"], peer["evidence_recall"]),
            "answer_containment_delta": _delta(
                ours["answer_containment"], peer["answer_containment"]
            ),
            "replay_max_window_tokens": max(p["replay_max_window_tokens"] for p in per),
            "replay_over_budget_turns": sum(p["replay_over_budget_turns"] for p in per),
            "question_over_budget": sum(p["question_over_budget"] for p in per),
            "count_mismatches": sum(p["count_mismatches"] for p in per),
        }
        print(
            f"B={budget:>6}: evidence llmctx {ours['evidence_recall']}% vs recency "
            f"{peer['evidence_recall']}%; answers {ours['answer_containment']}% vs "
            f"{peer['answer_containment']}% (questions "
            f"{ours['question_seconds']}s vs {peer['question_seconds']}s, "
            f"replay {ours['replay_seconds']}s)",
            file=sys.stderr,
        )
    first = [c for c in conversations if c["budget"] == budgets[0]]
    ceiling = _Tally()
    for t in transcripts:
        full = message_texts(t.messages)
        by_id = {str(m.id): m for m in t.messages}
        for item in t.qa:
            evidence = {mid: by_id[mid] for mid in t.evidence_ids(item) if mid in by_id}
            if evidence and item.category in ANSWER_CATEGORIES:
                ceiling.add(item.category, 1.0, 1.0, contains_answer(full, item.answer))
    return {
        "benchmark": "locomo",
        "data": str(path),
        "template": template.name,
        "summarizer": summarizer_kind,
        "encoding": counter.encoding_name,
        "budgets": list(budgets),
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
        "results": results,
        "per_conversation": conversations,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def _delta(ours: float | None, peer: float | None) -> float | None:
    return None if ours is None or peer is None else round(ours - peer, 2)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a LoCoMo-format JSON file")
    parser.add_argument("--budgets", type=int, nargs="+", default=[2_000, 4_000, 8_000])
    parser.add_argument("--template", default="general")
    parser.add_argument("--summarizer", choices=["extractive", "fake"], default="extractive")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long synthetic run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llmctx-locomo-") as tmp:
        workspace = Path(tmp) / ".llm"
        if args.smoke:
            data = write_synthetic_locomo(Path(tmp) / "synthetic_locomo.json")
            budgets = [400, 800]
        elif args.data is None:
            parser.error("--data PATH is required (or --smoke)")
        else:
            data, budgets = args.data, args.budgets
        result = run(data, budgets, args.template, args.summarizer, workspace)
    if args.smoke:
        result["data"] = "synthetic"
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
