"""The on-disk layout of `LlmctxSaver`, and opening a file safely.

One SQLite file (WAL mode) holds three tables (schema 2):

* `checkpoints`: one row per checkpoint. The checkpoint itself minus its channel
  values (`body`, serde-typed, zstd when large), the metadata as JSON (for
  filters), and columns copied out of it for cheap listing: `ts`, `step`,
  `source`, `run_id`, and `summary_version` (the version of the summary channel,
  `context`, that this checkpoint sees).
* `blobs`: one row per (thread, namespace, channel, version): a channel's value
  is written only when its version changes, and a version without a value has no
  row. `kind` says how to read `data`: `full` (the serde bytes), `zdelta` (zstd with
  the `base` version's serde bytes as a raw-content dictionary) or `append` (the
  items appended to the `base` version's list). `base` names the exact version a
  delta was computed from, so forks and out-of-order reads stay correct; `extends`
  links a full copy of a list to the version whose items it starts with, so an older
  version of a history can be served as a prefix of a newer one. Rows of the summary
  channel also carry the version summary columns (`op`, `turn`, ...).
* `writes`: the pending writes of each checkpoint. A list write that repeats the
  channel's stored list (`kind` 1) keeps only the items after the first
  `prefix_items` (all when NULL) of `base_version`.

Any `full`/`append` payload or write may be zstd-compressed (`z` = 2) against
`dict_refs`: a JSON list of the rows whose raw payloads, concatenated, form the
dictionary (`["b", channel, version]` or `["w", checkpoint_id, task_id, idx]`), so
the several copies LangGraph makes of a message in one turn are stored about once.
A row used so is re-compressed on its own before its source is deleted or rewritten.

`PRAGMA application_id` marks the file as ours and `PRAGMA user_version` holds the
schema version, so a foreign, corrupt or newer file is refused with a clear error
instead of being silently reset.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from llmctx.runtime.errors import CheckpointStoreError

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "CheckpointStoreError",
    "connect",
]

# "llmc" in ASCII: tells our files apart from any other SQLite database.
APPLICATION_ID = 0x6C6C6D63
SCHEMA_VERSION = 2
_SQLITE_MAGIC = b"SQLite format 3\x00"

_DDL = """
CREATE TABLE checkpoints (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL,
    parent_checkpoint_id TEXT,
    ts TEXT NOT NULL,
    step INTEGER,
    source TEXT,
    run_id TEXT,
    summary_version TEXT,
    type TEXT NOT NULL,
    z INTEGER NOT NULL,
    body BLOB NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
) WITHOUT ROWID;
CREATE INDEX checkpoints_run_id ON checkpoints (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE blobs (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    kind INTEGER NOT NULL,
    base TEXT,
    depth INTEGER NOT NULL DEFAULT 0,
    type TEXT,
    z INTEGER NOT NULL DEFAULT 0,
    data BLOB,
    n_items INTEGER,
    since_full INTEGER NOT NULL DEFAULT 0,
    full_size INTEGER NOT NULL DEFAULT 0,
    dict_refs TEXT,
    extends TEXT,
    op TEXT,
    reason TEXT,
    template TEXT,
    turn INTEGER,
    window_tokens INTEGER,
    history_tokens INTEGER,
    history_messages INTEGER,
    tokens_exact INTEGER,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
) WITHOUT ROWID;

CREATE TABLE writes (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    task_path TEXT NOT NULL DEFAULT '',
    channel TEXT NOT NULL,
    type TEXT,
    z INTEGER NOT NULL DEFAULT 0,
    value BLOB,
    kind INTEGER NOT NULL DEFAULT 0,
    base_version TEXT,
    prefix_items INTEGER,
    dict_refs TEXT,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
) WITHOUT ROWID;
"""


def _refuse(path: Path, why: str) -> CheckpointStoreError:
    return CheckpointStoreError(
        f"{path}: {why}; llmctx will not overwrite it. Move the file away (llmctx "
        "creates a fresh store on next use) or point the workspace elsewhere."
    )


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) an llmctx checkpoint file, or raise `CheckpointStoreError`.

    The connection is in WAL mode with a 30 s busy timeout, autocommit (writers
    open `BEGIN IMMEDIATE` themselves) and usable from any thread (callers lock).
    """
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as fh:
            if fh.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                raise _refuse(path, "not a SQLite database (corrupt or foreign file)")
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0, isolation_level=None)
    try:
        _check_or_create(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _refuse(path, f"unreadable database ({exc})") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _check_or_create(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("PRAGMA busy_timeout=30000")
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if app_id == APPLICATION_ID:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise _refuse(
                path,
                f"written by a newer llmctx (schema {version}, this one reads up to "
                f"{SCHEMA_VERSION}); upgrade llmctx",
            )
        if version < SCHEMA_VERSION:
            raise _refuse(
                path,
                f"written by an older llmctx (schema {version}, this one reads schema "
                f"{SCHEMA_VERSION} only); its layout cannot be read",
            )
        if not {"checkpoints", "blobs", "writes"} <= tables:
            raise _refuse(path, f"llmctx store with missing tables (schema {version})")
        _pragmas(conn)
        return
    if tables or app_id != 0:
        hint = (
            " (it looks like a langgraph SqliteSaver file from an older llmctx)"
            if {"checkpoints", "writes"} <= tables and "blobs" not in tables
            else ""
        )
        raise _refuse(path, f"a foreign SQLite database{hint}")
    _pragmas(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created it between our check and the lock.
        if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            for statement in _DDL.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _pragmas(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a committed transaction survives a killed process; only a
    # power loss can drop the last few, and never corrupts the file.
    conn.execute("PRAGMA synchronous=NORMAL")
    # Checkpoint the WAL every ~400 KB and shrink it back afterwards, so the log never
    # holds more than a fraction of the store (the default lets it grow to 4 MB+).
    conn.execute("PRAGMA wal_autocheckpoint=100")
    conn.execute("PRAGMA journal_size_limit=65536")
