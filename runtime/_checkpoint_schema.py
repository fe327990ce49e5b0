"""The on-disk layout of `LlmctxSaver`, and opening a file safely.

One SQLite file (WAL mode) holds six tables (schema 3). Keys are packed
(`_checkpoint_keys`): `t` is a (thread id, namespace) pair, names (channels, nodes,
types, sources, task paths) are ids of `names`, checkpoint and task ids that are
UUIDs are 16 bytes, our channel versions are 64-bit integers.

* `names (id, name)` and `threads (t, thread_id, checkpoint_ns)`: the interned keys.
* `checkpoints`, one row per checkpoint, keyed `(t, id)`: `parent` (id), `ts`
  (packed), `step`, `source`, `run_id` and `meta` (the rest of the metadata as JSON,
  `NULL` for `{"parents": {}}`), `frame` (the version of the summary channel,
  `context`, this checkpoint sees: listing versions reads no body), and `body`: the
  checkpoint minus its values, id and ts, as a delta against the parent's body with a
  full one every `MAX_DEPTH` (`depth` 0; see `_checkpoint_body`).
* `blobs`, one row per (t, version `ver`, channel `ch`): a channel's value is
  written only when its version changes, and a version without a value has no row.
  Keyed version first: the channels a step updates share its new version, so a
  step's rows are appended at the end of the thread's range (channel first would
  insert at one place per channel and leave half-full pages behind).
  `kind` `FULL` (the serde bytes, type `typ`) or `APPEND` (the items appended to the
  list at version `base`); `extends` links a full copy of a list to the version whose
  items it starts with, `n_items`, `since_full` and `full_size` bound append chains,
  and `summary` holds the version summary of a frame (`op`, `turn`, ...; msgpack,
  texts repeated from its source's summary elided, see `_checkpoint_codec`).
* `spill (id, data)`: payloads over `_checkpoint_blobs.SPILL` bytes, whose `blobs`
  row holds the `spill` id in `data` instead (a rowid table keeps rows up to 4 KB in
  its leaves, where a `WITHOUT ROWID` row over ~1 KB starts an overflow page of its
  own); triggers delete a spilled payload with its row.
* `writes`, one row per (t, checkpoint `cid`, `task`): the task's pending writes
  packed in one payload (`_checkpoint_blobs.pack_writes`) and its `path` (interned).
  `refs` is 1 when some of its writes are stored against `blobs` rows (which they
  keep alive): a `W_PREFIX` write extends a stored list, and a `W_BLOB` write is the
  payload of the value the next checkpoint stored (a write is rewritten so once that
  row exists).

Every payload (`data` of `blobs` and `writes`) is raw (`z` 0), zstd (1) or zstd
against the raw payload of one `blobs` row (2), named by `src_ch` and `src_ver`
(channel and version); `depth` counts that chain of sources. A row used as a source
is re-compressed on its own before its source is deleted or rewritten; `writes` rows
are never sources.

Every table is `WITHOUT ROWID` (a row is stored once, in key order, with no second
index) but `names`, `threads` and `spill`. Schema 2 files (llmctx before this
layout) are refused, not migrated: their rows are keyed by the text ids and written
by code this version no longer has. `PRAGMA application_id` marks the file as ours and
`PRAGMA user_version` holds the schema version, so a foreign, corrupt, older or newer
file is refused with a clear error instead of being silently reset.
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
SCHEMA_VERSION = 3
_SQLITE_MAGIC = b"SQLite format 3\x00"

_DDL = """
CREATE TABLE names (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE threads (
    t INTEGER PRIMARY KEY AUTOINCREMENT,
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    UNIQUE (thread_id, checkpoint_ns)
);

CREATE TABLE checkpoints (
    t INTEGER NOT NULL,
    id BLOB NOT NULL,
    parent BLOB,
    ts BLOB NOT NULL,
    step INTEGER,
    source INTEGER,
    run_id TEXT,
    meta TEXT,
    frame BLOB,
    depth INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (t, id)
) WITHOUT ROWID;
CREATE INDEX checkpoints_run_id ON checkpoints (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE blobs (
    t INTEGER NOT NULL,
    ch INTEGER NOT NULL,
    ver BLOB NOT NULL,
    kind INTEGER NOT NULL,
    base BLOB,
    typ INTEGER,
    z INTEGER NOT NULL,
    data BLOB,
    src_ch INTEGER,
    src_ver BLOB,
    depth INTEGER,
    n_items INTEGER,
    since_full INTEGER,
    full_size INTEGER,
    extends BLOB,
    summary BLOB,
    PRIMARY KEY (t, ver, ch)
) WITHOUT ROWID;

CREATE TABLE spill (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TRIGGER blobs_spill_delete AFTER DELETE ON blobs
WHEN typeof(old.data) = 'integer'
BEGIN DELETE FROM spill WHERE id = old.data; END;
CREATE TRIGGER blobs_spill_update AFTER UPDATE OF data ON blobs
WHEN typeof(old.data) = 'integer' AND old.data IS NOT new.data
BEGIN DELETE FROM spill WHERE id = old.data; END;

CREATE TABLE writes (
    t INTEGER NOT NULL,
    cid BLOB NOT NULL,
    task BLOB NOT NULL,
    path INTEGER NOT NULL,
    z INTEGER NOT NULL,
    data BLOB NOT NULL,
    src_ch INTEGER,
    src_ver BLOB,
    depth INTEGER,
    refs INTEGER,
    PRIMARY KEY (t, cid, task)
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
                f"{SCHEMA_VERSION} only); its layout cannot be read. Open it with the llmctx "
                "that wrote it to export what you need",
            )
        if not {"names", "threads", "checkpoints", "blobs", "spill", "writes"} <= tables:
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
            for statement in _statements(_DDL):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """The statements of a DDL script (trigger bodies keep their inner `;`)."""
    out: list[str] = []
    for part in script.split(";"):
        last = out[-1].strip().upper() if out else ""
        if last.startswith("CREATE TRIGGER") and not last.endswith("END"):
            out[-1] += ";" + part
        elif part.strip():
            out.append(part)
    return out


def _pragmas(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a committed transaction survives a killed process; only a
    # power loss can drop the last few, and never corrupts the file.
    conn.execute("PRAGMA synchronous=NORMAL")
    # A row replaced by INSERT OR REPLACE fires its delete trigger (frees its spill).
    conn.execute("PRAGMA recursive_triggers=ON")
    # Checkpoint the WAL every ~400 KB and shrink it back afterwards, so the log never
    # holds more than a fraction of the store (the default lets it grow to 4 MB+).
    conn.execute("PRAGMA wal_autocheckpoint=100")
    conn.execute("PRAGMA journal_size_limit=65536")
