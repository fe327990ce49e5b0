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
* `full` otherwise (linked by `extends` to the list it extends, if any); a channel
  without a value gets no row.

`append` and `full` payloads, and pending writes, may also be compressed against the
thread's few most recent stand-alone list payloads (`Source`, `compress_against`),
which is how one turn's copies of a message cost one. An older version of a cached
history is served as a slice of it when the chain of links proves it a prefix.

Every delta names its `base` version explicitly, so it is correct whichever branch
of a forked thread wrote it.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
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
    "W_PLAIN",
    "W_PREFIX",
    "ZDELTA",
    "BlobCache",
    "BlobReader",
    "Encoded",
    "Entry",
    "Source",
    "compress_against",
    "encode",
]

FULL, ZDELTA, APPEND, EMPTY = 0, 1, 2, 3
# How a pending write's `value` is stored: its own serde bytes, or only the items
# appended to the list at `base_version` of its own channel (a node that returns the
# whole history writes it again every turn). Either may be zstd against sources.
W_PLAIN, W_PREFIX = 0, 1
_MIN_DICT = 64  # smaller payloads are not worth a dictionary

# A compression source: a stored payload named by a JSON-able ref, and its raw bytes.
# `["b", channel, version]` is a `blobs` row, `["w", checkpoint_id, task_id, idx]` a
# `writes` row; the dictionary of a row is its sources' raw bytes, concatenated.
Source = tuple[list[Any], bytes]
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
    dict_refs: str | None = None
    stored_raw: bytes | None = None  # the payload before compression (a future source)
    extends: str | None = None  # a full list that starts with this version's items

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
            self.dict_refs,
            self.extends,
            *self.summary,
        )


BLOB_COLUMNS = (
    "thread_id, checkpoint_ns, channel, version, kind, base, depth, type, z, data, "
    "n_items, since_full, full_size, dict_refs, extends, " + ", ".join(SUMMARY_COLUMNS)
)
_NO_SUMMARY = (None,) * len(SUMMARY_COLUMNS)


def compress_against(raw: bytes, sources: Sequence[Source] | None) -> tuple[int, bytes, str | None]:
    """`(z, data, dict_refs)`: `raw` compressed against `sources` when that is smaller.

    The same bytes stored twice in a turn (the input message in the input channel, the
    input write and the history's append) then cost a few dozen bytes after the first.
    """
    z, data = compress(raw)
    if sources and len(raw) >= _MIN_DICT:
        dz, ddata = compress(raw, b"".join(src for _, src in sources))
        # Only a repeat is worth a reference: what merely shares vocabulary is stored
        # on its own, and only such payloads become sources, so a read decompresses at
        # most one level of sources.
        if 2 * len(ddata) <= len(data):
            return dz, ddata, json.dumps([ref for ref, _ in sources])
    return z, data, None


def encode(
    serde: SerializerProtocol,
    version: str,
    value: Any,
    prev: Entry | None,
    *,
    summarize: bool,
    delta_depth: int,
    append_ratio: float,
    sources: Sequence[Source] | None = None,
) -> Encoded:
    """Encode `value` as version `version`, as a delta against `prev` when that pays.

    `sources` (payloads stored just before, e.g. the pending writes that carried the
    same messages) may serve as the zstd dictionary of an `append` or `full` row.
    """
    summary = frame_summary(value) if summarize else _NO_SUMMARY
    if prev is not None and prev.version == version:
        prev = None  # never a delta against itself
    extends = None
    if isinstance(value, list) and prev is not None and prev.items is not None:
        old = prev.items
        if len(value) >= len(old) and all(map(operator.is_, old, value)):
            extends = prev.version
            typ, raw = serde.dumps_typed(value[len(old) :])
            since = prev.since_full + len(raw)
            if since < append_ratio * max(prev.full_size, _MIN_FULL):
                z, data, refs = compress_against(raw, sources)
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
                    refs,
                    raw,
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
                None,
                raw,
            )
    z, data, refs = compress_against(raw, sources)
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
        refs,
        raw,
        extends,
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
                     full_size, dict_refs) AS (
    SELECT version, kind, base, depth, type, z, data, n_items, since_full, full_size,
           dict_refs
    FROM blobs WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND channel = ?3 AND version = ?4
    UNION ALL
    SELECT b.version, b.kind, b.base, b.depth, b.type, b.z, b.data, b.n_items, b.since_full,
           b.full_size, b.dict_refs
    FROM blobs b JOIN chain c
    ON b.thread_id = ?1 AND b.checkpoint_ns = ?2 AND b.channel = ?3 AND b.version = c.base
)
SELECT * FROM chain
"""
_ALL_SQL = """
SELECT version, kind, base, depth, type, z, data, n_items, since_full, full_size,
       dict_refs
FROM blobs WHERE thread_id = ? AND checkpoint_ns = ? AND channel = ?
"""

# Walks from a list version back along "starts with the items of" links (an append's
# base, a full copy's `extends`), stopping at the wanted version or the first break.
_ANCESTOR_SQL = f"""
WITH RECURSIVE chain(version, link, n_items) AS (
    SELECT version, CASE kind WHEN {APPEND} THEN base WHEN {FULL} THEN extends END, n_items
    FROM blobs WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND channel = ?3 AND version = ?4
    UNION ALL
    SELECT b.version, CASE b.kind WHEN {APPEND} THEN b.base WHEN {FULL} THEN b.extends END,
           b.n_items
    FROM blobs b JOIN chain c
    ON b.thread_id = ?1 AND b.checkpoint_ns = ?2 AND b.channel = ?3 AND b.version = c.link
    WHERE c.version != ?5
)
SELECT n_items FROM chain WHERE version = ?5
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
        self._raws: dict[tuple[Any, ...], bytes] = {}

    def prefetch(self, channel: str) -> None:
        """Load every row of `channel` at once (worth it before reading many versions)."""
        if channel in self._bulk:
            return
        rows = self._rows.setdefault(channel, {})
        for row in self._conn.execute(_ALL_SQL, (self._thread, self._ns, channel)):
            rows[row[0]] = row
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
        elif (
            (channel, version) not in self._states
            and cached is not None
            and cached.items is not None
            and (n := self._ancestor_length(channel, cached.version, version)) is not None
        ):
            # An older version of the cached list: the same messages, fewer of them.
            return True, cached.items[:n]
        else:
            state = self._state(channel, version)
        if state is None:
            return False, None
        if state.items is not None:
            return True, list(state.items)
        assert state.raw is not None
        return True, self._serde.loads_typed((state.type, state.raw))

    def _ancestor_length(self, channel: str, head: str, version: str) -> int | None:
        """How many items `version`'s list has, if `head`'s list starts with them.

        True when a chain of `append` rows (and full copies that extend their
        predecessor) leads from `head` back to `version`; `None` otherwise (another
        branch, a rewrite, a gap), and the version is decoded the usual way.
        """
        if _counter(version) >= _counter(head):
            return None
        found = self._conn.execute(_ANCESTOR_SQL, (self._thread, self._ns, channel, head, version))
        row = found.fetchone()
        return None if row is None or row[0] is None else int(row[0])

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
            known = self._cache.get((self._thread, self._ns, channel))
            # Reading an older version must not displace the newer base of the next
            # delta (whose items the graph still holds); a newer one becomes it.
            if head is not None and (known is None or _counter(known.version) < _counter(version)):
                self._cache.set(
                    (self._thread, self._ns, channel),
                    Entry(version, final.type, final.raw, final.items, head[3], head[8], head[9]),
                )
        return final

    def source_raw(self, ref: Sequence[Any]) -> bytes:
        """The raw payload of a stored row named by a source ref (see `Source`)."""
        key = tuple(ref)
        if key in self._raws:
            return self._raws[key]
        if key[0] == "b":
            row = self._row(str(key[1]), str(key[2]))
            if row is None:
                raise LookupError(
                    f"checkpoint store is missing version {key[2]!r} of channel {key[1]!r} "
                    f"that another value was compressed with (thread {self._thread!r})"
                )
            raw = self.stored_raw(str(key[1]), row)
        else:
            found = self._conn.execute(
                "SELECT z, value, dict_refs FROM writes WHERE thread_id = ? AND "
                "checkpoint_ns = ? AND checkpoint_id = ? AND task_id = ? AND idx = ?",
                (self._thread, self._ns, *key[1:]),
            ).fetchone()
            if found is None:
                raise LookupError(
                    f"checkpoint store is missing pending write {list(key[1:])!r} that a "
                    f"value was compressed with (thread {self._thread!r})"
                )
            raw = self.write_raw(*found)
        self._raws[key] = raw
        return raw

    def dict_bytes(self, refs: str) -> bytes:
        """The zstd dictionary named by a `dict_refs` column."""
        return b"".join(self.source_raw(ref) for ref in json.loads(refs))

    def stored_raw(self, channel: str, row: _Row) -> bytes:
        """A `blobs` row's payload before compression (appended items, or full bytes)."""
        _, kind, _, _, _, z, data, *_ = row
        if kind == ZDELTA:
            state = self._state(channel, row[0])
            assert state is not None and state.raw is not None
            return state.raw
        return self.write_raw(z, data, row[10])

    def write_raw(self, z: int, data: bytes, dict_refs: str | None) -> bytes:
        """A payload's raw bytes from its stored `z`, `data` and `dict_refs`."""
        if z == Z_DICT:
            assert dict_refs is not None
            return decompress(z, data, self.dict_bytes(dict_refs))
        return decompress(z, data)

    def write_value(
        self,
        channel: str,
        kind: int,
        typ: str,
        z: int,
        data: bytes,
        base_version: str | None,
        dict_refs: str | None,
        prefix_items: int | None = None,
    ) -> Any:
        """A stored pending write's value (a `W_PREFIX` one: the base's first
        `prefix_items` items, all when `None`, then its own)."""
        value = self._serde.loads_typed((typ, self.write_raw(z, data, dict_refs)))
        if kind != W_PREFIX:
            return value
        assert base_version is not None
        found, prefix = self.value(channel, base_version)
        if not found or not isinstance(prefix, list):
            raise LookupError(
                f"checkpoint store is missing version {base_version!r} of channel {channel!r} "
                f"that a pending write extends (thread {self._thread!r})"
            )
        return [*(prefix if prefix_items is None else prefix[:prefix_items]), *value]

    def _apply_appends(self, channel: str, rows: list[_Row], base: _State) -> _State:
        raws = [self.write_raw(row[5], row[6], row[10]) for row in rows]
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
            raw = self.write_raw(z, data, row[10])
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


def _counter(version: str) -> int:
    """The counter part of a channel version (`0000000012.ab..` -> 12), else 0."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


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
