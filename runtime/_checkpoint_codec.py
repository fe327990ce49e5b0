"""Byte-level codecs of `LlmctxSaver`: zstd, zstd deltas, and the version summary.

`z` flags on stored rows: 0 = raw bytes, 1 = zstd, 2 = zstd against a raw-content
dictionary (the base value's serde bytes), so a value that differs little from its
base costs a few dozen bytes.
"""

from __future__ import annotations

import threading
from typing import Any

import zstandard

__all__ = [
    "SUMMARY_COLUMNS",
    "Z_DICT",
    "Z_NONE",
    "Z_ZSTD",
    "compress",
    "decompress",
    "frame_summary",
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
