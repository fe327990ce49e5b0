"""`LlmctxSaver`: the embedded checkpointer behind every context version.

A LangGraph `BaseCheckpointSaver` on one SQLite file (WAL mode), built for long
chat threads where every turn is several checkpoints:

* a channel's value is written only when its version changes (one row per thread,
  channel and version, like `PostgresSaver`'s blobs); the append-only `messages`
  history is stored incrementally (only the new messages, with geometrically spaced
  full copies), see `_checkpoint_blobs`;
* every payload is compressed against one earlier payload when that pays: a frame
  against its previous version, the input message's second copy (the history's)
  against the first, a new message against a recent one (`delta_depth` bounds the
  chain a read decompresses);
* a task's pending writes are one row, and a write whose value the next checkpoint
  stores becomes a reference to that row (LangGraph saves the two in either order;
  whichever comes second links them), so each value is stored once;
* a checkpoint's body is stored as a delta against its parent's (`_checkpoint_body`);
  keys are packed (`_checkpoint_keys`); the layout is in `_checkpoint_schema`;
* listing versions reads small columns only: `list_versions` returns each
  checkpoint's metadata and a summary of its frame without materializing state.

It passes every base and extended test of `langgraph-checkpoint-conformance`,
supports `DeltaChannel` threads, and refuses a foreign, corrupt, older or newer file
with `CheckpointStoreError` rather than resetting it.

Example:
    >>> with LlmctxSaver(".llm/versions/checkpoints.sqlite") as saver:
    ...     graph = build_context_graph(checkpointer=saver)
    ...     graph.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "t"}})
    ...     [v.turn for v in saver.list_versions("t", changed_only=True)]

Values are treated as immutable once checkpointed (LangGraph's contract): the
saver recognizes an appended history by the identity of the list items it last
wrote or read, so mutating an already checkpointed message in place is not seen.

What a turn costs (`python -m tests.benchmarks.versions`: one human and one AI
message of 200 tokens per turn, four checkpoints and three tasks' writes per turn,
llmctx's frame of ~34 KB): about 2.7 KB per turn at 2,000 turns, WAL included, of
which the two messages are ~0.8 KB, the frame's change ~0.3 KB (plus a full frame
every `delta_depth` versions), the four checkpoint rows ~0.45 KB.
"""

from __future__ import annotations

import asyncio
import json
import operator
import random
import sqlite3
import threading
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    PendingWrite,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from llmctx.runtime._checkpoint_blobs import (
    APPEND,
    BLOB_COLUMNS,
    EMPTY,
    FULL,
    W_BLOB,
    W_PLAIN,
    W_PREFIX,
    BlobCache,
    BlobReader,
    Encoded,
    Recent,
    WriteEntry,
    empty,
    encode,
    pack_writes,
    source_of,
    spilled,
    store_data,
)
from llmctx.runtime._checkpoint_body import (
    MAX_DEPTH,
    Flat,
    decode_body,
    encode_body,
    flatten,
    pack_metadata,
    unflatten,
    unpack_metadata,
)
from llmctx.runtime._checkpoint_codec import (
    Candidate,
    best_compression,
    compress,
    elided,
    pack_summary,
    resolve_summary,
    unpack_summary,
)
from llmctx.runtime._checkpoint_keys import (
    Names,
    Threads,
    pack_id,
    pack_ts,
    pack_version,
    unpack_id,
    unpack_ts,
    unpack_version,
)
from llmctx.runtime._checkpoint_schema import CheckpointStoreError, connect

__all__ = ["CheckpointStoreError", "LlmctxSaver", "VersionRow"]

_PRUNE_STRATEGIES = ("keep_latest", "delete")
_BLOB_INSERT_NEW = (
    f"INSERT INTO blobs ({BLOB_COLUMNS}) VALUES ({', '.join('?' * len(BLOB_COLUMNS.split(',')))})"
)
_BLOB_INSERT = _BLOB_INSERT_NEW.replace("INSERT", "INSERT OR REPLACE", 1)


class _Conflict(Exception):
    """A plain insert met a stored row: the write is redone in careful mode."""


def _insert(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    try:
        conn.executemany(sql, rows)
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" not in str(exc) and "PRIMARY KEY" not in str(exc):
            raise
        raise _Conflict from exc


_CHECKPOINT_COLUMNS = "t, id, parent, ts, step, source, run_id, meta, frame, depth, body"
_WRITE_COLUMNS = "t, cid, task, path, z, data, src_ch, src_ver, depth, refs"
_INPUT_CHANNEL = "__start__"  # holds a run's input messages
_BODY_CACHE = 512

# The chain of bodies a checkpoint's body is a delta against, back to a full one.
_BODY_CHAIN_SQL = """
WITH RECURSIVE chain(id, parent, depth, body) AS (
    SELECT id, parent, depth, body FROM checkpoints WHERE t = ?1 AND id = ?2
    UNION ALL
    SELECT c.id, c.parent, c.depth, c.body FROM checkpoints c JOIN chain
    ON c.t = ?1 AND c.id = chain.parent WHERE chain.depth > 0
)
SELECT id, parent, depth, body FROM chain
"""


class VersionRow(NamedTuple):
    """One checkpoint as `list_versions` reads it: no channel values are decoded.

    The summary fields come from the frame (the `context` channel) that this
    checkpoint sees, extracted when that frame was written (the contract is in
    `_checkpoint_codec.frame_summary`): `op`/`reason` from `last_op`, `template`,
    `turn`, `window_tokens`, `history_tokens`, `history_messages`, and
    `tokens_exact` from `tokenizer.exact`. They are `None` when the checkpoint has
    no frame yet. `summary_version` is the frame's channel version: consecutive
    checkpoints with the same one show the same frame.
    """

    checkpoint_id: str
    parent_id: str | None
    step: int | None
    source: str | None
    ts: str
    metadata: dict[str, Any]
    summary_version: str | None
    op: str | None
    reason: str | None
    template: str | None
    turn: int | None
    window_tokens: int | None
    history_tokens: int | None
    history_messages: int | None
    tokens_exact: bool | None

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


_TaskRows = dict[Any, tuple[list[WriteEntry], int]]
"""The pending-write rows this process stored for one checkpoint, by task (their
writes, and their stored size): what its child checkpoint will store again."""
_RECENT_CHECKPOINTS = 4  # LangGraph may save a step's writes and the next put in any order
_RECENT_THREADS = 64


def _remember(
    store: dict[int, OrderedDict[Any, dict[Any, Any]]],
    t: int,
    cid: Any,
    items: dict[Any, Any],
    *,
    merge: bool = False,
) -> None:
    """Keep `items` for checkpoint `cid` of thread `t`, for the last few of each."""
    by_checkpoint = store.pop(t, None) or OrderedDict()
    store[t] = by_checkpoint  # most recently used thread last
    if merge and cid in by_checkpoint:
        by_checkpoint[cid].update(items)
    else:
        by_checkpoint[cid] = dict(items)
    while len(by_checkpoint) > _RECENT_CHECKPOINTS:
        by_checkpoint.popitem(last=False)
    while len(store) > _RECENT_THREADS:
        store.pop(next(iter(store)))


class LlmctxSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpointer on one SQLite file, with incremental channel storage.

    `path` is created if missing. `summary_channel` names the channel whose value
    feeds the `VersionRow` summary (`"context"`, the llmctx frame). `delta_depth`
    bounds a chain of compression sources (a read decompresses at most that many
    payloads to rebuild one); `append_ratio` bounds an append chain (a full copy once
    the appended bytes reach that multiple of the last full copy).

    Thread-safe: one connection guarded by a lock; the async methods run the
    sync ones in a worker thread. Several processes may share the file (WAL,
    `BEGIN IMMEDIATE` writes, 30 s busy timeout).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        serde: SerializerProtocol | None = None,
        summary_channel: str = "context",
        delta_depth: int = 64,
        append_ratio: float = 16.0,
    ) -> None:
        super().__init__(serde=serde)
        self.path = Path(path)
        self.summary_channel = summary_channel
        self.delta_depth = delta_depth
        self.append_ratio = append_ratio
        self._conn: sqlite3.Connection | None = connect(self.path)
        self._lock = threading.RLock()
        self._names = Names()
        self._threads = Threads()
        self._cache = BlobCache()
        self._recent: dict[int, Recent] = {}
        self._task_rows: dict[int, OrderedDict[Any, _TaskRows]] = {}
        # What the last few puts stored, by parent: (version, type id, payload) by channel.
        self._child_values: dict[int, OrderedDict[Any, dict[int, Any]]] = {}
        # The body last written or read per thread number: the parent of the next put.
        self._bodies: OrderedDict[int, tuple[bytes | str, Flat, int]] = OrderedDict()
        # True inside a write when no other connection committed since our last write:
        # then what this process cached (bases, recent sources) is known to be in the
        # file and needs no lookup (`PRAGMA data_version` tells).
        self._trusted = False
        self._on_commit: list[Callable[[], None]] = []
        self._write_version: int | None = None
        self._seen_version: int | None = None

    @classmethod
    def from_path(cls, path: str | Path, **options: Any) -> LlmctxSaver:
        """Open (or create) the store at `path`; `options` as for the constructor."""
        return cls(path, **options)

    # -- lifecycle ---------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CheckpointStoreError(f"{self.path}: the checkpoint store is closed")
        return self._conn

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._cache.clear()
                self._recent.clear()
                self._task_rows.clear()
                self._child_values.clear()
                self._bodies.clear()
                self._threads.clear()

    def __enter__(self) -> LlmctxSaver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> LlmctxSaver:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _observe(self, conn: sqlite3.Connection) -> int:
        """Note another connection's commits: they may have deleted or rewritten
        threads, so the caches that are not checked row by row are dropped."""
        seen = conn.execute("PRAGMA data_version").fetchone()[0]
        if seen != self._seen_version:
            self._seen_version = seen
            self._threads.clear()
            self._bodies.clear()
        return int(seen)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken eagerly so concurrent writers queue up.

        Callbacks in `_on_commit` run after the commit, still under the lock, so the
        caches they fill are never seen without the rows they describe (nor the rows
        without them by a concurrent put or put_writes of this process).
        """
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            self._on_commit = []
            try:
                seen = self._observe(conn)
                self._trusted = seen == self._write_version
                self._write_version = seen
                yield conn
            except BaseException:
                self._trusted = False
                self._names.rollback()
                self._threads.rollback()
                conn.execute("ROLLBACK")
                raise
            finally:
                self._trusted = False
            conn.execute("COMMIT")
            self._names.commit()
            self._threads.commit()
            hooks, self._on_commit = self._on_commit, []
            for hook in hooks:
                hook()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot across several queries."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN")
            try:
                self._observe(conn)
                yield conn
            finally:
                conn.execute("COMMIT")

    # -- versions ------------------------------------------------------------------

    def get_next_version(self, current: str | int | float | None, channel: None) -> str:
        """A zero-padded counter plus a random suffix, so forks never share a version."""
        if current is None:
            count = 0
        elif isinstance(current, str):
            count = int(current.split(".")[0])
        else:
            count = int(current)
        return f"{count + 1:010d}.{random.getrandbits(40):010x}"

    # -- write ---------------------------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint; only the channels in `new_versions` get new rows."""
        try:
            return self._put(config, checkpoint, metadata, new_versions, careful=False)
        except _Conflict:
            # The checkpoint or a version is stored already: redo it with the checks
            # that keep what was built on the old rows readable.
            return self._put(config, checkpoint, metadata, new_versions, careful=True)

    def _put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
        *,
        careful: bool,
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "") or ""
        parent_id = conf.get("checkpoint_id")
        values: dict[str, Any] = checkpoint.get("channel_values") or {}
        flat = flatten({k: v for k, v in checkpoint.items() if k not in _NOT_BODY})
        md = get_serializable_checkpoint_metadata(config, metadata)
        cid = pack_id(str(checkpoint["id"]))
        parent = pack_id(str(parent_id)) if parent_id else None
        summary_version = checkpoint["channel_versions"].get(self.summary_channel)
        with self._write() as conn:
            t = self._threads.get(conn, thread_id, ns)

            def name_id(name: str) -> int:
                return self._names.id(conn, name)

            depth = 0
            parent_flat = None
            if parent is not None and parent != cid:
                found = self._parent_body(conn, t, parent)
                if found is not None and found[1] + 1 < MAX_DEPTH:
                    parent_flat, depth = found[0], found[1] + 1
            body = encode_body(flat, parent_flat, name_id, self.serde)
            if careful:
                self._before_rewrite_checkpoint(conn, t, cid)
            keyed = [(ch, name_id(ch), pack_version(ver)) for ch, ver in new_versions.items()]
            encoded = [
                (ch, ch_id, ver, self._encode(conn, t, parent, ch, ch_id, ver, values))
                for ch, ch_id, ver in keyed
            ]
            # New rows are inserted plainly: a version or checkpoint stored already (a
            # conflict) restarts the put in careful mode, which handles it.
            if careful or any(enc.kind == EMPTY for *_, enc in encoded):
                existing = _existing_versions(conn, t, [(c, v) for _, c, v, _ in encoded])
            else:
                existing = set()
            checked = [
                (
                    ch,
                    ch_id,
                    ver,
                    self._check_blob(conn, t, parent, ch, ch_id, ver, enc, values)
                    if (ch_id, ver) in existing
                    else enc,
                )
                for ch, ch_id, ver, enc in encoded
            ]
            # A channel without a value gets no row: a missing version reads as empty.
            rows = [
                enc.row(t, ch_id, ver, name_id(enc.type) if enc.type else None)
                for _, ch_id, ver, enc in checked
                if enc.kind != EMPTY
            ]
            _insert(
                conn,
                _BLOB_INSERT if careful else _BLOB_INSERT_NEW,
                [(*r[:7], store_data(conn, r[7]), *r[8:]) for r in rows],
            )
            if emptied := [(t, c, v) for _, c, v, e in checked if e.kind == EMPTY]:
                conn.executemany("DELETE FROM blobs WHERE t = ? AND ch = ? AND ver = ?", emptied)
            stored = {
                ch_id: (ver, name_id(enc.type), enc.stored_raw, enc.comp.depth)
                for _, ch_id, ver, enc in checked
                if enc.kind in (FULL, APPEND)
                and enc.type
                and enc.stored_raw is not None
                and enc.comp is not None
            }
            step, source, run_id, meta = pack_metadata(md, name_id)
            _insert(
                conn,
                f"INSERT {'OR REPLACE ' if careful else ''}INTO checkpoints "
                f"({_CHECKPOINT_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                [
                    (
                        t,
                        cid,
                        parent,
                        pack_ts(str(checkpoint["ts"]), cid),
                        step,
                        source,
                        run_id,
                        meta,
                        None if summary_version is None else pack_version(summary_version),
                        depth,
                        body,
                    )
                ],
            )
            self._refer_parent_writes(conn, t, parent, stored)
            self._on_commit.append(
                lambda: self._after_put(t, cid, parent, flat, depth, stored, checked, values)
            )
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    def _after_put(
        self,
        t: int,
        cid: Any,
        parent: Any,
        flat: Flat,
        depth: int,
        stored: dict[int, Any],
        checked: list[tuple[str, int, Any, Encoded]],
        values: dict[str, Any],
    ) -> None:
        """Cache what a committed put stored: the next put's bases and sources."""
        self._remember_body(t, cid, flat, depth)
        if parent is not None:
            # LangGraph may save the parent's writes after this put: they look here.
            _remember(self._child_values, t, parent, stored)
        for ch, ch_id, ver, enc in checked:
            entry = enc.entry
            comp = enc.comp
            if entry is not None and enc.kind == FULL and comp is not None:
                entry.source = Candidate((ch_id, ver), enc.stored_raw or b"", comp.depth)
            self._cache.set((t, ch_id), entry)
            if (
                enc.kind in (FULL, APPEND)
                and comp is not None
                and enc.stored_raw is not None
                and _recent_worthy(ch, values.get(ch))
            ):
                self._recent_of(t).add(Candidate((ch_id, ver), enc.stored_raw, comp.depth))

    def _encode(
        self,
        conn: sqlite3.Connection,
        t: int,
        parent: bytes | str | None,
        channel: str,
        ch: int,
        version: int | str,
        values: dict[str, Any],
    ) -> Encoded:
        if channel not in values:
            return empty()
        value = values[channel]
        prev = self._cache.get((t, ch))
        if prev is not None and not self._stored(conn, t, ch, prev.version):
            self._cache.set((t, ch), None)  # another process deleted it
            prev = None
        candidates = [c for c in self._candidates(conn, t) if c.ref != (ch, version)]
        return encode(
            self.serde,
            version,
            value,
            prev,
            summarize=channel == self.summary_channel,
            append_ratio=self.append_ratio,
            max_depth=self.delta_depth,
            candidates=candidates,
        )

    def _stored(self, conn: sqlite3.Connection, t: int, ch: int, version: int | str) -> bool:
        """Whether a version this process cached is still in the file."""
        return self._trusted or _blob_exists(conn, t, ch, version)

    def _recent_of(self, t: int) -> Recent:
        recent = self._recent.get(t)
        if recent is None:
            if len(self._recent) >= 512:  # forget the least recently created thread
                self._recent.pop(next(iter(self._recent)))
            recent = self._recent[t] = Recent()
        return recent

    def _candidates(self, conn: sqlite3.Connection, t: int) -> list[Candidate]:
        """The thread's recent payloads that are still in the file, newest first."""
        recent = self._recent.get(t)
        if recent is None or not recent.items:
            return []
        if self._trusted:
            return list(recent.items)
        alive = [c for c in recent.items if _blob_exists(conn, t, *c.ref)]
        recent.keep(alive)
        return alive

    def _refer_parent_writes(
        self,
        conn: sqlite3.Connection,
        t: int,
        parent: bytes | str | None,
        stored: dict[int, tuple[int | str, int, bytes, int]],
    ) -> None:
        """Rewrite the parent's pending writes against what this put stored
        (`stored`: channel -> (version, type id, payload, depth)).

        A write whose payload a new row now stores becomes a reference to it
        (`W_BLOB`); a row whose other writes resemble a new value (a message whose id
        the reducer set after it was saved) is compressed against it when smaller.
        Only the rows this process wrote, and only when no other connection wrote
        since (`_trusted`): then the cached entries are what the file holds.
        """
        if parent is None:
            return
        by_checkpoint = self._task_rows.get(t)
        rows = by_checkpoint.pop(parent, None) if by_checkpoint else None
        if rows is None or not self._trusted:
            return
        for task, (entries, size) in rows.items():
            out, sources = _against_stored(entries, stored)
            comp = best_compression(pack_writes(out), sources, max_depth=self.delta_depth)
            if out == entries and comp.size >= size:
                continue
            src_ch, src_ver = comp.src or (None, None)
            conn.execute(
                "UPDATE writes SET z = ?, data = ?, src_ch = ?, src_ver = ?, depth = ?, refs = ? "
                "WHERE t = ? AND cid = ? AND task = ?",
                (
                    comp.z,
                    comp.data,
                    src_ch,
                    src_ver,
                    comp.depth or None,
                    _refs(out),
                    t,
                    parent,
                    task,
                ),
            )

    def _refer_child_values(
        self, conn: sqlite3.Connection, t: int, cid: Any, entries: list[WriteEntry]
    ) -> tuple[list[WriteEntry], list[Candidate]]:
        """`_against_stored` with what a child checkpoint of `cid` stored (LangGraph
        saved that checkpoint before these writes), if it is still in the file."""
        stored = self._child_values.get(t, {}).get(cid)
        if not stored:
            return entries, []
        alive = {ch: hit for ch, hit in stored.items() if self._stored(conn, t, ch, hit[0])}
        return _against_stored(entries, alive)

    def _forget(self, t: int) -> None:
        """Drop what this process cached about a thread (after deleting from it)."""
        self._cache.drop_thread(t)
        self._recent.pop(t, None)
        self._task_rows.pop(t, None)
        self._child_values.pop(t, None)
        self._bodies.pop(t, None)

    def _remember_body(self, t: int, cid: bytes | str, flat: Flat, depth: int) -> None:
        self._bodies[t] = (cid, flat, depth)
        self._bodies.move_to_end(t)
        while len(self._bodies) > _BODY_CACHE:
            self._bodies.popitem(last=False)

    def _parent_body(
        self, conn: sqlite3.Connection, t: int, parent: bytes | str
    ) -> tuple[Flat, int] | None:
        """The flat body and depth of a stored checkpoint, or `None` if it isn't."""
        cached = self._bodies.get(t)
        if cached is not None and cached[0] == parent:
            return cached[1], cached[2]
        bodies = _Bodies(self, conn, t)
        flat = bodies.get(parent)
        if flat is None:
            return None
        return flat, bodies.depth(parent)

    def _before_rewrite_checkpoint(
        self, conn: sqlite3.Connection, t: int, cid: bytes | str
    ) -> None:
        """A checkpoint stored again (same id) may change its body: the bodies stored
        as deltas against it become full ones first."""
        if conn.execute("SELECT 1 FROM checkpoints WHERE t = ? AND id = ?", (t, cid)).fetchone():
            self._materialize_children(conn, t, {cid})
            self._bodies.pop(t, None)

    def _materialize_children(
        self, conn: sqlite3.Connection, t: int, parents: set[bytes | str]
    ) -> None:
        """Rewrite as full bodies the bodies stored as deltas against `parents`."""
        if not parents:
            return
        children = [
            r[0]
            for r in conn.execute(
                "SELECT id, parent FROM checkpoints WHERE t = ? AND depth > 0", (t,)
            )
            if r[1] in parents
        ]
        if not children:
            return
        bodies = _Bodies(self, conn, t)
        updates = []
        for child in children:
            flat = bodies.get(child)
            assert flat is not None
            body = encode_body(flat, None, lambda n: self._names.id(conn, n), self.serde)
            updates.append((body, t, child))
        conn.executemany(
            "UPDATE checkpoints SET depth = 0, body = ? WHERE t = ? AND id = ?", updates
        )

    def _check_blob(
        self,
        conn: sqlite3.Connection,
        t: int,
        parent: bytes | str | None,
        channel: str,
        ch: int,
        version: int | str,
        enc: Encoded,
        values: dict[str, Any],
    ) -> Encoded:
        """`enc` for a version that is already stored (the same key written again).

        Everything built on the old row first stops depending on it: rows compressed
        against it are re-compressed alone, appends to it become full copies and
        pending writes that extend it store their whole list.
        """
        dependents = [
            r[0]
            for r in conn.execute(
                "SELECT ver FROM blobs WHERE t = ? AND ch = ? AND base = ?", (t, ch, version)
            )
        ]
        changing = {(ch, v) for v in [version, *dependents]}
        dependent_writes = self._writes_on(conn, t, ch, {version, *dependents})
        self._detach(conn, t, changing)
        self._rematerialize_dependents(conn, t, ch, version)
        self._rematerialize_writes(conn, t, dependent_writes)
        conn.execute(
            "UPDATE blobs SET extends = NULL WHERE t = ? AND ch = ? AND extends = ?",
            (t, ch, version),
        )
        self._recent.pop(t, None)
        self._task_rows.pop(t, None)
        if enc.comp is not None and enc.comp.src is not None:
            # Its source may have been one of the rows just rewritten.
            enc = self._encode(conn, t, parent, channel, ch, version, values)
        return enc

    def _writes_on(
        self, conn: sqlite3.Connection, t: int, ch: int, versions: set[Any]
    ) -> list[tuple[bytes | str, bytes | str]]:
        """The pending-write rows stored against (ch, any of `versions`)."""
        out = []
        for cid, task, bases in self._write_bases(conn, t):
            if any(b[0] == ch and b[1] in versions for b in bases):
                out.append((cid, task))
        return out

    def _write_bases(
        self, conn: sqlite3.Connection, t: int
    ) -> list[tuple[Any, Any, set[tuple[int, Any]]]]:
        """Every pending-write row stored against `blobs` rows (`refs`), with those rows."""
        reader = BlobReader(conn, self.serde, BlobCache(0), self._names, t)
        return [
            (cid, task, {(e.ch, e.base) for e in reader.writes(z, data, src) if _is_ref(e)})
            for cid, task, z, data, src in _write_payloads(conn, t, "refs IS NOT NULL")
        ]

    def _rematerialize_writes(
        self,
        conn: sqlite3.Connection,
        t: int,
        rows: list[tuple[bytes | str, bytes | str]],
    ) -> None:
        """Store every write of these rows on its own (their bases are about to change)."""
        if not rows:
            return
        reader = BlobReader(conn, self.serde, BlobCache(0), self._names, t)
        updates = []
        for cid, task in rows:
            ((_, _, z, data, src),) = _write_payloads(conn, t, "cid = ? AND task = ?", cid, task)
            entries = []
            for entry in reader.writes(z, data, src):
                value = reader.write_value(entry)
                typ, raw = self.serde.dumps_typed(value)
                typ_id = self._names.id(conn, typ)
                entries.append(WriteEntry(entry.idx, entry.ch, typ_id, W_PLAIN, raw))
            z2, data2 = compress(pack_writes(entries))
            updates.append((z2, data2, t, cid, task))
        conn.executemany(
            "UPDATE writes SET z = ?, data = ?, src_ch = NULL, src_ver = NULL, depth = NULL, "
            "refs = NULL "
            "WHERE t = ? AND cid = ? AND task = ?",
            updates,
        )

    def _rematerialize_dependents(
        self, conn: sqlite3.Connection, t: int, ch: int, version: int | str
    ) -> None:
        """Turn the appends to a version about to be replaced into full copies."""
        dependents = [
            r[0]
            for r in conn.execute(
                "SELECT ver FROM blobs WHERE t = ? AND ch = ? AND base = ?", (t, ch, version)
            )
        ]
        if not dependents:
            return
        reader = BlobReader(conn, self.serde, BlobCache(0), self._names, t)
        rows = []
        for dep in dependents:
            found, value = reader.value(ch, dep)
            if not found:
                continue
            typ, raw = self.serde.dumps_typed(value)
            z, data = compress(raw)
            n_items = len(value) if isinstance(value, list) else None
            typ_id = self._names.id(conn, typ)
            rows.append((typ_id, z, store_data(conn, data), n_items, len(raw), t, ch, dep))
        conn.executemany(
            f"UPDATE blobs SET kind = {FULL}, base = NULL, typ = ?, z = ?, data = ?, "
            "src_ch = NULL, src_ver = NULL, depth = NULL, n_items = ?, since_full = NULL, "
            "full_size = ? "
            "WHERE t = ? AND ch = ? AND ver = ?",
            rows,
        )
        self._forget(t)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes; a repeated (task, index) is ignored."""
        try:
            self._put_writes(config, writes, task_id, task_path, careful=False)
        except _Conflict:
            # The task has writes stored already: merge with them.
            self._put_writes(config, writes, task_id, task_path, careful=True)

    def _put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
        *,
        careful: bool,
    ) -> None:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "") or ""
        cid = pack_id(str(conf["checkpoint_id"]))
        task = pack_id(str(task_id))
        # Special writes (errors, interrupts) replace; regular ones are write-once.
        replace = all(w[0] in WRITES_IDX_MAP for w in writes)
        with self._write() as conn:
            t = self._threads.get(conn, thread_id, ns)
            old: list[WriteEntry] = []
            found = []
            if careful:
                found = _write_payloads(conn, t, "cid = ? AND task = ?", cid, task)
            if found:
                reader = BlobReader(conn, self.serde, self._cache, self._names, t)
                old = reader.writes(*found[0][2:])
            have = {e.idx for e in old}
            new: list[WriteEntry] = []
            for i, (channel, value) in enumerate(writes):
                idx = WRITES_IDX_MAP.get(channel, i)
                if idx in have and not replace:
                    continue
                new.append(self._encode_write(conn, t, idx, channel, value))
            new, child = self._refer_child_values(conn, t, cid, new)
            if not new:
                return
            replaced = {e.idx for e in new}
            entries = sorted([*(e for e in old if e.idx not in replaced), *new], key=_write_order)
            raw = pack_writes(entries)
            own = [
                c
                for e in entries
                if (prev := self._cache.get((t, e.ch))) is not None
                and prev.source is not None
                and prev.items is None
                and self._stored(conn, t, e.ch, prev.version)
                for c in [prev.source]
            ]
            candidates = [*child, *own, *self._candidates(conn, t)]
            comp = best_compression(raw, candidates, max_depth=self.delta_depth)
            _insert(
                conn,
                f"INSERT {'OR REPLACE ' if careful else ''}INTO writes ({_WRITE_COLUMNS}) "
                f"VALUES ({', '.join('?' * 10)})",
                [
                    (
                        t,
                        cid,
                        task,
                        self._names.id(conn, task_path),
                        comp.z,
                        comp.data,
                        *(comp.src or (None, None)),
                        comp.depth or None,
                        _refs(entries),
                    )
                ],
            )
            if any(e.kind == W_PLAIN for e in entries):
                size = comp.size
                self._on_commit.append(
                    lambda: _remember(self._task_rows, t, cid, {task: (entries, size)}, merge=True)
                )

    def _encode_write(
        self, conn: sqlite3.Connection, t: int, idx: int, channel: str, value: Any
    ) -> WriteEntry:
        """One pending write; a list that shares its first items (identical objects: the
        whole history returned again by a node) with the channel's latest stored list
        stores only the rest (`W_PREFIX`, with how many of the base's items it keeps)."""
        ch = self._names.id(conn, channel)
        prev = self._cache.get((t, ch))
        if type(value) is list and prev is not None and prev.items:
            shared = _shared_prefix(prev.items, value)
            if shared and 2 * shared >= len(value) and self._stored(conn, t, ch, prev.version):
                typ, raw = self.serde.dumps_typed(value[shared:])
                count = None if shared == len(prev.items) else shared
                typ_id = self._names.id(conn, typ)
                return WriteEntry(idx, ch, typ_id, W_PREFIX, raw, prev.version, count)
        typ, raw = self.serde.dumps_typed(value)
        return WriteEntry(idx, ch, self._names.id(conn, typ), W_PLAIN, raw)

    # -- read ----------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The requested checkpoint (or the thread's latest), with values and writes."""
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "") or ""
        checkpoint_id = get_checkpoint_id(config)
        with self._read() as conn:
            t = self._threads.find(conn, thread_id, ns)
            if t is None:
                return None
            if checkpoint_id:
                row = conn.execute(
                    f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE t = ? AND id = ?",
                    (t, pack_id(str(checkpoint_id))),
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE t = ? "
                    "ORDER BY id DESC LIMIT 1",
                    (t,),
                ).fetchone()
            if row is None:
                return None
            reader = BlobReader(conn, self.serde, self._cache, self._names, t)
            bodies = _Bodies(self, conn, t)
            writes = self._writes(conn, reader, [row[1]])
            tup = self._tuple(conn, (thread_id, ns), row, reader, bodies, writes.get(row[1], []))
            if not checkpoint_id or t not in self._bodies:
                # The head read at the start of a run is the parent of its next put.
                self._remember_body(t, row[1], bodies.get(row[1]) or {}, row[9])
            return tup

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first, with values (decoded once per stored row).

        For a thread's history without values, `list_versions` is much faster.
        """
        yield from self._list(config, filter=filter, before=before, limit=limit)

    def _list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> list[CheckpointTuple]:
        with self._read() as conn:
            wheres: list[str] = []
            params: list[Any] = []
            if config:
                conf = config["configurable"]
                thread_id = str(conf["thread_id"])
                ns_filter = conf.get("checkpoint_ns")
                numbers = self._threads.of_thread(conn, thread_id)
                if ns_filter is not None:
                    numbers = {k: v for k, v in numbers.items() if k == ns_filter}
                if not numbers:
                    return []
                wheres.append(f"t IN ({', '.join(str(int(n)) for n in numbers.values())})")
                if checkpoint_id := get_checkpoint_id(config):
                    wheres.append("id = ?")
                    params.append(pack_id(str(checkpoint_id)))
            if before is not None and (before_id := get_checkpoint_id(before)):
                wheres.append("id < ?")
                params.append(pack_id(str(before_id)))
            for key, value in (filter or {}).items():
                # Columns answer what they hold; anything else is checked in Python below.
                if key == "source" and isinstance(value, str):
                    found = self._names.find(conn, value)
                    if found is None:
                        return []
                    wheres.append("source = ?")
                    params.append(found)
                elif key == "step" and type(value) is int:
                    wheres.append("step = ?")
                    params.append(value)
                elif key == "run_id" and isinstance(value, str):
                    wheres.append("run_id = ?")
                    params.append(value)
            where = f"WHERE {' AND '.join(wheres)}" if wheres else ""
            sql = f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints {where} ORDER BY id DESC"
            if limit is not None and not filter:
                sql += f" LIMIT {int(limit)}"
            rows = []
            for row in conn.execute(sql, params):
                if filter:
                    md = self._metadata(conn, row)
                    if not all(md.get(k) == v for k, v in filter.items()):
                        continue
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
            by_thread: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
            for row in rows:
                by_thread[row[0]].append(row)
            tuples: dict[tuple[int, Any], CheckpointTuple] = {}
            for t, group in by_thread.items():
                key = self._threads.key(conn, t)
                reader = BlobReader(conn, self.serde, self._cache, self._names, t)
                bodies = _Bodies(self, conn, t)
                if len(group) > 4:
                    for ch in _channels(conn, t):
                        reader.prefetch(ch)
                writes = self._writes(conn, reader, [r[1] for r in group])
                # Oldest first, so each version's delta finds its base decoded.
                for row in reversed(group):
                    tuples[(t, row[1])] = self._tuple(
                        conn, key, row, reader, bodies, writes.get(row[1], [])
                    )
            return [tuples[(r[0], r[1])] for r in rows]

    def _metadata(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> dict[str, Any]:
        return unpack_metadata(row[4], row[5], row[6], row[7], lambda i: self._names.name(conn, i))

    def _tuple(
        self,
        conn: sqlite3.Connection,
        key: tuple[str, str],
        row: tuple[Any, ...],
        reader: BlobReader,
        bodies: _Bodies,
        writes: list[PendingWrite],
    ) -> CheckpointTuple:
        thread_id, ns = key
        cid, parent = row[1], row[2]
        flat = bodies.decode(cid, parent, row[9], row[10])
        body = unflatten(flat)
        checkpoint_id = unpack_id(cid)
        checkpoint: Checkpoint = {
            **body,  # type: ignore[typeddict-item]
            "id": checkpoint_id,
            "ts": unpack_ts(row[3], cid),
            "channel_values": reader.values(body.get("channel_versions", {})),
        }
        parent_id = unpack_id(parent) if parent is not None else None
        return CheckpointTuple(
            config={
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint_id,
                }
            },
            checkpoint=checkpoint,
            metadata=self._metadata(conn, row),  # type: ignore[arg-type]
            parent_config=(
                {
                    "configurable": {
                        "thread_id": thread_id,
                        "checkpoint_ns": ns,
                        "checkpoint_id": parent_id,
                    }
                }
                if parent_id
                else None
            ),
            pending_writes=writes,
        )

    def _writes(
        self,
        conn: sqlite3.Connection,
        reader: BlobReader,
        cids: list[Any],
        channels: set[int] | None = None,
    ) -> dict[Any, list[PendingWrite]]:
        """Pending writes by checkpoint, each list in (task path, task id, index) order."""
        out: dict[Any, list[tuple[tuple[str, str, int], PendingWrite]]] = {c: [] for c in cids}
        if len(cids) == 1:
            match, params = "cid = ?", [cids[0]]
        else:
            match, params = f"cid IN ({', '.join('?' * len(cids))})", list(cids)
            if len(cids) > 500:
                match, params = "1", []
        for cid, task, path, z, data, src_ch, src_ver in conn.execute(
            f"SELECT cid, task, path, z, data, src_ch, src_ver FROM writes WHERE t = ? AND {match}",
            [reader.t, *params],
        ):
            src = source_of(src_ch, src_ver)
            if cid not in out:
                continue
            task_id = unpack_id(task)
            path_name = self._names.name(conn, path)
            for entry in reader.writes(z, data, src):
                if channels is not None and entry.ch not in channels:
                    continue
                channel = self._names.name(conn, entry.ch)
                out[cid].append(
                    ((path_name, task_id, entry.idx), (task_id, channel, reader.write_value(entry)))
                )
        return {c: [w for _, w in sorted(ws, key=operator.itemgetter(0))] for c, ws in out.items()}

    def list_versions(
        self,
        thread_id: str,
        checkpoint_ns: str = "",
        *,
        before: str | None = None,
        limit: int | None = None,
        changed_only: bool = False,
    ) -> list[VersionRow]:
        """The thread's checkpoints newest first, from metadata and summary columns only.

        `changed_only` keeps the checkpoints whose frame (summary channel version)
        differs from their parent's: the context versions. `before` is a checkpoint
        id (exclusive); `limit` caps the rows returned.
        """
        with self._read() as conn:
            t = self._threads.find(conn, str(thread_id), checkpoint_ns)
            if t is None:
                return []
            summary_ch = self._names.find(conn, self.summary_channel) or -1
            sql = (
                "SELECT c.id, c.parent, c.ts, c.step, c.source, c.run_id, c.meta, c.frame, "
                "b.summary, b.src_ch, b.src_ver FROM checkpoints c LEFT JOIN blobs b "
                "ON b.t = c.t AND b.ch = ? AND b.ver = c.frame "
            )
            params: list[Any] = [summary_ch]
            if changed_only:
                sql += "LEFT JOIN checkpoints p ON p.t = c.t AND p.id = c.parent "
            sql += "WHERE c.t = ?"
            params.append(t)
            if changed_only:
                sql += " AND c.frame IS NOT NULL AND p.frame IS NOT c.frame"
            if before is not None:
                sql += " AND c.id < ?"
                params.append(pack_id(str(before)))
            sql += " ORDER BY c.id DESC"
            if limit is not None:
                sql += f" LIMIT {int(limit)}"
            rows = conn.execute(sql, params).fetchall()
            # Summaries oldest first: an elided one finds its source's resolved, mostly.
            resolved: dict[Any, tuple[Any, ...]] = {}
            fallback: _Summaries | None = None
            for r in reversed(rows):
                frame, fields = r[7], unpack_summary(r[8])
                if frame in resolved:
                    continue
                if elided(fields):
                    base = resolved.get(r[10]) if r[9] == summary_ch else None
                    if base is None:
                        fallback = fallback or _Summaries(conn, t, summary_ch)
                        base = fallback.get(r[10])
                    fields = resolve_summary(fields, base)
                resolved[frame] = fields
            names = {}
            for r in rows:
                if r[4] is not None and r[4] not in names:
                    names[r[4]] = self._names.name(conn, r[4])
        name = names.__getitem__
        out: list[VersionRow] = []
        for cid, parent, ts, step, source, run_id, meta, frame, *_ in rows:
            op, reason, template, turn, window, history, count, exact = resolved[frame]
            out.append(
                VersionRow(
                    unpack_id(cid),
                    None if parent is None else unpack_id(parent),
                    step,
                    None if source is None else names[source],
                    unpack_ts(ts, cid),
                    unpack_metadata(step, source, run_id, meta, name),
                    None if frame is None else unpack_version(frame),
                    op,
                    reason,
                    template,
                    turn,
                    window,
                    history,
                    count,
                    None if exact is None else bool(exact),
                )
            )
        return out

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """Writes and seed per channel along the parent chain (see the base class).

        Walks parents from the target's parent; a channel stops at the nearest
        ancestor that stores a value for it (its seed), that ancestor's own
        writes included.
        """
        if not channels:
            return {}
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "") or ""
        collected: dict[str, list[PendingWrite]] = {c: [] for c in channels}
        seeds: dict[str, Any] = {}
        with self._read() as conn:
            t = self._threads.find(conn, thread_id, ns)
            target = get_checkpoint_id(config)
            found = None
            if t is not None and target:
                found = conn.execute(
                    "SELECT parent FROM checkpoints WHERE t = ? AND id = ?",
                    (t, pack_id(str(target))),
                ).fetchone()
            elif t is not None:
                found = conn.execute(
                    "SELECT parent FROM checkpoints WHERE t = ? ORDER BY id DESC LIMIT 1", (t,)
                ).fetchone()
            cursor = found[0] if found else None
            remaining = set(channels)
            if t is not None:
                reader = BlobReader(conn, self.serde, self._cache, self._names, t)
                bodies = _Bodies(self, conn, t)
                ids = {c: self._names.find(conn, c) for c in channels}
                wanted = {i for i in ids.values() if i is not None}
            while t is not None and cursor is not None and remaining:
                row = conn.execute(
                    "SELECT parent, depth, body FROM checkpoints WHERE t = ? AND id = ?",
                    (t, cursor),
                ).fetchone()
                if row is None:
                    break
                versions = unflatten(bodies.decode(cursor, row[0], row[1], row[2])).get(
                    "channel_versions", {}
                )
                step_writes: dict[str, list[PendingWrite]] = defaultdict(list)
                for write in self._writes(conn, reader, [cursor], wanted).get(cursor, []):
                    if write[1] in remaining:
                        step_writes[write[1]].append(write)
                for channel in list(remaining):
                    collected[channel].extend(reversed(step_writes.get(channel, [])))
                    ch = ids[channel]
                    if channel in versions and ch is not None:
                        has, value = reader.value(ch, pack_version(versions[channel]))
                        if has:
                            seeds[channel] = value
                            remaining.discard(channel)
                cursor = row[0]
        result: dict[str, DeltaChannelHistory] = {}
        for channel in channels:
            entry: DeltaChannelHistory = {"writes": list(reversed(collected[channel]))}
            if channel in seeds:
                entry["seed"] = seeds[channel]
            result[channel] = entry
        return result

    # -- delete, copy, prune ---------------------------------------------------------

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, value and write of a thread (all namespaces)."""
        with self._write() as conn:
            for t in self._threads.of_thread(conn, str(thread_id)).values():
                for table in ("checkpoints", "blobs", "writes", "threads"):
                    conn.execute(f"DELETE FROM {table} WHERE t = ?", (t,))
                self._forget(t)
            self._threads.clear()

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) that the given runs created.

        A surviving checkpoint whose parent is deleted is re-linked to its nearest
        surviving ancestor, and channel values nothing refers to any more are
        removed (bases of surviving deltas are kept). Deleting runs of a thread that
        uses a `DeltaChannel` loses those runs' writes from its reconstruction.
        """
        run_ids = [str(r) for r in run_ids]
        if not run_ids:
            return
        with self._write() as conn:
            doomed: dict[int, set[Any]] = defaultdict(set)
            for t, cid in conn.execute(
                "SELECT t, id FROM checkpoints WHERE run_id IN (SELECT value FROM json_each(?))",
                (json.dumps(run_ids),),
            ):
                doomed[t].add(cid)
            for t, ids in doomed.items():
                self._delete_checkpoints(conn, t, ids, relink=True)

    def delete_checkpoints(
        self, thread_id: str, checkpoint_ids: Sequence[str], checkpoint_ns: str = ""
    ) -> None:
        """Delete some checkpoints of a thread (and their writes), for version retention.

        A kept checkpoint whose parent is deleted is left with no parent; values and
        delta bases that nothing refers to any more are removed, the rest stay
        readable.
        """
        with self._write() as conn:
            t = self._threads.find(conn, str(thread_id), checkpoint_ns)
            if t is not None:
                ids = {pack_id(str(i)) for i in checkpoint_ids}
                self._delete_checkpoints(conn, t, ids, relink=False)

    def list_threads(self) -> list[dict[str, str]]:
        """Every thread with root checkpoints: `thread_id` and `updated_at` (newest ts)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT h.thread_id, c.id, c.ts FROM checkpoints c JOIN threads h "
                "ON h.t = c.t WHERE h.checkpoint_ns = ''"
            ).fetchall()
        latest: dict[str, str] = {}
        for thread_id, cid, ts in rows:
            text = unpack_ts(ts, cid)
            if text > latest.get(thread_id, ""):
                latest[thread_id] = text
        return [{"thread_id": t, "updated_at": latest[t]} for t in sorted(latest)]

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, value and write of a thread to another thread id.

        What the target thread held before is replaced (a copy merged into rows that
        other rows are stored against would break them).
        """
        src, dst = str(source_thread_id), str(target_thread_id)
        if src == dst:
            return
        with self._write() as conn:
            for t_old in self._threads.of_thread(conn, dst).values():
                for table in ("checkpoints", "blobs", "writes"):
                    conn.execute(f"DELETE FROM {table} WHERE t = ?", (t_old,))
                self._forget(t_old)
            for ns, t_src in self._threads.of_thread(conn, src).items():
                t_dst = self._threads.get(conn, dst, ns)
                for table, columns in (
                    ("checkpoints", _CHECKPOINT_COLUMNS),
                    ("blobs", BLOB_COLUMNS),
                    ("writes", _WRITE_COLUMNS),
                ):
                    rest = columns.split(", ", 1)[1]
                    # A spilled payload belongs to one row: those copies get their own.
                    only = " AND typeof(data) != 'integer'" if table == "blobs" else ""
                    conn.execute(
                        f"INSERT OR REPLACE INTO {table} ({columns}) "
                        f"SELECT ?, {rest} FROM {table} WHERE t = ?{only}",
                        (t_dst, t_src),
                    )
                spilled_rows = conn.execute(
                    f"SELECT {BLOB_COLUMNS.replace('data', spilled(), 1)} FROM blobs "
                    "WHERE t = ? AND typeof(data) = 'integer'",
                    (t_src,),
                ).fetchall()
                conn.executemany(
                    _BLOB_INSERT,
                    [(t_dst, *r[1:7], store_data(conn, r[7]), *r[8:]) for r in spilled_rows],
                )
                self._forget(t_dst)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune threads: `"keep_latest"` keeps each namespace's latest checkpoint.

        With `"keep_latest"` the latest checkpoint keeps its writes and every value
        it needs, including the delta bases behind them. For a `DeltaChannel` whose
        value the latest checkpoint rebuilds from older writes (its metadata's
        `counters_since_delta_snapshot`), the ancestors back to the channel's last
        snapshot are kept too, so nothing is silently lost. `"delete"` removes the
        threads entirely.
        """
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread IDs, not a str")
        if strategy not in _PRUNE_STRATEGIES:
            raise ValueError(f"Unknown prune strategy: {strategy!r}")
        ids = [str(t) for t in thread_ids]
        if not ids:
            return
        if strategy == "delete":
            for thread_id in ids:
                self.delete_thread(thread_id)
            return
        for thread_id in ids:
            with self._write() as conn:
                for t in self._threads.of_thread(conn, thread_id).values():
                    keep = self._keep_latest_set(conn, t)
                    doomed = {
                        r[0] for r in conn.execute("SELECT id FROM checkpoints WHERE t = ?", (t,))
                    } - keep
                    self._delete_checkpoints(conn, t, doomed, relink=False)

    def _keep_latest_set(self, conn: sqlite3.Connection, t: int) -> set[Any]:
        """The latest checkpoint, plus the ancestors its delta channels replay from."""
        head = conn.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE t = ? ORDER BY id DESC LIMIT 1",
            (t,),
        ).fetchone()
        if head is None:
            return set()
        keep = {head[1]}
        counters = self._metadata(conn, head).get("counters_since_delta_snapshot") or {}
        needed = {ch for ch, c in counters.items() if c and int(c[0] if c else 0) > 0}
        bodies = _Bodies(self, conn, t)
        cursor = head[2]
        while needed and cursor is not None:
            row = conn.execute(
                "SELECT parent FROM checkpoints WHERE t = ? AND id = ?", (t, cursor)
            ).fetchone()
            if row is None:
                break
            keep.add(cursor)
            flat = bodies.get(cursor) or {}
            for channel in list(needed):
                version = flat.get(("channel_versions", channel))
                ch = self._names.find(conn, channel)
                if (
                    version is not None
                    and ch is not None
                    and _blob_exists(conn, t, ch, pack_version(version))
                ):
                    needed.discard(channel)
            cursor = row[0]
        return keep

    def _delete_checkpoints(
        self,
        conn: sqlite3.Connection,
        t: int,
        doomed: set[Any],
        *,
        relink: bool,
    ) -> None:
        """Delete checkpoints and their writes, fix parent links, then collect garbage."""
        parents = dict(conn.execute("SELECT id, parent FROM checkpoints WHERE t = ?", (t,)))
        doomed = doomed & parents.keys()
        if not doomed:
            return
        # Bodies stored as deltas against what goes become full ones first.
        self._materialize_children(conn, t, doomed)
        garbage = self._garbage_blobs(conn, t, doomed)
        # Payloads compressed against what goes are re-compressed on their own first.
        self._detach(conn, t, set(garbage))
        for table, column in (("writes", "cid"), ("checkpoints", "id")):
            conn.executemany(
                f"DELETE FROM {table} WHERE t = ? AND {column} = ?", [(t, c) for c in doomed]
            )
        updates = []
        for cid, parent in parents.items():
            if cid in doomed or parent is None or parent not in doomed:
                continue
            new_parent = parent
            while relink and new_parent is not None and new_parent in doomed:
                new_parent = parents.get(new_parent)
            updates.append((new_parent if relink else None, t, cid))
        conn.executemany("UPDATE checkpoints SET parent = ? WHERE t = ? AND id = ?", updates)
        conn.executemany(
            "DELETE FROM blobs WHERE t = ? AND ch = ? AND ver = ?",
            [(t, ch, ver) for ch, ver in garbage],
        )
        self._forget(t)

    def _detach(self, conn: sqlite3.Connection, t: int, doomed: set[tuple[int, Any]]) -> None:
        """Re-compress on their own the payloads compressed against `doomed` sources.

        Called before those sources are deleted or change their stored bytes, so each
        dependent's raw bytes can still be rebuilt.
        """
        if not doomed:
            return
        reader = BlobReader(conn, self.serde, BlobCache(0), self._names, t)
        blob_updates = []
        summaries: dict[int, _Summaries] = {}
        for ch, ver, z, data, src_ch, src_ver, summary in conn.execute(
            f"SELECT ch, ver, z, {spilled()}, src_ch, src_ver, summary FROM blobs "
            "WHERE t = ? AND src_ch IS NOT NULL",
            (t,),
        ).fetchall():
            if (src_ch, src_ver) not in doomed or (ch, ver) in doomed:
                continue
            z2, data2 = compress(reader.payload(z, data, (src_ch, src_ver)))
            if summary is not None and elided(unpack_summary(summary)):
                # Its summary repeated its source's texts: they are written out now.
                resolved = summaries.setdefault(ch, _Summaries(conn, t, ch)).get(ver)
                summary = pack_summary(resolved)
            blob_updates.append((z2, store_data(conn, data2), summary, t, ch, ver))
        write_updates = []
        for cid, task, z, data, src in _write_payloads(conn, t, "src_ch IS NOT NULL"):
            if src not in doomed:
                continue
            write_updates.append((*compress(reader.payload(z, data, src)), t, cid, task))
        conn.executemany(
            "UPDATE blobs SET z = ?, data = ?, summary = ?, src_ch = NULL, src_ver = NULL, "
            "depth = NULL WHERE t = ? AND ch = ? AND ver = ?",
            blob_updates,
        )
        conn.executemany(
            "UPDATE writes SET z = ?, data = ?, src_ch = NULL, src_ver = NULL, depth = NULL "
            "WHERE t = ? AND cid = ? AND task = ?",
            write_updates,
        )
        self._recent.pop(t, None)
        self._task_rows.pop(t, None)
        if blob_updates:
            self._cache.drop_thread(t)  # cached rows' sources changed

    def _garbage_blobs(
        self, conn: sqlite3.Connection, t: int, doomed: set[Any]
    ) -> list[tuple[int, Any]]:
        """The values nothing will refer to once the `doomed` checkpoints are gone.

        Kept: every value a surviving checkpoint or pending write refers to, and the
        append bases behind them.
        """
        live: set[tuple[int, Any]] = set()
        bodies = _Bodies(self, conn, t)
        channel_ids: dict[str, int | None] = {}
        for (cid,) in conn.execute("SELECT id FROM checkpoints WHERE t = ?", (t,)).fetchall():
            if cid in doomed:
                continue
            for path, version in (bodies.get(cid) or {}).items():
                if len(path) != 2 or path[0] != "channel_versions":
                    continue
                if path[1] not in channel_ids:
                    channel_ids[path[1]] = self._names.find(conn, path[1])
                ch = channel_ids[path[1]]
                if ch is not None:
                    live.add((ch, pack_version(version)))
        # Pending writes stored against a value keep it (and its bases) alive.
        for cid, _, bases in self._write_bases(conn, t):
            if cid not in doomed:
                live.update(bases)
        links = {
            (ch, ver): base
            for ch, ver, base in conn.execute("SELECT ch, ver, base FROM blobs WHERE t = ?", (t,))
        }
        keep: set[tuple[int, Any]] = set()
        for key in live:
            while key in links and key not in keep:
                keep.add(key)
                base = links[key]
                if base is None:
                    break
                key = (key[0], base)
        return [key for key in links if key not in keep]

    # -- async -----------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = await asyncio.to_thread(
            self._list, config, filter=filter, before=before, limit=limit
        )
        for item in items:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await asyncio.to_thread(
            self.get_delta_channel_history, config=config, channels=channels
        )

    async def alist_versions(
        self,
        thread_id: str,
        checkpoint_ns: str = "",
        *,
        before: str | None = None,
        limit: int | None = None,
        changed_only: bool = False,
    ) -> list[VersionRow]:
        return await asyncio.to_thread(
            self.list_versions,
            thread_id,
            checkpoint_ns,
            before=before,
            limit=limit,
            changed_only=changed_only,
        )


class _Summaries:
    """The version summaries of one channel of a thread, with elided texts resolved
    along each row's source (see `_checkpoint_codec.pack_summary`)."""

    def __init__(self, conn: sqlite3.Connection, t: int, ch: int) -> None:
        self._ch = ch
        self._rows = {
            ver: (src_ch, src_ver, summary)
            for ver, src_ch, src_ver, summary in conn.execute(
                "SELECT ver, src_ch, src_ver, summary FROM blobs "
                "WHERE t = ? AND ch = ? AND summary IS NOT NULL",
                (t, ch),
            )
        }
        self._done: dict[Any, tuple[Any, ...]] = {}

    def get(self, ver: Any) -> tuple[Any, ...]:
        chain = []
        cursor = ver
        while cursor not in self._done and cursor in self._rows:
            src_ch, src_ver, data = self._rows[cursor]
            fields = unpack_summary(data)
            chain.append((cursor, fields))
            if not elided(fields) or src_ch != self._ch:
                break
            cursor = src_ver
        base = self._done.get(cursor, (None,) * 8)
        for key, fields in reversed(chain):
            base = self._done[key] = resolve_summary(fields, base) if elided(fields) else fields
        return self._done.get(ver, unpack_summary(None))


class _Bodies:
    """Decodes the flat bodies of one thread's checkpoints, each delta once."""

    def __init__(self, saver: LlmctxSaver, conn: sqlite3.Connection, t: int) -> None:
        self._saver = saver
        self._conn = conn
        self._t = t
        self._flats: dict[Any, Flat] = {}
        self._depths: dict[Any, int] = {}
        cached = saver._bodies.get(t)
        if cached is not None:
            self._flats[cached[0]] = cached[1]
            self._depths[cached[0]] = cached[2]

    def _name(self, name_id: int) -> str:
        return self._saver._names.name(self._conn, name_id)

    def depth(self, cid: Any) -> int:
        return self._depths[cid]

    def decode(self, cid: Any, parent: Any, depth: int, body: bytes) -> Flat:
        """The flat body of a row whose columns are at hand."""
        found = self._flats.get(cid)
        if found is not None:
            return found
        base = None
        if depth > 0:
            base = self.get(parent)
            if base is None:
                raise LookupError(
                    f"checkpoint store is missing checkpoint {unpack_id(parent)!r} that the "
                    f"body of {unpack_id(cid)!r} is a delta against (thread number {self._t})"
                )
        flat = decode_body(body, base, self._name, self._saver.serde)
        self._flats[cid] = flat
        self._depths[cid] = depth
        return flat

    def get(self, cid: Any) -> Flat | None:
        """The flat body of a stored checkpoint, or `None` if there is no such row."""
        found = self._flats.get(cid)
        if found is not None:
            return found
        chain = self._conn.execute(_BODY_CHAIN_SQL, (self._t, cid)).fetchall()
        if not chain:
            return None
        oldest = chain[-1]
        if oldest[2] > 0 and oldest[1] not in self._flats:
            raise LookupError(
                f"checkpoint store is missing checkpoint {unpack_id(oldest[1])!r} that the "
                f"body of {unpack_id(oldest[0])!r} is a delta against (thread number {self._t})"
            )
        for row_id, parent, depth, body in reversed(chain):
            self.decode(row_id, parent, depth, body)
        return self._flats[cid]


_NOT_BODY = frozenset({"channel_values", "id", "ts"})


def _write_order(entry: WriteEntry) -> int:
    return entry.idx


def _against_stored(
    entries: list[WriteEntry], stored: Mapping[int, tuple[Any, int, bytes, int]]
) -> tuple[list[WriteEntry], list[Candidate]]:
    """`entries` with every write whose payload is exactly a stored row's (channel ->
    (version, type id, payload, depth)) turned into a `W_BLOB` reference, and the
    stored rows of the channels left as compression candidates."""
    out: list[WriteEntry] = []
    sources: list[Candidate] = []
    for e in entries:
        hit = stored.get(e.ch)
        if e.kind == W_PLAIN and hit is not None:
            if (hit[1], hit[2]) == (e.typ, e.payload):
                e = WriteEntry(e.idx, e.ch, 0, W_BLOB, b"", hit[0])
            else:
                sources.append(Candidate((e.ch, hit[0]), hit[2], hit[3]))
        out.append(e)
    return out, sources


def _is_ref(entry: WriteEntry) -> bool:
    return entry.kind in (W_PREFIX, W_BLOB)


def _refs(entries: Sequence[WriteEntry]) -> int | None:
    """The `refs` column: 1 when some write is stored against a `blobs` row."""
    return 1 if any(_is_ref(e) for e in entries) else None


def _channels(conn: sqlite3.Connection, t: int) -> list[int]:
    return [r[0] for r in conn.execute("SELECT DISTINCT ch FROM blobs WHERE t = ?", (t,))]


def _blob_exists(conn: sqlite3.Connection, t: int, ch: int, version: Any) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM blobs WHERE t = ? AND ch = ? AND ver = ?", (t, ch, version)
        ).fetchone()
        is not None
    )


def _existing_versions(
    conn: sqlite3.Connection, t: int, keys: list[tuple[int, Any]]
) -> set[tuple[int, Any]]:
    """Which of these (channel, version) rows already exist, in one query."""
    if not keys:
        return set()
    # A UNION of primary-key lookups: SQLite would scan for a row-value IN list.
    one = "SELECT ch, ver FROM blobs WHERE t = ?1 "
    sql = " UNION ALL ".join(
        f"{one}AND ch = ?{2 + 2 * i} AND ver = ?{3 + 2 * i}" for i in range(len(keys))
    )
    rows = conn.execute(sql, (t, *(x for key in keys for x in key)))
    return {(r[0], r[1]) for r in rows}


def _write_payloads(
    conn: sqlite3.Connection, t: int, where: str, *params: Any
) -> list[tuple[Any, Any, int, bytes, tuple[int, Any] | None]]:
    """`(cid, task, z, data, source)` of the thread's `writes` rows matching `where`."""
    return [
        (cid, task, z, data, source_of(src_ch, src_ver))
        for cid, task, z, data, src_ch, src_ver in conn.execute(
            f"SELECT cid, task, z, data, src_ch, src_ver FROM writes WHERE t = ? AND {where}",
            (t, *params),
        ).fetchall()
    ]


def _shared_prefix(old: list[Any], new: list[Any]) -> int:
    """How many first items `old` and `new` share (the identical objects)."""
    if len(new) >= len(old) and all(map(operator.is_, old, new)):
        return len(old)
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a is not b:
            return i
    return min(len(old), len(new))


def _recent_worthy(channel: str, value: Any) -> bool:
    """Lists (message histories) and the input are worth compressing against each other."""
    return channel == _INPUT_CHANNEL or isinstance(value, list)
