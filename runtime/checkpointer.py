"""`LlmctxSaver`: the embedded checkpointer behind every context version.

A LangGraph `BaseCheckpointSaver` on one SQLite file (WAL mode), built for long
chat threads where every turn is a checkpoint:

* a channel's value is written only when its version changes (one row per
  thread, namespace, channel and version, like `PostgresSaver`'s blobs);
* the append-only `messages` history is stored incrementally (only the new
  messages), and a frame that changes a little every turn as a zstd delta against
  its previous version; deltas name their base, so forks stay exact (see
  `_checkpoint_blobs` for the scheme and its bounds);
* listing versions reads small columns only: `list_versions` returns each
  checkpoint's metadata and a summary of its frame without materializing state.

It passes every base and extended test of `langgraph-checkpoint-conformance`,
supports `DeltaChannel` threads, and refuses a foreign, corrupt or newer file
with `CheckpointStoreError` rather than resetting it.

Example:
    >>> with LlmctxSaver(".llm/versions/checkpoints.sqlite") as saver:
    ...     graph = build_context_graph(checkpointer=saver)
    ...     graph.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "t"}})
    ...     [v.turn for v in saver.list_versions("t", changed_only=True)]

Values are treated as immutable once checkpointed (LangGraph's contract): the
saver recognizes an appended history by the identity of the list items it last
wrote or read, so mutating an already checkpointed message in place is not seen.
"""

from __future__ import annotations

import asyncio
import json
import operator
import random
import sqlite3
import threading
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

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
    W_PLAIN,
    W_PREFIX,
    BlobCache,
    BlobReader,
    Encoded,
    Source,
    compress_against,
    empty,
    encode,
)
from llmctx.runtime._checkpoint_codec import SUMMARY_COLUMNS, compress, decompress
from llmctx.runtime._checkpoint_schema import CheckpointStoreError, connect

__all__ = ["CheckpointStoreError", "LlmctxSaver", "VersionRow"]

_PRUNE_STRATEGIES = ("keep_latest", "delete")
_BLOB_INSERT = (
    f"INSERT OR REPLACE INTO blobs ({BLOB_COLUMNS}) "
    f"VALUES ({', '.join('?' * len(BLOB_COLUMNS.split(',')))})"
)
_CHECKPOINT_COLUMNS = (
    "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, ts, step, source, "
    "run_id, summary_version, type, z, body, metadata"
)
_WRITE_COLUMNS = (
    "thread_id, checkpoint_ns, checkpoint_id, task_id, idx, task_path, channel, type, z, value, "
    "kind, base_version, dict_refs, prefix_items"
)
_WRITE_VALUE_COLUMNS = "kind, type, z, value, base_version, dict_refs, prefix_items"
_INPUT_CHANNEL = "__start__"  # holds a run's input messages
# The last few list payloads (and inputs) stored per thread serve as the compression
# dictionary of the next ones: a message is stored once in full per turn.
_RECENT_COUNT = 4
_RECENT_BYTES = 32_768
_MIN_RECENT = 64


@dataclass(frozen=True)
class VersionRow:
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
        return asdict(self)


class LlmctxSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpointer on one SQLite file, with incremental channel storage.

    `path` is created if missing. `summary_channel` names the channel whose value
    feeds the `VersionRow` summary (`"context"`, the llmctx frame). `delta_depth`
    bounds a `zdelta` chain (a full copy every that many versions);
    `append_ratio` bounds an append chain (a full copy once the appended bytes reach
    that multiple of the last full copy).

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
        delta_depth: int = 32,
        append_ratio: float = 16.0,
    ) -> None:
        super().__init__(serde=serde)
        self.path = Path(path)
        self.summary_channel = summary_channel
        self.delta_depth = delta_depth
        self.append_ratio = append_ratio
        self._conn: sqlite3.Connection | None = connect(self.path)
        self._lock = threading.RLock()
        self._cache = BlobCache()
        self._recent: dict[tuple[str, str], deque[Source]] = {}
        # True inside a write when no other connection committed since our last write:
        # then what this process cached (bases, recent sources) is known to be in the
        # file and needs no lookup (`PRAGMA data_version` tells).
        self._trusted = False
        self._data_version: int | None = None

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

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken eagerly so concurrent writers queue up."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                seen = conn.execute("PRAGMA data_version").fetchone()[0]
                self._trusted = seen == self._data_version
                self._data_version = seen
                yield conn
            except BaseException:
                self._trusted = False
                conn.execute("ROLLBACK")
                raise
            finally:
                self._trusted = False
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot across several queries."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN")
            try:
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
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "") or ""
        parent_id = conf.get("checkpoint_id")
        body = dict(checkpoint)
        values: dict[str, Any] = body.pop("channel_values", {}) or {}
        body_type, body_raw = self.serde.dumps_typed(body)
        body_z, body_data = compress(body_raw)
        md = get_serializable_checkpoint_metadata(config, metadata)
        summary_version = checkpoint["channel_versions"].get(self.summary_channel)
        row = (
            thread_id,
            ns,
            checkpoint["id"],
            parent_id,
            checkpoint["ts"],
            md.get("step"),
            md.get("source"),
            _opt_str(md.get("run_id")),
            None if summary_version is None else str(summary_version),
            body_type,
            body_z,
            body_data,
            json.dumps(md),
        )
        with self._write() as conn:
            encoded = [
                (ch, str(ver), self._encode(conn, thread_id, ns, parent_id, ch, str(ver), values))
                for ch, ver in new_versions.items()
            ]
            existing = _existing_versions(conn, thread_id, ns, [(c, v) for c, v, _ in encoded])
            checked = [
                (
                    ch,
                    ver,
                    self._check_blob(conn, thread_id, ns, parent_id, ch, ver, enc, values)
                    if (ch, ver) in existing or not self._trusted
                    else enc,
                )
                for ch, ver, enc in encoded
            ]
            # A channel without a value gets no row: a missing version reads as empty.
            stored = [(ch, ver, enc) for ch, ver, enc in checked if enc.kind != EMPTY]
            conn.executemany(
                _BLOB_INSERT, [enc.row((thread_id, ns, ch, v)) for ch, v, enc in stored]
            )
            if emptied := [(thread_id, ns, c, v) for c, v, e in checked if e.kind == EMPTY]:
                conn.executemany(
                    "DELETE FROM blobs WHERE thread_id = ? AND checkpoint_ns = ? AND channel = ? "
                    "AND version = ?",
                    emptied,
                )
            conn.execute(
                f"INSERT OR REPLACE INTO checkpoints ({_CHECKPOINT_COLUMNS}) "
                f"VALUES ({', '.join('?' * 13)})",
                row,
            )
        with self._lock:
            for ch, ver, enc in checked:
                self._cache.set((thread_id, ns, ch), enc.entry)
                if (
                    enc.kind in (FULL, APPEND)
                    and enc.dict_refs is None
                    and enc.stored_raw is not None
                    and _recent_worthy(ch, values)
                ):
                    self._remember(thread_id, ns, ["b", ch, ver], enc.stored_raw)
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    def _encode(
        self,
        conn: sqlite3.Connection,
        thread_id: str,
        ns: str,
        parent_id: str | None,
        channel: str,
        version: str,
        values: dict[str, Any],
    ) -> Encoded:
        if channel not in values:
            return empty()
        value = values[channel]
        prev = self._cache.get((thread_id, ns, channel))
        sources = self._sources(conn, thread_id, ns) if _recent_worthy(channel, values) else None
        return encode(
            self.serde,
            version,
            value,
            prev,
            summarize=channel == self.summary_channel,
            delta_depth=self.delta_depth,
            append_ratio=self.append_ratio,
            sources=sources,
        )

    def _stored(
        self, conn: sqlite3.Connection, thread_id: str, ns: str, channel: str, version: str
    ) -> bool:
        """Whether a version this process cached is still in the file."""
        return self._trusted or _blob_exists(conn, thread_id, ns, channel, version)

    def _forget(self, thread_id: str) -> None:
        """Drop what this process cached about a thread (after deleting from it)."""
        self._cache.drop_thread(thread_id)
        for key in [k for k in self._recent if k[0] == thread_id]:
            del self._recent[key]

    def _remember(self, thread_id: str, ns: str, ref: list[Any], raw: bytes) -> None:
        """Keep a just committed payload as a compression source of the next ones."""
        if len(raw) < _MIN_RECENT:
            return
        recent = self._recent.setdefault((thread_id, ns), deque())
        recent.append((ref, raw))
        while len(recent) > _RECENT_COUNT or (
            len(recent) > 1 and sum(len(r) for _, r in recent) > _RECENT_BYTES
        ):
            recent.popleft()
        if len(self._recent) > 512:  # forget the least recently written thread
            self._recent.pop(next(iter(self._recent)))

    def _sources(self, conn: sqlite3.Connection, thread_id: str, ns: str) -> list[Source]:
        """The recent payloads of a thread that are still in the file."""
        recent = self._recent.get((thread_id, ns))
        if not recent:
            return []
        if self._trusted:
            return list(recent)
        alive = [src for src in recent if _source_exists(conn, thread_id, ns, src[0])]
        if len(alive) < len(recent):
            self._recent[(thread_id, ns)] = deque(alive)
        return alive

    def _check_blob(
        self,
        conn: sqlite3.Connection,
        thread_id: str,
        ns: str,
        parent_id: str | None,
        channel: str,
        version: str,
        enc: Encoded,
        values: dict[str, Any],
    ) -> Encoded:
        """`enc`, made safe against what other writers did.

        A delta whose base another process deleted is re-encoded in full. A version
        written again (same key) first turns the rows built on it into full copies.
        """
        key = (thread_id, ns, channel)
        if enc.base is not None and not _blob_exists(conn, thread_id, ns, channel, enc.base):
            self._cache.set(key, None)
            enc = self._encode(conn, thread_id, ns, parent_id, channel, version, values)
        if _blob_exists(conn, thread_id, ns, channel, version):
            # Everything whose stored payload changes below stops being a source first.
            changing = {("b", channel, version)}
            changing.update(
                ("b", channel, r[0])
                for r in conn.execute(
                    "SELECT version FROM blobs WHERE thread_id = ? AND checkpoint_ns = ? "
                    "AND channel = ? AND base = ?",
                    (thread_id, ns, channel, version),
                )
            )
            changing.update(
                ("w", *r)
                for r in conn.execute(
                    "SELECT checkpoint_id, task_id, idx FROM writes WHERE thread_id = ? "
                    "AND checkpoint_ns = ? AND channel = ? AND base_version = ?",
                    (thread_id, ns, channel, version),
                )
            )
            self._detach(conn, thread_id, ns, changing)
            self._rematerialize_dependents(conn, thread_id, ns, channel, version)
            self._rematerialize_writes(conn, thread_id, ns, channel, version)
            conn.execute(
                "UPDATE blobs SET extends = NULL WHERE thread_id = ? AND checkpoint_ns = ? "
                "AND channel = ? AND extends = ?",
                (thread_id, ns, channel, version),
            )
            self._recent.pop((thread_id, ns), None)
        return enc

    def _rematerialize_writes(
        self, conn: sqlite3.Connection, thread_id: str, ns: str, channel: str, version: str
    ) -> None:
        """Store on their own the pending writes built on a version about to be replaced."""
        rows = conn.execute(
            "SELECT checkpoint_id, task_id, idx, channel, kind, type, z, value, base_version, "
            "dict_refs, prefix_items FROM writes WHERE thread_id = ? AND checkpoint_ns = ? "
            "AND channel = ? AND base_version = ?",
            (thread_id, ns, channel, version),
        ).fetchall()
        if not rows:
            return
        reader = BlobReader(conn, self.serde, BlobCache(0), thread_id, ns)
        updates = []
        for cid, task_id, idx, ch, *stored in rows:
            typ, raw = self.serde.dumps_typed(reader.write_value(ch, *stored))
            z, data = compress(raw)
            updates.append((typ, z, data, thread_id, ns, cid, task_id, idx))
        conn.executemany(
            f"UPDATE writes SET kind = {W_PLAIN}, type = ?, z = ?, value = ?, dict_refs = NULL, "
            "base_version = NULL, prefix_items = NULL WHERE thread_id = ? AND checkpoint_ns = ? "
            "AND checkpoint_id = ? AND task_id = ? AND idx = ?",
            updates,
        )

    def _rematerialize_dependents(
        self, conn: sqlite3.Connection, thread_id: str, ns: str, channel: str, version: str
    ) -> None:
        dependents = [
            r[0]
            for r in conn.execute(
                "SELECT version FROM blobs WHERE thread_id = ? AND checkpoint_ns = ? "
                "AND channel = ? AND base = ?",
                (thread_id, ns, channel, version),
            )
        ]
        if not dependents:
            return
        reader = BlobReader(conn, self.serde, BlobCache(0), thread_id, ns)
        rows = []
        for dep in dependents:
            found, value = reader.value(channel, dep)
            if not found:
                continue
            full = encode(
                self.serde, dep, value, None, summarize=False, delta_depth=0, append_ratio=0
            )
            rows.append(
                (
                    full.type,
                    full.z,
                    full.data,
                    full.n_items,
                    full.full_size,
                    thread_id,
                    ns,
                    channel,
                    dep,
                )
            )
        conn.executemany(
            "UPDATE blobs SET kind = 0, base = NULL, depth = 0, type = ?, z = ?, data = ?, "
            "n_items = ?, since_full = 0, full_size = ?, dict_refs = NULL "
            "WHERE thread_id = ? AND "
            "checkpoint_ns = ? AND channel = ? AND version = ?",
            rows,
        )
        self._forget(thread_id)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes; a repeated (task, index) is ignored."""
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "") or ""
        checkpoint_id = conf["checkpoint_id"]
        # Special writes (errors, interrupts) replace; regular ones are write-once.
        replace = all(w[0] in WRITES_IDX_MAP for w in writes)
        with self._write() as conn:
            existing = {
                r[0]
                for r in conn.execute(
                    "SELECT idx FROM writes WHERE thread_id = ? AND checkpoint_ns = ? "
                    "AND checkpoint_id = ? AND task_id = ?",
                    (thread_id, ns, checkpoint_id, task_id),
                )
            }
            rows = []
            remembered: list[tuple[list[Any], bytes]] = []
            for i, (channel, value) in enumerate(writes):
                idx = WRITES_IDX_MAP.get(channel, i)
                if idx in existing and not replace:
                    continue
                encoded, raw = self._encode_write(conn, thread_id, ns, channel, value)
                rows.append(
                    (thread_id, ns, checkpoint_id, task_id, idx, task_path, channel, *encoded)
                )
                if raw is not None and encoded[5] is None:
                    remembered.append((["w", checkpoint_id, task_id, idx], raw))
            if replace and existing:
                self._detach(
                    conn, thread_id, ns, {("w", checkpoint_id, task_id, r[4]) for r in rows}
                )
            conn.executemany(
                f"INSERT OR REPLACE INTO writes ({_WRITE_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                rows,
            )
        with self._lock:
            for ref, raw in remembered:
                self._remember(thread_id, ns, ref, raw)

    def _encode_write(
        self, conn: sqlite3.Connection, thread_id: str, ns: str, channel: str, value: Any
    ) -> tuple[tuple[str, int, bytes, int, str | None, str | None, int | None], bytes | None]:
        """`((type, z, value, kind, base_version, dict_refs, prefix_items), source)`.

        A list that shares its first items (identical objects: the whole history
        returned again by a node) with the channel's latest stored list stores only
        the rest (`W_PREFIX`, with how many of the base's items it starts with).
        A list is compressed against the thread's recent payloads, another value
        against its channel's latest value. `source` is the payload a later value may
        be compressed against (lists only), or `None`.
        """
        prev = self._cache.get((thread_id, ns, channel))
        if type(value) is list:
            sources = self._sources(conn, thread_id, ns)
            shared = _shared_prefix(prev.items, value) if prev and prev.items else 0
            if (
                shared
                and 2 * shared >= len(value)
                and self._stored(conn, thread_id, ns, channel, prev.version)
            ):
                assert prev is not None and prev.items is not None
                typ, raw = self.serde.dumps_typed(value[shared:])
                z, data, refs = compress_against(raw, sources)
                count = None if shared == len(prev.items) else shared
                return (typ, z, data, W_PREFIX, prev.version, refs, count), raw
            typ, raw = self.serde.dumps_typed(value)
            z, data, refs = compress_against(raw, sources)
            return (typ, z, data, W_PLAIN, None, refs, None), raw
        typ, raw = self.serde.dumps_typed(value)
        own: list[Source] = []
        if (
            prev is not None
            and prev.raw is not None
            and prev.items is None
            and self._stored(conn, thread_id, ns, channel, prev.version)
        ):
            own = [(["b", channel, prev.version], prev.raw)]
        z, data, refs = compress_against(raw, own)
        return (typ, z, data, W_PLAIN, None, refs, None), None

    # -- read ----------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The requested checkpoint (or the thread's latest), with values and writes."""
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "") or ""
        checkpoint_id = get_checkpoint_id(config)
        with self._read() as conn:
            if checkpoint_id:
                row = conn.execute(
                    f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE thread_id = ? "
                    "AND checkpoint_ns = ? AND checkpoint_id = ?",
                    (thread_id, ns, checkpoint_id),
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE thread_id = ? "
                    "AND checkpoint_ns = ? ORDER BY checkpoint_id DESC LIMIT 1",
                    (thread_id, ns),
                ).fetchone()
            if row is None:
                return None
            reader = BlobReader(conn, self.serde, self._cache, thread_id, ns)
            writes = self._writes(conn, reader, thread_id, ns, [row[2]])
            return self._tuple(row, reader, writes.get(row[2], []))

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
        wheres: list[str] = []
        params: list[Any] = []
        if config:
            conf = config["configurable"]
            wheres.append("thread_id = ?")
            params.append(str(conf["thread_id"]))
            if conf.get("checkpoint_ns") is not None:
                wheres.append("checkpoint_ns = ?")
                params.append(conf["checkpoint_ns"])
            if checkpoint_id := get_checkpoint_id(config):
                wheres.append("checkpoint_id = ?")
                params.append(checkpoint_id)
        if before is not None and (before_id := get_checkpoint_id(before)):
            wheres.append("checkpoint_id < ?")
            params.append(before_id)
        python_filter: dict[str, Any] = {}
        for key, value in (filter or {}).items():
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                wheres.append("json_extract(metadata, ?) = ?")
                params.extend([_json_path(key), value])
            python_filter[key] = value  # also re-checked exactly below
        where = f"WHERE {' AND '.join(wheres)}" if wheres else ""
        sql = f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints {where} ORDER BY checkpoint_id DESC"
        if limit is not None and not python_filter:
            sql += f" LIMIT {int(limit)}"
        with self._read() as conn:
            rows = []
            for row in conn.execute(sql, params):
                if python_filter:
                    md = json.loads(row[12])
                    if not all(md.get(k) == v for k, v in python_filter.items()):
                        continue
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
            by_group: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
            for row in rows:
                by_group[(row[0], row[1])].append(row)
            tuples: dict[tuple[str, str, str], CheckpointTuple] = {}
            for (thread_id, ns), group in by_group.items():
                reader = BlobReader(conn, self.serde, self._cache, thread_id, ns)
                if len(group) > 4:
                    for channel in self._channels(conn, thread_id, ns):
                        reader.prefetch(channel)
                writes = self._writes(conn, reader, thread_id, ns, [r[2] for r in group])
                # Oldest first, so each version's delta finds its base decoded.
                for row in reversed(group):
                    tuples[(thread_id, ns, row[2])] = self._tuple(
                        row, reader, writes.get(row[2], [])
                    )
            return [tuples[(r[0], r[1], r[2])] for r in rows]

    @staticmethod
    def _channels(conn: sqlite3.Connection, thread_id: str, ns: str) -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT channel FROM blobs WHERE thread_id = ? AND checkpoint_ns = ?",
                (thread_id, ns),
            )
        ]

    def _tuple(
        self, row: tuple[Any, ...], reader: BlobReader, writes: list[PendingWrite]
    ) -> CheckpointTuple:
        thread_id, ns, checkpoint_id, parent_id = row[0], row[1], row[2], row[3]
        body = self.serde.loads_typed((row[9], decompress(row[10], row[11])))
        checkpoint: Checkpoint = {
            **body,
            "id": checkpoint_id,
            "channel_values": reader.values(body.get("channel_versions", {})),
        }
        return CheckpointTuple(
            config={
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint_id,
                }
            },
            checkpoint=checkpoint,
            metadata=json.loads(row[12]),
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
        thread_id: str,
        ns: str,
        checkpoint_ids: list[str],
    ) -> dict[str, list[PendingWrite]]:
        """Pending writes by checkpoint, each list in `writes_sort_key` order."""
        out: dict[str, list[PendingWrite]] = {cid: [] for cid in checkpoint_ids}
        if len(checkpoint_ids) == 1:
            match, params = "checkpoint_id = ?", [checkpoint_ids[0]]
        else:
            match, params = (
                "checkpoint_id IN (SELECT value FROM json_each(?))",
                [json.dumps(checkpoint_ids)],
            )
        for cid, task_id, channel, kind, *stored in conn.execute(
            f"SELECT checkpoint_id, task_id, channel, {_WRITE_VALUE_COLUMNS} FROM writes "
            f"WHERE thread_id = ? AND checkpoint_ns = ? AND {match} "
            "ORDER BY checkpoint_id, task_path, task_id, idx",
            [thread_id, ns, *params],
        ):
            out[cid].append((task_id, channel, reader.write_value(channel, kind, *stored)))
        return out

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
        cols = ", ".join(f"b.{c}" for c in SUMMARY_COLUMNS)
        sql = (
            "SELECT c.checkpoint_id, c.parent_checkpoint_id, c.step, c.source, c.ts, "
            f"c.metadata, c.summary_version, {cols} FROM checkpoints c LEFT JOIN blobs b "
            "ON b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns "
            "AND b.channel = ? AND b.version = c.summary_version "
            "WHERE c.thread_id = ? AND c.checkpoint_ns = ?"
        )
        params: list[Any] = [self.summary_channel, thread_id, checkpoint_ns]
        if before is not None:
            sql += " AND c.checkpoint_id < ?"
            params.append(before)
        sql += " ORDER BY c.checkpoint_id DESC"
        if limit is not None and not changed_only:
            sql += f" LIMIT {int(limit)}"
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
            if changed_only:
                parents = dict(
                    conn.execute(
                        "SELECT checkpoint_id, summary_version FROM checkpoints "
                        "WHERE thread_id = ? AND checkpoint_ns = ?",
                        (thread_id, checkpoint_ns),
                    ).fetchall()
                )
        out: list[VersionRow] = []
        for r in rows:
            if changed_only and (r[6] is None or (r[1] is not None and parents.get(r[1]) == r[6])):
                continue
            out.append(
                VersionRow(
                    checkpoint_id=r[0],
                    parent_id=r[1],
                    step=r[2],
                    source=r[3],
                    ts=r[4],
                    metadata=json.loads(r[5]),
                    summary_version=r[6],
                    op=r[7],
                    reason=r[8],
                    template=r[9],
                    turn=r[10],
                    window_tokens=r[11],
                    history_tokens=r[12],
                    history_messages=r[13],
                    tokens_exact=None if r[14] is None else bool(r[14]),
                )
            )
            if limit is not None and len(out) >= limit:
                break
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
            target = get_checkpoint_id(config)
            if target:
                found = conn.execute(
                    "SELECT parent_checkpoint_id FROM checkpoints WHERE thread_id = ? "
                    "AND checkpoint_ns = ? AND checkpoint_id = ?",
                    (thread_id, ns, target),
                ).fetchone()
            else:
                found = conn.execute(
                    "SELECT parent_checkpoint_id FROM checkpoints WHERE thread_id = ? "
                    "AND checkpoint_ns = ? ORDER BY checkpoint_id DESC LIMIT 1",
                    (thread_id, ns),
                ).fetchone()
            cursor = found[0] if found else None
            remaining = set(channels)
            reader = BlobReader(conn, self.serde, self._cache, thread_id, ns)
            marks = ",".join("?" * len(channels))
            while cursor is not None and remaining:
                row = conn.execute(
                    "SELECT parent_checkpoint_id, type, z, body FROM checkpoints "
                    "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
                    (thread_id, ns, cursor),
                ).fetchone()
                if row is None:
                    break
                body = self.serde.loads_typed((row[1], decompress(row[2], row[3])))
                versions = body.get("channel_versions", {})
                step_writes: dict[str, list[PendingWrite]] = defaultdict(list)
                for task_id, channel, *stored in conn.execute(
                    f"SELECT task_id, channel, {_WRITE_VALUE_COLUMNS} FROM writes "
                    "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ? "
                    f"AND channel IN ({marks}) ORDER BY task_path, task_id, idx",
                    (thread_id, ns, cursor, *channels),
                ):
                    if channel in remaining:
                        value = reader.write_value(channel, *stored)
                        step_writes[channel].append((task_id, channel, value))
                for channel in list(remaining):
                    collected[channel].extend(reversed(step_writes.get(channel, [])))
                    if channel in versions:
                        has, value = reader.value(channel, str(versions[channel]))
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
        thread_id = str(thread_id)
        with self._write() as conn:
            for table in ("checkpoints", "blobs", "writes"):
                conn.execute(f"DELETE FROM {table} WHERE thread_id = ?", (thread_id,))
            self._forget(thread_id)

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
            doomed: dict[tuple[str, str], set[str]] = defaultdict(set)
            for thread_id, ns, cid in conn.execute(
                "SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints "
                "WHERE run_id IN (SELECT value FROM json_each(?))",
                (json.dumps(run_ids),),
            ):
                doomed[(thread_id, ns)].add(cid)
            for (thread_id, ns), ids in doomed.items():
                self._delete_checkpoints(conn, thread_id, ns, ids, relink=True)

    def delete_checkpoints(
        self, thread_id: str, checkpoint_ids: Sequence[str], checkpoint_ns: str = ""
    ) -> None:
        """Delete some checkpoints of a thread (and their writes), for version retention.

        A kept checkpoint whose parent is deleted is left with no parent; values and
        delta bases that nothing refers to any more are removed, the rest stay
        readable.
        """
        with self._write() as conn:
            self._delete_checkpoints(
                conn, str(thread_id), checkpoint_ns, {str(i) for i in checkpoint_ids}, relink=False
            )

    def list_threads(self) -> list[dict[str, str]]:
        """Every thread with root checkpoints: `thread_id` and `updated_at` (newest ts)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT thread_id, max(ts) FROM checkpoints WHERE checkpoint_ns = '' "
                "GROUP BY thread_id ORDER BY thread_id"
            ).fetchall()
        return [{"thread_id": t, "updated_at": ts} for t, ts in rows]

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, value and write of a thread to another thread id."""
        src, dst = str(source_thread_id), str(target_thread_id)
        with self._write() as conn:
            for table, columns in (
                ("checkpoints", _CHECKPOINT_COLUMNS),
                ("blobs", BLOB_COLUMNS),
                ("writes", _WRITE_COLUMNS),
            ):
                rest = columns.split(", ", 1)[1]
                conn.execute(
                    f"INSERT OR REPLACE INTO {table} ({columns}) "
                    f"SELECT ?, {rest} FROM {table} WHERE thread_id = ?",
                    (dst, src),
                )
            self._forget(dst)

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
                namespaces = [
                    r[0]
                    for r in conn.execute(
                        "SELECT DISTINCT checkpoint_ns FROM checkpoints WHERE thread_id = ?",
                        (thread_id,),
                    )
                ]
                for ns in namespaces:
                    keep = self._keep_latest_set(conn, thread_id, ns)
                    doomed = {
                        r[0]
                        for r in conn.execute(
                            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? "
                            "AND checkpoint_ns = ?",
                            (thread_id, ns),
                        )
                    } - keep
                    self._delete_checkpoints(conn, thread_id, ns, doomed, relink=False)

    def _keep_latest_set(self, conn: sqlite3.Connection, thread_id: str, ns: str) -> set[str]:
        """The latest checkpoint, plus the ancestors its delta channels replay from."""
        head = conn.execute(
            "SELECT checkpoint_id, metadata FROM checkpoints WHERE thread_id = ? "
            "AND checkpoint_ns = ? ORDER BY checkpoint_id DESC LIMIT 1",
            (thread_id, ns),
        ).fetchone()
        if head is None:
            return set()
        keep = {head[0]}
        counters = json.loads(head[1]).get("counters_since_delta_snapshot") or {}
        needed = {ch for ch, c in counters.items() if c and int(c[0] if c else 0) > 0}
        cursor = head[0]
        while needed and cursor is not None:
            row = conn.execute(
                "SELECT parent_checkpoint_id FROM checkpoints WHERE thread_id = ? "
                "AND checkpoint_ns = ? AND checkpoint_id = ?",
                (thread_id, ns, cursor),
            ).fetchone()
            cursor = row[0] if row else None
            if cursor is None:
                break
            keep.add(cursor)
            versions = self._versions_of(conn, thread_id, ns, cursor)
            for ch in list(needed):
                kind = (
                    _blob_kind(conn, thread_id, ns, ch, str(versions[ch]))
                    if ch in versions
                    else None
                )
                if kind is not None and kind != EMPTY:
                    needed.discard(ch)
        return keep

    def _versions_of(
        self, conn: sqlite3.Connection, thread_id: str, ns: str, checkpoint_id: str
    ) -> dict[str, Any]:
        row = conn.execute(
            "SELECT type, z, body FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
            "AND checkpoint_id = ?",
            (thread_id, ns, checkpoint_id),
        ).fetchone()
        if row is None:
            return {}
        return self.serde.loads_typed((row[0], decompress(row[1], row[2]))).get(
            "channel_versions", {}
        )

    def _delete_checkpoints(
        self,
        conn: sqlite3.Connection,
        thread_id: str,
        ns: str,
        doomed: set[str],
        *,
        relink: bool,
    ) -> None:
        """Delete checkpoints and their writes, fix parent links, then collect garbage."""
        if not doomed:
            return
        parents = dict(
            conn.execute(
                "SELECT checkpoint_id, parent_checkpoint_id FROM checkpoints "
                "WHERE thread_id = ? AND checkpoint_ns = ?",
                (thread_id, ns),
            ).fetchall()
        )
        ids = json.dumps(sorted(doomed))
        garbage = self._garbage_blobs(conn, thread_id, ns, ids)
        # Payloads compressed against what goes are re-compressed on their own first.
        gone: set[tuple[Any, ...]] = {("b", ch, ver) for _, _, ch, ver in garbage}
        gone.update(
            ("w", *r)
            for r in conn.execute(
                "SELECT checkpoint_id, task_id, idx FROM writes WHERE thread_id = ? AND "
                "checkpoint_ns = ? AND checkpoint_id IN (SELECT value FROM json_each(?))",
                (thread_id, ns, ids),
            )
        )
        self._detach(conn, thread_id, ns, gone)
        for table in ("writes", "checkpoints"):
            conn.execute(
                f"DELETE FROM {table} WHERE thread_id = ? AND checkpoint_ns = ? "
                "AND checkpoint_id IN (SELECT value FROM json_each(?))",
                (thread_id, ns, ids),
            )
        updates = []
        for cid, parent in parents.items():
            if cid in doomed or parent is None or parent not in doomed:
                continue
            new_parent = parent
            while relink and new_parent is not None and new_parent in doomed:
                new_parent = parents.get(new_parent)
            updates.append((new_parent if relink else None, thread_id, ns, cid))
        conn.executemany(
            "UPDATE checkpoints SET parent_checkpoint_id = ? WHERE thread_id = ? "
            "AND checkpoint_ns = ? AND checkpoint_id = ?",
            updates,
        )
        conn.executemany(
            "DELETE FROM blobs WHERE thread_id = ? AND checkpoint_ns = ? AND channel = ? "
            "AND version = ?",
            garbage,
        )
        self._forget(thread_id)

    def _detach(
        self, conn: sqlite3.Connection, thread_id: str, ns: str, doomed: set[tuple[Any, ...]]
    ) -> None:
        """Re-compress on their own the payloads compressed against `doomed` sources.

        Called before those sources are deleted or change their stored bytes, so each
        dependent's raw bytes can still be rebuilt.
        """
        if not doomed:
            return
        reader = BlobReader(conn, self.serde, BlobCache(0), thread_id, ns)
        blob_updates = []
        for channel, version, z, data, refs in conn.execute(
            "SELECT channel, version, z, data, dict_refs FROM blobs WHERE thread_id = ? "
            "AND checkpoint_ns = ? AND dict_refs IS NOT NULL",
            (thread_id, ns),
        ).fetchall():
            if ("b", channel, version) in doomed or not _refs_hit(refs, doomed):
                continue
            blob_updates.append(
                (*compress(reader.write_raw(z, data, refs)), thread_id, ns, channel, version)
            )
        write_updates = []
        for cid, task_id, idx, z, data, refs in conn.execute(
            "SELECT checkpoint_id, task_id, idx, z, value, dict_refs FROM writes "
            "WHERE thread_id = ? AND checkpoint_ns = ? AND dict_refs IS NOT NULL",
            (thread_id, ns),
        ).fetchall():
            if ("w", cid, task_id, idx) in doomed or not _refs_hit(refs, doomed):
                continue
            write_updates.append(
                (*compress(reader.write_raw(z, data, refs)), thread_id, ns, cid, task_id, idx)
            )
        conn.executemany(
            "UPDATE blobs SET z = ?, data = ?, dict_refs = NULL WHERE thread_id = ? "
            "AND checkpoint_ns = ? AND channel = ? AND version = ?",
            blob_updates,
        )
        conn.executemany(
            "UPDATE writes SET z = ?, value = ?, dict_refs = NULL WHERE thread_id = ? "
            "AND checkpoint_ns = ? AND checkpoint_id = ? AND task_id = ? AND idx = ?",
            write_updates,
        )
        self._recent.pop((thread_id, ns), None)

    def _garbage_blobs(
        self, conn: sqlite3.Connection, thread_id: str, ns: str, doomed_ids: str
    ) -> list[tuple[str, str, str, str]]:
        """The values nothing will refer to once the `doomed_ids` checkpoints are gone.

        Kept: every value a surviving checkpoint or pending write refers to, and the
        delta bases behind them.
        """
        live: set[tuple[str, str]] = set()
        for typ, z, body in conn.execute(
            "SELECT type, z, body FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
            "AND checkpoint_id NOT IN (SELECT value FROM json_each(?))",
            (thread_id, ns, doomed_ids),
        ):
            versions = self.serde.loads_typed((typ, decompress(z, body))).get(
                "channel_versions", {}
            )
            live.update((ch, str(v)) for ch, v in versions.items())
        # Pending writes stored against a value keep it (and its bases) alive.
        live.update(
            conn.execute(
                "SELECT channel, base_version FROM writes WHERE thread_id = ? "
                "AND checkpoint_ns = ? AND base_version IS NOT NULL "
                "AND checkpoint_id NOT IN (SELECT value FROM json_each(?))",
                (thread_id, ns, doomed_ids),
            ).fetchall()
        )
        bases = {
            (ch, ver): base
            for ch, ver, base in conn.execute(
                "SELECT channel, version, base FROM blobs WHERE thread_id = ? "
                "AND checkpoint_ns = ?",
                (thread_id, ns),
            )
        }
        keep: set[tuple[str, str]] = set()
        for key in live:
            while key in bases and key not in keep:
                keep.add(key)
                base = bases[key]
                if base is None:
                    break
                key = (key[0], base)
        return [(thread_id, ns, ch, ver) for ch, ver in bases if (ch, ver) not in keep]

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


def _blob_exists(
    conn: sqlite3.Connection, thread_id: str, ns: str, channel: str, version: str
) -> bool:
    return _blob_kind(conn, thread_id, ns, channel, version) is not None


def _blob_kind(
    conn: sqlite3.Connection, thread_id: str, ns: str, channel: str, version: str
) -> int | None:
    row = conn.execute(
        "SELECT kind FROM blobs WHERE thread_id = ? AND checkpoint_ns = ? AND channel = ? "
        "AND version = ?",
        (thread_id, ns, channel, version),
    ).fetchone()
    return None if row is None else int(row[0])


def _existing_versions(
    conn: sqlite3.Connection, thread_id: str, ns: str, keys: list[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which of these (channel, version) rows already exist, in one query."""
    if not keys:
        return set()
    # A UNION of primary-key lookups: SQLite would scan for a row-value IN list.
    one = "SELECT channel, version FROM blobs WHERE thread_id = ?1 AND checkpoint_ns = ?2 "
    sql = " UNION ALL ".join(
        f"{one}AND channel = ?{3 + 2 * i} AND version = ?{4 + 2 * i}" for i in range(len(keys))
    )
    rows = conn.execute(sql, (thread_id, ns, *(x for key in keys for x in key)))
    return {(r[0], r[1]) for r in rows}


def _source_exists(conn: sqlite3.Connection, thread_id: str, ns: str, ref: list[Any]) -> bool:
    if ref[0] == "b":
        return _blob_exists(conn, thread_id, ns, ref[1], ref[2])
    return (
        conn.execute(
            "SELECT 1 FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ? "
            "AND task_id = ? AND idx = ?",
            (thread_id, ns, *ref[1:]),
        ).fetchone()
        is not None
    )


def _shared_prefix(old: list[Any], new: list[Any]) -> int:
    """How many first items `old` and `new` share (the identical objects)."""
    if len(new) >= len(old) and all(map(operator.is_, old, new)):
        return len(old)
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a is not b:
            return i
    return min(len(old), len(new))


def _refs_hit(refs: str, doomed: set[tuple[Any, ...]]) -> bool:
    return any(tuple(ref) in doomed for ref in json.loads(refs))


def _recent_worthy(channel: str, values: dict[str, Any]) -> bool:
    """Lists (message histories) and the input are worth compressing against each other."""
    return channel == _INPUT_CHANNEL or isinstance(values.get(channel), list)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _json_path(key: str) -> str:
    """A JSON path selecting one top-level key, quoted so any key is safe."""
    return "$." + json.dumps(key)
