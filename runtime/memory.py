"""`ChromaStore`: long-term memory as a LangGraph `BaseStore` on chromadb.

It is a drop-in for `InMemoryStore` that persists: `get`, `put`, `delete`, `search`
(namespace prefix, filter, pagination, optional `query`) and `list_namespaces`, sync and
async, plus TTL. Embedded by default (a `PersistentClient` in `.llm/memory/`), or a Chroma
server (`ChromaStore(url="http://127.0.0.1:8000")`), or any Chroma client you pass.

    >>> store = ChromaStore("/tmp/demo-memory")                     # doctest: +SKIP
    >>> store.put(("memories", "u1"), "k1", {"text": "likes tea", "turn": 3})
    >>> store.search(("memories",), filter={"turn": {"$gte": 2}})[0].key
    'k1'

**Data layout.** One Chroma collection per store (`collection`, default
`llmctx-memory`) holds one record per item:

* id: `json.dumps([*namespace, key])`, stable and reversible, so `list_namespaces`
  reads ids only;
* document: the item as JSON, `{"ns", "key", "value", "created_at", "updated_at",
  "ttl", "vectors", "index"}`; one document read rebuilds an `Item` (Chroma reads
  metadata several times slower than documents, so reads ask for the metadata of
  TTL items only, for their expiry);
* metadata: `_pfx`, the list of the namespace's prefixes (`["users", "users.u1"]`;
  labels cannot hold a `.`), which scopes any search with one `$contains`; `_exp`,
  the expiry in epoch seconds, only on items with a TTL (a refresh on read updates
  this key alone, so it never overwrites a concurrent put's value); `_emb`, only on
  items with vectors; and the value's filterable fields, flattened: `v.<path>` for
  every scalar at a path of at most 3 keys (no key empty or holding a `.`), where a
  scalar is a bool, a number or a string of at most 128 characters. Lists, nulls,
  longer strings and deeper fields stay in the document only;
* embedding: a 2-d placeholder spread by the id's hash (Chroma needs one; Chroma's own
  embedding function is never used, so no model is ever downloaded).

With an `index` config (`{"dims", "embed", "fields"}`, as `InMemoryStore`), the
configured fields are embedded on put and stored in a second collection,
`<collection>.vec<dims>`: one record per embedded text (id `<item id>#<n>`), carrying
the item's `_pfx` and `v.*` metadata so vector queries filter in Chroma.

**Embedding tables** (`embedding_table(name, dims, probe)`, see `EmbeddingTable`) keep
the vectors a retriever made itself (`HybridRetriever` with an embedder), one
collection per embedder, `<collection>.emb-<digest of its name>-<dims>`, whose metadata
records the embedder (name, dims and its probe vector): one record per item, with the
item's id, the vector, and a hash of the embedded text. A new process reads them
instead of embedding every memory again; another embedder never reads them. Deleting
an item (or `clear`) deletes its vectors in every table.

**Filters** (`search(filter=...)`) follow `InMemoryStore`: keys are top-level fields,
a dict value without `$` keys matches nested fields, a list matches an equal list, and
`$eq $ne $gt $gte $lt $lte` compare (`$in`/`$nin` with a list are accepted too). Values
compare as JSON: numbers with numbers, strings with strings (so ISO dates order
correctly), booleans only equal booleans. A **missing or null field** matches only
`None` / `{"$eq": None}`; every other condition is false for it, **`$ne` and `$nin`
included** (SQL's NULL rule: `{"kind": {"$ne": "note"}}` returns items whose `kind` is
set and differs), and `{"$ne": None}` means "is set". Nothing crashes on a missing
field or a type mismatch (langgraph #7880). Each condition that Chroma can check is
pushed into its `where` (a superset of the answer); every candidate is then checked
exactly in Python, so results never depend on what could be pushed down.

**Order.** Without `query`, results come in insertion order (an overwrite keeps its
place), like `InMemoryStore`. With `query` and an index, by cosine similarity (`score`
in [-1, 1], as `InMemoryStore`); items without vectors follow with `score=None`.
With `query` and no index, by a lexical score: BM25 (`k1=1.2, b=0.75`) over lower-cased
`\\w+` tokens, common English stopwords left out, of the indexed text (every string
and number in the value, or the put's `index` fields), divided by its ceiling (every
query term saturated), so `score` is in (0, 1). Candidates are the documents Chroma's
case-insensitive regex finds for the terms; the rest of the scope follows in insertion
order with `score=0.0` (`None` for items put with `index=False`). It is a fallback;
the hybrid retriever (`llmctx.runtime.retrieval`) is the fast path.

**Speed.** Chroma's metadata filter costs time in proportion to the store's size, so
a search that a dense scope can answer from the first records reads them in order and
filters in Python, and a vector search first asks for the nearest neighbours of the
whole store; Chroma's `where` is used when the scope is sparse.

**TTL** (`supports_ttl`): `put(..., ttl=minutes)` or `TTLConfig.default_ttl`; reads
refresh the expiry unless `refresh_ttl=False`. Expired items are never returned or
listed, are deleted when a read meets them, and by `sweep_ttl()`, which also runs on
access at most every `sweep_interval_minutes` (default 1).

A batch runs its reads (get, search, list) on the state before the batch, then its
writes, the last write to a key winning, as `InMemoryStore` and `PostgresStore` do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import numpy as np
from langchain_core.embeddings import Embeddings
from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
    validate_op_namespace,
)

from llmctx.runtime.embeddings import checked_vectors
from llmctx.runtime.errors import EmbeddingError, MemoryStoreError

if TYPE_CHECKING:  # chromadb takes ~2 s to import: only when a store is opened
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = ["DEFAULT_COLLECTION", "ChromaStore", "EmbeddingTable", "MemoryStoreError"]

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "llmctx-memory"

_MAX_STR = 128  # longest string flattened into metadata
_MAX_DEPTH = 3  # deepest path flattened into metadata
_INT64 = 2**63
_CHUNK = 1000  # records per Chroma read or write call
_SCAN_CHUNK = 2000  # largest page of a sequential scan
_FILTER_SPEEDUP = 60  # Chroma filters ~60 records in the time it reads one document
_SIZE_TTL_S = 10.0  # how long the cached record count is trusted
_NEAREST_MAX = 400  # most neighbours asked for before filtering in Chroma instead
_SWEEP_EVERY_S = 60.0
_EMB_STEM = ".emb-"  # `<collection>.emb-<embedder digest>-<dims>`: an EmbeddingTable
_SAME_PROBE = 0.99  # cosine of probe vectors above which two embedders embed alike
_OPS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"})
_RANGE = {"$gt": "$gte", "$gte": "$gte", "$lt": "$lte", "$lte": "$lte"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
_TOKEN = re.compile(r"\w+")
_BM25_K1, _BM25_B = 1.2, 0.75
_STOPWORDS = frozenset(  # left out of lexical search: they match almost every text
    _TOKEN.findall(
        "a about after all also am an and any are as at be been but by can could did do does "
        "for from had has have he her him his how i if in into is it its just me my no not of "
        "on or our out she so than that the their them then there these they this to up us "
        "was we were what when where which who why will with would you your"
    )
)


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class _Record:
    """One item as stored: the decoded document of a main record."""

    id: str
    namespace: tuple[str, ...]
    key: str
    value: dict[str, Any]
    created_at: str
    updated_at: str
    ttl: float | None
    expires_at: float | None  # from the `_exp` metadata, which a refresh moves
    vectors: int
    index: list[str] | Literal[False] | None

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now

    def document(self) -> str:
        return _dumps(
            {
                "ns": list(self.namespace),
                "key": self.key,
                "value": self.value,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "ttl": self.ttl,
                "vectors": self.vectors,
                "index": self.index,
            }
        )

    def item(self, score: float | None = None, *, search: bool = False) -> Item:
        created = datetime.fromisoformat(self.created_at)
        updated = datetime.fromisoformat(self.updated_at)
        if search:
            return SearchItem(self.namespace, self.key, self.value, created, updated, score)
        return Item(
            value=self.value,
            key=self.key,
            namespace=self.namespace,
            created_at=created,
            updated_at=updated,
        )


@dataclass(slots=True)
class _Put:
    """A validated write: `value is None` deletes."""

    namespace: tuple[str, ...]
    key: str
    id: str
    value: dict[str, Any] | None
    flat: dict[str, Any]
    ttl: float | None
    index: list[str] | Literal[False] | None
    texts: list[str]  # to embed, in order; vector n of the item embeds texts[n]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _record_id(namespace: tuple[str, ...], key: str) -> str:
    return _dumps([*namespace, key])


def _prefixes(namespace: tuple[str, ...]) -> list[str]:
    return [".".join(namespace[: i + 1]) for i in range(len(namespace))]


def _placeholder(record_id: str) -> list[float]:
    """A unit 2-d vector spread by the id's hash: main records need an embedding, and
    distinct points keep Chroma's HNSW graph healthy (identical ones degrade it)."""
    angle = int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=4).digest()) / 2**32
    return [math.cos(2 * math.pi * angle), math.sin(2 * math.pi * angle)]


def _extend(path: list[str] | None, key: str) -> list[str] | None:
    """`path + [key]` if that path is flattened into metadata, else None."""
    if path is None or not key or "." in key or len(path) >= _MAX_DEPTH:
        return None
    return [*path, key]


def _now_iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat()


# --------------------------------------------------------------------------- values


def _check_value(
    value: Any, where: str
) -> tuple[dict[str, Any], dict[str, str | int | float | bool]]:
    """Validate a put value as a JSON object; return it as a dict and its flat fields."""
    if not isinstance(value, Mapping):
        raise MemoryStoreError(
            f"value of {where} must be a mapping (a JSON object), got {type(value).__name__}"
        )
    flat: dict[str, str | int | float | bool] = {}

    def walk(obj: Any, path: list[str] | None) -> None:
        # `path` is the flattenable path so far, None once it can no longer be flattened
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                if not isinstance(k, str):
                    raise MemoryStoreError(
                        f"value of {where} has a non-string key {k!r}; JSON object keys "
                        "must be strings"
                    )
                walk(v, _extend(path, k))
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v, None)
        elif isinstance(obj, bool) or obj is None:
            if obj is not None and path:
                flat["v." + ".".join(path)] = obj
        elif isinstance(obj, int):
            if path:
                flat["v." + ".".join(path)] = obj if -_INT64 <= obj < _INT64 else float(obj)
        elif isinstance(obj, float):
            if not math.isfinite(obj):
                raise MemoryStoreError(
                    f"value of {where} holds {obj}, which JSON cannot represent; "
                    "store it as a string or null"
                )
            if path:
                flat["v." + ".".join(path)] = obj
        elif isinstance(obj, str):
            if path and len(obj) <= _MAX_STR:
                flat["v." + ".".join(path)] = obj
        else:
            raise MemoryStoreError(
                f"value of {where} holds a {type(obj).__name__}, which is not JSON-"
                "serializable; convert it (e.g. datetime to an ISO string) before storing"
            )

    walk(value, [])
    return json.loads(_dumps(value)), flat


def _leaf_texts(obj: Any) -> Iterable[str]:
    """Every string and number in a JSON value (keys excluded): the lexical text of `$`."""
    if isinstance(obj, Mapping):
        for v in obj.values():
            yield from _leaf_texts(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _leaf_texts(v)
    elif isinstance(obj, str):
        yield obj
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield str(obj)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


# --------------------------------------------------------------------------- filters


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _json_eq(a: Any, b: Any) -> bool:
    """Equality of JSON values: 1 == 1.0, but True != 1 and "1" != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b) and a == b
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return (
            isinstance(a, list | tuple)
            and isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_json_eq(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(_json_eq(a[k], b[k]) for k in a)
        )
    return a == b


def _operator(value: Any, present: bool, op: str, operand: Any) -> bool:
    if op == "$eq":
        return not present if operand is None else present and _json_eq(value, operand)
    if op == "$ne":
        return present if operand is None else present and not _json_eq(value, operand)
    if op == "$in":
        return any(_operator(value, present, "$eq", x) for x in operand)
    if op == "$nin":
        return present and not any(_json_eq(value, x) for x in operand)
    if not present:
        return False
    if _is_number(value) and _is_number(operand):
        pass
    elif not (isinstance(value, str) and isinstance(operand, str)):
        return False
    if op == "$gt":
        return value > operand
    if op == "$gte":
        return value >= operand
    if op == "$lt":
        return value < operand
    return value <= operand


def _condition_matches(value: Any, present: bool, cond: Any) -> bool:
    if isinstance(cond, Mapping) and any(str(k).startswith("$") for k in cond):
        return all(_operator(value, present, op, operand) for op, operand in cond.items())
    if isinstance(cond, Mapping):
        if not isinstance(value, Mapping):
            return False
        return all(
            _condition_matches(value.get(k), value.get(k) is not None, c) for k, c in cond.items()
        )
    return _operator(value, present, "$eq", cond)


class _Filter:
    """A compiled `search` filter: Chroma `where` clauses (a superset) and an exact check."""

    __slots__ = ("clauses", "exact", "spec")

    def __init__(self, spec: Mapping[str, Any] | None) -> None:
        self.spec: dict[str, Any] = {}
        self.clauses: list[dict[str, Any]] = []
        self.exact = True
        if spec is None:
            return
        if not isinstance(spec, Mapping):
            raise MemoryStoreError(
                f"filter must be a mapping of field to condition, got {type(spec).__name__}"
            )
        for field, cond in spec.items():
            if not isinstance(field, str):
                raise MemoryStoreError(f"filter field {field!r} must be a string")
            self._compile(cond, _extend([], field), field)
        self.spec = dict(spec)

    def matches(self, value: Mapping[str, Any]) -> bool:
        return all(
            _condition_matches(value.get(k), value.get(k) is not None, c)
            for k, c in self.spec.items()
        )

    def _compile(self, cond: Any, path: list[str] | None, shown: str) -> None:
        if isinstance(cond, Mapping) and any(str(k).startswith("$") for k in cond):
            for op, operand in cond.items():
                self._operator(op, operand, path, shown)
        elif isinstance(cond, Mapping):
            if not cond:  # "is an object": not expressible in `where`
                self.exact = False
            for k, c in cond.items():
                if not isinstance(k, str):
                    raise MemoryStoreError(f"filter field {shown}.{k!r} must be a string")
                self._compile(c, _extend(path, k), f"{shown}.{k}")
        else:
            self._operator("$eq", cond, path, shown)

    def _operator(self, op: Any, operand: Any, path: list[str] | None, shown: str) -> None:
        if op not in _OPS:
            raise MemoryStoreError(
                f"filter on {shown!r} uses unknown operator {op!r}; use one of "
                f"{', '.join(sorted(_OPS))}, or a plain value for equality"
            )
        if op in _RANGE and not (_is_number(operand) or isinstance(operand, str)):
            raise MemoryStoreError(
                f"filter {op} on {shown!r} needs a number or a string, got {operand!r}"
            )
        if op in ("$in", "$nin") and not isinstance(operand, list | tuple):
            raise MemoryStoreError(f"filter {op} on {shown!r} needs a list, got {operand!r}")
        clause = self._pushdown(op, operand, "v." + ".".join(path)) if path else None
        if clause is None:
            self.exact = False
            return
        where, exact = clause
        self.clauses.append(where)
        self.exact = self.exact and exact

    @staticmethod
    def _pushdown(op: str, operand: Any, key: str) -> tuple[dict[str, Any], bool] | None:
        """The Chroma clause for one condition and whether it is exact, or None.

        A pushed clause never drops an item that matches: strings and booleans compare
        exactly; numbers go as they are (Chroma compares ints and floats exactly, but an
        int beyond int64 is sent as a float), with non-strict bounds, since flattened
        ints beyond int64 are stored rounded to floats.
        """
        short = isinstance(operand, str) and len(operand) <= _MAX_STR
        number = _is_number(operand) and math.isfinite(operand)
        if number and not -_INT64 <= operand < _INT64:
            operand = float(operand)
        if op == "$eq":
            if short or isinstance(operand, bool):
                return {key: operand}, True
            return ({key: operand}, False) if number else None
        if op in _RANGE and number:
            return {key: {_RANGE[op]: operand}}, False
        if op == "$ne" and (short or isinstance(operand, bool)):
            return {key: {"$ne": operand}}, False  # Chroma keeps items lacking the key
        if op in ("$in", "$nin") and operand:
            kinds = {type(x) for x in operand}
            if kinds == {bool} or (kinds == {str} and all(len(x) <= _MAX_STR for x in operand)):
                return {key: {op: list(operand)}}, op == "$in"
        return None


def _and(clauses: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": list(clauses)}


def _scope(prefix: Sequence[str]) -> list[dict[str, Any]]:
    return [{"_pfx": {"$contains": ".".join(prefix)}}] if prefix else []


def _in_scope(record_id: str, prefix: tuple[str, ...]) -> bool:
    """Whether an item id (`json.dumps([*namespace, key])`) lies under `prefix`."""
    if not prefix:
        return True
    parts = json.loads(record_id)
    return len(parts) > len(prefix) and tuple(parts[: len(prefix)]) == prefix


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """Whether a namespace matches a prefix or suffix condition (`*` matches any label)."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if not path:
        return True
    part = namespace[: len(path)] if condition.match_type == "prefix" else namespace[-len(path) :]
    return all(p == "*" or p == n for p, n in zip(path, part, strict=True))


# --------------------------------------------------------------------------- embeddings


class _ChromaEmbeddings(Embeddings):
    """A Chroma `EmbeddingFunction` seen as LangChain `Embeddings` (vectors as lists)."""

    def __init__(self, function: Any) -> None:
        self.function = function

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in v] for v in self.function(list(texts))]

    def embed_query(self, text: str) -> list[float]:
        query = getattr(self.function, "embed_query", None)
        vectors = query([text]) if callable(query) else self.function([text])
        return [float(x) for x in vectors[0]]


def _as_embeddings(embed: Any) -> Embeddings:
    if isinstance(embed, Embeddings):
        return embed
    types = sys.modules.get("chromadb.api.types")
    if types is not None and isinstance(embed, types.EmbeddingFunction):
        return _ChromaEmbeddings(embed)
    try:
        return ensure_embeddings(embed)
    except ValueError as exc:
        raise MemoryStoreError(f"index 'embed' is not usable: {exc}") from None


def _embedder_name(embed: Embeddings) -> str:
    inner = getattr(embed, "function", None) or embed
    model = getattr(inner, "model", None) or getattr(inner, "model_name", None)
    base = type(inner).__name__
    return f"{base}:{model}" if isinstance(model, str) else base


def _embedding_failure(embed: Embeddings, exc: Exception, what: str) -> EmbeddingError:
    return EmbeddingError(
        f"the store's index embedder {_embedder_name(embed)!r} failed on {what} "
        f"({type(exc).__name__}: {exc}); nothing was written: check the embedder's "
        "model, key and server, or open the store without an index"
    )


def _embed_call(embed: Embeddings, call: Callable[[], Any], what: str) -> Any:
    """Run an embedding call of the store's index; any failure is an EmbeddingError."""
    try:
        return call()
    except EmbeddingError:
        raise
    except Exception as exc:
        raise _embedding_failure(embed, exc, what) from exc


def _vectors_list(vectors: Any, dims: int | None, count: int) -> list[list[float]]:
    """The embedder's output as `count` finite vectors of `dims` floats, or EmbeddingError."""
    return checked_vectors(
        vectors,
        count,
        who="the store's index embedder",
        dims=dims,
        size_fix="fix 'dims' in the index config to the embedder's vector size",
        fix="check the embedder's model, key and server",
    )


def _text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        return -1.0
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else (1.0 if list(a) == list(b) else -1.0)


class EmbeddingTable:
    """The vectors one embedder made for the items of a `ChromaStore`, kept by Chroma.

    A retriever that embeds memories itself (`HybridRetriever` with an embedder) keeps
    their vectors here, so a new process loads them instead of embedding every memory
    again. Get one with `ChromaStore.embedding_table(name, dims, probe)`.

    **Layout.** One Chroma collection per embedder, `<collection>.emb-<digest>-<dims>`
    (the digest is of the embedder's name), whose metadata records the embedder's name,
    `dims` and `probe` (its vector of a fixed text, `Embedder.probe`). One record per
    item: the item's id, its vector as the Chroma embedding, and metadata `h` (a hash of
    the text that was embedded) and `_pfx` (the namespace's prefixes, as in the main
    collection). A vector is returned only for the same text: an item whose text
    changed reads as missing, and is embedded again by the caller.

    **Another embedder** never reads these vectors: a different name or size opens
    another table, and a table whose recorded probe differs from the embedder's (the same
    name now embeds differently, e.g. a model folder was replaced) is emptied and
    starts afresh (`reset` is then True), so vectors of two models are never mixed.
    """

    def __init__(
        self, call: Callable[..., Any], collection: Collection, name: str, reset: bool
    ) -> None:
        self._call = call  # the store's Chroma call: failures become MemoryStoreError
        self._collection = collection
        self.name = name
        self.reset = reset

    def get(self, items: Sequence[tuple[tuple[str, ...], str, str]]) -> list[np.ndarray | None]:
        """The stored vector of each `(namespace, key, text)`, None where there is none
        for that text."""
        ids = [_record_id(ns, key) for ns, key, _ in items]
        found: dict[str, tuple[Any, str | None]] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _CHUNK):
            res = self._call(
                self._collection.get,
                ids=unique[start : start + _CHUNK],
                include=["embeddings", "metadatas"],
            )
            for rid, vector, meta in zip(
                res["ids"], res["embeddings"], res["metadatas"], strict=True
            ):
                found[rid] = (vector, (meta or {}).get("h"))
        out: list[np.ndarray | None] = []
        for rid, (_, _, text) in zip(ids, items, strict=True):
            hit = found.get(rid)
            ok = hit is not None and hit[1] == _text_hash(text)
            out.append(np.asarray(hit[0], dtype=np.float32) if ok and hit is not None else None)
        return out

    def put(
        self,
        items: Sequence[tuple[tuple[str, ...], str, str]],
        vectors: Sequence[Sequence[float]],
    ) -> None:
        """Keep the vector of each `(namespace, key, text)` (the last one of a key wins)."""
        latest = {
            _record_id(ns, key): (ns, text, vector)
            for (ns, key, text), vector in zip(items, vectors, strict=True)
        }
        ids = list(latest)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            self._call(
                self._collection.upsert,
                ids=chunk,
                embeddings=np.asarray([latest[i][2] for i in chunk], dtype=np.float32),
                metadatas=[
                    {"h": _text_hash(latest[i][1]), "_pfx": _prefixes(latest[i][0])} for i in chunk
                ],
            )

    def count(self) -> int:
        """How many vectors the table holds."""
        return int(self._call(self._collection.count))

    def __repr__(self) -> str:
        return f"EmbeddingTable({self.name!r}, collection={self._collection.name!r})"


# --------------------------------------------------------------------------- the store


class ChromaStore(BaseStore):
    """A LangGraph `BaseStore` on chromadb, with filters, TTL and optional vector search.

    Give at most one of `path` (an embedded `PersistentClient` there), `url` (a Chroma
    server, `http://host:port`) or `client` (any Chroma client, left open on `close`);
    with none, the store lives in the workspace's `memory/` folder. `index` enables
    vector search (`{"dims": 384, "embed": <Embeddings | function | Chroma embedding
    function>, "fields": ["text"]}`); `ttl` is LangGraph's `TTLConfig`; `clock`
    returns epoch seconds (inject one in tests). Chroma telemetry is switched off.

    Example:
        >>> with ChromaStore("/tmp/m", ttl={"default_ttl": 60}) as store:  # doctest: +SKIP
        ...     store.put(("users", "u1"), "pref", {"theme": "dark"})
        ...     store.list_namespaces(prefix=("users",))
        [('users', 'u1')]
    """

    supports_ttl = True

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        url: str | None = None,
        client: ClientAPI | None = None,
        collection: str = DEFAULT_COLLECTION,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.location = "(not opened)"
        self._name = collection
        self._closed = False
        if sum(x is not None for x in (path, url, client)) > 1:
            raise MemoryStoreError("give at most one of path, url and client to ChromaStore")
        if not isinstance(collection, str) or not _NAME.match(collection) or ".." in collection:
            raise MemoryStoreError(
                f"invalid collection name {collection!r}: use 3-512 characters from "
                "[a-zA-Z0-9._-], starting and ending with a letter or digit"
            )
        self.ttl_config = ttl
        self.index_config = dict(index) if index else None
        self._embeddings: Embeddings | None = None
        self._fields: list[tuple[str, Any]] = []
        self._dims: int | None = None
        if self.index_config is not None:
            if self.index_config.get("embed") is None:
                raise MemoryStoreError("index config needs 'embed' (an embedder) for search")
            self._embeddings = _as_embeddings(self.index_config["embed"])
            fields = self.index_config.get("fields") or ["$"]
            self._fields = [(f, f if f == "$" else tokenize_path(f)) for f in fields]
            dims = self.index_config.get("dims")
            self._dims = int(dims) if dims else None
        self._clock = clock
        self._lock = threading.Lock()
        self._last_sweep = -math.inf
        self._size_cache, self._size_at = 0, -math.inf
        sweep = (ttl or {}).get("sweep_interval_minutes")
        self._sweep_every = float(sweep) * 60 if sweep else _SWEEP_EVERY_S
        self._owns_client = client is None
        if client is not None:
            self._client = client
            self.location = f"client {type(client).__name__}"
        elif url is not None:
            self._client = self._http_client(url)
            self.location = url
        else:
            folder = Path(path) if path is not None else self._default_path()
            self._client = self._persistent_client(folder)
            self.location = str(folder)
        try:
            self._main = self._client.get_or_create_collection(
                collection, embedding_function=None, metadata={"llmctx": "memory"}
            )
        except Exception as exc:
            raise MemoryStoreError(
                f"cannot open Chroma collection {collection!r} at {self.location}: {exc}"
            ) from exc
        self._vec: Collection | None = None
        self._tables: dict[str, Collection] = {}  # embedding tables opened or found
        self._tables_listed = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        collection: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> ChromaStore:
        """The store the settings configure: a Chroma server when `memory.url` is
        set, else an embedded one in `<workspace>/memory/`."""
        url = settings.memory.url
        name = collection or settings.memory.collection or DEFAULT_COLLECTION
        if url:
            return cls(url=str(url), collection=name, index=index, ttl=ttl, clock=clock)
        from llmctx.runtime.workspace import Workspace

        folder = Workspace.from_settings(settings).path("memory")
        return cls(folder, collection=name, index=index, ttl=ttl, clock=clock)

    @staticmethod
    def _default_path() -> Path:
        from llmctx.runtime.workspace import Workspace

        return Workspace().path("memory")

    @staticmethod
    def _settings() -> Any:
        from chromadb.config import Settings as ChromaSettings

        return ChromaSettings(anonymized_telemetry=False)

    def _persistent_client(self, folder: Path) -> ClientAPI:
        import chromadb

        try:
            folder.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(folder), settings=self._settings())
        except Exception as exc:
            raise MemoryStoreError(
                f"cannot open the Chroma store in {folder}: {exc}; check the folder's "
                "permissions, or that no other client opened it with other settings"
            ) from exc

    def _http_client(self, url: str) -> ClientAPI:
        import chromadb

        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MemoryStoreError(
                f"invalid Chroma server URL {url!r}; use http://host:port or https://host"
            )
        ssl = parts.scheme == "https"
        try:
            port = parts.port or (443 if ssl else 8000)
        except ValueError:
            raise MemoryStoreError(f"invalid port in Chroma server URL {url!r}") from None
        try:
            return chromadb.HttpClient(
                host=parts.hostname, port=port, ssl=ssl, settings=self._settings()
            )
        except Exception as exc:
            raise MemoryStoreError(
                f"cannot reach the Chroma server at {url}: {exc}; start one with "
                "`chroma run --path <folder> --port <port>` or fix the memory URL"
            ) from exc

    def close(self) -> None:
        """Release the client (one this store opened; a client passed in stays open)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            close = getattr(self._client, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> ChromaStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ChromaStore({self.location!r}, collection={self._name!r})"

    # ------------------------------------------------------------------ BaseStore

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run the ops: reads on the state before the batch, then the writes."""
        ops, puts, filters = self._plan(ops)
        vectors = self._embed_puts(puts)
        queries = {}
        embed = self._embeddings
        if embed is not None:
            for text in {op.query for op in ops if isinstance(op, SearchOp) and op.query}:
                vector = _embed_call(embed, lambda t=text: embed.embed_query(t), "a query")
                queries[text] = self._checked_query(vector)
        return self._execute(ops, puts, filters, vectors, queries)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """`batch` for asyncio: embeds with the async API, runs Chroma in a thread."""
        ops, puts, filters = self._plan(ops)
        vectors: list[list[list[float]]] = [[] for _ in puts]
        queries: dict[str, list[float]] = {}
        embed = self._embeddings
        if embed is not None:
            texts = [t for p in puts for t in p.texts]
            try:
                if texts:
                    flat = _vectors_list(
                        await embed.aembed_documents(texts), self._dims, len(texts)
                    )
                    vectors = self._split(puts, flat)
                wanted = sorted({op.query for op in ops if isinstance(op, SearchOp) and op.query})
                got = await asyncio.gather(*(embed.aembed_query(q) for q in wanted))
            except EmbeddingError:
                raise
            except Exception as exc:  # the same error as the sync path raises
                raise _embedding_failure(embed, exc, "a batch") from exc
            queries = {q: self._checked_query(v) for q, v in zip(wanted, got, strict=True)}
        return await asyncio.to_thread(self._execute, ops, puts, filters, vectors, queries)

    # ------------------------------------------------------------------ extras

    def sweep_ttl(self) -> int:
        """Delete every expired item now; return how many went."""
        self._check_open()
        now = self._clock()
        with self._lock:
            self._last_sweep = now
        found = self._call(
            self._main.get, where={"_exp": {"$lte": now}}, include=["documents", "metadatas"]
        )
        records = []
        for rid, doc, meta in zip(
            found["ids"], found["documents"], found["metadatas"], strict=True
        ):
            rec = self._decode(rid, doc)
            rec.expires_at = (meta or {}).get("_exp")
            records.append(rec)
        self._delete(records)
        return len(records)

    def count(self, namespace_prefix: tuple[str, ...] = ()) -> int:
        """How many live items are under `namespace_prefix` (all items for `()`)."""
        self._check_open()
        self.sweep_ttl()
        return len(self._ids(_and(_scope(namespace_prefix))))

    def clear(self, namespace_prefix: tuple[str, ...] = ()) -> int:
        """Delete every item under `namespace_prefix` (everything for `()`); return how many."""
        self._check_open()
        ids = self._ids(_and(_scope(namespace_prefix)))
        for start in range(0, len(ids), _CHUNK):
            self._call(self._main.delete, ids=ids[start : start + _CHUNK])
        vec = self._vectors()
        for collection in [*([vec] if vec is not None else []), *self._embedding_tables(True)]:
            vec_ids = self._ids(_and(_scope(namespace_prefix)), collection=collection)
            for start in range(0, len(vec_ids), _CHUNK):
                self._call(collection.delete, ids=vec_ids[start : start + _CHUNK])
        return len(ids)

    def embedding_table(self, name: str, dims: int, probe: Sequence[float]) -> EmbeddingTable:
        """The table of vectors made by the embedder `name` (`dims` floats per vector,
        `probe` its vector of `PROBE_TEXT`), created on first use. See `EmbeddingTable`.

        >>> e = Embedder.wrap(my_embeddings)                           # doctest: +SKIP
        >>> table = store.embedding_table(e.name, e.dims, e.probe())
        """
        self._check_open()
        if dims <= 0 or len(probe) != dims:
            raise MemoryStoreError(
                f"embedding table of {name!r}: dims {dims} and a probe of {len(probe)} floats "
                "disagree; pass the embedder's own vector size and probe vector"
            )
        digest = hashlib.blake2b(name.encode("utf-8"), digest_size=6).hexdigest()
        table = f"{self._name[:480]}{_EMB_STEM}{digest}-{dims}"
        record = {
            "llmctx": "memory-embeddings",
            "embedder": name[:1000],
            "dims": dims,
            "probe": _dumps([round(float(x), 6) for x in probe]),
        }
        with self._lock:
            collection = self._open_table(table, record)
            reset = False
            try:
                stored = json.loads(str((collection.metadata or {}).get("probe", "[]")))
            except ValueError:
                stored = []
            if _cosine(stored, probe) < _SAME_PROBE:
                # The same name now embeds differently: its old vectors must not be mixed in.
                logger.warning(
                    "embedder %r now embeds differently from the vectors kept in %r; "
                    "dropping them (memories are embedded again as they are read)",
                    name,
                    table,
                )
                self._call(self._client.delete_collection, name=table)
                collection = self._open_table(table, record)
                reset = True
            self._tables[table] = collection
        return EmbeddingTable(self._call, collection, name, reset)

    def _open_table(self, table: str, metadata: dict[str, Any]) -> Collection:
        try:
            return self._client.get_or_create_collection(
                table,
                embedding_function=None,
                metadata=metadata,
                # Vectors are read by id, never searched: the smallest graph will do.
                configuration={
                    "hnsw": {"space": "cosine", "ef_construction": 16, "max_neighbors": 4}
                },
            )
        except Exception as exc:
            raise MemoryStoreError(
                f"cannot open Chroma collection {table!r} at {self.location}: {exc}"
            ) from exc

    def _embedding_tables(self, fresh: bool = False) -> list[Collection]:
        """Every embedding table of this store (listed from Chroma once, or when `fresh`)."""
        with self._lock:
            if fresh or not self._tables_listed:
                stem = f"{self._name[:480]}{_EMB_STEM}"
                for c in self._call(self._client.list_collections):
                    name = getattr(c, "name", c)
                    if name.startswith(stem) and name not in self._tables:
                        self._tables[name] = self._call(
                            self._client.get_collection, name=name, embedding_function=None
                        )
                self._tables_listed = True
            return list(self._tables.values())

    # ------------------------------------------------------------------ planning

    def _plan(self, ops: Iterable[Op]) -> tuple[list[Op], list[_Put], dict[int, _Filter]]:
        """Validate every op before anything runs; dedupe puts (last one wins)."""
        self._check_open()
        ops = list(ops)
        puts: dict[tuple[tuple[str, ...], str], _Put] = {}
        filters: dict[int, _Filter] = {}
        for i, op in enumerate(ops):
            if not isinstance(op, GetOp | SearchOp | PutOp | ListNamespacesOp):
                raise MemoryStoreError(f"unknown store operation {type(op).__name__}")
            validate_op_namespace(op)
            if isinstance(op, GetOp | PutOp) and not isinstance(op.key, str):
                raise MemoryStoreError(f"key must be a string, got {op.key!r}")
            if isinstance(op, SearchOp):
                if op.limit < 0 or op.offset < 0:
                    raise MemoryStoreError(
                        f"search limit and offset must be >= 0, got {op.limit} and {op.offset}"
                    )
                filters[i] = _Filter(op.filter)
            elif isinstance(op, ListNamespacesOp):
                if op.limit < 0 or op.offset < 0 or (op.max_depth is not None and op.max_depth < 1):
                    raise MemoryStoreError(
                        "list_namespaces limit and offset must be >= 0 and max_depth >= 1"
                    )
                for cond in op.match_conditions or ():
                    if cond.match_type not in ("prefix", "suffix"):
                        raise MemoryStoreError(
                            f"unknown namespace match type {cond.match_type!r}; "
                            "use 'prefix' or 'suffix'"
                        )
            elif isinstance(op, PutOp):
                if not op.namespace:
                    raise InvalidNamespaceError("Namespace cannot be empty.")
                puts[(op.namespace, op.key)] = self._prepare_put(op)
        return ops, list(puts.values()), filters

    def _prepare_put(self, op: PutOp) -> _Put:
        rid = _record_id(op.namespace, op.key)
        if op.value is None:
            return _Put(op.namespace, op.key, rid, None, {}, None, None, [])
        where = f"{op.namespace}/{op.key!r}"
        value, flat = _check_value(op.value, where)
        if op.ttl is not None and (not _is_number(op.ttl) or op.ttl <= 0):
            raise MemoryStoreError(f"ttl of {where} must be a positive number of minutes")
        if op.index is not None and op.index is not False and not isinstance(op.index, list):
            raise MemoryStoreError(f"index of {where} must be False, None or a list of paths")
        texts: list[str] = []
        if self._embeddings is not None and op.index is not False:
            paths = (
                self._fields
                if op.index is None
                else [(p, p if p == "$" else tokenize_path(p)) for p in op.index]
            )
            for _, tokens in paths:
                texts.extend(get_text_at_path(value, tokens))
        return _Put(op.namespace, op.key, rid, value, flat, op.ttl, op.index, texts)

    def _embed_puts(self, puts: list[_Put]) -> list[list[list[float]]]:
        texts = [t for p in puts for t in p.texts]
        if not texts or self._embeddings is None:
            return [[] for _ in puts]
        embed = self._embeddings
        vectors = _embed_call(embed, lambda: embed.embed_documents(texts), f"{len(texts)} texts")
        return self._split(puts, _vectors_list(vectors, self._dims, len(texts)))

    @staticmethod
    def _split(puts: list[_Put], flat: list[list[float]]) -> list[list[list[float]]]:
        out, start = [], 0
        for p in puts:
            out.append(flat[start : start + len(p.texts)])
            start += len(p.texts)
        return out

    def _checked_query(self, vector: Any) -> list[float]:
        return _vectors_list([vector], self._dims, 1)[0]

    # ------------------------------------------------------------------ execution

    def _execute(
        self,
        ops: list[Op],
        puts: list[_Put],
        filters: dict[int, _Filter],
        vectors: list[list[list[float]]],
        queries: dict[str, list[float]],
    ) -> list[Result]:
        now = self._clock()
        if now - self._last_sweep >= self._sweep_every:
            self.sweep_ttl()
        results: list[Result] = [None] * len(ops)
        expired: dict[str, _Record] = {}
        refresh: dict[str, _Record] = {}

        gets = [(i, op) for i, op in enumerate(ops) if isinstance(op, GetOp)]
        if gets:
            found = self._fetch([_record_id(op.namespace, op.key) for _, op in gets])
            for i, op in gets:
                rec = found.get(_record_id(op.namespace, op.key))
                if rec is None:
                    continue
                if not rec.live(now):
                    expired[rec.id] = rec
                    continue
                results[i] = rec.item()
                if op.refresh_ttl and rec.ttl is not None:
                    refresh[rec.id] = rec
        for i, op in enumerate(ops):
            if isinstance(op, SearchOp):
                hits = self._search(op, filters[i], queries.get(op.query or ""), now, expired)
                results[i] = [rec.item(score, search=True) for rec, score in hits]
                if op.refresh_ttl:
                    refresh.update((r.id, r) for r, _ in hits if r.ttl is not None)
            elif isinstance(op, ListNamespacesOp):
                results[i] = self._list_namespaces(op, now)

        written = {p.id for p in puts}
        self._refresh([r for r in refresh.values() if r.id not in written], now)
        if expired:
            self._delete([r for r in expired.values() if r.id not in written])
        if puts:
            self._write(puts, vectors, now)
        return results

    def _search(
        self,
        op: SearchOp,
        flt: _Filter,
        query: list[float] | None,
        now: float,
        expired: dict[str, _Record],
    ) -> list[tuple[_Record, float | None]]:
        if op.limit == 0:
            return []
        prefix = tuple(op.namespace_prefix)

        def keep(rec: _Record) -> bool:
            if not rec.live(now):
                expired[rec.id] = rec
                return False
            return rec.namespace[: len(prefix)] == prefix and flt.matches(rec.value)

        clauses = _scope(prefix) + flt.clauses
        if not op.query:
            recs = self._scan(clauses, keep, op.offset, op.limit, exact=flt.exact)
            return [(r, None) for r in recs]
        if query is not None:
            return self._vector_search(op, clauses, keep, query)
        return self._lexical_search(op, clauses, keep)

    def _scan(
        self,
        clauses: list[dict[str, Any]],
        keep: Callable[[_Record], bool],
        offset: int,
        limit: int | None,
        *,
        exact: bool = False,
    ) -> list[_Record]:
        """Kept records in insertion order, `[offset:offset + limit]` (all for None).

        `keep` must decide exactly what `where` (a superset) selects. Chroma's metadata
        filter costs time in proportion to the store's size and to the clauses (~8 ms
        per clause at 10K records), while reading in order costs time per record read
        (~60 times more per record). So a dense scope is read in order *without*
        `where` and filtered here: a first page tells how dense the scope is, hence how
        many records that would read; when that costs more than the filter would,
        `where` is used. With an exact `where` and a deep
        offset, Chroma skips the offset itself (a page that meets an expired item is
        redone after a sweep).
        """
        where = _and(clauses)
        budget = len(clauses) * self._size() // _FILTER_SPEEDUP
        target = None if limit is None else offset + limit
        if where is not None and exact and target is not None and offset > budget:
            page = self._get_page(where, offset, target - offset)
            recs = [r for r in page if keep(r)]
            if len(recs) == len(page):
                return recs
            self.sweep_ttl()
        probe = budget if target is None else min(max(4 * target, 50), budget)
        if where is not None and probe >= 20:
            page = self._get_page(None, 0, probe)
            kept = [r for r in page if keep(r)]
            if len(page) < probe or (target is not None and len(kept) >= target):
                return kept[offset:target]
            # dense enough that reading on in order beats Chroma's filter: go on without it
            if kept and (
                4 * len(kept) >= probe if target is None else target * probe <= budget * len(kept)
            ):
                return self._scan_from(None, keep, offset, target, probe, kept)
        return self._scan_from(where, keep, offset, target, 0, [])

    def _scan_from(
        self,
        where: dict[str, Any] | None,
        keep: Callable[[_Record], bool],
        offset: int,
        target: int | None,
        position: int,
        kept: list[_Record],
    ) -> list[_Record]:
        if target is None:
            chunk = _SCAN_CHUNK
        elif position and kept:  # the density seen so far says how far to read
            chunk = math.ceil(1.2 * (target - len(kept)) * position / len(kept))
        else:
            chunk = target
        chunk = min(max(chunk, 50), _SCAN_CHUNK)
        while target is None or len(kept) < target:
            page = self._get_page(where, position, chunk)
            kept.extend(r for r in page if keep(r))
            if len(page) < chunk:
                break
            position += chunk
            chunk = min(chunk * 2, _SCAN_CHUNK)
        return kept[offset:target]

    def _vector_search(
        self,
        op: SearchOp,
        clauses: list[dict[str, Any]],
        keep: Callable[[_Record], bool],
        query: list[float],
    ) -> list[tuple[_Record, float | None]]:
        """Rank by cosine similarity, best vector of each item; then unembedded items.

        First nearest neighbours of the whole store (cheap when the scope is most of
        it), again with more neighbours if the scope's share says that will do, else
        a query filtered in Chroma.
        """
        prefix = tuple(op.namespace_prefix)
        need = op.offset + op.limit
        scored: list[tuple[_Record, float | None]] = []
        complete = True
        vec = self._vectors(len(query))
        if vec is not None:
            n = max(4 * need, 40)
            scored, complete, seen = self._nearest(vec, query, None, prefix, keep, need, n)
            if len(scored) < need and not complete and scored:
                # the scope's share of the neighbours says how many to ask for
                wanted = math.ceil(1.5 * need * seen / len(scored))
                if wanted <= _NEAREST_MAX:
                    scored, complete, _ = self._nearest(
                        vec, query, None, prefix, keep, need, wanted
                    )
            if len(scored) < need and not complete:
                where = _and(clauses)
                scored, complete, _ = self._nearest(vec, query, where, prefix, keep, need, 2 * need)
        page = scored[op.offset : need]
        if len(page) < op.limit and complete:
            rest = self._scan(
                [*clauses, {"_emb": {"$ne": True}}],
                lambda r: r.vectors == 0 and keep(r),
                max(0, op.offset - len(scored)),
                op.limit - len(page),
            )
            page += [(r, None) for r in rest]
        return page

    def _nearest(
        self,
        vec: Collection,
        query: list[float],
        where: dict[str, Any] | None,
        prefix: tuple[str, ...],
        keep: Callable[[_Record], bool],
        need: int,
        n: int,
    ) -> tuple[list[tuple[_Record, float | None]], bool, int]:
        """Kept items by similarity, whether every vector was seen, and items seen.

        Vector ids hold the item's namespace, so hits out of scope are dropped before
        any document is read; documents are read only until `need` items are kept.
        """
        while True:
            res = self._call(
                vec.query, query_embeddings=[query], n_results=n, where=where, include=["distances"]
            )
            ids, distances = res["ids"][0], res["distances"][0]
            best: dict[str, float] = {}
            for vid, dist in zip(ids, distances, strict=True):
                best.setdefault(vid.rsplit("#", 1)[0], 1.0 - float(dist))
            hits = [(rid, score) for rid, score in best.items() if _in_scope(rid, prefix)]
            out: list[tuple[_Record, float | None]] = []
            start = 0
            while start < len(hits) and len(out) < need:
                chunk = hits[start : start + max(2 * (need - len(out)), 10)]
                start += len(chunk)
                found = self._fetch([rid for rid, _ in chunk])
                out += [
                    (rec, score)
                    for rid, score in chunk
                    if (rec := found.get(rid)) is not None and keep(rec)
                ]
            complete = len(ids) < n
            if len(out) >= need or complete or where is None:
                return out, complete, len(best)
            n *= 4

    def _lexical_search(
        self,
        op: SearchOp,
        clauses: list[dict[str, Any]],
        keep: Callable[[_Record], bool],
    ) -> list[tuple[_Record, float | None]]:
        """BM25 over the items whose text holds a query term, then the rest of the scope.

        Candidates come from Chroma's document index (a case-insensitive regex of the
        terms, stopwords left out); `N` is the number of items Chroma selects for the
        scope and `avgdl` the mean length of the candidates.
        """
        where = _and(clauses)
        terms = [t for t in dict.fromkeys(_tokens(op.query or "")) if t not in _STOPWORDS]
        ranked: list[tuple[float, int, _Record]] = []
        if terms:
            found = self._call(
                self._main.get,
                where=where,
                where_document={"$regex": "(?i)" + "|".join(terms)},
                include=["documents"],
            )
            docs: list[tuple[_Record, Counter[str]]] = []
            for rid, document in zip(found["ids"], found["documents"], strict=True):
                rec = self._decode(rid, document)
                if rec.index is not False and keep(rec):
                    docs.append((rec, self._lexical_counts(rec)))
            if docs:
                n = self._main.count() if where is None else len(self._ids(where))
                n = max(n, len(docs))
                avgdl = sum(sum(c.values()) for _, c in docs) / len(docs) or 1.0
                idf = {}
                for t in terms:
                    df = sum(1 for _, c in docs if t in c)
                    idf[t] = math.log(1 + (n - df + 0.5) / (df + 0.5))
                ceiling = sum(idf.values()) * (_BM25_K1 + 1)
                for pos, (rec, counts) in enumerate(docs):
                    norm = _BM25_K1 * (1 - _BM25_B + _BM25_B * sum(counts.values()) / avgdl)
                    score = sum(
                        idf[t] * counts[t] * (_BM25_K1 + 1) / (counts[t] + norm)
                        for t in terms
                        if t in counts
                    )
                    if score > 0:
                        ranked.append((score / ceiling, pos, rec))
        ranked.sort(key=lambda x: (-x[0], x[1]))
        hits: list[tuple[_Record, float | None]] = [(r, s) for s, _, r in ranked]
        page = hits[op.offset : op.offset + op.limit]
        if len(page) < op.limit:  # then the rest of the scope, in insertion order
            scored = {r.id for r, _ in hits}
            rest = self._scan(
                clauses,
                lambda r: r.id not in scored and keep(r),
                max(0, op.offset - len(hits)),
                op.limit - len(page),
            )
            page += [(r, None if r.index is False else 0.0) for r in rest]
        return page

    def _lexical_counts(self, rec: _Record) -> Counter[str]:
        paths = rec.index or [f for f, _ in self._fields] or ["$"]
        texts: list[str] = []
        for p in paths:
            texts.extend(_leaf_texts(rec.value) if p == "$" else get_text_at_path(rec.value, p))
        return Counter(t for text in texts for t in _tokens(text) if t not in _STOPWORDS)

    def _list_namespaces(self, op: ListNamespacesOp, now: float) -> list[tuple[str, ...]]:
        conditions = tuple(op.match_conditions or ())
        fixed: list[str] = []
        for cond in conditions:
            if cond.match_type == "prefix":
                for label in cond.path:
                    if label == "*":
                        break
                    fixed.append(label)
                break
        self.sweep_ttl()
        namespaces = set()
        for rid in self._ids(_and(_scope(fixed))):
            try:
                namespace = tuple(json.loads(rid)[:-1])
            except (ValueError, TypeError):
                raise self._foreign(rid) from None
            if all(_does_match(c, namespace) for c in conditions):
                namespaces.add(namespace[: op.max_depth] if op.max_depth else namespace)
        return sorted(namespaces)[op.offset : op.offset + op.limit]

    # ------------------------------------------------------------------ writes

    def _write(self, puts: list[_Put], vectors: list[list[list[float]]], now: float) -> None:
        old_docs = self._fetch([p.id for p in puts], metadata=True)
        stamp = _now_iso(now)
        deletes: list[_Record] = []
        main_ids, main_docs, main_meta, main_emb = [], [], [], []
        vec_ids, vec_meta, vec_emb = [], [], []
        stale_vec: list[str] = []
        for put, vecs in zip(puts, vectors, strict=True):
            old, old_meta = old_docs.get(put.id, (None, {}))
            if put.value is None:
                if old is not None:
                    deletes.append(old)
                continue
            created = old.created_at if old is not None and old.live(now) else stamp
            expires = now + put.ttl * 60 if put.ttl is not None else None
            rec = _Record(
                put.id,
                put.namespace,
                put.key,
                put.value,
                created,
                stamp,
                put.ttl,
                expires,
                len(vecs),
                put.index,
            )
            # Chroma merges metadata on upsert: old keys are dropped by setting them to None
            scope = {"_pfx": _prefixes(put.namespace)}
            stale = {k: None for k in old_meta if k.startswith("v.") and k not in put.flat}
            meta: dict[str, Any] = {k: None for k in old_meta if k != "_pfx"}
            meta.update(scope, **put.flat)
            if expires is not None:
                meta["_exp"] = expires
            if vecs:
                meta["_emb"] = True
            main_ids.append(put.id)
            main_docs.append(rec.document())
            main_meta.append(meta)
            main_emb.append(_placeholder(put.id))
            for n, v in enumerate(vecs):
                vec_ids.append(f"{put.id}#{n}")
                vec_meta.append({**stale, **scope, **put.flat})
                vec_emb.append(v)
            if old is not None:
                stale_vec += [f"{put.id}#{n}" for n in range(len(vecs), old.vectors)]
        if stale_vec:
            self._delete_vectors(stale_vec)
        if vec_ids:
            vec = self._vectors(len(vec_emb[0]))
            assert vec is not None
            for start in range(0, len(vec_ids), _CHUNK):
                end = start + _CHUNK
                self._call(
                    vec.upsert,
                    ids=vec_ids[start:end],
                    metadatas=vec_meta[start:end],
                    embeddings=vec_emb[start:end],
                )
        for start in range(0, len(main_ids), _CHUNK):
            end = start + _CHUNK
            self._call(
                self._main.upsert,
                ids=main_ids[start:end],
                documents=main_docs[start:end],
                metadatas=main_meta[start:end],
                embeddings=main_emb[start:end],
            )
        self._delete(deletes)

    def _refresh(self, records: list[_Record], now: float) -> None:
        """Push the expiry of TTL items that were read (refresh on read)."""
        if not records:
            return
        for rec in records:
            assert rec.ttl is not None
            rec.expires_at = now + rec.ttl * 60
        for start in range(0, len(records), _CHUNK):
            chunk = records[start : start + _CHUNK]
            self._call(  # metadata only: a concurrent put's value is never overwritten
                self._main.update,
                ids=[r.id for r in chunk],
                metadatas=[{"_exp": r.expires_at} for r in chunk],
            )

    def _delete(self, records: list[_Record]) -> None:
        if not records:
            return
        ids = [r.id for r in records]
        for start in range(0, len(ids), _CHUNK):
            self._call(self._main.delete, ids=ids[start : start + _CHUNK])
        self._delete_vectors([f"{r.id}#{n}" for r in records for n in range(r.vectors)])
        for table in self._embedding_tables():
            for start in range(0, len(ids), _CHUNK):
                self._call(table.delete, ids=ids[start : start + _CHUNK])

    def _delete_vectors(self, ids: list[str]) -> None:
        vec = self._vectors() if ids else None
        if vec is None:
            return
        for start in range(0, len(ids), _CHUNK):
            self._call(vec.delete, ids=ids[start : start + _CHUNK])

    # ------------------------------------------------------------------ Chroma access

    def _vectors(self, dims: int | None = None) -> Collection | None:
        """The vector collection (`<collection>.vec<dims>`), created on first use.

        Without configured or given dims, the one existing vector collection of this
        store is used, if any (None otherwise: there are no vectors to read or delete).
        """
        if self._embeddings is None:
            return None
        with self._lock:
            if self._vec is not None:
                return self._vec
            dims = self._dims or dims or self._existing_dims()
            if dims is None:
                return None
            self._dims = dims
            name = f"{self._name}.vec{dims}"
            try:
                self._vec = self._client.get_or_create_collection(
                    name,
                    embedding_function=None,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={"llmctx": "memory-vectors"},
                )
            except Exception as exc:
                raise MemoryStoreError(
                    f"cannot open Chroma collection {name!r} at {self.location}: {exc}"
                ) from exc
            return self._vec

    def _existing_dims(self) -> int | None:
        stem = f"{self._name}.vec"
        names = [getattr(c, "name", c) for c in self._call(self._client.list_collections)]
        dims = {
            int(n[len(stem) :]) for n in names if n.startswith(stem) and n[len(stem) :].isdigit()
        }
        return dims.pop() if len(dims) == 1 else None

    def _size(self) -> int:
        """The number of records in the main collection, cached for `_SIZE_TTL_S`."""
        now = time.monotonic()
        if now - self._size_at > _SIZE_TTL_S:
            self._size_cache = int(self._call(self._main.count))
            self._size_at = now
        return self._size_cache

    def _get_page(self, where: dict[str, Any] | None, offset: int, limit: int) -> list[_Record]:
        res = self._call(
            self._main.get, where=where, offset=offset, limit=limit, include=["documents"]
        )
        records = [self._decode(i, d) for i, d in zip(res["ids"], res["documents"], strict=True)]
        self._expiries(records)
        return records

    def _expiries(self, records: Iterable[_Record]) -> None:
        """Set the expiry of the records that have a TTL (read from their metadata)."""
        timed = {r.id: r for r in records if r.ttl is not None}
        if not timed:
            return
        res = self._call(self._main.get, ids=list(timed), include=["metadatas"])
        for rid, meta in zip(res["ids"], res["metadatas"], strict=True):
            timed[rid].expires_at = (meta or {}).get("_exp")

    def _ids(self, where: dict[str, Any] | None, collection: Collection | None = None) -> list[str]:
        res = self._call((collection or self._main).get, where=where, include=[])
        return list(res["ids"])

    def _fetch(self, ids: list[str], *, metadata: bool = False) -> dict[str, Any]:
        """Records by id (missing ones left out); with `metadata`, (record, metadata)."""
        out: dict[str, Any] = {}
        unique = list(dict.fromkeys(ids))
        include = ["documents", "metadatas"] if metadata else ["documents"]
        for start in range(0, len(unique), _CHUNK):
            res = self._call(self._main.get, ids=unique[start : start + _CHUNK], include=include)
            metas = res["metadatas"] if metadata else [None] * len(res["ids"])
            for rid, doc, meta in zip(res["ids"], res["documents"], metas, strict=True):
                rec = self._decode(rid, doc)
                if metadata:
                    rec.expires_at = (meta or {}).get("_exp")
                out[rid] = (rec, meta or {}) if metadata else rec
        if not metadata:
            self._expiries(out.values())
        return out

    def _decode(self, rid: str, document: str | None) -> _Record:
        try:
            d = json.loads(document or "")
            return _Record(
                rid,
                tuple(d["ns"]),
                d["key"],
                d["value"],
                d["created_at"],
                d["updated_at"],
                d["ttl"],
                None,
                d["vectors"],
                d["index"],
            )
        except (ValueError, KeyError, TypeError):
            raise self._foreign(rid) from None

    def _foreign(self, rid: str) -> MemoryStoreError:
        return MemoryStoreError(
            f"Chroma collection {self._name!r} holds record {rid!r}, which is not an "
            "llmctx memory item; give the store a collection of its own"
        )

    def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except MemoryStoreError:
            raise
        except Exception as exc:
            if "dimension" in str(exc).lower():
                raise MemoryStoreError(
                    f"Chroma refused vectors for {self._name!r}: {exc}; the vector "
                    "collection was built with another embedder: use another collection name"
                ) from exc
            raise MemoryStoreError(f"Chroma failed at {self.location}: {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryStoreError(f"{self!r} is closed; open a new store")
