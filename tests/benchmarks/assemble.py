"""Benchmark: window assembly per turn vs `trim_messages`, in the same run.

Workload: a synthetic history of 5,000 messages and about 200K cl100k tokens. Each
"turn" appends one user message and assembles the window again:

- **llmctx**: `assemble_window` (system prompt, pinned latest user message, tool-safe
  recency window, exact counts with the per-message cache) plus `window_messages`,
  i.e. the list the model would be sent;
- **peer**: `trim_messages(strategy="last", start_on="human")` with an exact tiktoken
  counter in the OpenAI cookbook's form (same encoding, no cache: it has none).

Run: `python -m tests.benchmarks.assemble [--messages N] [--budget B] [--smoke]`.
Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import tiktoken
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, trim_messages

from llmctx.nodes import ContextConfig, window_messages
from llmctx.nodes._deps import resolve_deps
from llmctx.nodes.budget import assemble_window
from llmctx.runtime.tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE

_WORDS = [
    *[
        "the",
        "context",
        "window",
        "budget",
        "token",
        "model",
        "agent",
        "graph",
        "node",
        "state",
        "message",
        "tool",
        "call",
    ],
    *[
        "result",
        "summary",
        "memory",
        "retrieve",
        "prune",
        "version",
        "checkpoint",
        "thread",
        "template",
        "domain",
    ],
    *[
        "python",
        "function",
        "error",
        "request",
        "response",
        "user",
        "assistant",
        "system",
        "cache",
        "latency",
    ],
    *[
        "test",
        "data",
        "value",
        "field",
        "index",
        "query",
        "plan",
        "step",
        "turn",
        "history",
        "window",
        "frame",
        "policy",
    ],
]


def make_history(n_messages: int, target_tokens: int, seed: int = 7) -> list[BaseMessage]:
    """Alternating user/assistant messages of ~target/n tokens each, deterministic."""
    rng = random.Random(seed)
    per_message = max(4, target_tokens // max(1, n_messages) - TOKENS_PER_MESSAGE)
    history: list[BaseMessage] = []
    for i in range(n_messages):
        words = " ".join(rng.choice(_WORDS) for _ in range(per_message))
        cls = HumanMessage if i % 2 == 0 else AIMessage
        history.append(cls(content=words, id=f"m{i}"))
    return history


def exact_list_counter(encoding: Any) -> Callable[[Sequence[BaseMessage]], int]:
    """The OpenAI cookbook's count for a message list, on a tiktoken encoding."""

    def count(messages: Sequence[BaseMessage]) -> int:
        total = REPLY_PRIMING
        for m in messages:
            total += (
                TOKENS_PER_MESSAGE
                + len(encoding.encode(m.type))
                + len(encoding.encode(str(m.content), disallowed_special=()))
            )
        return total

    return count


def _time(fn: Callable[[], Any], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def run(messages: int, tokens: int, budget: int, turns: int, peer_repeats: int) -> dict[str, Any]:
    deps = resolve_deps(ContextConfig(template="general", budget=budget))
    counter = deps.counter
    encoding = tiktoken.get_encoding(counter.encoding_name)
    history = make_history(messages, tokens)
    history_tokens = counter.count_messages(history)

    # Cold: the first assembly counts everything (a fresh process replaying a thread).
    counter.cache_clear()
    start = time.perf_counter()
    frame = assemble_window(history, deps)
    cold_ms = (time.perf_counter() - start) * 1000.0

    ours: list[float] = []
    rng = random.Random(11)
    for t in range(turns):
        history.append(
            HumanMessage(content=" ".join(rng.choice(_WORDS) for _ in range(30)), id=f"new{t}")
        )
        start = time.perf_counter()
        frame = assemble_window(history, deps, frame)
        prompt = window_messages({"messages": history, "context": frame})
        ours.append((time.perf_counter() - start) * 1000.0)
    our_tokens = counter.count_messages(prompt)
    assert our_tokens == frame["window_tokens"] <= budget, (our_tokens, frame["window_tokens"])

    peer_counter = exact_list_counter(encoding)
    trimmed: list[BaseMessage] = []

    def _peer() -> None:
        nonlocal trimmed
        trimmed = trim_messages(
            history,
            max_tokens=budget,
            strategy="last",
            start_on="human",
            token_counter=peer_counter,
        )

    peer = _time(_peer, peer_repeats)
    ours_median = statistics.median(ours)
    peer_median = statistics.median(peer)
    return {
        "benchmark": "assemble",
        "messages": len(history),
        "history_tokens": history_tokens,
        "budget": budget,
        "encoding": counter.encoding_name,
        "ours_ms_per_turn_median": round(ours_median, 3),
        "ours_ms_per_turn_p90": round(sorted(ours)[int(0.9 * (len(ours) - 1))], 3),
        "ours_cold_ms": round(cold_ms, 2),
        "trim_messages_ms_median": round(peer_median, 3),
        "speedup_vs_trim_messages": round(peer_median / ours_median, 1),
        "ours_window_messages": sum(1 for i in frame["window"] if i["kind"] == "message"),
        "ours_window_tokens": frame["window_tokens"],
        "trim_window_messages": len(trimmed),
        "trim_window_tokens": peer_counter(trimmed),
        "turns_measured": turns,
        "peer_repeats": peer_repeats,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--budget", type=int, nargs="+", default=[8_000, 32_000, 120_000])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--peer-repeats", type=int, default=10)
    parser.add_argument("--data", help="unused: the workload is synthetic")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long variant")
    args = parser.parse_args(argv)
    if args.smoke:
        args.messages, args.tokens, args.budget = 500, 20_000, [2_000]
        args.turns, args.peer_repeats = 5, 2
    results = [
        run(args.messages, args.tokens, b, args.turns, args.peer_repeats) for b in args.budget
    ]
    summary = {
        "benchmark": "assemble",
        "target_speedup": 10.0,
        "min_speedup": min(r["speedup_vs_trim_messages"] for r in results),
        "runs": results,
    }
    for r in results:
        print(
            f"budget {r['budget']:>7}: llmctx {r['ours_ms_per_turn_median']:.3f} ms/turn, "
            f"trim_messages {r['trim_messages_ms_median']:.1f} ms "
            f"-> {r['speedup_vs_trim_messages']}x",
            file=sys.stderr,
        )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
