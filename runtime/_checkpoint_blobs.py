"""Channel values and pending writes as stored payloads: encoding, and reading back.

A channel's value is written only when its version changes, as one `blobs` row:

* `APPEND` when the value is a list that extends the channel's previous list item
  for item (the `messages` history): only the new items are stored, and `base`
  names the version extended. A full copy is written once the appended bytes since
  the last one reach `append_ratio` times its size, so full copies grow
  geometrically and their total stays linear in the history (a fixed every-K
  snapshot would make storage quadratic);
* `FULL` otherwise: the serde bytes of the value (linked by `extends` to the list
  it extends, if any, so an older version of a history can be served as a prefix of
  a newer one); a channel without a value gets no row.

A task's pending writes are one `writes` row: its writes packed together
(`pack_writes`). A list write that repeats the first items of its channel's stored
list (a node that returns the whole history) keeps only the rest (`W_PREFIX`). Once
the next checkpoint stores a value whose payload is exactly a write's (a frame, a
new message), the write is rewritten as a reference to that row (`W_BLOB`): each
value is stored once, and a write is never a source.

Every payload (the bytes a row stores before compression) is compressed alone or
against *one* stored `blobs` payload, its source (`src_ch`, `src_ver`): the
previous version of the same channel (what a frame mostly is), or one of the few
lists and inputs the thread stored last (`Recent`). The second copy LangGraph makes
of each input message (input, then history) costs a few dozen bytes, and a new
message is compressed against an earlier one (same field names, same words).
`depth` counts the chain of sources behind a payload and stays below `max_depth`,
the bound on what a read decompresses.

Every delta names its base and every payload its source explicitly, so reads are
correct whichever branch of a forked thread wrote them. A row whose source goes away
is re-compressed on its own first (`LlmctxSaver._detach`). A payload over `SPILL`
bytes lives in the `spill` table (`store_data`, `spilled`).
"""

from __future__ import annotations

import operator
import sqlite3
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde.base import SerializerProtocol

from llmctx.runtime._checkpoint_codec import (
    Z_DICT,
    Candidate,
    Compressed,
    Ref,
    best_compression,
    decompress,
    frame_summary,
    pack_summary,
)
from llmctx.runtime._checkpoint_keys import Names

__all__ = [
    "APPEND",
    "BLOB_COLUMNS",
    "EMPTY",
    "FULL",
    "SPILL",
    "W_BLOB",
    "W_PLAIN",
    "W_PREFIX",
    "BlobCache",
    "BlobReader",
    "Encoded",
    "Entry",
    "Recent",
    "WriteEntry",
    "counter",
    "empty",
    "encode",
    "pack_writes",
    "source_of",
    "spilled",
    "store_data",
    "unpack_writes",
]

FULL, APPEND, EMPTY = 0, 2, 3
# How one pending write is stored inside its task's row: its own serde bytes; only
# the items after the first `prefix` items (all when `None`) of the list at `base` of
# its own channel; or exactly the payload of the `blobs` row (its channel, `base`).
W_PLAIN, W_PREFIX, W_BLOB = 0, 1, 2
_MIN_FULL = 4096  # an append chain may always grow to this many bytes
_BULK_CHAIN = 64  # a read of more appends than this loads the whole thread at once

BLOB_COLUMNS = (
    "t, ch, ver, kind, base, typ, z, data, src_ch, src_ver, depth, n_items, since_full, "
    "full_size, extends, summary"
)
# What a reader selects of a `blobs` row (the `_Row` tuples below).
_READ_COLUMNS = (
    "ver, kind, base, typ, z, data, src_ch, src_ver, depth, n_items, since_full, full_size"
)
_Row = tuple[Any, ...]
# A payload larger than this is stored in `spill` and `data` holds its row id: a
# `WITHOUT ROWID` row over ~1 KB would start an overflow page (4 KB) of its own.
SPILL = 800


def spilled(column: str = "blobs.data") -> str:
    """SQL for a `blobs` payload column (qualified: `spill` has a `data` column too),
    reading a spilled payload from `spill`."""
    return (
        f"CASE typeof({column}) WHEN 'integer' "
        f"THEN (SELECT s.data FROM spill s WHERE s.id = {column}) ELSE {column} END"
    )


def store_data(conn: sqlite3.Connection, data: bytes | None) -> bytes | int | None:
    """What a `blobs` row's `data` column holds: the payload, or its `spill` row id."""
    if data is None or len(data) <= SPILL:
        return data
    return int(conn.execute("INSERT INTO spill (data) VALUES (?)", (data,)).lastrowid or 0)


def source_of(src_ch: int | None, src_ver: Any) -> Ref | None:
    """The source row named by a row's `src_ch` and `src_ver` columns."""
    return None if src_ch is None else (src_ch, src_ver)


def counter(version: int | str) -> int:
    """The counter part of a packed channel version (`0000000012.ab..` -> 12), else 0."""
    if isinstance(version, int):
        return version >> 40
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


@dataclass
class Entry:
    """The latest value this process wrote or read for one (thread, channel).

    `version` is packed. `raw` is the value's serde bytes when known, `items` the
    list itself when the value is a list (the base of an `APPEND`). `source` is the
    row as a compression source when its stored payload is exactly `raw`.
    `ancestors` maps the versions this process appended `items` from to their
    lengths: each is a prefix of `items` (shared along one branch, and only grown).
    """

    version: int | str
    type: str
    raw: bytes | None
    items: list[Any] | None
    since_full: int
    full_size: int
    source: Candidate | None = None
    ancestors: dict[int | str, int] | None = None
    summary: tuple[Any, ...] | None = None  # the version summary, when a frame


@dataclass
class Encoded:
    """One `blobs` row to write (without its key), and the cache entry it leaves."""

    kind: int
    base: int | str | None
    type: str | None
    comp: Compressed | None
    n_items: int | None
    since_full: int
    full_size: int
    summary: bytes | None
    entry: Entry | None
    stored_raw: bytes | None = None  # the payload before compression (a future source)
    extends: int | str | None = None  # a full list that starts with this version's items

    def row(self, t: int, ch: int, ver: int | str, typ: int | None) -> tuple[Any, ...]:
        comp = self.comp
        return (
            t,
            ch,
            ver,
            self.kind,
            self.base,
            typ,
            comp.z if comp else 0,
            comp.data if comp else None,
            comp.src[0] if comp and comp.src else None,
            comp.src[1] if comp and comp.src else None,
            comp.depth if comp and comp.depth else None,
            self.n_items,
            self.since_full or None,
            self.full_size or None,
            self.extends,
            self.summary,
        )


class Recent:
    """The last few payloads a thread stored: candidate sources for the next ones."""

    def __init__(self, count: int = 6, budget: int = 48_000) -> None:
        self._count = count
        self._budget = budget
        self.items: deque[Candidate] = deque()

    def add(self, cand: Candidate) -> None:
        self.items.appendleft(cand)
        while len(self.items) > self._count or (
            len(self.items) > 1 and sum(len(c.raw) for c in self.items) > self._budget
        ):
            self.items.pop()

    def keep(self, alive: Iterable[Candidate]) -> None:
        self.items = deque(alive)


def encode(
    serde: SerializerProtocol,
    version: int | str,
    value: Any,
    prev: Entry | None,
    *,
    summarize: bool,
    append_ratio: float,
    max_depth: int,
    candidates: Sequence[Candidate] = (),
) -> Encoded:
    """Encode `value` as version `version`, as an append to `prev` when that pays.

    A list's appended items are compressed against `candidates` (recent payloads,
    e.g. the pending write that carried the same messages); another value against
    `prev`'s row first, then `candidates`.
    """
    summary = frame_summary(value) if summarize else None
    if prev is not None and prev.version == version:
        prev = None  # never a delta against itself
    extends = None
    if isinstance(value, list) and prev is not None and prev.items is not None:
        old = prev.items
        if len(value) >= len(old) and all(map(operator.is_, old, value)):
            extends = prev.version
            ancestors = prev.ancestors if prev.ancestors is not None else {}
            ancestors[prev.version] = len(old)
            typ, raw = serde.dumps_typed(value[len(old) :])
            since = prev.since_full + len(raw)
            if since < append_ratio * max(prev.full_size, _MIN_FULL):
                comp = best_compression(raw, candidates, max_depth=max_depth)
                entry = Entry(
                    version, prev.type, None, list(value), since, prev.full_size, None, ancestors
                )
                return Encoded(
                    APPEND,
                    prev.version,
                    typ,
                    comp,
                    len(value),
                    since,
                    prev.full_size,
                    pack_summary(summary) if summary is not None else None,
                    entry,
                    raw,
                )
    typ, raw = serde.dumps_typed(value)
    items = list(value) if isinstance(value, list) else None
    own = [prev.source] if prev is not None and prev.source is not None and items is None else []
    comp = best_compression(raw, [*own, *candidates], max_depth=max_depth)
    entry = Entry(version, typ, raw, items, 0, len(raw), summary=summary)
    packed = None
    if summary is not None:
        # Compressed against its previous version: the texts it repeats are elided.
        base = prev.summary if own and prev is not None and comp.src == own[0].ref else None
        packed = pack_summary(summary, base)
    if extends is not None:
        entry.ancestors = ancestors
    return Encoded(
        FULL,
        None,
        typ,
        comp,
        len(items) if items is not None else None,
        0,
        len(raw),
        packed,
        entry,
        raw,
        extends,
    )


def empty() -> Encoded:
    """The row of a channel that has no value at this version (none is stored)."""
    return Encoded(EMPTY, None, None, None, None, 0, 0, None, None)


# -- pending writes ---------------------------------------------------------------


@dataclass(frozen=True)
class WriteEntry:
    """One pending write inside a task's row (names interned, versions packed)."""

    idx: int
    ch: int
    typ: int
    kind: int
    payload: bytes
    base: int | str | None = None
    prefix: int | None = None


def pack_writes(entries: Sequence[WriteEntry]) -> bytes:
    """A task's writes as one payload: msgpack `[idx, ch, typ, payload]` per plain
    write, `[idx, ch, typ, payload, base, prefix]` per `W_PREFIX` one and
    `[idx, ch, base]` per `W_BLOB` one."""
    out: list[Any] = []
    for e in entries:
        if e.kind == W_PREFIX:
            out.append([e.idx, e.ch, e.typ, e.payload, e.base, e.prefix])
        elif e.kind == W_BLOB:
            out.append([e.idx, e.ch, e.base])
        else:
            out.append([e.idx, e.ch, e.typ, e.payload])
    return ormsgpack.packb(out)


def unpack_writes(raw: bytes) -> list[WriteEntry]:
    """Invert `pack_writes`."""
    out = []
    for item in ormsgpack.unpackb(raw):
        if len(item) == 6:
            out.append(WriteEntry(item[0], item[1], item[2], W_PREFIX, item[3], item[4], item[5]))
        elif len(item) == 3:
            out.append(WriteEntry(item[0], item[1], 0, W_BLOB, b"", item[2]))
        else:
            out.append(WriteEntry(item[0], item[1], item[2], W_PLAIN, item[3]))
    return out


# -- reading ------------------------------------------------------------------------


class BlobCache:
    """A small LRU of `Entry` by (thread number, channel id): the bases of the next
    deltas, and the values a read of the head finds decoded."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._data: OrderedDict[tuple[int, int], Entry] = OrderedDict()

    def get(self, key: tuple[int, int]) -> Entry | None:
        entry = self._data.get(key)
        if entry is not None:
            self._data.move_to_end(key)
        return entry

    def set(self, key: tuple[int, int], entry: Entry | None) -> None:
        if entry is None:
            self._data.pop(key, None)
            return
        self._data[key] = entry
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def drop_thread(self, t: int) -> None:
        for key in [k for k in self._data if k[0] == t]:
            del self._data[key]

    def clear(self) -> None:
        self._data.clear()


def _select_columns(table: str) -> str:
    return _READ_COLUMNS.replace("data", spilled(f"{table}.data"), 1)


_CHAIN_SQL = f"""
WITH RECURSIVE chain({_READ_COLUMNS}) AS (
    SELECT {_READ_COLUMNS} FROM blobs WHERE t = ?1 AND ch = ?2 AND ver = ?3
    UNION ALL
    SELECT b.ver, b.kind, b.base, b.typ, b.z, b.data, b.src_ch, b.src_ver, b.depth,
           b.n_items, b.since_full, b.full_size
    FROM blobs b JOIN chain c ON b.t = ?1 AND b.ch = ?2 AND b.ver = c.base
)
SELECT {_select_columns("chain")} FROM chain
"""
# A row and the chain of rows its payload is compressed against, with their channels.
_SOURCES_SQL = f"""
WITH RECURSIVE chain(ch, {_READ_COLUMNS}) AS (
    SELECT ch, {_READ_COLUMNS} FROM blobs WHERE t = ?1 AND ch = ?2 AND ver = ?3
    UNION ALL
    SELECT b.ch, b.ver, b.kind, b.base, b.typ, b.z, b.data, b.src_ch, b.src_ver, b.depth,
           b.n_items, b.since_full, b.full_size
    FROM blobs b JOIN chain c ON b.t = ?1 AND b.ver = c.src_ver AND b.ch = c.src_ch
    WHERE c.z = {Z_DICT}
)
SELECT ch, {_select_columns("chain")} FROM chain
"""
_THREAD_SQL = f"SELECT ch, {_select_columns('blobs')} FROM blobs WHERE t = ?"
# Scans the thread's rows (the key starts with the version).
_ALL_SQL = f"SELECT {_select_columns('blobs')} FROM blobs WHERE t = ? AND ch = ?"

# Walks from a list version back along "starts with the items of" links (an append's
# base, a full copy's `extends`), stopping at the wanted version or the first break.
_ANCESTOR_SQL = f"""
WITH RECURSIVE chain(ver, link, n_items) AS (
    SELECT ver, CASE kind WHEN {APPEND} THEN base WHEN {FULL} THEN extends END, n_items
    FROM blobs WHERE t = ?1 AND ch = ?2 AND ver = ?3
    UNION ALL
    SELECT b.ver, CASE b.kind WHEN {APPEND} THEN b.base WHEN {FULL} THEN b.extends END,
           b.n_items
    FROM blobs b JOIN chain c ON b.t = ?1 AND b.ch = ?2 AND b.ver = c.link
    WHERE c.ver != ?4
)
SELECT n_items FROM chain WHERE ver = ?4
"""


@dataclass
class _State:
    type: str
    raw: bytes | None
    items: list[Any] | None


class BlobReader:
    """Materializes the channel values and pending writes of one thread number `t`,
    sharing work between versions.

    Reading many versions of a channel (a listing) decodes each stored row once: an
    `APPEND` version reuses its base's list, and every payload is decompressed once.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        serde: SerializerProtocol,
        cache: BlobCache,
        names: Names,
        t: int,
    ) -> None:
        self._conn = conn
        self._serde = serde
        self._cache = cache
        self._names = names
        self._t = t
        self._rows: dict[int, dict[int | str, _Row]] = {}
        self._bulk: set[int] = set()  # channels whose rows are all loaded
        self._listing: set[int] = set()  # channels read at many versions (keep each)
        self._states: dict[tuple[int, int | str], _State | None] = {}
        self._raws: dict[Ref, bytes] = {}

    @property
    def t(self) -> int:
        return self._t

    def prefetch(self, ch: int) -> None:
        """Load every row of channel `ch` at once (worth it before reading many versions)."""
        self._listing.add(ch)
        if ch in self._bulk:
            return
        rows = self._rows.setdefault(ch, {})
        for row in self._conn.execute(_ALL_SQL, (self._t, ch)):
            rows[row[0]] = row
        self._bulk.add(ch)

    def values(self, versions: dict[str, Any]) -> dict[str, Any]:
        """The channel values of a checkpoint with these `channel_versions`."""
        from llmctx.runtime._checkpoint_keys import pack_version

        out: dict[str, Any] = {}
        for channel, version in versions.items():
            ch = self._names.find(self._conn, channel)
            if ch is None:
                continue
            found, value = self.value(ch, pack_version(version))
            if found:
                out[channel] = value
        return out

    def value(self, ch: int, version: int | str) -> tuple[bool, Any]:
        """`(True, value)`, or `(False, None)` when the version is missing or empty."""
        key = (self._t, ch)
        cached = self._cache.get(key)
        if cached is not None and cached.version == version:
            state: _State | None = _State(cached.type, cached.raw, cached.items)
        elif (
            (ch, version) not in self._states
            and cached is not None
            and cached.items is not None
            and (n := self._prefix_length(cached, ch, version)) is not None
        ):
            # An older version of the cached list: the same messages, fewer of them.
            return True, cached.items[:n]
        else:
            state = self._state(ch, version)
        if state is None:
            return False, None
        if state.items is not None:
            return True, list(state.items)
        assert state.raw is not None
        return True, self._serde.loads_typed((state.type, state.raw))

    def _prefix_length(self, cached: Entry, ch: int, version: int | str) -> int | None:
        """How many of the cached list's items `version`'s list is, if a prefix."""
        if cached.ancestors is not None and version in cached.ancestors:
            return cached.ancestors[version]
        return self._ancestor_length(ch, cached.version, version)

    def _ancestor_length(self, ch: int, head: int | str, version: int | str) -> int | None:
        """How many items `version`'s list has, if `head`'s list starts with them.

        True when a chain of `APPEND` rows (and full copies that extend their
        predecessor) leads from `head` back to `version`; `None` otherwise (another
        branch, a rewrite, a gap), and the version is decoded the usual way.
        """
        if counter(version) >= counter(head):
            return None
        row = self._conn.execute(_ANCESTOR_SQL, (self._t, ch, head, version)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def raw_bytes(self, ch: int, version: int | str) -> tuple[str, bytes] | None:
        """The serde `(type, bytes)` of a version (re-serialized for append chains)."""
        state = self._state(ch, version)
        if state is None:
            return None
        if state.raw is None:
            return self._serde.dumps_typed(state.items)
        return state.type, state.raw

    def _row(self, ch: int, version: int | str) -> _Row | None:
        """A row, fetched with the rows of its append chain."""
        rows = self._rows.setdefault(ch, {})
        if version not in rows and ch not in self._bulk:
            for row in self._conn.execute(_CHAIN_SQL, (self._t, ch, version)):
                rows.setdefault(row[0], row)
        return rows.get(version)

    def _state(self, ch: int, version: int | str) -> _State | None:
        if (ch, version) in self._states:
            return self._states[(ch, version)]
        # Walk back to a known state or a full row, then apply the appends forward.
        pending: list[_Row] = []
        cursor: int | str | None = version
        base_state: _State | None = None
        while cursor is not None:
            if (ch, cursor) in self._states:
                base_state = self._states[(ch, cursor)]
                break
            row = self._row(ch, cursor)
            if row is None:
                if not pending:
                    self._states[(ch, version)] = None
                    return None
                raise LookupError(
                    f"checkpoint store is missing base version {cursor!r} of channel "
                    f"{self._names.name(self._conn, ch)!r} (thread number {self._t})"
                )
            pending.append(row)
            if row[1] != APPEND:
                break
            cursor = row[2]
        state = base_state
        forward = pending[::-1]
        if len(forward) > _BULK_CHAIN and ch not in self._bulk:
            # A long history: its payloads' sources are best loaded in one scan.
            self.prefetch_all()
        i = 0
        while i < len(forward):
            row = forward[i]
            if row[1] == APPEND and ch not in self._listing and state is not None:
                # One read of a long history: decode the run of appends in one go
                # instead of building every intermediate list (a listing keeps them).
                j = i
                while j < len(forward) and forward[j][1] == APPEND:
                    j += 1
                state = self._apply_appends(forward[i:j], state)
                self._states[(ch, forward[j - 1][0])] = state
                i = j
                continue
            state = self._apply(row, state)
            self._states[(ch, row[0])] = state
            i += 1
        final = self._states[(ch, version)]
        if final is not None and pending:
            head = pending[0]
            known = self._cache.get((self._t, ch))
            # Reading an older version must not displace the newer base of the next
            # delta (whose items the graph still holds); a newer one becomes it.
            if known is None or counter(known.version) < counter(version):
                source = None
                if head[1] == FULL and final.raw is not None:
                    source = Candidate((ch, version), final.raw, head[8] or 0)
                self._cache.set(
                    (self._t, ch),
                    Entry(
                        version,
                        final.type,
                        final.raw,
                        final.items,
                        head[10] or 0,
                        head[11] or 0,
                        source,
                    ),
                )
        return final

    def source_raw(self, ref: Ref) -> bytes:
        """The raw payload of the stored row a source reference names.

        A chain of sources not read yet is fetched in one query, and decompressed
        from its oldest link forward (each payload once per reader).
        """
        raw = self._raws.get(ref)
        if raw is not None:
            return raw
        self._with_sources(ref)
        chain: list[tuple[Ref, _Row]] = []
        cursor: Ref | None = ref
        while cursor is not None and cursor not in self._raws:
            row = self._known(cursor)
            if row is None:
                raise LookupError(
                    f"checkpoint store is missing version {cursor[1]!r} of channel "
                    f"{cursor[0]} that another value was compressed with "
                    f"(thread number {self._t})"
                )
            chain.append((cursor, row))
            cursor = source_of(row[6], row[7]) if row[4] == Z_DICT else None
        for key, row in reversed(chain):
            self._raws[key] = self.payload(row[4], row[5], source_of(row[6], row[7]))
        return self._raws[ref]

    def _known(self, ref: Ref) -> _Row | None:
        return self._rows.get(ref[0], {}).get(ref[1])

    def _with_sources(self, ref: Ref) -> _Row | None:
        """A row, fetched (if not yet) with the chain of its sources in one query."""
        row = self._known(ref)
        if row is None and ref[0] not in self._bulk:
            for ch, *found in self._conn.execute(_SOURCES_SQL, (self._t, *ref)):
                self._rows.setdefault(ch, {}).setdefault(found[0], tuple(found))
            row = self._known(ref)
        return row

    def prefetch_all(self) -> None:
        """Load every row of the thread at once (before decoding a long history, whose
        payloads are compressed against rows of other channels)."""
        for ch, *row in self._conn.execute(_THREAD_SQL, (self._t,)):
            self._rows.setdefault(ch, {}).setdefault(row[0], tuple(row))
        self._bulk.update(self._rows)

    def payload(self, z: int, data: bytes, src: Ref | None) -> bytes:
        """A payload's raw bytes from its stored `z`, `data` and source."""
        if z == Z_DICT:
            assert src is not None
            return decompress(z, data, self.source_raw(src))
        return decompress(z, data)

    def row_payload(self, row: _Row) -> bytes:
        return self.payload(row[4], row[5], source_of(row[6], row[7]))

    def writes(self, z: int, data: bytes, src: Ref | None) -> list[WriteEntry]:
        """The pending writes of a `writes` row."""
        return unpack_writes(self.payload(z, data, src))

    def write_value(self, entry: WriteEntry) -> Any:
        """A stored pending write's value (a `W_PREFIX` one: the base's first
        `prefix` items, all when `None`, then its own; a `W_BLOB` one: the payload of
        the row it names)."""
        if entry.kind == W_BLOB:
            assert entry.base is not None
            row = self._with_sources((entry.ch, entry.base))
            if row is None:
                raise LookupError(
                    f"checkpoint store is missing version {entry.base!r} of channel "
                    f"{self._names.name(self._conn, entry.ch)!r} that a pending write is "
                    f"stored as (thread number {self._t})"
                )
            raw = self.row_payload(row)
            return self._serde.loads_typed((self._type(row[3]), raw))
        typ = self._names.name(self._conn, entry.typ)
        value = self._serde.loads_typed((typ, entry.payload))
        if entry.kind != W_PREFIX:
            return value
        assert entry.base is not None
        found, prefix = self.value(entry.ch, entry.base)
        if not found or not isinstance(prefix, list):
            raise LookupError(
                f"checkpoint store is missing version {entry.base!r} of channel "
                f"{self._names.name(self._conn, entry.ch)!r} that a pending write extends "
                f"(thread number {self._t})"
            )
        return [*(prefix if entry.prefix is None else prefix[: entry.prefix]), *value]

    def _type(self, typ: int) -> str:
        return self._names.name(self._conn, typ)

    def _apply_appends(self, rows: list[_Row], base: _State) -> _State:
        raws = [self.row_payload(row) for row in rows]
        types = [self._type(row[3]) for row in rows]
        combined = _concat_msgpack_arrays(raws) if all(t == "msgpack" for t in types) else None
        if combined is not None:
            new = self._serde.loads_typed(("msgpack", combined))
        else:
            new = [
                x
                for typ, raw in zip(types, raws, strict=True)
                for x in self._serde.loads_typed((typ, raw))
            ]
        old = base.items
        if old is None:
            assert base.raw is not None
            old = self._serde.loads_typed((base.type, base.raw))
        return _State(base.type, None, [*old, *new])

    def _apply(self, row: _Row, base: _State | None) -> _State | None:
        kind, typ = row[1], self._type(row[3])
        if kind == FULL:
            raw = self.row_payload(row)
            items = None
            if typ == "msgpack" and row[9] is not None:
                items = self._serde.loads_typed((typ, raw))
            return _State(typ, raw, items)
        if base is None:
            raise LookupError(f"delta version {row[0]!r} has no materialized base")
        return self._apply_appends([row], base)


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
