"""Context versions read from LangGraph checkpoints.

A *version* is a checkpoint in which the frame (the `context` channel) changed: the
input checkpoint of a turn only adds messages, the checkpoint after the pipeline
records the new window. Versions are read through any `BaseCheckpointSaver`, so the
same history is visible on SQLite, Postgres or in memory.

Example:
    >>> with open_saver(".llm") as saver:
    ...     for v in history(saver, "demo"):
    ...         print(v.step, v.op, v.window_tokens)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple

__all__ = ["Version", "history"]

CONTEXT_CHANNEL = "context"


@dataclass(frozen=True)
class Version:
    """One context version: where it sits in the thread and what its frame says.

    `tokens_exact` is False when the frame was counted with the approximate fallback
    (no tiktoken encoding could be loaded), so every report can flag it.
    """

    checkpoint_id: str
    parent_id: str | None
    step: int
    time: str
    op: str
    reason: str
    template: str | None
    turn: int | None
    window_tokens: int
    history_tokens: int
    history_messages: int
    tokens_exact: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def history(
    saver: BaseCheckpointSaver, thread_id: str, *, limit: int | None = None
) -> list[Version]:
    """The thread's versions, newest first (at most `limit`).

    A checkpoint counts as a version when its `context` channel version differs from
    the one before it.
    """
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    tuples = list(saver.list(config))
    tuples.sort(key=lambda t: t.checkpoint["id"])  # ids are time-ordered (uuid6)
    versions: list[Version] = []
    seen_version: Any = None
    for tup in tuples:
        current = tup.checkpoint.get("channel_versions", {}).get(CONTEXT_CHANNEL)
        if current is None or current == seen_version:
            continue
        seen_version = current
        versions.append(_to_version(tup))
    versions.reverse()
    return versions[:limit] if limit is not None else versions


def _to_version(tup: CheckpointTuple) -> Version:
    frame = tup.checkpoint.get("channel_values", {}).get(CONTEXT_CHANNEL) or {}
    last_op = frame.get("last_op", {})
    parent = tup.parent_config["configurable"].get("checkpoint_id") if tup.parent_config else None
    return Version(
        checkpoint_id=tup.checkpoint["id"],
        parent_id=parent,
        step=int(tup.metadata.get("step", -1)) if tup.metadata else -1,
        time=tup.checkpoint.get("ts", ""),
        op=str(last_op.get("op", "")),
        reason=str(last_op.get("reason", "")),
        template=frame.get("template"),
        turn=frame.get("turn"),
        window_tokens=int(frame.get("window_tokens", 0)),
        history_tokens=int(frame.get("history_tokens", 0)),
        history_messages=int(frame.get("history_messages", 0)),
        tokens_exact=bool(frame.get("tokenizer", {}).get("exact", False)),
    )
