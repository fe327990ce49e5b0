"""Hybrid retrieval: real BM25, real fusion arithmetic, a deterministic fake embedder.

Every test runs the real algorithms on a small corpus it writes itself, over a real
LangGraph `InMemoryStore`, or a real `ChromaStore` in `tmp_path` where the store keeps
the vectors.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import zlib
from pathlib import Path

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langgraph.store.memory import InMemoryStore

from llmctx.runtime.embeddings import PROBE_TEXT, Embedder
from llmctx.runtime.errors import ConfigError, EmbeddingError, LlmctxError
from llmctx.runtime.memory import ChromaStore
from llmctx.runtime.retrieval import Hit, HybridRetriever, tokenize

NS = ("memories", "u1")

# Boosts, expansion and MMR off: what is left is plain fusion of the ranked lists.
PLAIN = {
    "recency_weight": 0.0,
    "importance_weight": 0.0,
    "mmr_lambda": 1.0,
    "duplicate_threshold": 2.0,
    "context_weight": 0.0,
}

CORPUS = [
    "The deploy key for production lives in the team vault",
    "Lunch on Friday was pizza with the whole team",
    "Alice prefers dark mode in every editor she uses",
    "The quarterly budget review moved to Thursday afternoon",
    "Bob's dog is a golden retriever called Biscuit",
    "Rotate the staging database password every ninety days",
]

# A tiny "semantic" space: synonyms share a dimension, so the fake embedder finds
# matches that share no word with the query (which BM25 cannot).
_CONCEPTS = {
    "car": 0,
    "automobile": 0,
    "vehicle": 0,
    "sedan": 0,
    "dog": 1,
    "puppy": 1,
    "canine": 1,
    "retriever": 1,
    "money": 2,
    "budget": 2,
    "cash": 2,
    "salary": 2,
    "food": 3,
    "pizza": 3,
    "lunch": 3,
    "meal": 3,
}
_DIMS = 32


def concept_embed(texts: list[str]) -> list[list[float]]:
    """Deterministic: concept words add 1 on their dimension, other words 0.1 on a hash."""
    out = []
    for text in texts:
        vec = [0.0] * _DIMS
        for word in text.lower().replace("'", " ").split():
            word = word.strip(".,!?")
            if word in _CONCEPTS:
                vec[_CONCEPTS[word]] += 1.0
            elif word:
                vec[8 + zlib.crc32(word.encode()) % (_DIMS - 8)] += 0.1
        out.append(vec)
    return out


@pytest.fixture
def store() -> InMemoryStore:
    return InMemoryStore()


def _add_corpus(r: HybridRetriever, ns: tuple[str, ...] = NS) -> list[str]:
    return r.add(ns, [{"text": t, "kind": "note"} for t in CORPUS])


# -- lexical ------------------------------------------------------------------------------


def test_tokenize_stems_and_drops_stopwords() -> None:
    assert tokenize("The cats were painting sunrises!") == ["cat", "paint", "sunris"]
    assert tokenize("") == []
    assert tokenize("the and of") == []


def test_bm25_ranks_the_matching_memory_first_without_an_embedder(store: InMemoryStore) -> None:
    r = HybridRetriever(store)
    assert r.dense == "off" and r.embedder is None
    _add_corpus(r)
    hits = r.search(NS, "where is the production deploy key?", k=3)
    assert hits[0].text == CORPUS[0]
    assert hits[0].lexical_rank == 1 and hits[0].dense_rank is None
    assert r.search(NS, "password rotation for staging", k=1)[0].text == CORPUS[5]
    # Stemming: "retrievers" and "dogs" match "retriever" and "dog".
    assert r.search(NS, "dogs and retrievers", k=1)[0].text == CORPUS[4]


def test_no_match_returns_nothing(store: InMemoryStore) -> None:
    r = HybridRetriever(store)
    _add_corpus(r)
    assert r.search(NS, "xylophone quantum", k=5) == []
    assert r.search(NS, "deploy", k=0) == []
    assert r.search(("memories", "nobody"), "deploy") == []


def test_tail_scores_equal_a_fresh_bm25_matrix(store: InMemoryStore) -> None:
    """New memories are brute-forced until a rebuild; the ranking must not change."""
    tail = HybridRetriever(store, rebuild_min=10_000, **PLAIN)
    assert tail.search(NS, "anything") == []  # loads the (empty) index: adds go to its tail
    _add_corpus(tail)
    for i in range(40):
        tail.add(NS, [{"text": f"note {i}: the budget for team {i % 7} and the vault {i % 3}"}])
    assert tail.stats(NS)["tail"] == 46  # nothing indexed yet: all brute force
    fresh = HybridRetriever(store, **PLAIN)  # loads the same store into a BM25 matrix
    assert fresh.stats(NS)["tail"] == 0
    for query in ("team budget", "vault key", "budget 3 vault 2", "pizza"):
        a = tail.search(NS, query, k=10, neighbors=0)
        b = fresh.search(NS, query, k=10, neighbors=0)
        assert [h.key for h in a] == [h.key for h in b], query


def test_rebuild_folds_the_tail_into_the_matrix(store: InMemoryStore) -> None:
    r = HybridRetriever(store, rebuild_min=8, rebuild_ratio=0.0, background=False)
    r.add(NS, [{"text": f"memory number {i} about topic {i}"} for i in range(5)])
    r.search(NS, "topic")  # loads the index
    r.add(NS, [{"text": f"later memory {i} about subject {i}"} for i in range(9)])
    stats = r.stats(NS)
    assert stats["tail"] == 0 and stats["indexed"] == stats["memories"] == 14
    assert r.search(NS, "subject 7", k=1)[0].text == "later memory 7 about subject 7"


def test_background_rebuild_finishes_and_search_meanwhile_works(store: InMemoryStore) -> None:
    r = HybridRetriever(store, rebuild_min=16, rebuild_ratio=0.0)
    r.search(NS, "anything")
    r.add(NS, [{"text": f"entry {i} on the widget line {i % 5}"} for i in range(100)])
    assert r.search(NS, "widget 3", k=1)  # whether or not the rebuild has finished
    r.refresh(NS)
    assert r.stats(NS)["tail"] == 0


# -- fusion arithmetic ------------------------------------------------------------------


def test_rrf_score_of_a_memory_first_in_both_lists_is_one(store: InMemoryStore) -> None:
    r = HybridRetriever(store, embedder=concept_embed, rrf_k=60, **PLAIN)
    assert r.dense == "own"
    _add_corpus(r)
    hit = r.search(NS, "pizza lunch", k=1, neighbors=0)[0]
    assert (hit.lexical_rank, hit.dense_rank) == (1, 1)
    assert hit.score == pytest.approx(1.0)


def test_rrf_formula_on_known_ranks(store: InMemoryStore) -> None:
    k, w_lex, w_dense = 10.0, 1.0, 0.5
    r = HybridRetriever(
        store, embedder=concept_embed, rrf_k=k, lexical_weight=w_lex, dense_weight=w_dense, **PLAIN
    )
    _add_corpus(r)
    hits = r.search(NS, "team budget money", k=6, neighbors=0)
    assert any(h.lexical_rank and h.dense_rank for h in hits)
    for hit in hits:
        lex = w_lex / (k + hit.lexical_rank) if hit.lexical_rank else 0.0
        dense = w_dense / (k + hit.dense_rank) if hit.dense_rank else 0.0
        assert hit.score == pytest.approx((lex + dense) / ((w_lex + w_dense) / (k + 1.0)))


def test_list_weights_select_lexical_or_dense(store: InMemoryStore) -> None:
    dense_only = HybridRetriever(store, embedder=concept_embed, lexical_weight=0.0, **PLAIN)
    _add_corpus(dense_only)
    hits = dense_only.search(NS, "automobile", k=1, neighbors=0)
    assert hits == [] or hits[0].lexical_rank is None
    hits = dense_only.search(NS, "canine puppy", k=1, neighbors=0)
    assert hits[0].text == CORPUS[4] and hits[0].lexical_rank is None
    assert hits[0].score == pytest.approx(1.0)


def test_dense_finds_a_synonym_that_bm25_cannot(store: InMemoryStore) -> None:
    lexical = HybridRetriever(store, **PLAIN)
    _add_corpus(lexical)
    assert lexical.search(NS, "canine", k=3) == []
    hybrid = HybridRetriever(store, embedder=concept_embed, **PLAIN)
    hits = hybrid.search(NS, "canine", k=1, neighbors=0)
    assert hits[0].text == CORPUS[4]
    assert hits[0].dense_rank == 1 and hits[0].lexical_rank is None


def test_store_vector_index_is_used_when_there_is_no_embedder() -> None:
    embedder = Embedder.wrap(concept_embed, name="concepts")
    store = InMemoryStore(index=embedder.index_config())
    r = HybridRetriever(store, **PLAIN)
    assert r.dense == "store"
    _add_corpus(r)
    hits = r.search(NS, "canine", k=1, neighbors=0)
    assert hits[0].text == CORPUS[4] and hits[0].dense_rank == 1
    # Range and $in filters never reach the store (InMemoryStore crashes on items that
    # lack the field); they are applied to its ranking afterwards.
    r.add(NS, [{"text": "a puppy photo", "turn": 7, "kind": "turn"}], keys=["photo"])
    hits = r.search(NS, "canine", filter={"turn": {"$gte": 5}, "kind": {"$in": ["turn"]}})
    assert [h.key for h in hits] == ["photo"]
    assert [h.key for h in r.search(NS, "canine", filter={"kind": "turn"})] == ["photo"]


def test_dense_modes_are_validated(store: InMemoryStore) -> None:
    with pytest.raises(ConfigError, match="needs an embedder"):
        HybridRetriever(store, dense="own")
    with pytest.raises(ConfigError, match="index config"):
        HybridRetriever(store, dense="store")
    with pytest.raises(ConfigError, match="dense mode"):
        HybridRetriever(store, dense="sometimes")  # type: ignore[arg-type]
    assert HybridRetriever(store, embedder=concept_embed, dense="off").dense == "off"


# -- recency and importance -------------------------------------------------------------


def _rel(hit: Hit, k: float = 5.0) -> float:
    """The fused relevance of a lexical-only hit: (k + 1) / (k + rank)."""
    assert hit.lexical_rank is not None
    return (k + 1.0) / (k + hit.lexical_rank)


def _twins(r: HybridRetriever, older: str, newer: str, **extra: object) -> None:
    r.add(
        NS,
        [
            {"text": "release checklist for the mobile app alpha", "ts": older, **extra},
            {"text": "release checklist for the mobile app omega", "ts": newer},
        ],
        keys=["alpha", "omega"],
    )


def test_recency_puts_the_newer_of_two_equal_matches_first(store: InMemoryStore) -> None:
    options = {**PLAIN, "rrf_k": 5.0, "recency_weight": 0.5, "half_life_s": 86_400.0}
    r = HybridRetriever(store, **options)
    _twins(r, "2024-01-01T00:00:00Z", "2024-01-05T00:00:00Z")
    hits = r.search(NS, "mobile release checklist", k=2)
    assert [h.key for h in hits] == ["omega", "alpha"]
    # score = rel * (1 + w * 0.5 ** (age / half_life)) / (1 + w): 4 days old -> 1/16.
    new, old = hits
    assert new.score == pytest.approx(_rel(new) * (1 + 0.5) / 1.5)
    assert old.score == pytest.approx(_rel(old) * (1 + 0.5 / 16) / 1.5)
    flipped = HybridRetriever(InMemoryStore(), **options)
    _twins(flipped, "2024-01-05T00:00:00Z", "2024-01-01T00:00:00Z")
    assert [h.key for h in flipped.search(NS, "mobile release checklist", k=2)] == [
        "alpha",
        "omega",
    ]


def test_importance_lifts_an_important_memory(store: InMemoryStore) -> None:
    r = HybridRetriever(store, **{**PLAIN, "rrf_k": 5.0, "importance_weight": 1.0})
    _twins(r, "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z", importance=1.0)
    hits = r.search(NS, "mobile release checklist", k=2)
    assert hits[0].key == "alpha"  # importance 1.0 against the default 0.5
    assert hits[0].score == pytest.approx(_rel(hits[0]) * 2.0 / 2.0)
    assert hits[1].score == pytest.approx(_rel(hits[1]) * 1.5 / 2.0)


# -- neighbors --------------------------------------------------------------------------


def _session(r: HybridRetriever, thread: str, session: int, texts: list[str]) -> None:
    r.add(
        NS,
        [
            {"text": t, "kind": "turn", "thread": thread, "session": session, "turn": i}
            for i, t in enumerate(texts, start=1)
        ],
        keys=[f"{thread}:{session}:{i}" for i in range(1, len(texts) + 1)],
    )


CHAT = [
    "Hi, how are you today?",
    "Did you ever finish that thing you told me about?",
    "Yes! I finally adopted the greyhound from the shelter",
    "That is wonderful, what did you name her?",
    "Anyway, see you next week",
]


def test_neighbor_expansion_brings_adjacent_turns(store: InMemoryStore) -> None:
    r = HybridRetriever(store, **{**PLAIN, "neighbor_weight": 0.5})
    _session(r, "t1", 1, CHAT)
    _session(r, "t1", 2, CHAT)  # same turn numbers, other session: not a neighbor
    _session(r, "t2", 1, ["We talked about greyhound racing odds"])
    alone = r.search(NS, "greyhound shelter", k=10, neighbors=0)
    assert {h.key for h in alone} == {"t1:1:3", "t1:2:3", "t2:1:1"}
    hits = {h.key: h for h in r.search(NS, "greyhound shelter", k=10, neighbors=1)}
    seed = hits["t1:1:3"]
    for key in ("t1:1:2", "t1:1:4", "t1:2:2", "t1:2:4"):
        assert hits[key].via == "neighbor"
        assert hits[key].score == pytest.approx(hits[f"{key[:5]}3"].score * 0.5)
    assert "t1:1:1" not in hits and "t1:1:5" not in hits  # only +-1
    assert seed.via == "match"
    two = {h.key for h in r.search(NS, "greyhound shelter", k=20, neighbors=2)}
    assert {"t1:1:1", "t1:1:5"} <= two


def test_context_weight_lifts_turns_next_to_matches(store: InMemoryStore) -> None:
    # Two turns match "rescue" equally; only one has a neighbor matching "greyhound".
    texts = ["I love my greyhound", "Rescue work takes patience", "ok", "Rescue work takes time"]
    off = HybridRetriever(store, **PLAIN)
    _session(off, "t", 1, texts)
    on = HybridRetriever(store, **{**PLAIN, "context_weight": 0.3})
    assert off.search(NS, "greyhound rescue", k=2, neighbors=0)[1].key == "t:1:2"
    ranked = [h.key for h in on.search(NS, "greyhound rescue", k=3, neighbors=0)]
    assert ranked.index("t:1:2") < ranked.index("t:1:4")


# -- MMR --------------------------------------------------------------------------------


def test_mmr_drops_near_duplicates(store: InMemoryStore) -> None:
    texts = [
        "The standup moved to 10am on Mondays",
        "The standup moved to 10am on Mondays!",
        "standup moved to 10am mondays",
        "Standup notes: blockers on the payment service",
    ]
    r = HybridRetriever(store, **{**PLAIN, "duplicate_threshold": 0.9})
    r.add(NS, [{"text": t} for t in texts], keys=["a", "b", "c", "d"])
    hits = r.search(NS, "standup moved mondays", k=4)
    assert len([h for h in hits if h.key in "abc"]) == 1
    assert "d" in {h.key for h in hits}
    keep_all = HybridRetriever(store, **PLAIN)
    assert len(keep_all.search(NS, "standup moved mondays", k=4)) == 4


def test_mmr_with_vectors_prefers_novel_results(store: InMemoryStore) -> None:
    texts = ["pizza lunch", "pizza meal", "pizza food", "pizza budget"]
    r = HybridRetriever(
        store, embedder=concept_embed, **{**PLAIN, "mmr_lambda": 0.3, "duplicate_threshold": 2.0}
    )
    r.add(NS, [{"text": t} for t in texts], keys=list("abcd"))
    hits = r.search(NS, "pizza", k=2, neighbors=0)
    # After the first pick every food memory is redundant; the budget one is novel.
    assert hits[1].key == "d"


# -- filters, exclusion, thresholds ----------------------------------------------------


def test_metadata_filters(store: InMemoryStore) -> None:
    r = HybridRetriever(store, **PLAIN)
    r.add(
        NS,
        [
            {"text": "budget summary for March", "kind": "summary", "turn": 1},
            {"text": "budget talk in the kitchen", "kind": "turn", "turn": 5},
            {"text": "budget note without a turn", "kind": "note"},
        ],
        keys=["s", "t", "n"],
    )
    assert [h.key for h in r.search(NS, "budget", filter={"kind": "summary"})] == ["s"]
    found = {h.key for h in r.search(NS, "budget", filter={"turn": {"$gte": 3}}, neighbors=0)}
    assert found == {"t"}  # "n" lacks the field: no match, no crash
    found = {h.key for h in r.search(NS, "budget", filter={"kind": {"$in": ["note", "turn"]}})}
    assert found == {"t", "n"}
    found = {h.key for h in r.search(NS, "budget", filter={"kind": {"$ne": "turn"}})}
    assert found == {"s", "n"}
    assert r.search(NS, "budget", filter={"turn": {"$lt": "x"}}) == []  # type clash: no match
    with pytest.raises(ConfigError, match=r"\$like"):
        r.search(NS, "budget", filter={"kind": {"$like": "sum%"}})


def test_a_strict_filter_still_finds_low_ranked_matches(store: InMemoryStore) -> None:
    r = HybridRetriever(store, candidates=5, **PLAIN)
    values = [{"text": f"shared words alpha beta {i}", "tag": "common"} for i in range(60)]
    values.append({"text": "alpha", "tag": "rare"})  # short: still matches, ranks anywhere
    r.add(NS, values)
    hits = r.search(NS, "alpha beta shared", k=3, filter={"tag": "rare"})
    assert [h.text for h in hits] == ["alpha"]


def test_exclude_ids_by_key_or_message_id(store: InMemoryStore) -> None:
    r = HybridRetriever(store, **PLAIN)
    r.add(
        NS,
        [
            {"text": "invoice 42 was paid", "message_id": "m-1"},
            {"text": "invoice 43 is overdue", "message_id": "m-2"},
        ],
    )
    assert {h.key for h in r.search(NS, "invoice")} == {"m-1", "m-2"}  # keys default to ids
    assert [h.message_id for h in r.search(NS, "invoice", exclude_ids=["m-1"])] == ["m-2"]


def test_min_score_and_k(store: InMemoryStore) -> None:
    r = HybridRetriever(store, **PLAIN)
    _add_corpus(r)
    everything = r.search(NS, "team vault deploy budget", k=10)
    assert len(everything) >= 3
    assert len(r.search(NS, "team vault deploy budget", k=2)) == 2
    strict = r.search(NS, "team vault deploy budget", k=10, min_score=everything[1].score)
    assert [h.key for h in strict] == [h.key for h in everything[:2]]
    assert all(0 < h.score <= 1 for h in everything)


# -- isolation --------------------------------------------------------------------------


def test_one_user_never_retrieves_another_users_memories(store: InMemoryStore) -> None:
    r = HybridRetriever(store, embedder=concept_embed)
    u1, u2 = ("memories", "u1"), ("memories", "u2")
    r.add(u1, [{"text": "my locker code is 4471 and my dog is Rex"}])
    r.add(u2, [{"text": "my locker code is 9902 and my puppy is Bella"}])
    r.add(("memories", "u1", "notes"), [{"text": "u1 private note about the locker"}])
    for query in ("locker code", "9902 Bella puppy", "my dog", "locker code 9902"):
        texts = [h.text for h in r.search(u1, query, k=100, neighbors=3)]
        assert texts and all("9902" not in t and "Bella" not in t for t in texts), query
        assert all(h.namespace[:2] == u1 for h in r.search(u1, query, k=100))
        assert all(h.namespace == u2 for h in r.search(u2, query, k=100))
    # A user's prefix covers that user's sub-namespaces, and nothing else.
    assert {h.namespace for h in r.search(u1, "locker", k=10)} == {u1, ("memories", "u1", "notes")}
    # A user id that merely starts like another one is a different namespace.
    r.add(("memories", "u10"), [{"text": "u10 locker code 1111"}])
    assert all("1111" not in h.text for h in r.search(u1, "locker code 1111", k=100))


# -- writes -----------------------------------------------------------------------------


def test_writes_go_to_the_store_with_idempotent_keys(store: InMemoryStore) -> None:
    r = HybridRetriever(store)
    keys = _add_corpus(r)
    again = _add_corpus(r)
    assert keys == again
    assert len(store.search(NS, limit=100)) == len(CORPUS)
    item = store.get(NS, keys[0])
    assert item is not None and item.value == {"text": CORPUS[0], "kind": "note"}
    assert r.stats(NS)["memories"] == len(CORPUS)


def test_updates_deletes_and_outside_writes(store: InMemoryStore) -> None:
    r = HybridRetriever(store, **PLAIN)
    r.add(NS, [{"text": "the wifi password is hunter2"}], keys=["wifi"])
    assert r.search(NS, "wifi password", k=1)[0].key == "wifi"
    r.add(NS, [{"text": "the guest network is closed"}], keys=["wifi"])  # replaces it
    assert r.search(NS, "hunter2") == []
    assert r.search(NS, "guest network", k=1)[0].key == "wifi"
    r.delete(NS, "wifi")
    assert r.search(NS, "guest network") == [] and store.get(NS, "wifi") is None
    store.put(NS, "outside", {"text": "written around the retriever: kayak trip"})
    store.put(NS, "not-a-memory", {"title": "no text field"})
    r.refresh(NS)
    assert [h.key for h in r.search(NS, "kayak trip")] == ["outside"]
    store.delete(NS, "outside")
    r.refresh()
    assert r.search(NS, "kayak") == []


def test_add_validates_values(store: InMemoryStore) -> None:
    r = HybridRetriever(store)
    with pytest.raises(ValueError, match="text"):
        r.add(NS, [{"body": "no text"}])
    with pytest.raises(ValueError, match="keys"):
        r.add(NS, [{"text": "a"}], keys=["a", "b"])
    assert r.add(NS, []) == []


def test_async_api(store: InMemoryStore) -> None:
    r = HybridRetriever(store)

    async def go() -> list[str]:
        await r.aadd(NS, [{"text": "async memory about the harbor"}], keys=["h"])
        return [h.key for h in await r.asearch(NS, "harbor", k=1)]

    assert asyncio.run(go()) == ["h"]


def test_documents_are_embedded_on_add_once(store: InMemoryStore) -> None:
    batches: list[list[str]] = []

    def counting(texts: list[str]) -> list[list[float]]:
        batches.append(list(texts))
        return concept_embed(texts)

    r = HybridRetriever(store, embedder=counting)
    _add_corpus(r)  # no index covers the namespace yet: vectors are made now anyway
    assert batches == [CORPUS]
    r.search(NS, "canine")  # loads the index: only the query is embedded
    r.search(("memories",), "canine")  # a second index over the same memories
    assert batches[1:] == [["canine"]]


def test_concurrent_adds_and_searches(store: InMemoryStore) -> None:
    r = HybridRetriever(store, embedder=concept_embed, rebuild_min=20, rebuild_ratio=0.0)
    r.search(NS, "warm up")
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(30):
                r.add(NS, [{"text": f"pizza order {i} {j}", "turn": i * 10 + j} for j in range(10)])
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():
        for hit in r.search(NS, "pizza order", k=5):
            assert hit.text.startswith("pizza order")
    thread.join()
    r.refresh(NS)
    assert not errors
    stats = r.stats(NS)
    assert (stats["memories"], stats["indexed"], stats["tail"]) == (300, 300, 0)


def test_forget_reloads_from_the_store(store: InMemoryStore) -> None:
    r = HybridRetriever(store)
    _add_corpus(r)
    r.forget()
    assert r.search(NS, "deploy key vault", k=1)[0].text == CORPUS[0]


def test_default_keys_are_stable_hashes() -> None:
    store = InMemoryStore()
    r = HybridRetriever(store)
    (key,) = r.add(NS, [{"text": "x", "kind": "note"}])
    basis = "\x1f".join(["note", "", "", "", "x"])
    assert key == hashlib.sha1(basis.encode()).hexdigest()[:20]


# -- vectors kept by the store (ChromaStore) ----------------------------------------------


class CountingEmbeddings(Embeddings):
    """langchain-core's DeterministicFakeEmbedding, counting every text it embeds."""

    def __init__(self, size: int = 16) -> None:
        self.fake = DeterministicFakeEmbedding(size=size)
        self.texts: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return self.fake.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.texts.append(text)
        return self.fake.embed_query(text)

    def documents(self) -> list[str]:
        """What it embedded besides the probe (the embedder's identity check)."""
        return [t for t in self.texts if t != PROBE_TEXT]


def _ranking(r: HybridRetriever, query: str) -> list[tuple[str, int | None]]:
    return [(h.key, h.dense_rank) for h in r.search(NS, query, k=6)]


def test_vectors_are_kept_in_chroma_and_not_embedded_again(tmp_path: Path) -> None:
    path = tmp_path / "memory"
    first = CountingEmbeddings()
    with ChromaStore(path) as store:
        r = HybridRetriever(store, embedder=Embedder.wrap(first, name="fake16"))
        _add_corpus(r)
        expected = _ranking(r, "deploy key vault")
        assert sorted(first.documents()) == sorted([*CORPUS, "deploy key vault"])
    second = CountingEmbeddings()
    with ChromaStore(path) as store:  # a new store on the same folder, as a new process
        r = HybridRetriever(store, embedder=Embedder.wrap(second, name="fake16"))
        assert _ranking(r, "deploy key vault") == expected
        assert second.documents() == ["deploy key vault"]  # the query only
        assert second.texts.count(PROBE_TEXT) == 1
        # a memory changed behind the retriever's back is embedded again, alone
        store.put(NS, "changed", {"text": "The vault moved to the basement"})
        store.put(NS, "changed", {"text": "The vault moved to the attic"})
        r.refresh(NS)
        assert second.documents() == ["deploy key vault", "The vault moved to the attic"]
    third = CountingEmbeddings()
    with ChromaStore(path) as store:
        r = HybridRetriever(store, embedder=Embedder.wrap(third, name="fake16"))
        r.search(NS, "attic")
        assert third.documents() == ["attic"]  # the write-back of the last run was kept


def test_another_embedder_never_reads_the_kept_vectors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "memory"
    with ChromaStore(path) as store:
        _add_corpus(HybridRetriever(store, embedder=Embedder.wrap(CountingEmbeddings(16))))
    # Another size: its own table; every memory is embedded by the new model.
    other = CountingEmbeddings(size=8)
    with ChromaStore(path) as store:
        r = HybridRetriever(store, embedder=Embedder.wrap(other, name="fake8"))
        hits = r.search(NS, "canine", k=3)
        assert sorted(other.documents()) == sorted([*CORPUS, "canine"])
        assert all(h.dense_rank is not None for h in hits)
    # The same name and size, but other vectors (a replaced model): the kept vectors
    # are dropped and every memory is embedded again; rankings equal a fresh index's.
    with ChromaStore(path) as store:
        wrapped = Embedder.wrap(CountingEmbeddings(16), name="fake16")
        keys = _add_corpus(HybridRetriever(store, embedder=wrapped))
        table = store.embedding_table("fake16", 16, wrapped.probe())
        assert table.count() == len(CORPUS) and not table.reset
    calls: list[str] = []

    def concept16(texts: list[str]) -> list[list[float]]:
        calls.extend(texts)
        return [v[:16] for v in concept_embed(texts)]

    impostor = Embedder.wrap(concept16, name="fake16")
    with ChromaStore(path) as store:
        r = HybridRetriever(store, embedder=impostor, **PLAIN)
        got = [(h.key, h.dense_rank) for h in r.search(NS, "my puppy", k=6)]
        assert set(CORPUS) <= set(calls)
        assert "now embeds differently" in caplog.text
        table = store.embedding_table("fake16", 16, impostor.probe())
        items = [(NS, k, t) for k, t in zip(keys, CORPUS, strict=True)]
        for vector, text in zip(table.get(items), CORPUS, strict=True):
            assert vector is not None
            expected = concept16([text])[0]
            norm = math.sqrt(sum(x * x for x in expected))
            assert vector.tolist() == pytest.approx([x / norm for x in expected], abs=1e-6)
    fresh = HybridRetriever(InMemoryStore(), embedder=concept16, **PLAIN)
    _add_corpus(fresh)
    assert got == [(h.key, h.dense_rank) for h in fresh.search(NS, "my puppy", k=6)]
    assert any(rank is not None for _, rank in got)


def test_deleted_memories_leave_no_vectors(tmp_path: Path) -> None:
    with ChromaStore(tmp_path / "memory") as store:
        e = Embedder.wrap(CountingEmbeddings(), name="fake16")
        r = HybridRetriever(store, embedder=e)
        keys = _add_corpus(r)
        _add_corpus(r, ("memories", "u2"))
        table = store.embedding_table(e.name, e.dims, e.probe())
        assert table.count() == 2 * len(CORPUS)
        r.delete(NS, keys[0])
        assert table.count() == 2 * len(CORPUS) - 1
        store.clear(("memories", "u2"))
        assert table.count() == len(CORPUS) - 1
        assert table.get([(NS, keys[1], CORPUS[1]), (NS, keys[1], "other text")])[1] is None


class FlakyEmbeddings(CountingEmbeddings):
    """Works until `fail` is set; then raises, or puts a NaN in the last vector."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: str | None = None

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors = super().embed_documents(texts)
        if self.fail == "raise":
            raise TimeoutError("embedding server timed out")
        if self.fail == "nan":
            vectors[-1] = [math.nan] * len(vectors[-1])
        return vectors


@pytest.mark.parametrize("how", ["raise", "nan"])
def test_a_failed_add_writes_nothing_and_keeps_what_was_stored(tmp_path: Path, how: str) -> None:
    with ChromaStore(tmp_path / "memory") as store:
        flaky = FlakyEmbeddings()
        r = HybridRetriever(store, embedder=Embedder.wrap(flaky, name="flaky"))
        keys = _add_corpus(r)
        before = {it.key: it.value for it in store.search(NS, limit=100)}
        table = store.embedding_table("flaky", 16, r.embedder.probe())  # type: ignore[union-attr]
        items = [(NS, k, t) for k, t in zip(keys, CORPUS, strict=True)]
        kept = [v.tolist() for v in table.get(items)]
        ranking = _ranking(r, "deploy key vault")
        flaky.fail = how
        batch = [
            {"text": "A brand new memory about the deploy key"},  # new
            {"text": "The deploy key moved to a new vault", "kind": "note"},  # an update
            *({"text": f"filler memory {i}"} for i in range(40)),
        ]
        with pytest.raises(EmbeddingError, match="'flaky'") as info:
            r.add(NS, batch, keys=["new", keys[0], *(f"f{i}" for i in range(40))])
        assert isinstance(info.value, LlmctxError)
        assert {it.key: it.value for it in store.search(NS, limit=100)} == before
        assert [v.tolist() for v in table.get(items)] == kept
        assert table.count() == len(CORPUS)
        flaky.fail = None
        assert _ranking(r, "deploy key vault") == ranking  # the index is untouched too
    with ChromaStore(tmp_path / "memory") as store:  # and so is what a new process reads
        r = HybridRetriever(store, embedder=Embedder.wrap(CountingEmbeddings(), name="flaky"))
        assert _ranking(r, "deploy key vault") == ranking


def test_a_failing_query_embedding_is_an_embedding_error(store: InMemoryStore) -> None:
    def broken(texts: list[str]) -> list[list[float]]:
        raise ConnectionError("no route to host")

    r = HybridRetriever(store, embedder=Embedder.wrap(broken, name="remote", dims=4))
    with pytest.raises(EmbeddingError, match=r"'remote' failed .*no route to host"):
        r.search(NS, "anything")
    with pytest.raises(EmbeddingError, match="'remote'"):
        _add_corpus(r)
    assert store.search(NS) == []
