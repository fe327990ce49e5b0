"""Benchmark: long-term memory search latency and add throughput at 1K, 10K and 100K memories.

The product path: memories written through `HybridRetriever.add` into a `ChromaStore`
(embedded, in a temp dir), searched with `HybridRetriever.search` (k=10, no focus).
Memories are synthetic but conversational (seeded): multi-session chats between pairs
of people, turns of 6 to 50 words, some stating facts (who went where, with whom, when,
for what), written with the fields the `remember` node writes (`text` = "Speaker: ...",
`kind`, `message_id`, `speaker`, `turn`, `session`, `thread`, `ts`, `when`). Queries
are questions about planted facts, each asked once (no query-vector cache hits).

Per size N and mode (`lexical`: no embedder; `hybrid`: the local all-MiniLM-L6-v2):

- **add throughput**: N memories added in batches of `--batch`, in memories/s, until
  every `add` has returned (the BM25 matrix rebuild runs in the background), then
  `rebuild_catch_up_s`: a blocking `refresh()` (waits for that rebuild, re-reads the
  store, rebuilds; an upper bound on the catch-up; searches are timed after it), and
  the latency of a remember-sized write (one turn: 2 memories) into a store of N (for
  hybrid it includes embedding the 2 texts, except with stand-in vectors);
- **search latency** p50/p95 over the queries; for hybrid also with the query vector
  already cached (the retrieval alone) and the query embedding alone;
- **cold start**: as a new process would: the store closed, a new `ChromaStore` opened
  on the same folder and a new retriever with a new embedder (the same model), then its
  first search (reading the store and building the indexes). For hybrid, the document
  vectors are read from the store's embedding table, where `add` kept them:
  `cold_embedded_documents` counts the memories the new embedder had to embed (0 when
  nothing is embedded again; the probe text that identifies the embedder and the
  query are not counted), and `cold_reembed_projected_s` is what embedding every
  memory again would have cost at the measured rate;
- **peers, same run, same texts**: plain `bm25s` (index + top-10 by `get_scores`) for
  the lexical part, and LangGraph's `InMemoryStore` with an `index` config (brute-force
  cosine) for the dense part, fed the same vectors (its embedding cost excluded).

Real embedding is slow on a small CPU: sizes above `--real-embed-max` (default 10000)
use **stand-in vectors** for hybrid: each memory's vector is the real vector of one
of the first `--real-embed-max` texts plus seeded noise, renormalized (queries are
still embedded by the real model). The JSON says so (`vectors`), and the add
throughput there excludes embedding; the measured embedding throughput is reported
apart, with the projected add throughput including it.

Run: `python -m tests.benchmarks.memory [--sizes 1000 10000 100000] [--queries 200]
[--embedder auto|none|sentence-transformers|hash] [--torch-threads N] [--smoke]`.
Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
from langgraph.store.base import PutOp
from langgraph.store.memory import InMemoryStore

from llmctx.runtime import ChromaStore, HybridRetriever
from llmctx.runtime.embeddings import PROBE_TEXT, Embedder
from tests.benchmarks._locomo_common import (
    VectorCache,
    hashing_embedder,
    local_embedder,
    set_torch_threads,
)

NAMESPACE = ("llmctx", "memories", "bench-user", "general")
K = 10
REMEMBER_WRITES = 30  # remember-sized writes timed per size (5 in a smoke run)
TARGET_P50_MS_AT_10K = 20.0
REFERENCE = {"mem0_search_p50_ms": 148.0, "mem0_graphiti_write_s": [4.0, 36.0]}

# -- synthetic conversations -----------------------------------------------------------


def _items(text: str, sep: str = " ") -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(sep) if item.strip())


_PEOPLE = _items(
    "Ava Ben Chloe Dev Elena Farid Grace Hiro Isla Jonas Kemi Liam Maya Noor Omar Priya "
    "Quinn Rosa Sami Tara Umar Vera Wes Xena Yusuf Zoe Aldo Bea Caleb Dina"
)
_PLACES = _items(
    "Lisbon Kyoto Denver Oslo Nairobi Quito Hanoi Tallinn Porto Seville Austin Busan Cusco "
    "Dublin Edinburgh Florence Galway Havana Istanbul Jaipur Krakow Lima Malmo Naples Oaxaca "
    "Perth Quebec Reykjavik Sapporo Tbilisi Utrecht Valencia Windhoek"
)
_ACTIVITIES = _items(
    "a pottery class|a violin lesson|a half marathon|a community garden day|a book club|a "
    "bread baking workshop|a stargazing night|a kayak trip|a salsa class|a chess tournament|"
    "a charity run|a photography walk|a climbing session|a cooking class|a jazz concert|a "
    "film festival|a yoga retreat|a hackathon|a birdwatching tour|a volunteer shift at the "
    "shelter|a wine tasting|a surfing lesson|a museum tour",
    "|",
)
_COMPANIONS = _items(
    "my sister|my brother|my mom|my dad|my partner|my best friend|my coworkers|my kids|my "
    "neighbor|my cousin|my roommate|an old friend from school|my team",
    "|",
)
_FEELINGS = _items(
    "amazing|exhausting but worth it|a little scary|so relaxing|really inspiring|harder than "
    "I expected|the highlight of my month|surprisingly fun|a bit chaotic",
    "|",
)
_WHEN = _items(
    "last weekend|yesterday|two weeks ago|last month|on Friday|this morning|over the "
    "holidays|last summer|a few days ago|on my birthday",
    "|",
)
_CHAT = tuple(
    _items(paragraph)
    for paragraph in (
        "honestly it has been a long week at work but I am trying to slow down and enjoy the "
        "little things like coffee in the morning and a walk after dinner so tell me more "
        "about how you have been and what you are planning next because I love hearing about "
        "your adventures and we should catch up properly soon maybe over lunch this weekend",
        "the kids started school again and mornings are chaos with packed lunches missing "
        "shoes and homework folders but my daughter joined the robotics club and my son keeps "
        "asking for a puppy so we visited the animal shelter on Sunday just to look around",
        "I finally finished that novel about the lighthouse keeper and the ending made me cry "
        "on the train now I am reading a biography of a jazz pianist and thinking about "
        "starting a small book club with neighbors who like mysteries and historical fiction",
        "we repainted the living room a soft green and built shelves for all the plants the "
        "tomatoes on the balcony are finally turning red and the basil went wild so I made "
        "pesto for the whole street and traded a jar for fresh eggs from the farm down the road",
        "training for the race is going slowly my knee complains after ten kilometers so the "
        "physiotherapist gave me stretches and told me to swim twice a week which I actually "
        "enjoy because the pool is quiet early in the morning before my shift at the clinic",
        "my manager offered me the lead on the new project which means more meetings and a "
        "trip to the regional office next month I am nervous about presenting to the board "
        "but my mentor helped me rehearse and the slides look much cleaner than last quarter",
        "we are saving for a camper van so we can drive along the coast next spring and camp "
        "near the cliffs I already bought a tiny stove and a map of the national parks and my "
        "partner is learning to fix engines from videos which is either brave or reckless",
        "my grandmother turned ninety and the whole family gathered at her house with old "
        "photo albums stories about the war and her famous apple cake she still remembers "
        "every recipe by heart and insisted on teaching my cousins how to fold dumplings",
    )
)
_REPLIES = (
    "That sounds {f}! How did {c} like it?",
    "Wow, {p} must have been {f}. Would you go back?",
    "I have always wanted to try {a}. Was it hard to get started?",
    "No way, {p}? I was there years ago, the food was incredible.",
    "Thanks for sharing that, it really made my day to hear about it.",
    "Haha I can picture it. What was the best part?",
)


def _filler(rng: random.Random, lo: int, hi: int) -> str:
    """A window of `lo..hi` words from one of the chat paragraphs."""
    paragraph = rng.choice(_CHAT)
    start = rng.randrange(len(paragraph))
    n = rng.randint(lo, hi)
    words = [paragraph[(start + i) % len(paragraph)] for i in range(n)]
    text = " ".join(words)
    return text[:1].upper() + text[1:] + "."


def _their(companion: str, pronoun: str) -> str:
    return f"{pronoun} {companion[3:]}" if companion.startswith("my ") else companion


@dataclass(frozen=True)
class Fact:
    person: str
    place: str
    activity: str
    companion: str
    message_id: str


def synthetic_memories(n: int, seed: int = 7) -> tuple[list[dict[str, Any]], list[Fact]]:
    """`n` memories as the remember node writes them, and the facts they state.

    Deterministic for a seed; the first `m` memories of a larger `n` are the memories
    of a smaller `m`.
    """
    rng = random.Random(seed)
    values: list[dict[str, Any]] = []
    facts: list[Fact] = []
    day = 86_400.0
    start = 1_672_531_200.0  # 2023-01-01
    conv = 0
    while len(values) < n:
        a, b = rng.sample(_PEOPLE, 2)
        thread = f"conv-{conv}"
        conv += 1
        turn = 0
        for session in range(1, rng.randint(8, 20) + 1):
            ts = start + conv * 3 * day + session * 4 * day
            when = time.strftime("%I:%M %p on %d %B, %Y", time.gmtime(ts))
            last: Fact | None = None
            for _ in range(rng.randint(14, 28)):
                if len(values) >= n:
                    return values, facts
                speaker = a if turn % 2 == 0 else b
                mid = f"{thread}:D{session}:{turn}"
                roll = rng.random()
                if roll < 0.25:
                    fact = Fact(
                        speaker,
                        rng.choice(_PLACES),
                        rng.choice(_ACTIVITIES),
                        rng.choice(_COMPANIONS),
                        mid,
                    )
                    text = (
                        f"Guess what, {rng.choice(_WHEN)} I went to {fact.place} with "
                        f"{fact.companion} for {fact.activity}. It was {rng.choice(_FEELINGS)}. "
                        f"{_filler(rng, 0, 18)}"
                    )
                    facts.append(fact)
                    last = fact
                elif roll < 0.55 and last is not None:
                    text = rng.choice(_REPLIES).format(
                        f=rng.choice(_FEELINGS),
                        c=_their(last.companion, "your"),
                        p=last.place,
                        a=last.activity,
                    )
                else:
                    text = _filler(rng, 6, 45)
                values.append(
                    {
                        "text": f"{speaker}: {text}",
                        "kind": "turn",
                        "message_id": mid,
                        "speaker": speaker,
                        "turn": turn,
                        "session": session,
                        "thread": thread,
                        "ts": ts + turn * 30.0,
                        "when": when,
                    }
                )
                turn += 1
    return values, facts


def synthetic_queries(facts: Sequence[Fact], count: int, seed: int = 11) -> list[str]:
    """Distinct questions about planted facts (several phrasings)."""
    rng = random.Random(seed)
    forms = (
        "Where did {p} go for {a}?",
        "Who did {p} go to {l} with?",
        "What did {p} do in {l}?",
        "When did {p} go to {l} with {c}?",
        "Has {p} ever tried {a}?",
    )
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(count * 20):
        if len(out) >= count or not facts:
            break
        f = rng.choice(facts)
        q = rng.choice(forms).format(
            p=f.person, a=f.activity, l=f.place, c=_their(f.companion, "their")
        )
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out


# -- embedders -------------------------------------------------------------------------


class _Recorder:
    """Wraps the real embedder: remembers every document vector it produced."""

    def __init__(self, base: Embedder) -> None:
        self.base = base
        self.vectors: dict[str, list[float]] = {}
        self.seconds = 0.0
        self.count = 0

    def embed(self, texts: list[str]) -> list[list[float]]:
        began = time.perf_counter()
        vectors = self.base.embed_documents(texts)
        self.seconds += time.perf_counter() - began
        self.count += len(texts)
        self.vectors.update(zip(texts, vectors, strict=True))
        return vectors

    def query(self, text: str) -> list[float]:
        """A query vector from the model itself (the wrapped embedder's cache bypassed)."""
        return self.base.embed_documents([text])[0]


def _stand_in(real: dict[str, list[float]], dims: int) -> Callable[[list[str]], list[list[float]]]:
    """Vectors for texts never embedded: a real vector of another text plus seeded noise."""
    pool = np.asarray(list(real.values()), dtype=np.float32)

    def embed(texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            known = real.get(text)
            if known is not None:
                out.append(known)
                continue
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            rng = np.random.default_rng(seed)
            v = pool[seed % len(pool)] + rng.normal(0.0, 0.5 / np.sqrt(dims), dims)
            out.append((v / np.linalg.norm(v)).astype(np.float32).tolist())
        return out

    return embed


# -- measuring -------------------------------------------------------------------------


def _stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = sorted(1000.0 * s for s in seconds)
    if not ms:
        return {}
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "n": len(ms),
    }


def _timed(fn: Callable[[], Any]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def _wait_rebuild(retriever: HybridRetriever) -> float:
    """Seconds of a blocking `refresh()`: the background rebuild joined, the store re-read,
    and the BM25 matrix rebuilt with every memory (the public way to wait for it)."""
    began = time.perf_counter()
    retriever.refresh(NAMESPACE)
    return time.perf_counter() - began


class _Counting:
    """Counts the texts an embedding function is asked for (the probe text aside)."""

    def __init__(self, embed: Callable[[list[str]], list[list[float]]]) -> None:
        self.embed_fn = embed
        self.documents = 0

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.documents += sum(1 for t in texts if t != PROBE_TEXT)
        return self.embed_fn(texts)


def measure_ours(
    folder: Path,
    values: list[dict[str, Any]],
    queries: list[str],
    embedder: Embedder | None,
    batch: int,
    extra: list[dict[str, Any]],
    cold_embedder: Callable[[], tuple[Embedder, _Counting]] | None = None,
) -> dict[str, Any]:
    """Add, search and cold-start figures of HybridRetriever over a ChromaStore.

    `extra` holds the memories for the remember-sized writes (2 per write);
    `cold_embedder` makes the cold-start retriever's embedder (the same model as
    `embedder`) and its document counter.
    """
    out: dict[str, Any] = {}
    store = ChromaStore(folder)
    try:
        retriever = HybridRetriever(store, embedder=embedder)
        retriever.search(NAMESPACE, "warm up", k=1)  # the (empty) index exists: adds update it
        began = time.perf_counter()
        for start in range(0, len(values), batch):
            retriever.add(NAMESPACE, values[start : start + batch])
        add_s = time.perf_counter() - began
        out["add_s"] = round(add_s, 3)
        out["add_per_s"] = round(len(values) / add_s, 1)
        out["rebuild_catch_up_s"] = round(_wait_rebuild(retriever), 3)
        stats = retriever.stats(NAMESPACE)
        out["memories"] = stats["memories"]

        # Search: each query once (query vectors not cached), then again (cached).
        for q in ("warm up one", "warm up two"):
            retriever.search(NAMESPACE, q, k=K)
        out["search"] = _stats(
            [_timed(lambda q=q: retriever.search(NAMESPACE, q, k=K)) for q in queries]
        )
        if embedder is not None:
            out["search_cached_query_vector"] = _stats(
                [_timed(lambda q=q: retriever.search(NAMESPACE, q, k=K)) for q in queries]
            )
            fresh = [f"{q} (again)" for q in queries[:50]]
            out["embed_query"] = _stats(
                [_timed(lambda q=q: embedder.embed_query(q)) for q in fresh]
            )

        # A remember-sized write (one turn: 2 memories) into a store of N.
        writes = []
        for i in range(0, len(extra) - 1, 2):
            writes.append(_timed(lambda i=i: retriever.add(NAMESPACE, extra[i : i + 2])))
        out["remember_write"] = _stats(writes)
        _wait_rebuild(retriever)
        expected = _top_keys(retriever, queries[:20])
    finally:
        store.close()

    # Cold start, as a new process: a new store on the folder, a new retriever.
    began = time.perf_counter()
    store = ChromaStore(folder)
    try:
        counter = None
        if cold_embedder is not None:
            cold_e, counter = cold_embedder()
            cold = HybridRetriever(store, embedder=cold_e)
        else:
            cold = HybridRetriever(store)
        cold.search(NAMESPACE, queries[0], k=K)
        out["cold_first_search_s"] = round(time.perf_counter() - began, 3)
        if counter is not None:
            out["cold_embedded_documents"] = counter.documents
        # the reopened store ranks as the one that wrote it
        out["cold_same_top10_pct"] = round(
            100.0
            * sum(a == b for a, b in zip(expected, _top_keys(cold, queries[:20]), strict=True))
            / max(len(expected), 1),
            1,
        )
    finally:
        store.close()
    return out


def _top_keys(retriever: HybridRetriever, queries: list[str]) -> list[list[str]]:
    return [[h.key for h in retriever.search(NAMESPACE, q, k=K)] for q in queries]


def measure_bm25s(texts: list[str], queries: list[str]) -> dict[str, Any]:
    """Plain bm25s: index the texts, then top-K by `get_scores` per query."""
    began = time.perf_counter()
    model = bm25s.BM25()
    model.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    index_s = time.perf_counter() - began

    def search(q: str) -> None:
        tokens = bm25s.tokenize([q], stopwords="en", show_progress=False, return_ids=False)[0]
        scores = model.get_scores(tokens)
        top = np.argpartition(-scores, K)[:K] if len(scores) > K else np.arange(len(scores))
        top[np.argsort(-scores[top])]

    return {
        "index_s": round(index_s, 3),
        "index_per_s": round(len(texts) / index_s, 1),
        "search": _stats([_timed(lambda q=q: search(q)) for q in queries]),
        "what": "bm25s 0.x, Lucene BM25 k1=1.5 b=0.75, English stopwords, no stemming",
    }


def _distinct_text_batches(values: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Batches in which no text repeats.

    InMemoryStore embeds the distinct texts of a batch but expects one vector per item,
    so a batch holding two equal texts raises ValueError (langgraph 1.x).
    """
    batches: list[list[dict[str, Any]]] = []
    pending = list(values)
    while pending:
        batch: list[dict[str, Any]] = []
        texts: set[str] = set()
        rest: list[dict[str, Any]] = []
        for v in pending:
            if len(batch) < size and v["text"] not in texts:
                texts.add(v["text"])
                batch.append(v)
            else:
                rest.append(v)
        batches.append(batch)
        pending = rest
    return batches


def measure_inmemory_dense(
    values: list[dict[str, Any]], queries: list[str], embedder: Embedder
) -> dict[str, Any]:
    """LangGraph InMemoryStore vector search over the same vectors (pre-embedded)."""
    store = InMemoryStore(index=embedder.index_config(["text"]))
    began = time.perf_counter()
    for chunk in _distinct_text_batches(values, 1000):
        store.batch([PutOp(NAMESPACE, v["message_id"], v) for v in chunk])
    put_s = time.perf_counter() - began
    for q in queries:  # the query vectors are cached below: search cost only
        embedder.embed_query(q)
    return {
        "put_s": round(put_s, 3),
        "put_per_s_vectors_precomputed": round(len(values) / put_s, 1),
        "search_cached_query_vector": _stats(
            [_timed(lambda q=q: store.search(NAMESPACE, query=q, limit=K)) for q in queries]
        ),
        "what": "langgraph InMemoryStore(index=...) search(query=..., limit=10), brute force",
    }


def run(
    sizes: Sequence[int],
    query_count: int,
    mode: str,
    batch: int,
    real_embed_max: int,
    workspace: Path,
    remember_writes: int = REMEMBER_WRITES,
    embed_sample: int = 1_000,
) -> dict[str, Any]:
    """Every size, lexical then hybrid (when there is an embedder), with the peers."""
    started = time.perf_counter()
    largest = max(sizes)
    values, facts = synthetic_memories(largest + 2 * remember_writes)
    extra = values[largest:]
    values = values[:largest]
    queries = synthetic_queries(facts[: max(1, len(facts) * min(sizes) // largest)], query_count)
    info: dict[str, Any] = {"requested": mode}
    base: Embedder | None = None
    if mode == "none":
        info["note"] = "lexical only (--embedder none)"
    elif mode in ("auto", "sentence-transformers"):
        began = time.perf_counter()
        base, why = local_embedder()
        info["load_s"] = round(time.perf_counter() - began, 2)
        if base is None:
            if mode == "sentence-transformers":
                raise SystemExit(f"--embedder sentence-transformers: {why}")
            info["unavailable"] = why
            info["note"] = "the local embedder is not installed: lexical only"
    elif mode == "hash":
        base = hashing_embedder()
        info["note"] = (
            "a seeded feature-hashing stand-in, not a model: the retrieval's latency is "
            "real, the embedding cost is not"
        )
    if base is not None:
        info["name"] = base.name
        info["dims"] = base.dims
    recorder = _Recorder(base) if base is not None else None
    if recorder is not None:
        sample = [v["text"] for v in values[:embed_sample]]
        for start in range(0, len(sample), batch):
            recorder.embed(sample[start : start + batch])
        info["embed_per_s"] = round(len(sample) / recorder.seconds, 1)
        info["embed_per_s_sample"] = len(sample)

    runs: list[dict[str, Any]] = []
    for n in sizes:
        texts = [v["text"] for v in values[:n]]
        entry: dict[str, Any] = {"memories": n, "queries": len(queries)}
        entry["lexical"] = measure_ours(
            workspace / f"lex-{n}", values[:n], queries, None, batch, extra
        )
        entry["peer_bm25s"] = measure_bm25s(texts, queries)
        print(
            f"N={n}: lexical search p50 {entry['lexical']['search']['p50_ms']} ms, "
            f"add {entry['lexical']['add_per_s']}/s; bm25s p50 "
            f"{entry['peer_bm25s']['search']['p50_ms']} ms",
            file=sys.stderr,
        )
        if recorder is not None and base is not None:
            real = n <= real_embed_max
            embed_fn: Callable[[list[str]], Any]
            if real:
                # A fresh embedder per size: every memory is embedded by the model.
                embed_fn = recorder.embed
                entry["vectors"] = "real" if mode != "hash" else "hashing stand-in (no model)"
            else:
                embed_fn = _stand_in(recorder.vectors, base.dims)
                entry["vectors"] = (
                    f"stand-in: real vectors of {len(recorder.vectors)} texts plus seeded "
                    "noise (queries embedded by the real model); add throughput excludes "
                    "embedding"
                )
            embedder = Embedder(embed_fn, recorder.query, name=base.name, dims=base.dims)

            # The cold-start retriever embeds as the writer did (the same model or the
            # same stand-in), counting what it is asked to embed.
            def cold(embed: Callable[[list[str]], Any] = embed_fn) -> tuple[Embedder, _Counting]:
                counting = _Counting(embed)
                made = Embedder(counting, recorder.query, name=base.name, dims=base.dims)
                return made, counting

            hybrid = measure_ours(
                workspace / f"hyb-{n}", values[:n], queries, embedder, batch, extra, cold
            )
            if info.get("embed_per_s"):
                hybrid["cold_reembed_projected_s"] = round(n / info["embed_per_s"], 1)
            entry["hybrid"] = hybrid
            cache = VectorCache(embedder)
            cache.embed(texts)  # the peer gets the same vectors, embedded beforehand
            peer_queries = queries if n <= 10_000 else queries[:20]
            entry["peer_inmemory_dense"] = measure_inmemory_dense(
                values[:n], peer_queries, cache.embedder
            )
            print(
                f"N={n}: hybrid search p50 {hybrid['search']['p50_ms']} ms "
                f"(cached query vector {hybrid['search_cached_query_vector']['p50_ms']} ms), "
                f"add {hybrid['add_per_s']}/s; InMemoryStore dense p50 "
                f"{entry['peer_inmemory_dense']['search_cached_query_vector']['p50_ms']} ms",
                file=sys.stderr,
            )
        runs.append(entry)
    for entry in runs:
        hyb = entry.get("hybrid")
        if (
            hyb is not None
            and entry.get("vectors", "").startswith("stand-in")
            and info.get("embed_per_s")
        ):
            rate = 1.0 / (1.0 / hyb["add_per_s"] + 1.0 / info["embed_per_s"])
            hyb["add_per_s_projected_with_embedding"] = round(rate, 1)
    at10k = next((e for e in runs if e["memories"] == 10_000), None)
    target = None
    if at10k is not None:
        values_at = {"lexical": at10k["lexical"]["search"]["p50_ms"]}
        if "hybrid" in at10k:
            values_at["hybrid"] = at10k["hybrid"]["search"]["p50_ms"]
            values_at["hybrid_cached_query_vector"] = at10k["hybrid"]["search_cached_query_vector"][
                "p50_ms"
            ]
        target = {
            "search_p50_ms_at_10k": TARGET_P50_MS_AT_10K,
            "values": values_at,
            "met": {k: v <= TARGET_P50_MS_AT_10K for k, v in values_at.items()},
        }
    return {
        "benchmark": "memory",
        "store": "ChromaStore (embedded PersistentClient, temp dir)",
        "retriever": "HybridRetriever defaults",
        "k": K,
        "batch": batch,
        "sizes": list(sizes),
        "embedder": info,
        "real_embed_max": real_embed_max,
        "runs": runs,
        "target": target,
        "reference": REFERENCE,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500, help="memories per add call")
    parser.add_argument(
        "--embedder",
        choices=["auto", "none", "sentence-transformers", "hash"],
        default="auto",
        help="auto: lexical and hybrid (local MiniLM) when installed, else lexical only",
    )
    parser.add_argument(
        "--real-embed-max",
        type=int,
        default=10_000,
        help="largest size embedded by the real model; above, stand-in vectors",
    )
    parser.add_argument("--torch-threads", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long synthetic run")
    args = parser.parse_args(argv)
    sizes, queries, mode = args.sizes, args.queries, args.embedder
    if args.smoke:
        sizes, queries = [300], 10
        mode = "none" if mode == "none" else "hash"
    threads = set_torch_threads(args.torch_threads) if mode not in ("none", "hash") else None
    with tempfile.TemporaryDirectory(prefix="llmctx-memory-") as tmp:
        result = run(
            sizes,
            queries,
            mode,
            args.batch,
            args.real_embed_max,
            Path(tmp),
            remember_writes=5 if args.smoke else REMEMBER_WRITES,
            embed_sample=50 if args.smoke else 1_000,
        )
    result["embedder"]["torch_threads"] = threads
    if args.smoke:
        result["smoke"] = True
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
