"""A checkpoint's body and metadata, stored as a delta against its parent's.

The body is the checkpoint minus `channel_values` (stored per channel in `blobs`),
`id` and `ts` (columns): `v`, `channel_versions`, `versions_seen`,
`updated_channels` and any other key. From one step to the next only a few of its
entries change, so it is stored as what changed since the parent checkpoint:

* the body is *flattened* to leaves keyed by their path of dict keys
  (`("channel_versions", "messages") -> "0000000012.ab…"`); an empty dict is a leaf;
* a row stores the paths its parent had and it has not (`removed`), and the leaves
  that are new or differ (`changed`), packed with msgpack. A path is a list of
  interned name ids. A leaf is a tag and a payload:
  `LIT` a msgpack scalar, `VER` a version packed to an integer, `PARENT` the index
  of an equal leaf of the parent (in sorted path order), `BACK` the index of an
  equal earlier leaf of this row, `EMPTY` an empty dict, `NAMES` a list of strings
  as name ids, `SERDE` anything else as the serde's `(type, bytes)`;
* `depth` counts the deltas back to a full body (`depth` 0, a delta against
  nothing); it is kept below `MAX_DEPTH`, so a read decodes at most that many rows.

A step typically changes three versions (all to the step's one new version), one
`versions_seen` entry (to a version its parent had) and `updated_channels`: about
40 bytes instead of 300.

The metadata keeps `source` (interned), `step` and `run_id` in columns and the rest
as JSON, `NULL` when the rest is exactly `{"parents": {}}` (LangGraph's usual).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde.base import SerializerProtocol

from llmctx.runtime._checkpoint_keys import pack_version, unpack_version

__all__ = [
    "MAX_DEPTH",
    "Flat",
    "decode_body",
    "encode_body",
    "flatten",
    "pack_metadata",
    "unflatten",
    "unpack_metadata",
]

MAX_DEPTH = 32
LIT, VER, PARENT, BACK, EMPTY, NAMES, SERDE = range(7)

Flat = dict[tuple[str, ...], Any]
_SCALARS = (str, int, float, bool, type(None))


def flatten(body: Mapping[str, Any]) -> Flat:
    """The leaves of a body by path (dicts with string keys are walked, an empty
    dict is a leaf `{}`)."""
    out: Flat = {}

    def walk(prefix: tuple[str, ...], value: Any) -> None:
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            for key, item in value.items():
                walk((*prefix, key), item)
        else:
            out[prefix] = value

    for key, value in body.items():
        walk((key,), value)
    return out


def unflatten(flat: Flat) -> dict[str, Any]:
    """Invert `flatten` (leaves are copied: a body read back is the caller's to keep)."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if isinstance(value, dict):
            value = dict(value)
        elif isinstance(value, list):
            value = list(value)
        node[path[-1]] = value
    return out


def encode_body(
    flat: Flat,
    parent: Flat | None,
    name_id: Callable[[str], int],
    serde: SerializerProtocol,
) -> bytes:
    """The packed delta of `flat` against `parent` (a full body when `None`)."""
    parent = parent or {}
    removed = [[name_id(k) for k in path] for path in parent if path not in flat]
    by_value: dict[tuple[type, Any], int] = {}
    for i, path in enumerate(sorted(parent)):
        value = parent[path]
        if isinstance(value, str | int) and not isinstance(value, bool):
            by_value.setdefault((type(value), value), i)
    changed: list[Any] = []
    seen: dict[tuple[type, Any], int] = {}
    for path, value in flat.items():
        old = parent.get(path, _MISSING)
        if old is not _MISSING and type(old) is type(value) and old == value:
            continue
        changed.append([name_id(k) for k in path])
        key = (type(value), value) if _hashable(value) else None
        if key is not None and key in seen:
            changed.extend((BACK, seen[key]))
        elif key is not None and key in by_value:
            changed.extend((PARENT, by_value[key]))
        else:
            changed.extend(_leaf(value, name_id, serde))
        if key is not None:
            seen.setdefault(key, len(seen))
            # `seen` numbers leaves in the order the decoder meets them.
    return ormsgpack.packb([removed, changed])


def decode_body(
    data: bytes,
    parent: Flat | None,
    name: Callable[[int], str],
    serde: SerializerProtocol,
) -> Flat:
    """Invert `encode_body` (`parent` must be the same flat parent body)."""
    removed, changed = ormsgpack.unpackb(data)
    parent = parent or {}
    flat: Flat = dict(parent)
    for path in removed:
        flat.pop(tuple(name(k) for k in path), None)
    order = sorted(parent)
    seen: list[Any] = []
    seen_keys: set[tuple[type, Any]] = set()
    for i in range(0, len(changed), 3):
        path, tag, payload = changed[i], changed[i + 1], changed[i + 2]
        if tag == BACK:
            value = seen[payload]
        elif tag == PARENT:
            value = parent[order[payload]]
        elif tag == VER:
            value = unpack_version(payload)
        elif tag == EMPTY:
            value = {}
        elif tag == NAMES:
            value = [name(k) for k in payload]
        elif tag == SERDE:
            value = serde.loads_typed((payload[0], payload[1]))
        else:
            value = payload
        flat[tuple(name(k) for k in path)] = value
        if _hashable(value):
            key = (type(value), value)
            if key not in seen_keys:
                seen_keys.add(key)
                seen.append(value)
    return flat


_MISSING = object()


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _leaf(value: Any, name_id: Callable[[str], int], serde: SerializerProtocol) -> tuple[int, Any]:
    if isinstance(value, str):
        packed = pack_version(value)
        return (VER, packed) if isinstance(packed, int) else (LIT, value)
    if isinstance(value, dict) and not value:
        return EMPTY, None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return NAMES, [name_id(v) for v in value]
    if isinstance(value, _SCALARS) and not (isinstance(value, int) and abs(value) >= 1 << 63):
        return LIT, value
    typ, raw = serde.dumps_typed(value)
    return SERDE, [typ, raw]


def pack_metadata(
    metadata: Mapping[str, Any], source_id: Callable[[str], int]
) -> tuple[int | None, int | None, str | None, str | None]:
    """`(step, source id, run_id, rest JSON or None)` of a checkpoint's metadata."""
    rest = dict(metadata)
    step = rest.pop("step", None) if _is_int(rest.get("step")) else None
    source = rest.get("source")
    source_key = source_id(rest.pop("source")) if isinstance(source, str) else None
    run_id = rest.pop("run_id") if isinstance(rest.get("run_id"), str) else None
    text = None if rest == {"parents": {}} else json.dumps(rest)
    return step, source_key, run_id, text


def unpack_metadata(
    step: int | None,
    source: int | None,
    run_id: str | None,
    rest: str | None,
    name: Callable[[int], str],
) -> dict[str, Any]:
    """Invert `pack_metadata`."""
    out: dict[str, Any] = {}
    if source is not None:
        out["source"] = name(source)
    if step is not None:
        out["step"] = step
    out.update({"parents": {}} if rest is None else json.loads(rest))
    if run_id is not None:
        out["run_id"] = run_id
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 63
