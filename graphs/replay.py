"""Replay: feed a transcript turn by turn through the context pipeline.

Each turn is one invocation of the context graph with the new messages, ending at a
user message, so the frame recorded for that turn is exactly the window the model
would see when answering it. With a checkpointer every turn is a version.

Replay is idempotent: messages already in the thread (matched by their stable ids)
are skipped, so re-running on the same thread resumes after the last checkpoint and
never duplicates a turn.

Example:
    >>> with open_saver(".llm") as saver:
    ...     graph = build_context_graph(checkpointer=saver, budget=4_000)
    ...     report = replay(load_transcript("chat.jsonl"), graph, thread_id="chat")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.graph.state import CompiledStateGraph

from llmctx.nodes import ContextConfig
from llmctx.runtime.transcripts import Transcript

__all__ = ["ReplayReport", "TurnRecord", "default_thread_id", "replay", "replay_batches"]


@dataclass(frozen=True)
class TurnRecord:
    """What one replayed turn did to the context."""

    turn: int
    added: int
    history_messages: int
    history_tokens: int
    window_messages: int
    window_tokens: int
    entered: int
    left: int
    op: str
    reason: str
    checkpoint_id: str | None


@dataclass
class ReplayReport:
    """The outcome of a replay: one record per turn run now, plus totals.

    `template`, `budget`, `tokenizer` and `history_tokens` describe the thread's
    latest frame, also when every turn was already replayed and nothing ran.
    """

    thread_id: str
    source: str
    template: str | None = None
    budget: int | None = None
    tokenizer: dict[str, Any] = field(default_factory=dict)
    history_tokens: int | None = None
    total_messages: int = 0
    skipped_messages: int = 0
    turns: list[TurnRecord] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def max_window_tokens(self) -> int:
        return max((t.window_tokens for t in self.turns), default=0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict, including the window tokens of every turn."""
        data = asdict(self)
        data["turns_run"] = len(self.turns)
        data["max_window_tokens"] = self.max_window_tokens
        data["window_tokens"] = [t.window_tokens for t in self.turns]
        return data


def replay_batches(messages: list[BaseMessage], present: set[str]) -> Iterator[list[BaseMessage]]:
    """Split the messages not yet `present` into per-turn batches.

    Each batch ends with a user message (the model would answer next); a trailing
    batch without one flushes the transcript's last replies.
    """
    batch: list[BaseMessage] = []
    for message in messages:
        if message.id in present:
            continue
        batch.append(message)
        if isinstance(message, HumanMessage):
            yield batch
            batch = []
    if batch:
        yield batch


def replay(
    transcript: Transcript,
    graph: CompiledStateGraph,
    *,
    thread_id: str,
    context: ContextConfig | None = None,
    on_turn: Callable[[TurnRecord, int, int], None] | None = None,
) -> ReplayReport:
    """Run every not-yet-replayed turn of `transcript` through `graph` on `thread_id`.

    `on_turn(record, done, total)` is called after each turn (for progress bars).
    """
    config = {"configurable": {"thread_id": thread_id}}
    started = time.perf_counter()
    snapshot = graph.get_state(config) if graph.checkpointer else None
    values = snapshot.values if snapshot else {}
    existing = values.get("messages", []) or []
    present = {str(m.id) for m in existing}
    messages = list(transcript.messages)
    last_frame = values.get("context") or {}
    report = ReplayReport(
        thread_id=thread_id,
        source=str(transcript.source),
        template=last_frame.get("template"),
        budget=last_frame.get("budget"),
        tokenizer=dict(last_frame.get("tokenizer", {})),
        history_tokens=last_frame.get("history_tokens"),
        total_messages=len(messages),
        skipped_messages=sum(1 for m in messages if m.id in present),
    )
    batches = list(replay_batches(messages, present))
    for done, batch in enumerate(batches, start=1):
        frame, checkpoint_id = _run_turn(graph, batch, config, context)
        last_op = frame.get("last_op", {})
        record = TurnRecord(
            turn=int(frame.get("turn", done)),
            added=len(batch),
            history_messages=int(frame.get("history_messages", 0)),
            history_tokens=int(frame.get("history_tokens", 0)),
            window_messages=sum(1 for i in frame.get("window", []) if i["kind"] == "message"),
            window_tokens=int(frame.get("window_tokens", 0)),
            entered=int(last_op.get("entered", 0)),
            left=int(last_op.get("left", 0)),
            op=str(last_op.get("op", "")),
            reason=str(last_op.get("reason", "")),
            checkpoint_id=checkpoint_id,
        )
        report.turns.append(record)
        report.history_tokens = record.history_tokens
        report.template = frame.get("template")
        report.budget = frame.get("budget")
        report.tokenizer = dict(frame.get("tokenizer", {}))
        if on_turn is not None:
            on_turn(record, done, len(batches))
    report.elapsed_s = time.perf_counter() - started
    return report


def _run_turn(
    graph: CompiledStateGraph,
    batch: list[BaseMessage],
    config: dict[str, Any],
    context: ContextConfig | None,
) -> tuple[dict[str, Any], str | None]:
    """Invoke one turn; return the final frame and the id of the last checkpoint.

    Streaming checkpoint events gives the id without reading the state back.
    `durability="exit"` persists one checkpoint per turn (the turn's final state)
    instead of one per step: a replayed turn has no intermediate state worth
    resuming from, since replay resumes by message id anyway.
    """
    frame: dict[str, Any] = {}
    checkpoint_id = None
    for mode, chunk in graph.stream(
        {"messages": batch},
        config,
        context=context,
        stream_mode=["values", "checkpoints"],
        durability="exit",
    ):
        if mode == "values":
            frame = chunk.get("context", frame)
        else:
            checkpoint_id = chunk["config"]["configurable"].get("checkpoint_id")
    return frame, checkpoint_id


def default_thread_id(path: Path, conversation: int | None) -> str:
    """A stable thread id for a transcript file: its stem, plus the conversation index."""
    return path.stem if conversation is None else f"{path.stem}-{conversation}"
