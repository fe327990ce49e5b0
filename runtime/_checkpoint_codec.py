"""Byte-level codecs of `LlmctxSaver`: zstd, zstd against a source, the version summary.

`z` flags on stored payloads: 0 = raw bytes, 1 = zstd, 2 = zstd against a
raw-content dictionary: the raw payload of one other stored row (its *source*), so a
value that repeats or resembles a recent one costs a few dozen bytes.
`best_compression` picks that source among a few candidates.

A frame's version summary (`frame_summary`) is a msgpack list in its row's `summary`
column; its text fields equal to the summary of the row the frame is compressed
against (its previous version) are stored as `SAME` (`0`), and read back by
following the sources (`resolve_summary`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ormsgpack
import zstandard

__all__ = [
    "REF_COST",
    "SUMMARY_COLUMNS",
    "Z_DICT",
    "Z_NONE",
    "Z_ZSTD",
    "Candidate",
    "Compressed",
    "Ref",
    "best_compression",
    "compress",
    "decompress",
    "elided",
    "frame_summary",
    "pack_summary",
    "resolve_summary",
    "unpack_summary",
]

Z_NONE, Z_ZSTD, Z_DICT = 0, 1, 2
_MIN_COMPRESS = 128  # below this zstd's frame header costs more than it saves
_LEVEL = 3

# zstd contexts are not thread-safe (LangGraph saves writes from worker threads), so
# each thread keeps its own pair.
_local = threading.local()


def _contexts() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    pair = getattr(_local, "pair", None)
    if pair is None:
        pair = _local.pair = (zstandard.ZstdCompressor(level=_LEVEL), zstandard.ZstdDecompressor())
    return pair


def compress(raw: bytes, base: bytes | None = None) -> tuple[int, bytes]:
    """Return `(z, data)`: `raw` as is, zstd, or zstd against `base` as a dictionary."""
    if base is not None:
        zdict = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return Z_DICT, zstandard.ZstdCompressor(level=_LEVEL, dict_data=zdict).compress(raw)
    if len(raw) < _MIN_COMPRESS:
        return Z_NONE, raw
    data = _contexts()[0].compress(raw)
    return (Z_ZSTD, data) if len(data) < len(raw) else (Z_NONE, raw)


def decompress(z: int, data: bytes, base: bytes | None = None) -> bytes:
    """Invert `compress`; `base` must be the exact dictionary bytes used to compress."""
    if z == Z_NONE:
        return bytes(data)
    if z == Z_ZSTD:
        return _contexts()[1].decompress(data)
    if base is None:
        raise ValueError("a dictionary-compressed value needs its base bytes")
    zdict = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdDecompressor(dict_data=zdict).decompress(data)


Ref = tuple[int, Any]
"""A stored payload that serves as a source: its `blobs` row's (channel id, version)."""
REF_COST = 10  # about what storing a `Ref` costs (two columns)


@dataclass(frozen=True)
class Candidate:
    """A stored payload that may serve as the dictionary of a new one.

    `ref` names its row, `raw` is its payload before compression and `depth` the
    length of its own chain of sources.
    """

    ref: Ref
    raw: bytes
    depth: int


@dataclass(frozen=True)
class Compressed:
    """A payload as stored: `z`, `data`, the `src` row (or `None`) and `depth`."""

    z: int
    data: bytes
    src: Ref | None
    depth: int

    @property
    def size(self) -> int:
        """About what the payload costs to store, its reference included."""
        return len(self.data) + (REF_COST if self.src is not None else 0)


_MIN_SOURCE = 64  # smaller payloads are not worth a dictionary
_MAX_TRIES = 4


def best_compression(raw: bytes, candidates: Sequence[Candidate], *, max_depth: int) -> Compressed:
    """`raw` alone, or against the candidate that stores it smallest (reference included).

    Candidates are tried in order (most promising first), at most `_MAX_TRIES`. The
    first one is taken at once when it shrinks `raw` sixteenfold (a repeat, or a small
    delta: no need to compress `raw` alone to compare), any one when it shrinks `raw`
    to a quarter of its lone size. A dependency must pay for itself: a tenth smaller
    than alone. A candidate whose chain of sources already has `max_depth` links is
    skipped, so a read never decompresses more than `max_depth` payloads for one.
    """
    if len(raw) < _MIN_SOURCE:
        return Compressed(*compress(raw), None, 0)
    usable = [c for c in candidates if c.depth < max_depth and len(c.raw) >= _MIN_SOURCE]
    tried: list[tuple[Candidate, bytes]] = []
    if usable:
        packed = compress(raw, usable[0].raw)[1]
        if 16 * (len(packed) + REF_COST) <= len(raw):
            return Compressed(Z_DICT, packed, usable[0].ref, usable[0].depth + 1)
        tried.append((usable[0], packed))
    z, data = compress(raw)
    best, cost = Compressed(z, data, None, 0), len(data)
    for i, cand in enumerate(usable[:_MAX_TRIES]):
        packed = tried[0][1] if i == 0 else compress(raw, cand.raw)[1]
        size = len(packed) + REF_COST
        if size < cost and 10 * size <= 9 * len(data):
            best, cost = Compressed(Z_DICT, packed, cand.ref, cand.depth + 1), size
        if 4 * len(packed) <= len(data):
            break
    return best
    cost = len(data)
    tries = 0
    for cand in candidates:
        if cand.depth >= max_depth or len(cand.raw) < _MIN_SOURCE:
            continue
        tries += 1
        packed = compress(raw, cand.raw)[1]
        size = len(packed) + REF_COST
        # A dependency must pay for itself: at least a tenth smaller than alone.
        if size < cost and 10 * size <= 9 * len(data):
            best, cost = Compressed(Z_DICT, packed, cand.ref, cand.depth + 1), size
        if 4 * len(packed) <= len(data) or tries >= _MAX_TRIES:
            break
    return best


SUMMARY_COLUMNS = (
    "op",
    "reason",
    "template",
    "turn",
    "window_tokens",
    "history_tokens",
    "history_messages",
    "tokens_exact",
)


def frame_summary(value: Any) -> tuple[Any, ...]:
    """The summary columns of a frame (`nodes.state.Frame`), in `SUMMARY_COLUMNS` order.

    The contract: `op` and `reason` come from `frame["last_op"]`, `template`,
    `turn`, `window_tokens`, `history_tokens` and `history_messages` from the
    frame's keys of those names, and `tokens_exact` from
    `frame["tokenizer"]["exact"]`. Missing keys give `None` (`False` for
    `tokens_exact`); a value that is not a dict gives all `None`.
    """
    if not isinstance(value, dict):
        return (None,) * len(SUMMARY_COLUMNS)
    last_op = value.get("last_op") or {}
    tokenizer = value.get("tokenizer") or {}

    def _int(key: str) -> int | None:
        got = value.get(key)
        return int(got) if isinstance(got, int | float) and not isinstance(got, bool) else None

    return (
        _str(last_op.get("op")) if isinstance(last_op, dict) else None,
        _str(last_op.get("reason")) if isinstance(last_op, dict) else None,
        _str(value.get("template")),
        _int("turn"),
        _int("window_tokens"),
        _int("history_tokens"),
        _int("history_messages"),
        int(bool(tokenizer.get("exact", False))) if isinstance(tokenizer, dict) else 0,
    )


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


_TEXT_FIELDS = range(3)  # op, reason, template
SAME = 0
"""A text field of a packed summary equal to its base's (texts are `str` or `None`)."""


def pack_summary(summary: tuple[Any, ...], base: tuple[Any, ...] | None = None) -> bytes | None:
    """The `summary` column of a frame's row (msgpack list), `None` when all empty.

    With `base`, the summary of the row this frame is compressed against, the text
    fields it repeats (the same op, reason and template turn after turn) are `SAME`.
    """
    if all(v is None for v in summary[:-1]):
        return None
    packed = list(summary)
    if base is not None:
        for i in _TEXT_FIELDS:
            if packed[i] is not None and packed[i] == base[i]:
                packed[i] = SAME
    return ormsgpack.packb(packed)


def unpack_summary(data: bytes | None) -> tuple[Any, ...]:
    """Invert `pack_summary`, but for `SAME` fields (see `elided`, `resolve_summary`)."""
    if data is None:
        return (None,) * len(SUMMARY_COLUMNS)
    return tuple(ormsgpack.unpackb(data))


def elided(summary: tuple[Any, ...]) -> bool:
    """Whether an unpacked summary has fields that repeat its base's."""
    return type(summary[0]) is int or type(summary[1]) is int or type(summary[2]) is int


def resolve_summary(summary: tuple[Any, ...], base: tuple[Any, ...]) -> tuple[Any, ...]:
    """`summary` with its `SAME` fields taken from its (resolved) base's."""
    head = [base[i] if type(summary[i]) is int else summary[i] for i in _TEXT_FIELDS]
    return (*head, *summary[len(head) :])
