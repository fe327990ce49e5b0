"""Hybrid retrieval over a LangGraph `BaseStore`: BM25 + dense, fused, boosted, expanded.

A **memory** is a store item whose value has a `text` string, plus optional metadata:
`kind` (turn, summary, tool, note), `thread`, `session`, `turn` (int index within the
thread or session), `ts` (ISO string, epoch seconds or datetime), `importance` (0..1),
`message_id` and `speaker`. Items without a `text` string are not memories and are ignored.

`HybridRetriever.search` ranks the memories under a namespace prefix in five steps:

1. **Lexical**: BM25 (bm25s, Lucene variant) over stemmed, stopword-free tokens. Needs no
   embedder. The query's own terms weigh 1, the terms of `focus` weigh `focus_weight`.
2. **Dense** (when there is an embedder, or the store has its own vector index): cosine
   similarity of the query vector to the memory vectors.

   Both lists score a turn in its context: `s'(t) = s(t) + context_weight * (s(t-1) +
   s(t+1))`, over the adjacent turns of the same namespace, `thread` and `session`.
3. **Fusion**: reciprocal-rank fusion of the two ranked lists, normalized so that a memory
   ranked first by every list scores 1::

       rel(d) = sum_l w_l / (rrf_k + rank_l(d))  /  sum_l w_l / (rrf_k + 1)

   then recency and importance weighting, which keeps scores in (0, 1]::

       score(d) = rel(d) * (1 + w_rec * recency(d) + w_imp * importance(d)) / (1 + w_rec + w_imp)
       recency(d) = 0.5 ** ((newest_ts - ts(d)) / half_life)   # newest memory of the prefix = 1

   A memory without `importance` counts as 0.5; without `ts`, its write time is used.
4. **Neighbor expansion**: turns adjacent (`turn` ± 1 .. ± `neighbors`) to a top hit, in the
   same namespace, `thread` and `session`, join the results with the hit's score times
   `neighbor_weight` (or keep their own score if higher). Questions are often answered by
   the turn right after the one that matches.
5. **MMR de-duplication**: results are picked greedily by
   `mmr_lambda * score - (1 - mmr_lambda) * max_similarity_to_picked`; a candidate whose
   similarity to a picked one reaches `duplicate_threshold` is dropped. Similarity is the
   cosine of the vectors when there are any, else the Jaccard overlap of the term sets.

Then metadata filters (`{"kind": "turn", "turn": {"$gte": 3}}`; `$eq $ne $gt $gte $lt $lte
$in $nin`; a memory lacking the field never matches, and never crashes), `exclude_ids`
(keys or message ids already in the window), `min_score` and `k` apply.

**Indexes** live in memory, one per namespace prefix searched, loaded from the store on
first use. Document vectors are kept by the store when it can (`ChromaStore`: an
embedding table per embedder, see `VectorTable`): `add` writes them after the memories,
and a new process reads them instead of embedding every memory again; memories the
table lacks (written without this embedder, or changed) are embedded on load and
written back. An embedder failure raises `EmbeddingError` before anything is written.

`add` writes through the store in one batch and updates the indexes at once: new
memories are scored by brute force until the BM25 matrix is rebuilt, in a background
thread, once the unindexed tail outgrows `rebuild_min` and `rebuild_ratio` of the index.
Writes that bypass the retriever (another process, `store.put`) are picked up by
`refresh()`.

**Isolation** is the namespace: search `("memories", user_id)` and only that user's memories
are candidates; nothing under another prefix is ever indexed or returned.

    >>> from langgraph.store.memory import InMemoryStore
    >>> r = HybridRetriever(InMemoryStore())
    >>> _ = r.add(("memories", "u1"), [{"text": "The deploy key lives in vault"},
    ...                                 {"text": "Lunch was pizza"}])
    >>> [h.text for h in r.search(("memories", "u1"), "where is the deploy key", k=1)]
    ['The deploy key lives in vault']
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS
from langgraph.store.base import BaseStore, PutOp

from llmctx.runtime.embeddings import Embedder
from llmctx.runtime.errors import ConfigError, EmbeddingError

__all__ = ["DenseMode", "Hit", "HybridRetriever", "VectorTable", "tokenize"]

logger = logging.getLogger(__name__)

DenseMode = Literal["auto", "own", "store", "off"]
"""Where dense scores come from: `own` vectors kept by the retriever (needs an embedder),
the `store`'s vector search (needs a store created with an `index` config), `off`, or
`auto` (own with an embedder, else store when it has an index, else off)."""

Namespace = tuple[str, ...]


class VectorTable(Protocol):
    """Where a store keeps the vectors a retriever made (`ChromaStore.embedding_table`).

    A store that has `embedding_table(name, dims, probe) -> VectorTable` keeps the
    retriever's document vectors, so a new process reads them instead of embedding
    every memory again.
    """

    def get(self, items: Sequence[tuple[Namespace, str, str]]) -> Sequence[Any]:
        """The kept vector of each `(namespace, key, text)` (a sequence of floats), None
        where none is kept for that text."""
        ...

    def put(
        self, items: Sequence[tuple[Namespace, str, str]], vectors: Sequence[Sequence[float]]
    ) -> None:
        """Keep the vector of each `(namespace, key, text)`."""
        ...


_TOKEN_RE = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset(STOPWORDS_EN_PLUS)
_FILTER_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
_SYNC_PAGE = 1000
_MATVEC_ROWS = 512


_local = threading.local()


def _stem_words(words: list[str]) -> list[str]:
    """Snowball (PyStemmer) stems; one stemmer per thread, as PyStemmer's are not shared."""
    stem = getattr(_local, "stem", None)
    if stem is None:
        try:
            import Stemmer  # PyStemmer: Snowball in C, with its own word cache
        except ImportError:  # a declared dependency; degrade to unstemmed terms if absent
            stem = list
        else:
            stem = Stemmer.Stemmer("english").stemWords
        _local.stem = stem
    return stem(words)


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens of `text`, English stopwords removed, Snowball-stemmed.

    >>> tokenize("The cats were painting sunrises")
    ['cat', 'paint', 'sunris']
    """
    words = [w for w in _TOKEN_RE.findall(text.lower()) if w not in _STOPWORDS]
    return _stem_words(words) if words else []


@dataclass(frozen=True)
class Hit:
    """One retrieved memory.

    `score` is in (0, 1] (see the module docstring); `lexical_rank` and `dense_rank` are
    1-based ranks in each list (None when the memory was not among that list's
    candidates); `via` is `match` for a direct hit or `neighbor` for an expanded turn.
    """

    namespace: Namespace
    key: str
    text: str
    score: float
    lexical_rank: int | None
    dense_rank: int | None
    value: dict[str, Any]
    via: Literal["match", "neighbor"] = "match"

    @property
    def message_id(self) -> str | None:
        """The source message id of the memory, if it has one."""
        mid = self.value.get("message_id")
        return str(mid) if mid is not None else None


@dataclass(slots=True)
class _Doc:
    namespace: Namespace
    key: str
    value: dict[str, Any]
    text: str
    terms: Counter[str]
    ts: float
    importance: float
    group: tuple[Any, ...] | None
    turn: int | None
    alive: bool = True


@dataclass
class _Candidate:
    idx: int
    rel: float = 0.0
    lexical_rank: int | None = None
    dense_rank: int | None = None
    score: float = 0.0
    via: Literal["match", "neighbor"] = "match"


@dataclass
class _Index:
    """Everything known about the memories under one namespace prefix.

    Doc slots are append-only: an updated memory kills its old slot and takes a new one,
    so positions in the BM25 matrix and the vector matrix never move. `bm25` covers slots
    `[0, n_main)`; later slots (the tail) are scored from `tail_postings` by brute force.
    """

    prefix: Namespace
    docs: list[_Doc] = field(default_factory=list)
    where: dict[tuple[Namespace, str], int] = field(default_factory=dict)
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    df: Counter[str] = field(default_factory=Counter)
    total_len: int = 0
    n_alive: int = 0
    bm25: bm25s.BM25 | None = None
    n_main: int = 0
    tail_postings: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    vectors: np.ndarray | None = None
    turns: dict[tuple[Any, ...], dict[int, int]] = field(default_factory=dict)
    newest_ts: float = -math.inf
    lock: threading.RLock = field(default_factory=threading.RLock)
    rebuild_thread: threading.Thread | None = None
    adjacency: tuple[np.ndarray, np.ndarray] | None = None  # (prev, next) slot, -1 if none


class HybridRetriever:
    """Hybrid (BM25 + dense) retrieval of memories stored in any LangGraph `BaseStore`.

    Args:
        store: where memories live (InMemoryStore, ChromaStore, PostgresStore, ...).
        embedder: anything `Embedder.wrap` takes; None for lexical only (or store dense).
        dense: where dense scores come from (see `DenseMode`).
        rrf_k: the reciprocal-rank fusion constant. Smaller than the usual 60 so that
            ranks stay apart after fusion, and the boosts and neighbor weights below
            act on a meaningful scale.
        lexical_weight, dense_weight: the weight of each ranked list in the fusion.
        candidates: how many memories each list contributes to the fusion.
        focus_weight: the weight of `focus` terms relative to the query's own terms.
        context_weight: each turn's lexical and dense scores gain this fraction of its
            adjacent turns' scores before ranking (a turn is read in its context).
        recency_weight, half_life_s: recency boost and its half-life (seconds).
        importance_weight: importance boost.
        neighbor_weight: score of an expanded neighbor relative to its hit.
        mmr_lambda: relevance versus novelty in MMR (1 = relevance only).
        duplicate_threshold: similarity at which a candidate is a duplicate and dropped.
        k1, b: BM25 term-frequency saturation and length normalization.
        rebuild_min, rebuild_ratio: the BM25 matrix is rebuilt once the unindexed tail
            exceeds both `rebuild_min` memories and `rebuild_ratio` of the indexed ones.
        background: rebuild in a background thread (True) or inline, during `add` (False).

    The defaults were tuned on LoCoMo (evidence recall@10 of conversation turns).
    """

    def __init__(
        self,
        store: BaseStore,
        *,
        embedder: Any = None,
        dense: DenseMode = "auto",
        rrf_k: float = 5.0,
        lexical_weight: float = 1.0,
        dense_weight: float = 0.5,
        candidates: int = 100,
        focus_weight: float = 0.5,
        context_weight: float = 0.35,
        recency_weight: float = 0.05,
        half_life_s: float = 30 * 86_400.0,
        importance_weight: float = 0.2,
        neighbor_weight: float = 0.8,
        mmr_lambda: float = 0.9,
        duplicate_threshold: float = 0.9,
        k1: float = 0.9,
        b: float = 0.4,
        rebuild_min: int = 256,
        rebuild_ratio: float = 0.1,
        background: bool = True,
    ) -> None:
        if dense not in ("auto", "own", "store", "off"):
            raise ConfigError(f"dense={dense!r} is not a dense mode; use auto, own, store or off")
        self.store = store
        self.embedder: Embedder | None = Embedder.wrap(embedder) if embedder is not None else None
        store_has_index = bool(getattr(store, "index_config", None))
        if dense == "own" and self.embedder is None:
            raise ConfigError("dense='own' needs an embedder; pass embedder=... or dense='auto'")
        if dense == "store" and not store_has_index:
            raise ConfigError(
                f"dense='store' needs a store created with an index config; "
                f"{type(store).__name__} has none (pass embedder=... for dense='own')"
            )
        if dense == "auto":
            dense = "own" if self.embedder else ("store" if store_has_index else "off")
        self.dense: DenseMode = dense
        for name, value in (("rrf_k", rrf_k), ("candidates", candidates)):
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if not 0.0 <= mmr_lambda <= 1.0:
            raise ConfigError(f"mmr_lambda must be within [0, 1], got {mmr_lambda}")
        self.rrf_k = rrf_k
        self.lexical_weight = lexical_weight
        self.dense_weight = dense_weight
        self.candidates = candidates
        self.focus_weight = focus_weight
        self.recency_weight = recency_weight
        self.half_life_s = half_life_s
        self.importance_weight = importance_weight
        self.neighbor_weight = neighbor_weight
        self.context_weight = context_weight
        self.mmr_lambda = mmr_lambda
        self.duplicate_threshold = duplicate_threshold
        self.rebuild_min = rebuild_min
        self.rebuild_ratio = rebuild_ratio
        self.background = background
        self.k1 = k1
        self.b = b
        self._indexes: dict[Namespace, _Index] = {}
        self._vectors: dict[str, np.ndarray] = {}  # text -> unit vector (dense="own")
        self._table: VectorTable | None = None  # the store's kept vectors (dense="own")
        self._table_opened = False
        self._lock = threading.Lock()

    # -- writing ---------------------------------------------------------------------

    def add(
        self,
        namespace: Namespace,
        values: Iterable[Mapping[str, Any]],
        *,
        keys: Sequence[str] | None = None,
    ) -> list[str]:
        """Write memories in one store batch and index them; returns their keys.

        Each value needs a `text` string. A key defaults to the value's `message_id`, else
        a hash of its text and provenance, so re-adding the same memory (a replay, a
        retried write) overwrites it instead of duplicating it.
        """
        namespace = tuple(namespace)
        batch = [dict(v) for v in values]
        if keys is not None and len(keys) != len(batch):
            raise ValueError(f"got {len(keys)} keys for {len(batch)} values")
        for i, value in enumerate(batch):
            if not isinstance(value.get("text"), str):
                raise ValueError(f"memory {i} has no 'text' string: {sorted(value)}")
        names = [str(k) for k in keys] if keys is not None else [_default_key(v) for v in batch]
        if not batch:
            return []
        unsaved: list[tuple[tuple[Namespace, str, str], np.ndarray]] = []
        if self.dense == "own":
            # On the write path, before the put: an embedder failure writes nothing.
            items = [(namespace, k, v["text"]) for k, v in zip(names, batch, strict=True)]
            vectors, kept = self._vectors_for(items)
            unsaved = [(it, vectors[n]) for n, it in enumerate(items) if not kept[n]]
        self.store.batch([PutOp(namespace, k, v) for k, v in zip(names, batch, strict=True)])
        self._keep_vectors(unsaved)  # after the put: a kept vector always has its memory
        now = time.time()
        for index in self._covering(namespace):
            self._ingest(index, [(namespace, k, v, now) for k, v in zip(names, batch, strict=True)])
            self._maybe_rebuild(index)
        return names

    async def aadd(
        self,
        namespace: Namespace,
        values: Iterable[Mapping[str, Any]],
        *,
        keys: Sequence[str] | None = None,
    ) -> list[str]:
        """`add` off the event loop (embedding and indexing are CPU work)."""
        return await asyncio.to_thread(self.add, namespace, list(values), keys=keys)

    def delete(self, namespace: Namespace, key: str) -> None:
        """Delete a memory from the store and from every index."""
        namespace = tuple(namespace)
        self.store.delete(namespace, key)
        for index in self._covering(namespace):
            with index.lock:
                self._kill(index, (namespace, key))

    def refresh(self, namespace_prefix: Namespace | None = None) -> None:
        """Re-read the store under one prefix (or every indexed prefix) and rebuild BM25.

        Picks up writes that bypassed the retriever, drops deleted memories, and folds
        the brute-force tail into the BM25 matrix. Blocks until done.
        """
        prefixes = [tuple(namespace_prefix)] if namespace_prefix else list(self._indexes)
        for prefix in prefixes:
            index = self._index(prefix)
            self._wait_rebuild(index)
            self._sync(index)
            self._rebuild(index)

    def forget(self, namespace_prefix: Namespace | None = None) -> None:
        """Drop cached indexes (all of them: and cached vectors); the store is untouched."""
        with self._lock:
            if namespace_prefix is None:
                self._indexes.clear()
                self._vectors.clear()
            else:
                self._indexes.pop(tuple(namespace_prefix), None)

    def stats(self, namespace_prefix: Namespace) -> dict[str, Any]:
        """Size of a prefix's index: memories, BM25-indexed ones, the tail, the dense mode."""
        index = self._index(tuple(namespace_prefix))
        with index.lock:
            return {
                "memories": index.n_alive,
                "indexed": index.n_main,
                "tail": len(index.docs) - index.n_main,
                "vocabulary": len(index.df),
                "dense": self.dense,
                "embedder": self.embedder.name if self.embedder else None,
            }

    # -- searching -------------------------------------------------------------------

    def search(
        self,
        namespace_prefix: Namespace,
        query: str,
        *,
        k: int = 10,
        focus: str | None = None,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Iterable[str] = (),
        neighbors: int = 1,
        min_score: float = 0.0,
    ) -> list[Hit]:
        """The `k` best memories under `namespace_prefix` for `query` (and `focus`).

        See the module docstring for the ranking. `exclude_ids` holds keys or message ids
        to leave out (what the window already shows); `neighbors=0` turns expansion off.
        """
        if k <= 0:
            return []
        _check_filter(filter)
        prefix = tuple(namespace_prefix)
        index = self._index(prefix)
        excluded = frozenset(str(x) for x in exclude_ids)
        pool = max(self.candidates, 3 * k)
        # Embedding and store calls may be slow (a model, a server): outside the lock.
        query_vec: np.ndarray | None = None
        store_items: list[Any] = []
        if query.strip() and self.dense == "own" and self.embedder is not None:
            query_vec = _unit(self.embedder.embed_query(_query_text(query, focus)))
        elif query.strip() and self.dense == "store":
            store_items = self._store_search(index, _query_text(query, focus), pool, filter)
        with index.lock:
            if index.n_alive == 0:
                return []

            def accept(i: int) -> bool:
                doc = index.docs[i]
                return (
                    doc.alive
                    and (not filter or _matches(doc.value, filter))
                    and not (excluded and _is_excluded(doc, excluded))
                )

            weights = _query_terms(query, focus, self.focus_weight)
            lexical = self._lexical_ranking(index, weights, pool, accept)
            dense: list[int] = []
            if query_vec is not None and index.vectors is not None:
                sims = np.maximum(_matvec(index.vectors[: len(index.docs)], query_vec), 0.0)
                dense = _top(self._smooth(index, sims) + 1e-6, pool, accept)
            elif store_items:
                found = (index.where.get((tuple(it.namespace), it.key)) for it in store_items)
                dense = [i for i in found if i is not None and accept(i)]
            fused = self._fuse(index, lexical, dense)
            if neighbors > 0 and self.neighbor_weight > 0:
                self._expand(index, fused, neighbors, seeds=max(k, 10), accept=accept)
            ranked = sorted(fused.values(), key=lambda c: (-c.score, c.idx))
            picked = self._mmr(index, ranked, k, min_score)
            return [self._hit(index, c) for c in picked]

    async def asearch(
        self,
        namespace_prefix: Namespace,
        query: str,
        **options: Any,
    ) -> list[Hit]:
        """`search` off the event loop."""
        return await asyncio.to_thread(self.search, namespace_prefix, query, **options)

    # -- ranking steps ---------------------------------------------------------------

    def _lexical_ranking(
        self,
        index: _Index,
        weights: dict[str, float],
        pool: int,
        accept: Callable[[int], bool],
    ) -> list[int]:
        if not weights:
            return []
        scores = np.zeros(len(index.docs), dtype=np.float32)
        if index.bm25 is not None and index.n_main:
            by_weight: dict[float, list[int]] = {}
            vocab = index.bm25.vocab_dict
            for term, w in weights.items():
                tid = vocab.get(term)
                if tid is not None:
                    by_weight.setdefault(w, []).append(tid)
            for w, ids in by_weight.items():
                scores[: index.n_main] += w * index.bm25.get_scores_from_ids(ids)
        if len(index.docs) > index.n_main:
            self._score_tail(index, weights, scores)
        return _top(self._smooth(index, scores), pool, accept)

    def _smooth(self, index: _Index, scores: np.ndarray) -> np.ndarray:
        """Add `context_weight` times the scores of each turn's adjacent turns."""
        if self.context_weight <= 0 or not index.turns:
            return scores
        prev, nxt = _adjacency(index)
        padded = np.append(scores, np.float32(0.0))  # slot -1 reads the 0 at the end
        return scores + self.context_weight * (padded[prev] + padded[nxt])

    def _score_tail(self, index: _Index, weights: dict[str, float], scores: np.ndarray) -> None:
        """BM25 (the same Lucene formula bm25s uses) for the slots the matrix lacks."""
        n = max(index.n_alive, 1)
        avg_len = max(index.total_len / n, 1e-9)
        for term, w in weights.items():
            postings = index.tail_postings.get(term)
            if not postings:
                continue
            df = index.df.get(term, 0)
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            for i, tf in postings:
                dl = index.docs[i].terms.total()
                norm = self.k1 * ((1.0 - self.b) + self.b * dl / avg_len)
                scores[i] += w * idf * tf / (tf + norm)

    def _store_search(
        self, index: _Index, query: str, pool: int, filter: Mapping[str, Any] | None
    ) -> list[Any]:
        """The store's own vector ranking; items it knows and we do not are indexed now."""
        # Only equality goes to the store: every store reads it the same way, while range
        # operators crash some stores on items lacking the field (langgraph #7880).
        # The full filter is applied afterwards, as for the other lists.
        equal = {
            name: cond
            for name, cond in (filter or {}).items()
            if not (isinstance(cond, Mapping) and any(str(op).startswith("$") for op in cond))
        }
        items = self.store.search(index.prefix, query=query, filter=equal or None, limit=pool)
        unseen = [it for it in items if (tuple(it.namespace), it.key) not in index.where]
        if unseen:  # written behind our back
            self._ingest(index, [(it.namespace, it.key, it.value, _item_ts(it)) for it in unseen])
        return items

    def _fuse(self, index: _Index, lexical: list[int], dense: list[int]) -> dict[int, _Candidate]:
        fused: dict[int, _Candidate] = {}
        lists = [
            (lexical, self.lexical_weight, "lexical_rank"),
            (dense, self.dense_weight, "dense_rank"),
        ]
        used = [(ranking, w, attr) for ranking, w, attr in lists if ranking and w > 0]
        best = sum(w / (self.rrf_k + 1.0) for _, w, _ in used) or 1.0
        for ranking, w, attr in used:
            for rank, i in enumerate(ranking, start=1):
                cand = fused.get(i)
                if cand is None:
                    cand = fused[i] = _Candidate(i)
                setattr(cand, attr, rank)
                cand.rel += w / (self.rrf_k + rank) / best
        for cand in fused.values():
            cand.score = self._boost(index, cand.idx, cand.rel)
        return fused

    def _boost(self, index: _Index, i: int, rel: float) -> float:
        doc = index.docs[i]
        w_rec, w_imp = self.recency_weight, self.importance_weight
        if w_rec == 0 and w_imp == 0:
            return rel
        recency = 0.0
        if w_rec and self.half_life_s > 0:
            age = max(index.newest_ts - doc.ts, 0.0)
            recency = 0.5 ** (age / self.half_life_s)
        return rel * (1.0 + w_rec * recency + w_imp * doc.importance) / (1.0 + w_rec + w_imp)

    def _expand(
        self,
        index: _Index,
        fused: dict[int, _Candidate],
        neighbors: int,
        seeds: int,
        accept: Callable[[int], bool],
    ) -> None:
        top = sorted(fused.values(), key=lambda c: (-c.score, c.idx))[:seeds]
        for seed in top:
            doc = index.docs[seed.idx]
            if doc.group is None or doc.turn is None:
                continue
            turns = index.turns.get(doc.group, {})
            for step in range(1, neighbors + 1):
                score = seed.score * self.neighbor_weight**step
                for turn in (doc.turn - step, doc.turn + step):
                    j = turns.get(turn)
                    if j is None or not accept(j):
                        continue
                    cand = fused.get(j)
                    if cand is None:
                        fused[j] = _Candidate(j, score=score, via="neighbor")
                    elif cand.score < score:
                        cand.score = score

    def _mmr(
        self, index: _Index, ranked: list[_Candidate], k: int, min_score: float
    ) -> list[_Candidate]:
        pool = [c for c in ranked[: max(3 * k, k + 10)] if c.score >= min_score]
        if self.mmr_lambda >= 1.0 and self.duplicate_threshold > 1.0:
            return pool[:k]  # nothing to diversify
        if not pool:
            return []
        top = pool[0].score or 1.0
        relevance = [self.mmr_lambda * c.score / top for c in pool]
        similarity = self._similarity_to(index, pool)
        picked: list[_Candidate] = []
        penalty = [0.0] * len(pool)  # (1 - lambda) * max similarity to a picked one
        remaining = list(range(len(pool)))
        while remaining and len(picked) < k:
            best = max(remaining, key=lambda j: (relevance[j] - penalty[j], -j))
            picked.append(pool[best])
            remaining.remove(best)
            if not remaining:
                break
            sims = similarity(best, remaining)
            keep = []
            for j, sim in zip(remaining, sims, strict=True):
                if sim >= self.duplicate_threshold:
                    continue  # a near-duplicate of something already picked
                penalty[j] = max(penalty[j], (1.0 - self.mmr_lambda) * sim)
                keep.append(j)
            remaining = keep
        return picked

    def _similarity_to(
        self, index: _Index, pool: list[_Candidate]
    ) -> Callable[[int, list[int]], list[float]]:
        """`f(a, others)`: similarity of pool item `a` to each of `others` (pool positions).

        Vector cosine when the retriever keeps vectors, else the Jaccard overlap of the
        term sets. Only the pairs MMR looks at are computed.
        """
        slots = [c.idx for c in pool]
        if index.vectors is not None:
            rows = index.vectors[slots]

            def cosine(a: int, others: list[int]) -> list[float]:
                return (rows[others] @ rows[a]).tolist()

            return cosine
        docs = [index.docs[i] for i in slots]

        def jaccard(a: int, others: list[int]) -> list[float]:
            return [_jaccard(docs[a], docs[b]) for b in others]

        return jaccard

    def _hit(self, index: _Index, cand: _Candidate) -> Hit:
        doc = index.docs[cand.idx]
        return Hit(
            namespace=doc.namespace,
            key=doc.key,
            text=doc.text,
            score=float(cand.score),
            lexical_rank=cand.lexical_rank,
            dense_rank=cand.dense_rank,
            value=dict(doc.value),
            via=cand.via,
        )

    # -- indexes ---------------------------------------------------------------------

    def _index(self, prefix: Namespace) -> _Index:
        with self._lock:
            index = self._indexes.get(prefix)
            if index is not None:
                return index
            index = self._indexes[prefix] = _Index(prefix)
            index.lock.acquire()  # searches wait for the first load, not half of it
        try:
            self._sync(index)
            self._rebuild(index)
        except BaseException:
            with self._lock:
                self._indexes.pop(prefix, None)
            raise
        finally:
            index.lock.release()
        return index

    def _covering(self, namespace: Namespace) -> list[_Index]:
        """The loaded indexes whose prefix covers `namespace`."""
        with self._lock:
            return [ix for p, ix in self._indexes.items() if namespace[: len(p)] == p]

    def _sync(self, index: _Index) -> None:
        """Make the index match the store under its prefix (new, changed, deleted items)."""
        seen: set[tuple[Namespace, str]] = set()
        fresh: list[tuple[Namespace, str, dict[str, Any], float]] = []
        offset = 0
        while True:
            page = self.store.search(index.prefix, limit=_SYNC_PAGE, offset=offset)
            for it in page:
                ident = (tuple(it.namespace), it.key)
                seen.add(ident)
                fresh.append((ident[0], it.key, it.value, _item_ts(it)))
            if len(page) < _SYNC_PAGE:
                break
            offset += len(page)
        with index.lock:
            for ident in [w for w in index.where if w not in seen]:
                self._kill(index, ident)
            self._ingest(index, fresh, persist=True)

    def _ingest(
        self,
        index: _Index,
        items: Sequence[tuple[Namespace, str, Mapping[str, Any], float]],
        *,
        persist: bool = False,
    ) -> None:
        """Add or replace memories in the index (unchanged ones are skipped).

        With `persist`, the vectors embedded here (memories the store's vector table
        lacked) are written to that table, so the next process reads them.
        """
        new: list[_Doc] = []
        for namespace, key, value, written in items:
            text = value.get("text") if isinstance(value, Mapping) else None
            if not isinstance(text, str):
                continue
            old = index.where.get((tuple(namespace), key))
            if old is not None and index.docs[old].value == value:
                continue
            new.append(_make_doc(tuple(namespace), key, dict(value), text, written))
        if not new:
            return
        # Embedding is the slow part of a write: searches go on meanwhile.
        vectors = None
        if self.dense == "own":
            items = [(d.namespace, d.key, d.text) for d in new]
            embedded: list[int] = []
            vectors, _ = self._vectors_for(items, embedded_out=embedded)
            if persist:
                self._keep_vectors([(items[n], vectors[n]) for n in embedded])
        with index.lock:
            start = len(index.docs)
            _grow(index, start + len(new), vectors.shape[1] if vectors is not None else None)
            for offset, doc in enumerate(new):
                i = start + offset
                self._kill(index, (doc.namespace, doc.key))
                index.docs.append(doc)
                index.where[(doc.namespace, doc.key)] = i
                index.alive[i] = True
                index.n_alive += 1
                index.df.update(doc.terms.keys())
                index.total_len += doc.terms.total()
                for term, tf in doc.terms.items():
                    index.tail_postings.setdefault(term, []).append((i, tf))
                if doc.group is not None and doc.turn is not None:
                    index.turns.setdefault(doc.group, {})[doc.turn] = i
                    index.adjacency = None
                index.newest_ts = max(index.newest_ts, doc.ts)
            if vectors is not None and index.vectors is not None:
                index.vectors[start : start + len(new)] = vectors

    def _vector_table(self) -> VectorTable | None:
        """The store's table of this embedder's vectors, if the store keeps vectors.

        Opening it asks the embedder for its probe vector once (its identity: a table
        never serves vectors of another model).
        """
        if self.dense != "own" or self.embedder is None:
            return None
        with self._lock:
            if self._table_opened:
                return self._table
        opener = getattr(self.store, "embedding_table", None)
        table = None
        if callable(opener):
            probe = self.embedder.probe()
            table = opener(self.embedder.name, len(probe), probe)
        with self._lock:
            if not self._table_opened:
                self._table, self._table_opened = table, True
            return self._table

    def _keep_vectors(self, pairs: list[tuple[tuple[Namespace, str, str], np.ndarray]]) -> None:
        """Write `((namespace, key, text), vector)` pairs to the store's vector table."""
        table = self._vector_table() if pairs else None
        if table is not None:
            table.put([item for item, _ in pairs], [vector for _, vector in pairs])

    def _vectors_for(
        self,
        items: Sequence[tuple[Namespace, str, str]],
        *,
        embedded_out: list[int] | None = None,
    ) -> tuple[np.ndarray, list[bool]]:
        """Unit vectors of the `(namespace, key, text)` items, and which of them the
        store's table already keeps (for that text).

        A vector comes from this retriever's cache (each distinct text once per
        retriever), else from the store's table, else from the embedder. The positions
        embedded now are appended to `embedded_out`. The cache lets `add` embed on the
        write path before any index covers the namespace, and lets indexes of
        overlapping prefixes share vectors.
        """
        assert self.embedder is not None
        with self._lock:
            missing = [n for n, it in enumerate(items) if it[2] not in self._vectors]
        kept = [False] * len(items)
        if missing:
            table = self._vector_table()
            if table is not None:
                found = table.get([items[n] for n in missing])
                loaded: dict[str, np.ndarray] = {}
                for n, vector in zip(missing, found, strict=True):
                    if vector is not None and len(vector) == self.embedder.dims:
                        kept[n] = True
                        loaded[items[n][2]] = _unit(vector)
                with self._lock:
                    self._vectors.update(loaded)
                missing = [n for n in missing if items[n][2] not in loaded]
        if missing:
            texts = list(dict.fromkeys(items[n][2] for n in missing))
            matrix = np.asarray(self.embedder.embed_documents(texts), dtype=np.float32)
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix /= np.where(norms == 0, 1.0, norms)
            with self._lock:
                self._vectors.update(zip(texts, matrix, strict=True))
            if embedded_out is not None:
                embedded_out.extend(missing)
        with self._lock:
            return np.stack([self._vectors[it[2]] for it in items]), kept

    def _kill(self, index: _Index, ident: tuple[Namespace, str]) -> None:
        i = index.where.pop(ident, None)
        if i is None:
            return
        doc = index.docs[i]
        doc.alive = False
        index.alive[i] = False
        index.n_alive -= 1
        for term in doc.terms:
            left = index.df[term] - 1
            if left > 0:
                index.df[term] = left
            else:
                del index.df[term]
        index.total_len -= doc.terms.total()
        if doc.group is not None and doc.turn is not None:
            slots = index.turns.get(doc.group, {})
            if slots.get(doc.turn) == i:
                del slots[doc.turn]
                index.adjacency = None

    def _maybe_rebuild(self, index: _Index) -> None:
        tail = len(index.docs) - index.n_main
        if tail <= max(self.rebuild_min, self.rebuild_ratio * index.n_main):
            return
        if not self.background:
            self._rebuild(index)
            return
        with index.lock:
            if index.rebuild_thread is not None and index.rebuild_thread.is_alive():
                return
            thread = threading.Thread(
                target=self._rebuild_logged, args=(index,), name="llmctx-bm25", daemon=True
            )
            index.rebuild_thread = thread
        thread.start()

    def _rebuild_logged(self, index: _Index) -> None:
        try:
            self._rebuild(index)
        except Exception:  # a background thread has nobody to raise to; search still works
            logger.exception(
                "BM25 rebuild of %s failed; new memories stay brute-forced", index.prefix
            )

    def _wait_rebuild(self, index: _Index) -> None:
        thread = index.rebuild_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _rebuild(self, index: _Index) -> None:
        """Fold every current slot into a fresh BM25 matrix (dead slots as empty docs)."""
        with index.lock:
            m = len(index.docs)
            corpus = [list(d.terms.elements()) if d.alive else [] for d in index.docs[:m]]
        if m == 0 or not any(corpus):
            return
        model = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        model.index(corpus, show_progress=False)
        with index.lock:
            index.bm25 = model
            index.n_main = m
            index.tail_postings = {}
            for i in range(m, len(index.docs)):
                doc = index.docs[i]
                if doc.alive:
                    for term, tf in doc.terms.items():
                        index.tail_postings.setdefault(term, []).append((i, tf))


# -- helpers ---------------------------------------------------------------------------


def _make_doc(
    namespace: Namespace, key: str, value: dict[str, Any], text: str, written: float
) -> _Doc:
    ts = _epoch(value.get("ts"))
    importance = value.get("importance")
    try:
        imp = min(max(float(importance), 0.0), 1.0) if importance is not None else 0.5
    except (TypeError, ValueError):
        imp = 0.5
    turn = value.get("turn")
    turn = turn if isinstance(turn, int) and not isinstance(turn, bool) else None
    group = (namespace, value.get("thread"), value.get("session")) if turn is not None else None
    return _Doc(
        namespace=namespace,
        key=key,
        value=value,
        text=text,
        terms=Counter(tokenize(text)),
        ts=ts if ts is not None else written,
        importance=imp,
        group=group,
        turn=turn,
    )


def _grow(index: _Index, size: int, dims: int | None) -> None:
    """Make room for `size` slots in the alive mask and the vector matrix (doubling)."""
    if len(index.alive) < size:
        alive = np.zeros(max(size, 2 * len(index.alive), 64), dtype=bool)
        alive[: len(index.alive)] = index.alive
        index.alive = alive
    if dims is None:
        return
    if index.vectors is None:
        index.vectors = np.zeros((max(size, 64), dims), dtype=np.float32)
    elif index.vectors.shape[1] != dims:
        raise EmbeddingError(
            f"the embedder returned {dims}-dimensional vectors, but the index of "
            f"{index.prefix} holds {index.vectors.shape[1]}-dimensional ones; use one embedder "
            "per retriever"
        )
    elif len(index.vectors) < size:
        vectors = np.zeros((max(size, 2 * len(index.vectors)), dims), dtype=np.float32)
        vectors[: len(index.vectors)] = index.vectors
        index.vectors = vectors


def _matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """`matrix @ vector` in row blocks.

    Blocks stay below OpenBLAS's threading threshold: on a busy machine its threads
    turn a 1 ms product into 20-40 ms.
    """
    out = np.empty(len(matrix), dtype=np.float32)
    for start in range(0, len(matrix), _MATVEC_ROWS):
        stop = start + _MATVEC_ROWS
        np.dot(matrix[start:stop], vector, out=out[start:stop])
    return out


def _adjacency(index: _Index) -> tuple[np.ndarray, np.ndarray]:
    """Per slot, the slot of the previous and of the next turn of its group (-1: none)."""
    n = len(index.docs)
    if index.adjacency is not None and len(index.adjacency[0]) == n:
        return index.adjacency
    prev = np.full(n, -1, dtype=np.int64)
    nxt = np.full(n, -1, dtype=np.int64)
    for slots in index.turns.values():
        for turn, i in slots.items():
            before = slots.get(turn - 1)
            after = slots.get(turn + 1)
            if before is not None:
                prev[i] = before
            if after is not None:
                nxt[i] = after
    index.adjacency = (prev, nxt)
    return index.adjacency


def _top(scores: np.ndarray, pool: int, accept: Callable[[int], bool]) -> list[int]:
    """Indices of up to `pool` accepted docs with a positive score, best first."""
    positive = np.flatnonzero(scores > 0)
    if positive.size == 0:
        return []
    want = min(positive.size, 2 * pool)
    while True:
        if want < positive.size:
            part = np.argpartition(-scores[positive], want - 1)[:want]
            chosen = positive[part]
        else:
            chosen = positive
        order = chosen[np.argsort(-scores[chosen], kind="stable")]
        ranked = [int(i) for i in order if accept(int(i))][:pool]
        if len(ranked) >= pool or want >= positive.size:
            return ranked
        want = min(positive.size, want * 4)  # a strict filter: look further down


def _query_terms(query: str, focus: str | None, focus_weight: float) -> dict[str, float]:
    weights: dict[str, float] = {}
    if focus and focus_weight > 0:
        for term in tokenize(focus):
            weights[term] = focus_weight
    for term in tokenize(query):
        weights[term] = 1.0
    return weights


def _query_text(query: str, focus: str | None) -> str:
    return f"{query}\n{focus}" if focus else query


def _unit(vector: Sequence[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm else v


def _default_key(value: Mapping[str, Any]) -> str:
    mid = value.get("message_id")
    if mid is not None:
        return str(mid)
    basis = "\x1f".join(
        str(value.get(f, "")) for f in ("kind", "thread", "session", "turn", "text")
    )
    return hashlib.sha1(basis.encode("utf-8")).hexdigest()[:20]


def _epoch(ts: Any) -> float | None:
    if ts is None or isinstance(ts, bool):
        return None
    if isinstance(ts, int | float):
        return float(ts)
    if isinstance(ts, datetime):
        moment = ts
    elif isinstance(ts, str):
        try:
            moment = datetime.fromisoformat(ts.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _item_ts(item: Any) -> float:
    moment = getattr(item, "updated_at", None) or getattr(item, "created_at", None)
    return _epoch(moment) or time.time()


def _jaccard(a: _Doc, b: _Doc) -> float:
    if not a.terms or not b.terms:
        return 1.0 if a.text.strip() == b.text.strip() else 0.0
    inter = len(a.terms.keys() & b.terms.keys())
    return inter / (len(a.terms) + len(b.terms) - inter)


def _is_excluded(doc: _Doc, excluded: frozenset[str]) -> bool:
    if doc.key in excluded:
        return True
    mid = doc.value.get("message_id")
    return mid is not None and str(mid) in excluded


def _check_filter(filter: Mapping[str, Any] | None) -> None:
    if not filter:
        return
    for name, cond in filter.items():
        if isinstance(cond, Mapping) and any(str(op).startswith("$") for op in cond):
            unknown = [op for op in cond if op not in _FILTER_OPS]
            if unknown:
                raise ConfigError(
                    f"filter on {name!r} uses unknown operator(s) {unknown}; "
                    f"use one of {', '.join(_FILTER_OPS)}"
                )


def _matches(value: Mapping[str, Any], filter: Mapping[str, Any]) -> bool:
    """Whether a memory passes a filter; a missing field never matches (and never raises)."""
    for name, cond in filter.items():
        if name not in value:
            return False
        actual = value[name]
        if isinstance(cond, Mapping) and any(str(op).startswith("$") for op in cond):
            if not all(_apply(actual, op, arg) for op, arg in cond.items()):
                return False
        elif actual != cond:
            return False
    return True


def _apply(actual: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return actual == arg
    if op == "$ne":
        return actual != arg
    if op == "$in":
        return actual in arg
    if op == "$nin":
        return actual not in arg
    try:
        if op == "$gt":
            return actual > arg
        if op == "$gte":
            return actual >= arg
        if op == "$lt":
            return actual < arg
        if op == "$lte":
            return actual <= arg
    except TypeError:  # e.g. a string compared with a number: not a match
        return False
    return False
