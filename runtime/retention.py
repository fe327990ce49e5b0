"""Delete individual checkpoints, and find each thread's last activity, per saver.

LangGraph's `BaseCheckpointSaver` deletes whole threads (`delete_thread`) and, where
implemented, prunes a thread to its latest checkpoint (`prune(thread_ids,
strategy="keep_latest")`); it has no call to delete *some* checkpoints of a thread,
which version retention (keep the last N and the tagged ones) needs. This module
does it for the savers whose layout is known, and nothing else:

- a saver with `delete_checkpoints(thread_id, checkpoint_ids)` is trusted with it;
- `LlmctxSaver` (the embedded saver): its own deletion, which collects the values
  and delta bases nothing refers to any more;
- `PostgresSaver`: its three tables in one transaction, then the blobs no remaining
  checkpoint references (as its own `prune` does);
- `SqliteSaver`: its two tables (values are stored inline, there are no blobs);
- `InMemorySaver`: its dictionaries, then unreferenced blobs.

Any other saver gets `UnsupportedSaverError`. Only the root namespace (`""`) is
touched: a subgraph's checkpoints stay until their thread is deleted. A kept
checkpoint whose parent is deleted is left with no parent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver

from llmctx.runtime.errors import UnsupportedSaverError

__all__ = [
    "UnsupportedSaverError",
    "delete_checkpoints",
    "is_postgres_saver",
    "thread_activity",
]

_CHUNK = 500  # SQLite's bound-variable limit is 999 on old builds


def delete_checkpoints(saver: BaseCheckpointSaver, thread_id: str, ids: Sequence[str]) -> int:
    """Delete the root-namespace checkpoints `ids` of `thread_id` and their writes.

    Returns how many were asked for. Raises `UnsupportedSaverError` for a saver whose
    storage this module does not know.
    """
    ids = [str(i) for i in ids]
    if not ids:
        return 0
    own = getattr(saver, "delete_checkpoints", None)
    if callable(own):
        own(thread_id, ids)
        return len(ids)
    if is_postgres_saver(saver):
        _delete_postgres(saver, thread_id, ids)
    elif isinstance(saver, SqliteSaver):
        _delete_sqlite(saver, thread_id, ids)
    elif isinstance(saver, InMemorySaver):
        _delete_memory(saver, thread_id, ids)
    else:
        raise UnsupportedSaverError(
            f"{type(saver).__name__} cannot delete single checkpoints, so versions cannot "
            "be pruned on it; expire whole threads instead (llmctx prune --older-than / "
            "versions.expire_threads), or use the embedded saver, SQLite or Postgres"
        )
    return len(ids)


def thread_activity(saver: BaseCheckpointSaver) -> dict[str, str]:
    """Every thread of the saver → the time (ISO, UTC) of its newest checkpoint.

    Postgres answers with one query; other savers are listed (which reads every
    checkpoint, so it is slow on large stores). A saver with `list_threads()` returning
    rows with `thread_id` and `updated_at` is asked that instead.
    """
    own = getattr(saver, "list_threads", None)
    if callable(own):
        return {str(r["thread_id"]): str(r["updated_at"]) for r in own()}
    if is_postgres_saver(saver):
        with saver._cursor() as cur:
            cur.execute(
                "SELECT thread_id, max(checkpoint ->> 'ts') AS ts FROM checkpoints "
                "WHERE checkpoint_ns = '' GROUP BY thread_id"
            )
            return {row["thread_id"]: row["ts"] for row in cur.fetchall()}
    latest: dict[str, str] = {}
    for tup in saver.list(None):
        thread = str(tup.config["configurable"]["thread_id"])
        ts = str(tup.checkpoint.get("ts", ""))
        if ts > latest.get(thread, ""):
            latest[thread] = ts
    return latest


def is_postgres_saver(saver: object) -> bool:
    """True for a (sync, non-shallow) `PostgresSaver`, without importing psycopg
    when the optional package is absent."""
    try:
        from langgraph.checkpoint.postgres import PostgresSaver
    except ImportError:
        return False
    return isinstance(saver, PostgresSaver)


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _delete_sqlite(saver: Any, thread_id: str, ids: Sequence[str]) -> None:
    with saver.cursor() as cur:  # holds the saver's lock, commits at the end
        for part in _chunks(ids):
            marks = ",".join("?" * len(part))
            params = (thread_id, *part)
            where = f"thread_id = ? AND checkpoint_ns = '' AND checkpoint_id IN ({marks})"
            cur.execute(f"DELETE FROM writes WHERE {where}", params)
            cur.execute(f"DELETE FROM checkpoints WHERE {where}", params)
            cur.execute(
                "UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE thread_id = ? "
                f"AND checkpoint_ns = '' AND parent_checkpoint_id IN ({marks})",
                params,
            )


_PG_DELETE_CHECKPOINTS = """
WITH deleted AS (
    DELETE FROM checkpoints
    WHERE thread_id = %s AND checkpoint_ns = '' AND checkpoint_id = ANY(%s)
    RETURNING checkpoint -> 'channel_versions' AS versions
)
SELECT DISTINCT v.key AS channel, v.value AS version
FROM deleted CROSS JOIN LATERAL jsonb_each_text(deleted.versions) AS v
"""

_PG_REFERENCED = """
SELECT DISTINCT v.key AS channel, v.value AS version
FROM checkpoints c CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
WHERE c.thread_id = %s AND c.checkpoint_ns = ''
"""


def _delete_postgres(saver: Any, thread_id: str, ids: list[str]) -> None:
    with saver._cursor() as cur, cur.connection.transaction():
        cur.execute(
            "DELETE FROM checkpoint_writes "
            "WHERE thread_id = %s AND checkpoint_ns = '' AND checkpoint_id = ANY(%s)",
            (thread_id, ids),
        )
        cur.execute(_PG_DELETE_CHECKPOINTS, (thread_id, ids))
        freed = {(r["channel"], r["version"]) for r in cur.fetchall()}
        cur.execute(
            "UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE thread_id = %s "
            "AND checkpoint_ns = '' AND parent_checkpoint_id = ANY(%s)",
            (thread_id, ids),
        )
        cur.execute(_PG_REFERENCED, (thread_id,))
        kept = {(r["channel"], r["version"]) for r in cur.fetchall()}
        garbage: dict[str, list[str]] = {}
        for channel, version in freed - kept:
            garbage.setdefault(channel, []).append(version)
        for channel, versions in garbage.items():
            cur.execute(
                "DELETE FROM checkpoint_blobs WHERE thread_id = %s AND checkpoint_ns = '' "
                "AND channel = %s AND version = ANY(%s)",
                (thread_id, channel, versions),
            )


def _delete_memory(saver: Any, thread_id: str, ids: Sequence[str]) -> None:
    doomed = set(ids)
    namespace = saver.storage.get(thread_id, {}).get("", {})
    for cid in doomed:
        namespace.pop(cid, None)
        saver.writes.pop((thread_id, "", cid), None)
    referenced: set[tuple[str, Any]] = set()
    for cid, (checkpoint, metadata, parent) in list(namespace.items()):
        if parent in doomed:
            namespace[cid] = (checkpoint, metadata, None)
        versions = saver.serde.loads_typed(checkpoint).get("channel_versions", {})
        referenced.update(versions.items())
    for key in [k for k in saver.blobs if k[0] == thread_id and k[1] == ""]:
        if (key[2], key[3]) not in referenced:
            del saver.blobs[key]
