"""Channel values as rows of the `blobs` table: encoding, and materializing them back.

A value is written only when its channel's version changes. The encoder picks the
cheapest correct form against the channel's latest value this process knows:

* `append` when the value is a list that extends the base list item for item (the
  `messages` history): only the new items are stored. A full copy is written once
  the appended bytes since the last full copy reach `append_ratio` times its size,
  so the full copies grow geometrically and their total stays linear in the
  history (a fixed every-K snapshot would make storage quadratic).
* `zdelta` when the serde bytes can be compressed against the base's bytes (the
  frame, which changes a little every turn); a full copy every `delta_depth`
  versions bounds a read to that many decompressions.
* `full` otherwise, and `empty` when the channel has no value.

Every delta names its `base` version explicitly, so it is correct whichever branch
of a forked thread wrote it.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol

from llmctx.runtime._checkpoint_codec import (
    SUMMARY_COLUMNS,
    Z_DICT,
    compress,
    decompress,
    frame_summary,
)

__all__ = [
    "APPEND",
    "EMPTY",
    "FULL",
    "ZDELTA",
    "BlobCache",
    "BlobReader",
    "Encoded",
    "Entry",
    "WriteDict",
    "encode",
]

FULL, ZDELTA, APPEND, EMPTY = 0, 1, 2, 3
_MIN_FULL = 4096  # an append chain may always grow to this many bytes


@dataclass
class Entry:
    """The latest value this process wrote or read for one (thread, ns, channel).

    `raw` is the value's serde bytes when known (the base of a `zdelta`); `items`
    the list itself when the value is a list (the base of an `append`).
    """

    version: str
    type: str
    raw: bytes | None
    items: list[Any] | None
    depth: int
    since_full: int
    full_size: int


@dataclass
class Encoded:
    """One `blobs` row to write (without its key), and the cache entry it leaves."""

    kind: int
    base: str | None
    depth: int
    type: str | None
    z: int
    data: bytes | None
    n_items: int | None
    since_full: int
    full_size: int
    summary: tuple[Any, ...]
    entry: Entry | None
    dict_checkpoint: str | None = None
    dict_writes: str | None = None

    def row(self, key: tuple[str, str, str, str]) -> tuple[Any, ...]:
        return (
            *key,
            self.kind,
            self.base,
            self.depth,
            self.type,
            self.z,
            self.data,
            self.n_items,
            self.since_full,
            self.full_size,
            self.dict_checkpoint,
            self.dict_writes,
            *self.summary,
        )


@dataclass(frozen=True)
class WriteDict:
    """Pending writes used as a compression dictionary: where they are, and their bytes."""

    checkpoint_id: str
    refs: str  # JSON list of [task_id, idx], in dictionary order
    data: bytes


BLOB_COLUMNS = (
    "thread_id, checkpoint_ns, channel, version, kind, base, depth, type, z, data, "
    "n_items, since_full, full_size, dict_checkpoint, dict_writes, " + ", ".join(SUMMARY_COLUMNS)
)
_NO_SUMMARY = (None,) * len(SUMMARY_COLUMNS)


def encode(
    serde: SerializerProtocol,
    version: str,
    value: Any,
    prev: Entry | None,
    *,
    summarize: bool,
    delta_depth: int,
    append_ratio: float,
    write_dict: WriteDict | None = None,
) -> Encoded:
    """Encode `value` as version `version`, as a delta against `prev` when that pays.

    `write_dict` (the parent checkpoint's pending writes to this channel) lets an
    append be compressed against the writes that carried the same items.
    """
    summary = frame_summary(value) if summarize else _NO_SUMMARY
    if prev is not None and prev.version == version:
        prev = None  # never a delta against itself
    if isinstance(value, list) and prev is not None and prev.items is not None:
        old = prev.items
        if len(value) >= len(old) and all(map(operator.is_, old, value)):
            typ, raw = serde.dumps_typed(value[len(old) :])
            since = prev.since_full + len(raw)
            if since < append_ratio * max(prev.full_size, _MIN_FULL):
                z, data = compress(raw)
                dict_ref: WriteDict | None = None
                if write_dict is not None and raw:
                    dz, ddata = compress(raw, write_dict.data)
                    if len(ddata) < len(data):
                        z, data, dict_ref = dz, ddata, write_dict
                entry = Entry(
                    version, prev.type, None, list(value), prev.depth + 1, since, prev.full_size
                )
                return Encoded(
                    APPEND,
                    prev.version,
                    prev.depth + 1,
                    typ,
                    z,
                    data,
                    len(value),
                    since,
                    prev.full_size,
                    summary,
                    entry,
                    dict_ref.checkpoint_id if dict_ref else None,
                    dict_ref.refs if dict_ref else None,
                )
    typ, raw = serde.dumps_typed(value)
    items = list(value) if isinstance(value, list) else None
    if prev is not None and prev.raw is not None and prev.type == typ and prev.depth < delta_depth:
        z, data = compress(raw, prev.raw)
        plain = compress(raw)
        if len(data) < len(plain[1]):
            entry = Entry(version, typ, raw, items, prev.depth + 1, 0, len(raw))
            return Encoded(
                ZDELTA,
                prev.version,
                prev.depth + 1,
                typ,
                z,
                data,
                len(value) if items is not None else None,
                0,
                len(raw),
                summary,
                entry,
            )
        z, data = plain
    else:
        z, data = compress(raw)
    entry = Entry(version, typ, raw, items, 0, 0, len(raw))
    return Encoded(
        FULL,
        None,
        0,
        typ,
        z,
        data,
        len(items) if items is not None else None,
        0,
        len(raw),
        summary,
        entry,
    )


def empty() -> Encoded:
    """The row of a channel that has no value at this version."""
    return Encoded(EMPTY, None, 0, "empty", 0, None, None, 0, 0, _NO_SUMMARY, None)


class BlobCache:
    """A small LRU of `Entry` by (thread, ns, channel): the bases of the next deltas."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._data: OrderedDict[tuple[str, str, str], Entry] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> Entry | None:
        entry = self._data.get(key)
        if entry is not None:
            self._data.move_to_end(key)
        return entry

    def set(self, key: tuple[str, str, str], entry: Entry | None) -> None:
        if entry is None:
            self._data.pop(key, None)
            return
        self._data[key] = entry
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def drop_thread(self, thread_id: str) -> None:
        for key in [k for k in self._data if k[0] == thread_id]:
            del self._data[key]

    def clear(self) -> None:
        self._data.clear()


_CHAIN_SQL = """
WITH RECURSIVE chain(version, kind, base, depth, type, z, data, n_items, since_full,
                     full_size, dict_checkpoint, dict_writes) AS (
    SELECT version, kind, base, depth, type, z, data, n_items, since_full, full_size,
           dict_checkpoint, dict_writes
    FROM blobs WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND channel = ?3 AND version = ?4
    UNION ALL
    SELECT b.version, b.kind, b.base, b.depth, b.type, b.z, b.data, b.n_items, b.since_full,
           b.full_size, b.dict_checkpoint, b.dict_writes
    FROM blobs b JOIN chain c
    ON b.thread_id = ?1 AND b.checkpoint_ns = ?2 AND b.channel = ?3 AND b.version = c.base
)
SELECT * FROM chain
"""
_ALL_SQL = """
SELECT version, kind, base, depth, type, z, data, n_items, since_full, full_size,
       dict_checkpoint, dict_writes
FROM blobs WHERE thread_id = ? AND checkpoint_ns = ? AND channel = ?
"""

_Row = tuple[Any, ...]  # the columns of _CHAIN_SQL


@dataclass
class _State:
    type: str
    raw: bytes | None
    items: list[Any] | None


class BlobReader:
    """Materializes channel values of one (thread, ns), sharing work between versions.

    Reading many versions of a channel (a listing) decodes each stored row once:
    an `append` version reuses its base's list, a `zdelta` its base's bytes.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        serde: SerializerProtocol,
        cache: BlobCache,
        thread_id: str,
        checkpoint_ns: str,
    ) -> None:
        self._conn = conn
        self._serde = serde
        self._cache = cache
        self._thread = thread_id
        self._ns = checkpoint_ns
        self._rows: dict[str, dict[str, _Row]] = {}
        self._bulk: set[str] = set()
        self._states: dict[tuple[str, str], _State | None] = {}
        self._writes: dict[str, dict[tuple[str, str, int], bytes]] = {}
        self._dict_queries = 0

    def prefetch(self, channel: str) -> None:
        """Load every row of `channel` at once (worth it before reading many versions)."""
        if channel in self._bulk:
            return
        rows = self._rows.setdefault(channel, {})
        for row in self._conn.execute(_ALL_SQL, (self._thread, self._ns, channel)):
            rows[row[0]] = row
        writes = self._writes.setdefault(channel, {})
        for cid, task_id, idx, z, value in self._conn.execute(
            "SELECT checkpoint_id, task_id, idx, z, value FROM writes WHERE thread_id = ? "
            "AND checkpoint_ns = ? AND channel = ?",
            (self._thread, self._ns, channel),
        ):
            writes[(cid, task_id, idx)] = decompress(z, value)
        self._bulk.add(channel)

    def values(self, versions: dict[str, Any]) -> dict[str, Any]:
        """The channel values of a checkpoint with these `channel_versions`."""
        out: dict[str, Any] = {}
        for channel, version in versions.items():
            found, value = self.value(channel, str(version))
            if found:
                out[channel] = value
        return out

    def value(self, channel: str, version: str) -> tuple[bool, Any]:
        """`(True, value)`, or `(False, None)` when the version is missing or empty."""
        key = (self._thread, self._ns, channel)
        cached = self._cache.get(key)
        if cached is not None and cached.version == version:
            state: _State | None = _State(cached.type, cached.raw, cached.items)
        else:
            state = self._state(channel, version)
        if state is None:
            return False, None
        if state.items is not None:
            return True, list(state.items)
        assert state.raw is not None
        return True, self._serde.loads_typed((state.type, state.raw))

    def raw_bytes(self, channel: str, version: str) -> tuple[str, bytes] | None:
        """The serde `(type, bytes)` of a version (re-serialized for append chains)."""
        state = self._state(channel, version)
        if state is None:
            return None
        if state.raw is None:
            return self._serde.dumps_typed(state.items)
        return state.type, state.raw

    def _row(self, channel: str, version: str) -> _Row | None:
        rows = self._rows.setdefault(channel, {})
        if version not in rows and channel not in self._bulk:
            for row in self._conn.execute(_CHAIN_SQL, (self._thread, self._ns, channel, version)):
                rows.setdefault(row[0], row)
        return rows.get(version)

    def _state(self, channel: str, version: str) -> _State | None:
        if (channel, version) in self._states:
            return self._states[(channel, version)]
        # Walk back to a known state or a full row, then apply the deltas forward.
        pending: list[_Row] = []
        cursor: str | None = version
        base_state: _State | None = None
        while cursor is not None:
            if (channel, cursor) in self._states:
                base_state = self._states[(channel, cursor)]
                break
            row = self._row(channel, cursor)
            if row is None:
                if not pending:
                    self._states[(channel, version)] = None
                    return None
                raise LookupError(
                    f"checkpoint store is missing base version {cursor!r} of channel "
                    f"{channel!r} (thread {self._thread!r})"
                )
            pending.append(row)
            if row[1] in (FULL, EMPTY):
                break
            cursor = row[2]
        state = base_state
        forward = pending[::-1]
        i = 0
        while i < len(forward):
            row = forward[i]
            if row[1] == APPEND and channel not in self._bulk and state is not None:
                # One read of a long history: decode the run of appends in one go
                # instead of building every intermediate list (a listing keeps them).
                j = i
                while j < len(forward) and forward[j][1] == APPEND:
                    j += 1
                state = self._apply_appends(channel, forward[i:j], state)
                self._states[(channel, forward[j - 1][0])] = state
                i = j
                continue
            state = self._apply(channel, row, state)
            self._states[(channel, row[0])] = state
            i += 1
        final = self._states[(channel, version)]
        if final is not None:
            head = pending[0] if pending else None
            if head is not None:
                self._cache.set(
                    (self._thread, self._ns, channel),
                    Entry(version, final.type, final.raw, final.items, head[3], head[8], head[9]),
                )
        return final

    def write_dict(self, channel: str, checkpoint_id: str, refs: str) -> bytes:
        """The dictionary an append row was compressed with: its writes' bytes, in order."""
        keys = [(checkpoint_id, str(t), int(i)) for t, i in json.loads(refs)]
        known = self._writes.setdefault(channel, {})
        if channel not in self._bulk and any(k not in known for k in keys):
            self._dict_queries += 1
            if self._dict_queries > 16:  # a long chain: one query for all its writes
                self.prefetch(channel)
        if channel not in self._bulk and any(k not in known for k in keys):
            for task_id, idx, z, value in self._conn.execute(
                "SELECT task_id, idx, z, value FROM writes WHERE thread_id = ? AND "
                "checkpoint_ns = ? AND checkpoint_id = ? AND channel = ?",
                (self._thread, self._ns, checkpoint_id, channel),
            ):
                known[(checkpoint_id, task_id, idx)] = decompress(z, value)
        try:
            return b"".join(known[k] for k in keys)
        except KeyError as exc:
            raise LookupError(
                f"checkpoint store is missing pending write {exc.args[0]!r} that a value "
                f"of channel {channel!r} was compressed with (thread {self._thread!r})"
            ) from None

    def stored_bytes(self, channel: str, row: _Row) -> bytes:
        """A row's `data` decompressed (its own bytes, not the materialized value)."""
        _, kind, _, _, _, z, data, *_ = row
        if z == Z_DICT and kind == APPEND:
            return decompress(z, data, self.write_dict(channel, row[10], row[11]))
        raise ValueError("only dictionary-compressed append rows need this")

    def _append_raw(self, channel: str, row: _Row) -> bytes:
        _, _, _, _, _, z, data, *_ = row
        if z == Z_DICT:
            return decompress(z, data, self.write_dict(channel, row[10], row[11]))
        return decompress(z, data)

    def _apply_appends(self, channel: str, rows: list[_Row], base: _State) -> _State:
        raws = [self._append_raw(channel, row) for row in rows]
        combined = _concat_msgpack_arrays(raws) if all(r[4] == "msgpack" for r in rows) else None
        if combined is not None:
            new = self._serde.loads_typed(("msgpack", combined))
        else:
            new = [
                x
                for row, raw in zip(rows, raws, strict=True)
                for x in self._serde.loads_typed((row[4], raw))
            ]
        old = base.items
        if old is None:
            assert base.raw is not None
            old = self._serde.loads_typed((base.type, base.raw))
        return _State(base.type, None, [*old, *new])

    def _apply(self, channel: str, row: _Row, base: _State | None) -> _State | None:
        _, kind, _, _, typ, z, data, *_ = row
        if kind == EMPTY:
            return None
        if kind == FULL:
            raw = decompress(z, data)
            items = None
            if typ == "msgpack" and row[7] is not None:
                items = self._serde.loads_typed((typ, raw))
            return _State(typ, raw, items)
        if base is None:
            raise LookupError(f"delta version {row[0]!r} has no materialized base")
        if kind == ZDELTA:
            if base.raw is None:
                base = _State(*self._serde.dumps_typed(base.items), base.items)
            raw = decompress(Z_DICT, data, base.raw)
            items = self._serde.loads_typed((typ, raw)) if row[7] is not None else None
            return _State(typ, raw, items)
        return self._apply_appends(channel, [row], base)


def _concat_msgpack_arrays(raws: list[bytes]) -> bytes | None:
    """Join msgpack arrays into one array (items concatenated), or `None` if one isn't."""
    total = 0
    bodies: list[bytes] = []
    for raw in raws:
        if not raw:
            return None
        head = raw[0]
        if 0x90 <= head <= 0x9F:
            count, offset = head & 0x0F, 1
        elif head == 0xDC:
            count, offset = int.from_bytes(raw[1:3], "big"), 3
        elif head == 0xDD:
            count, offset = int.from_bytes(raw[1:5], "big"), 5
        else:
            return None
        total += count
        bodies.append(raw[offset:])
    if total < 16:
        header = bytes([0x90 | total])
    elif total < 1 << 16:
        header = b"\xdc" + total.to_bytes(2, "big")
    else:
        header = b"\xdd" + total.to_bytes(4, "big")
    return header + b"".join(bodies)
