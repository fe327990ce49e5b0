"""Benchmark: the compression pipeline's per-turn cost and its summarizer input.

**A. Per-turn time** on a synthetic history of 5,000 messages and ~200K cl100k tokens
(user turns, assistant replies, and assistant tool calls with one to three results;
seeded). The pipeline's nodes (`budget → prune → summarize`, taken from the compiled
`build_context_graph` with its defaults) are called as plain functions on the state,
the previous frame carried over, as LangGraph would on each turn. Each turn appends
an assistant reply and a new user message, runs every node and assembles the prompt
with `window_messages`. The summarizer is a recording fake chat model: the warm-up
(first, cold turn) may summarize, and timed turns that call it are reported apart,
so the headline numbers are the trigger check without an LLM call.
Peer, same history and budget, same run: `trim_messages(strategy="last",
start_on="human", include_system=True)` with the exact counter
(`TokenCounter.count_messages`, per-message cache included: the strict comparison),
and a few runs with the same counter without its cache (tiktoken on every message,
as `trim_messages` users usually count). Target: at least 10x faster.

**B. Summarizer input.** Each conversation (LoCoMo with `--data`, else the packaged
demo transcript) is replayed at a 4K budget with the recording fake model as the
summarizer. The exact tokens of every prompt it was sent (all messages, cl100k) are
compared with the conversation's own tokens. Target: at most 1.5x. Also reported: the
summarizer calls, and the largest window of the replay, which must not exceed the
budget.

Run: `python -m tests.benchmarks.compress [--data LOCOMO.json] [--smoke]`.
Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    trim_messages,
)
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.runtime import Runtime

from llmctx.graphs import build_context_graph, replay
from llmctx.nodes import window_messages
from llmctx.runtime.settings import Settings
from llmctx.runtime.tokens import TokenCounter
from llmctx.runtime.transcripts import demo_transcript_path
from llmctx.templates import TemplateRegistry
from tests.benchmarks._locomo_common import (
    RecordingSummaryModel,
    bench_counter,
    bench_settings,
    load_conversations,
)

TARGET_SPEEDUP = 10.0
TARGET_INPUT_RATIO = 1.5

# -- A. synthetic history ------------------------------------------------------------

_VOCABULARY = (
    "the a to of and in that is for it with as on was be this are at by from or an "
    "context window budget token model agent graph node state message tool call result "
    "summary memory retrieve prune version checkpoint thread template domain python "
    "function error request response user assistant system cache latency test data "
    "value field index query plan step turn history frame policy deploy server client "
    "database schema migration release branch commit review config timeout retry queue "
    "worker metric alert dashboard customer invoice report budget forecast meeting"
)
_WORDS = tuple(_VOCABULARY.split())


class _Gen:
    """Seeded text pieces: prose, identifiers, JSON-ish tool output."""

    def __init__(self, seed: int, scale: float) -> None:
        self.rng = random.Random(seed)
        self.scale = scale
        self.ids = [f"{p}_{i:03d}" for p in ("svc", "user", "job", "file") for i in range(60)]

    def words(self, lo: int, hi: int) -> str:
        rng = self.rng
        n = max(1, round(rng.randint(lo, hi) * self.scale))
        out = [rng.choice(_WORDS) for _ in range(n)]
        for _ in range(max(1, n // 25)):
            out[rng.randrange(n)] = rng.choice(self.ids)
        return " ".join(out)

    def tool_output(self, lo: int, hi: int) -> str:
        rng = self.rng
        n = max(1, round(rng.randint(lo, hi) * self.scale / 4))
        rows = [
            {"id": rng.choice(self.ids), "status": rng.choice(_WORDS), "ms": rng.randint(1, 999)}
            for _ in range(n)
        ]
        return json.dumps({"rows": rows, "note": self.words(5, 15)})


def make_history(n_messages: int, seed: int, scale: float) -> list[BaseMessage]:
    """`n_messages` messages ending with a user message; ~35% of replies use tools."""
    gen = _Gen(seed, scale)
    rng = gen.rng
    out: list[BaseMessage] = []
    turn = 0
    while len(out) < n_messages - 1:
        out.append(HumanMessage(content=gen.words(15, 45), id=f"h{turn}"))
        room = n_messages - 1 - len(out)
        calls = rng.choice((1, 1, 2, 3)) if rng.random() < 0.35 else 0
        if calls and room >= calls + 2:
            tool_calls = [
                {
                    "id": f"call_{turn}_{k}",
                    "name": rng.choice(("search", "read_file", "run_query", "get_ticket")),
                    "args": {"q": gen.words(2, 6), "limit": rng.randint(1, 50)},
                }
                for k in range(calls)
            ]
            out.append(AIMessage(content="", tool_calls=tool_calls, id=f"a{turn}-call"))
            out.extend(
                ToolMessage(content=gen.tool_output(40, 150), tool_call_id=c["id"], id=c["id"])
                for c in tool_calls
            )
        if room >= 1:
            out.append(AIMessage(content=gen.words(20, 70), id=f"a{turn}"))
        turn += 1
    out = out[: n_messages - 1]
    while out and (
        isinstance(out[-1], ToolMessage) or (isinstance(out[-1], AIMessage) and out[-1].tool_calls)
    ):
        out.pop()  # never end inside a tool unit
    out.append(HumanMessage(content=gen.words(15, 45), id="h-last"))
    return out


def calibrated_history(
    n_messages: int, target_tokens: int, counter: TokenCounter, seed: int = 7
) -> list[BaseMessage]:
    """A history of `n_messages` whose exact size is close to `target_tokens`."""
    scale = 1.0
    history = make_history(n_messages, seed, scale)
    for _ in range(3):
        tokens = counter.count_messages(history)
        if abs(tokens - target_tokens) <= 0.02 * target_tokens:
            break
        scale *= target_tokens / tokens
        history = make_history(n_messages, seed, scale)
    return history


def _pipeline_nodes(graph: Any) -> list[tuple[str, Callable[..., dict[str, Any]]]]:
    """The compiled pipeline's node functions (factory defaults applied), in order."""
    return [(name, spec.runnable.func) for name, spec in graph.builder.nodes.items()]


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def per_turn(
    n_messages: int,
    tokens: int,
    budget: int,
    turns: int,
    peer_every: int,
    uncached_samples: int,
    *,
    settings: Settings,
    counter: TokenCounter,
    template: Any,
) -> dict[str, Any]:
    """Part A at one budget."""
    history = calibrated_history(n_messages, tokens, counter)
    history_tokens = counter.count_messages(history)
    recorder = RecordingSummaryModel()
    graph = build_context_graph(
        template=template, budget=budget, settings=settings, summarizer=recorder
    )
    nodes = _pipeline_nodes(graph)
    runtime = Runtime(context=None)
    system = SystemMessage(content=template.system_prompt.strip(), id="llmctx:system")
    state: dict[str, Any] = {"messages": history}

    def step() -> list[BaseMessage]:
        for _, node in nodes:
            update = node(state, runtime)
            if "context" in update:
                state["context"] = update["context"]
        return window_messages(state)

    counter.cache_clear()
    start = time.perf_counter()
    prompt = step()
    cold_ms = (time.perf_counter() - start) * 1000.0
    warm_calls = len(recorder.calls)

    gen = _Gen(13, 1.0)
    ours: list[float] = []
    ours_quiet: list[float] = []
    peer: list[float] = []
    over_budget = 0
    mismatches = 0
    called_turns = 0
    trimmed: list[BaseMessage] = []
    for t in range(turns):
        history.append(AIMessage(content=gen.words(20, 70), id=f"bench-a{t}"))
        history.append(HumanMessage(content=gen.words(15, 45), id=f"bench-h{t}"))
        before = len(recorder.calls)
        start = time.perf_counter()
        prompt = step()
        elapsed = (time.perf_counter() - start) * 1000.0
        ours.append(elapsed)
        if len(recorder.calls) == before:
            ours_quiet.append(elapsed)
        else:
            called_turns += 1
        frame = state["context"]
        if frame["window_tokens"] > budget:
            over_budget += 1
        if counter.count_messages(prompt) != frame["window_tokens"]:
            mismatches += 1
        if t % peer_every == 0:
            start = time.perf_counter()
            trimmed = trim_messages(
                [system, *history],
                max_tokens=budget,
                strategy="last",
                token_counter=counter.count_messages,
                start_on="human",
                include_system=True,
            )
            peer.append((time.perf_counter() - start) * 1000.0)
    frame = state["context"]
    quiet = ours_quiet or ours
    # A second peer: the same exact count without a cache (tiktoken on every message of
    # every candidate list), as a user of `trim_messages` would usually write it.
    uncached = TokenCounter(counter.model, encoding=counter.encoding_name, cache_size=1)
    cold_peer: list[float] = []
    for _ in range(uncached_samples):
        start = time.perf_counter()
        trim_messages(
            [system, *history],
            max_tokens=budget,
            strategy="last",
            token_counter=uncached.count_messages,
            start_on="human",
            include_system=True,
        )
        cold_peer.append((time.perf_counter() - start) * 1000.0)
    return {
        "budget": budget,
        "messages": len(history),
        "history_tokens": history_tokens,
        "tool_messages": sum(isinstance(m, ToolMessage) for m in history),
        "nodes": [name for name, _ in nodes],
        "turns_timed": turns,
        "ours_cold_ms": round(cold_ms, 2),
        "ours_p50_ms": round(_pct(quiet, 0.5), 3),
        "ours_p95_ms": round(_pct(quiet, 0.95), 3),
        "ours_all_turns_p50_ms": round(_pct(ours, 0.5), 3),
        "ours_all_turns_p95_ms": round(_pct(ours, 0.95), 3),
        "ours_max_ms": round(max(ours), 3),
        "trim_messages_p50_ms": round(_pct(peer, 0.5), 3),
        "trim_messages_p95_ms": round(_pct(peer, 0.95), 3),
        "trim_messages_samples": len(peer),
        "speedup_p50": round(_pct(peer, 0.5) / _pct(quiet, 0.5), 1),
        "speedup_p95": round(_pct(peer, 0.95) / _pct(quiet, 0.95), 1),
        "trim_messages_uncached_p50_ms": round(_pct(cold_peer, 0.5), 1) if cold_peer else None,
        "trim_messages_uncached_samples": len(cold_peer),
        "speedup_p50_vs_uncached": round(_pct(cold_peer, 0.5) / _pct(quiet, 0.5), 1)
        if cold_peer
        else None,
        "summarizer_calls_warmup": warm_calls,
        "summarizer_calls_timed": len(recorder.calls) - warm_calls,
        "turns_with_summarizer_call": called_turns,
        "window_tokens": frame["window_tokens"],
        "window_messages": sum(1 for i in frame["window"] if i["kind"] == "message"),
        "summaries": len(frame.get("summaries", [])),
        "over_budget_turns": over_budget,
        "count_mismatches": mismatches,
        "trim_window_tokens": counter.count_messages(trimmed),
        "trim_window_messages": len(trimmed),
    }


# -- B. summarizer input on replayed conversations ------------------------------------


def summarizer_input(
    path: Path, budget: int, *, settings: Settings, counter: TokenCounter, template: Any
) -> dict[str, Any]:
    """Part B: replay every conversation of `path` with a recording fake summarizer."""
    per: list[dict[str, Any]] = []
    for transcript in load_conversations(path):
        recorder = RecordingSummaryModel()
        graph = build_context_graph(
            template=template,
            budget=budget,
            settings=settings,
            summarizer=recorder,
            checkpointer=InMemorySaver(),
        )
        start = time.perf_counter()
        report = replay(transcript, graph, thread_id=transcript.name)
        elapsed = time.perf_counter() - start
        frame = graph.get_state({"configurable": {"thread_id": transcript.name}}).values.get(
            "context", {}
        )
        own = counter.count_messages(transcript.messages)
        sent = sum(counter.count_messages(call) for call in recorder.calls)
        bound = [m for m in recorder.max_tokens_seen if m is not None]
        per.append(
            {
                "name": transcript.name,
                "messages": len(transcript.messages),
                "turns": len(report.turns),
                "conversation_tokens": own,
                "summarizer_input_tokens": sent,
                "ratio": round(sent / own, 3) if own else 0.0,
                "summarizer_calls": len(recorder.calls),
                "calls_without_max_tokens": len(recorder.max_tokens_seen) - len(bound),
                "max_summary_max_tokens": max(bound, default=0),
                "summaries_in_final_frame": len(frame.get("summaries", [])),
                "max_window_tokens": report.max_window_tokens,
                "over_budget_turns": sum(1 for t in report.turns if t.window_tokens > budget),
                "replay_s": round(elapsed, 2),
            }
        )
    own = sum(p["conversation_tokens"] for p in per)
    sent = sum(p["summarizer_input_tokens"] for p in per)
    return {
        "data": str(path),
        "budget": budget,
        "conversations": per,
        "overall_ratio": round(sent / own, 3) if own else 0.0,
        "max_ratio": max(p["ratio"] for p in per),
        "summarizer_calls": sum(p["summarizer_calls"] for p in per),
        "max_window_tokens": max(p["max_window_tokens"] for p in per),
        "over_budget_turns": sum(p["over_budget_turns"] for p in per),
        "target_ratio": TARGET_INPUT_RATIO,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a LoCoMo-format file for part B")
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--budgets", type=int, nargs="+", default=[8_000, 32_000])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--peer-every", type=int, default=2, help="time trim_messages every N")
    parser.add_argument(
        "--uncached-samples", type=int, default=3, help="runs of the cache-less peer"
    )
    parser.add_argument("--replay-budget", type=int, default=4_000)
    parser.add_argument("--template", default="general")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long variant")
    args = parser.parse_args(argv)
    if args.smoke:
        args.messages, args.tokens, args.budgets, args.turns = 600, 24_000, [2_000], 6
        args.uncached_samples = 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmctx-compress-") as tmp:
        workspace = Path(tmp) / ".llm"
        settings = bench_settings(workspace)
        counter = bench_counter()
        template = TemplateRegistry(user_dir=workspace / "templates").get(args.template)
        runs = [
            per_turn(
                args.messages,
                args.tokens,
                b,
                args.turns,
                args.peer_every,
                args.uncached_samples,
                settings=settings,
                counter=counter,
                template=template,
            )
            for b in args.budgets
        ]
        for r in runs:
            print(
                f"A B={r['budget']:>6}: pipeline p50 {r['ours_p50_ms']} ms p95 "
                f"{r['ours_p95_ms']} ms; trim_messages p50 {r['trim_messages_p50_ms']} ms "
                f"-> {r['speedup_p50']}x (uncached: "
                f"{r['trim_messages_uncached_p50_ms']} ms "
                f"-> {r['speedup_p50_vs_uncached']}x)",
                file=sys.stderr,
            )
        data = args.data or demo_transcript_path()
        part_b = summarizer_input(
            data, args.replay_budget, settings=settings, counter=counter, template=template
        )
        print(
            f"B: summarizer input {part_b['overall_ratio']}x the conversations "
            f"(max {part_b['max_ratio']}x), {part_b['summarizer_calls']} calls, "
            f"max window {part_b['max_window_tokens']} / {part_b['budget']}",
            file=sys.stderr,
        )
    result = {
        "benchmark": "compress",
        "encoding": counter.encoding_name,
        "template": template.name,
        "per_turn": {
            "target_speedup": TARGET_SPEEDUP,
            "min_speedup_p50": min(r["speedup_p50"] for r in runs),
            "min_speedup_p50_vs_uncached": min((r["speedup_p50_vs_uncached"] or 0.0) for r in runs),
            "runs": runs,
        },
        "summarizer_input": part_b,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
