"""Compact keys of `LlmctxSaver`: ids, versions and times packed, names interned.

Every row of the store carries keys that LangGraph spells as long strings. They are
stored in their shortest exact form, and unpacked back to the same strings:

* a checkpoint or task id that is a canonical UUID (36 lowercase hex characters
  with dashes, as LangGraph makes them) is stored as its 16 bytes, any other id as
  text. Both orders agree for UUIDs (hex digits sort like their nibbles), so
  `ORDER BY id` still lists a thread's checkpoints newest first; a thread that mixed
  both kinds would list its text ids before its UUID ids (LangGraph never does);
* a channel version in `LlmctxSaver`'s own format (`0000000012.ab12cd34ef`: a
  10-digit counter and 40 random bits) is stored as the integer
  `counter << 40 | random`, any other version as text;
* a checkpoint's `ts` that is an ISO UTC time (as `datetime.isoformat` writes it)
  is stored as an integer: microseconds after the time embedded in a version-6 UUID
  id (a few hundred, two bytes), or since the epoch for another id; any other `ts`
  as text;
* channel, node, type and task-path names, and metadata `source`s, are interned in
  the `names` table (`id INTEGER PRIMARY KEY, name TEXT UNIQUE`); ids are never
  reused or deleted, so a process may cache them for good;
* a (thread id, namespace) pair is the integer `t` of the `threads` table
  (`AUTOINCREMENT`: a deleted thread's number is never reused, so a stale cache can
  only miss, never point at another thread).
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "Names",
    "Threads",
    "pack_id",
    "pack_ts",
    "pack_version",
    "unpack_id",
    "unpack_ts",
    "unpack_version",
]

_HEX = frozenset("0123456789abcdef")
_VERSION = re.compile(r"(\d{10})\.([0-9a-f]{10})")
_MAX_COUNTER = 1 << 23  # counter << 40 stays a positive 64-bit integer
_RANDOM_MASK = (1 << 40) - 1
_UUID_EPOCH = 0x01B21DD213814000  # 100-ns intervals from 1582-10-15 to 1970-01-01
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def pack_id(value: str) -> bytes | str:
    """A checkpoint or task id: 16 bytes for a canonical UUID, else the text."""
    if (
        len(value) == 36
        and value[8] == value[13] == value[18] == value[23] == "-"
        and _HEX.issuperset(value[:8] + value[9:13] + value[14:18] + value[19:23] + value[24:])
    ):
        return bytes.fromhex(value.replace("-", ""))
    return value


def unpack_id(value: bytes | str) -> str:
    """Invert `pack_id`."""
    if isinstance(value, bytes):
        h = value.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return value


def pack_version(version: Any) -> int | str:
    """A channel version as a blob key: an integer for our own format, else text."""
    text = str(version)
    match = _VERSION.fullmatch(text)
    if match is not None:
        counter = int(match.group(1))
        if counter < _MAX_COUNTER:
            return counter << 40 | int(match.group(2), 16)
    return text


def unpack_version(value: int | str) -> str:
    """Invert `pack_version` (to the string form every blob key is compared in)."""
    if isinstance(value, int):
        return f"{value >> 40:010d}.{value & _RANDOM_MASK:010x}"
    return value


def _uuid6_micros(packed_id: bytes | str) -> int | None:
    """The time (µs since the epoch) inside a packed version-6 UUID, else `None`."""
    if not isinstance(packed_id, bytes) or packed_id[6] >> 4 != 6:
        return None
    raw = int.from_bytes(packed_id[:8], "big")
    timestamp = ((raw >> 16) << 12) | (raw & 0x0FFF)
    return (timestamp - _UUID_EPOCH) // 10


def pack_ts(ts: str, packed_id: bytes | str) -> int | str:
    """A checkpoint's `ts`: an integer when it is an exact ISO UTC time, else text."""
    try:
        parsed = datetime.fromisoformat(ts)
    except (TypeError, ValueError):
        return ts
    if parsed.utcoffset() is None or parsed.utcoffset().total_seconds() != 0:  # type: ignore[union-attr]
        return ts
    parsed = parsed.astimezone(UTC)
    if parsed.isoformat() != ts:
        return ts
    micros = (parsed - _EPOCH) // _MICROSECOND
    base = _uuid6_micros(packed_id)
    return micros - base if base is not None else micros


def unpack_ts(value: int | str, packed_id: bytes | str) -> str:
    """Invert `pack_ts` (the id must be the same packed id)."""
    if isinstance(value, str):
        return value
    base = _uuid6_micros(packed_id)
    micros = value + base if base is not None else value
    return (_EPOCH + timedelta(microseconds=micros)).isoformat()


class Names:
    """Interned names (`names` table), cached for the life of the process.

    A name interned inside a write transaction is cached only once that transaction
    commits (`commit`), so a rolled back id is never reused from the cache.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._pending: dict[str, int] = {}

    def id(self, conn: sqlite3.Connection, name: str) -> int:
        """The id of `name`, interning it (call inside a write transaction)."""
        found = self._ids.get(name)
        if found is None:
            found = self._pending.get(name)
        if found is None:
            found = self.find(conn, name)
            if found is None:
                cursor = conn.execute("INSERT INTO names (name) VALUES (?)", (name,))
                found = int(cursor.lastrowid or 0)
                self._pending[name] = found
        return found

    def find(self, conn: sqlite3.Connection, name: str) -> int | None:
        """The id of an interned name, or `None` (never interns)."""
        found = self._ids.get(name)
        if found is None:
            row = conn.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            found = int(row[0])
            self._ids[name] = found
            self._names[found] = name
        return found

    def name(self, conn: sqlite3.Connection, name_id: int) -> str:
        """The name of an id."""
        found = self._names.get(name_id)
        if found is None:
            found = next((n for n, i in self._pending.items() if i == name_id), None)
        if found is None:
            row = conn.execute("SELECT name FROM names WHERE id = ?", (name_id,)).fetchone()
            if row is None:
                raise LookupError(f"checkpoint store has no name with id {name_id}")
            found = str(row[0])
            self._ids[found] = name_id
            self._names[name_id] = found
        return found

    def commit(self) -> None:
        for name, name_id in self._pending.items():
            self._ids[name] = name_id
            self._names[name_id] = name
        self._pending.clear()

    def rollback(self) -> None:
        self._pending.clear()


class Threads:
    """(thread id, namespace) ↔ the integer `t` of the `threads` table, cached.

    The cache is dropped (`clear`) whenever another connection has committed, since
    it may have deleted a thread; a thread created inside a write transaction is
    cached once that transaction commits.
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self._keys: dict[int, tuple[str, str]] = {}
        self._pending: dict[tuple[str, str], int] = {}

    def find(self, conn: sqlite3.Connection, thread_id: str, ns: str) -> int | None:
        key = (thread_id, ns)
        found = self._ids.get(key) or self._pending.get(key)
        if found is None:
            row = conn.execute(
                "SELECT t FROM threads WHERE thread_id = ? AND checkpoint_ns = ?", key
            ).fetchone()
            if row is None:
                return None
            found = int(row[0])
            self._ids[key] = found
            self._keys[found] = key
        return found

    def get(self, conn: sqlite3.Connection, thread_id: str, ns: str) -> int:
        """The thread's number, creating it (call inside a write transaction)."""
        found = self.find(conn, thread_id, ns)
        if found is None:
            cursor = conn.execute(
                "INSERT INTO threads (thread_id, checkpoint_ns) VALUES (?, ?)", (thread_id, ns)
            )
            found = int(cursor.lastrowid or 0)
            self._pending[(thread_id, ns)] = found
        return found

    def of_thread(self, conn: sqlite3.Connection, thread_id: str) -> dict[str, int]:
        """Every namespace of a thread → its number."""
        return {
            ns: int(t)
            for t, ns in conn.execute(
                "SELECT t, checkpoint_ns FROM threads WHERE thread_id = ?", (thread_id,)
            )
        }

    def key(self, conn: sqlite3.Connection, t: int) -> tuple[str, str]:
        found = self._keys.get(t)
        if found is None:
            row = conn.execute(
                "SELECT thread_id, checkpoint_ns FROM threads WHERE t = ?", (t,)
            ).fetchone()
            if row is None:
                raise LookupError(f"checkpoint store has no thread number {t}")
            found = (str(row[0]), str(row[1]))
            self._ids[found] = t
            self._keys[t] = found
        return found

    def commit(self) -> None:
        for key, t in self._pending.items():
            self._ids[key] = t
            self._keys[t] = key
        self._pending.clear()

    def rollback(self) -> None:
        self._pending.clear()

    def clear(self) -> None:
        self._ids.clear()
        self._keys.clear()
        self._pending.clear()
