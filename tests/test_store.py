"""One store suite, run against `ChromaStore` (embedded Chroma in `tmp_path`) and
LangGraph's `InMemoryStore`, so ChromaStore keeps BaseStore's semantics.

Where the two differ the test says so. InMemoryStore crashes on a filter over a missing
field or a non-number (langgraph #7880), matches missing fields with `$ne`, and keeps
listing a namespace whose items are all deleted: those cases are strict xfails for it.
It has no TTL, resets `created_at` on overwrite and ignores `query` without an embedder:
those tests are ChromaStore's only. `tests/test_store_chroma_server.py` runs most of
this suite again against a Chroma server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

from llmctx.runtime.errors import EmbeddingError, LlmctxError
from llmctx.runtime.memory import ChromaStore, MemoryStoreError

DIMS = 32
T0 = 1_700_000_000.0


def bow_embed(texts: list[str]) -> list[list[float]]:
    """A deterministic bag-of-words embedder: each word adds 1 to one of 32 dimensions."""
    vectors = []
    for text in texts:
        v = [0.0] * DIMS
        for token in re.findall(r"\w+", text.lower()):
            v[zlib.crc32(token.encode()) % DIMS] += 1.0
        vectors.append(v)
    return vectors


async def abow_embed(texts: list[str]) -> list[list[float]]:
    await asyncio.sleep(0)
    return bow_embed(texts)


INDEX = {"dims": DIMS, "embed": bow_embed, "fields": ["text"]}


class Clock:
    """Epoch seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """How to build the store under test, and what it supports."""

    kind: str  # "chroma" or "memory"
    factory: Callable[..., BaseStore]
    clock: Clock = field(default_factory=Clock)
    opened: list[BaseStore] = field(default_factory=list)

    @property
    def chroma(self) -> bool:
        return self.kind != "memory"

    def make(self, **kwargs: Any) -> BaseStore:
        store = self.factory(clock=self.clock, **kwargs)
        self.opened.append(store)
        return store

    def upstream_bug(self, request: pytest.FixtureRequest, why: str) -> None:
        """On InMemoryStore, the rest of the test must fail (a strict xfail)."""
        if not self.chroma:
            request.applymarker(pytest.mark.xfail(reason=f"InMemoryStore {why}", strict=True))

    def only_chroma(self, why: str) -> None:
        if not self.chroma:
            pytest.skip(f"InMemoryStore {why}")


def chroma_factory(prefix: str = "test", **common: Any) -> Callable[..., BaseStore]:
    """Build ChromaStores, each on a new collection `<prefix><n>`, sharing `common`."""
    names = (f"{prefix}{n}" for n in itertools.count())

    def make(*, clock: Clock, **kwargs: Any) -> BaseStore:
        kwargs.setdefault("collection", next(names))
        return ChromaStore(**common, clock=clock, **kwargs)

    return make


def memory_factory(*, clock: Clock, index: Any = None, **kwargs: Any) -> BaseStore:
    return InMemoryStore(index=index)


@pytest.fixture(params=["chroma", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "chroma":
        b = Backend("chroma", chroma_factory(path=tmp_path / "memory"))
    else:
        b = Backend("memory", memory_factory)
    yield b
    for store in b.opened:
        if isinstance(store, ChromaStore):
            store.close()


@pytest.fixture
def store(backend: Backend) -> BaseStore:
    return backend.make()


def keys(items: list[Any]) -> list[str]:
    return [i.key for i in items]


# --------------------------------------------------------------------------- basics


def test_put_get_overwrite_delete(store: BaseStore) -> None:
    ns = ("users", "u1")
    assert store.get(ns, "missing") is None
    store.put(ns, "k", {"text": "first", "n": 1})
    item = store.get(ns, "k")
    assert item is not None
    assert (item.namespace, item.key, item.value) == (ns, "k", {"text": "first", "n": 1})
    store.put(ns, "k", {"text": "second"})
    assert store.get(ns, "k").value == {"text": "second"}
    assert keys(store.search(ns)) == ["k"]
    store.delete(ns, "k")
    assert store.get(ns, "k") is None
    assert store.search(ns) == []
    store.delete(ns, "k")  # deleting what is gone is a no-op


def test_a_namespace_is_listed_while_it_holds_items(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    store = backend.make()
    store.put(("users", "u1"), "k", {"v": 1})
    store.put(("users", "u2"), "k", {"v": 1})
    store.delete(("users", "u1"), "k")
    backend.upstream_bug(request, "keeps listing a namespace after its last item is deleted")
    assert store.list_namespaces() == [("users", "u2")]


def test_values_round_trip_as_json(store: BaseStore) -> None:
    value = {
        "text": "héllo ☃ \u0000 \n",
        "big": 2**70,
        "neg": -(2**63),
        "pi": 3.141592653589793,
        "flag": False,
        "none": None,
        "list": [1, "two", {"three": [3.0]}],
        "deep": {"a": {"b": {"c": {"d": "deep"}}}},
        "a.b": "dotted key",
        "": "empty key",
        "long": "x" * 5000,
    }
    store.put(("ns",), "k:with/odd chars ✓", value)
    assert store.get(("ns",), "k:with/odd chars ✓").value == value
    assert store.search(("ns",))[0].value == value


def test_timestamps_are_utc_and_updated_on_overwrite(backend: Backend) -> None:
    store = backend.make()
    store.put(("ns",), "k", {"v": 1})
    first = store.get(("ns",), "k")
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset().total_seconds() == 0
    assert first.created_at <= first.updated_at
    backend.clock.advance(5)
    store.put(("ns",), "k", {"v": 2})
    second = store.get(("ns",), "k")
    assert second.updated_at >= first.updated_at
    found = store.search(("ns",))[0]
    assert (found.created_at, found.updated_at) == (second.created_at, second.updated_at)
    if backend.chroma:  # the clock is the store's: exact times, and creation is kept
        assert first.created_at.timestamp() == T0
        assert second.created_at == first.created_at
        assert second.updated_at.timestamp() == T0 + 5
        assert second.created_at.tzinfo == UTC


def test_batch_reads_see_the_state_before_its_writes_and_the_last_put_wins(
    store: BaseStore,
) -> None:
    ns = ("ns",)
    store.put(ns, "a", {"v": 0})
    results = store.batch(
        [
            PutOp(ns, "a", {"v": 1}),
            GetOp(ns, "a"),
            SearchOp(ns),
            PutOp(ns, "a", {"v": 2}),
            PutOp(ns, "b", {"v": 3}),
            PutOp(ns, "b", None),
            ListNamespacesOp(),
        ]
    )
    assert results[0] is None and results[3] is None
    assert results[1].value == {"v": 0}
    assert [i.value for i in results[2]] == [{"v": 0}]
    assert results[6] == [ns]
    assert store.get(ns, "a").value == {"v": 2}
    assert store.get(ns, "b") is None


# --------------------------------------------------------------------------- namespaces


def test_search_is_scoped_by_whole_label_namespace_prefixes(store: BaseStore) -> None:
    store.put(("users", "a", "mem"), "1", {"text": "a1"})
    store.put(("users", "a"), "2", {"text": "a2"})
    store.put(("users", "ab"), "3", {"text": "ab"})
    store.put(("docs",), "4", {"text": "doc"})
    assert sorted(keys(store.search(()))) == ["1", "2", "3", "4"]
    assert sorted(keys(store.search(("users",)))) == ["1", "2", "3"]
    assert sorted(keys(store.search(("users", "a")))) == ["1", "2"]
    assert keys(store.search(("users", "a", "mem"))) == ["1"]
    assert store.search(("user",)) == []
    assert store.search(("users", "a", "mem", "deeper")) == []


def test_list_namespaces_prefix_suffix_depth_and_pages(store: BaseStore) -> None:
    for ns in [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("x",),
    ]:
        store.put(ns, "k", {"v": 1})
    everything = [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("x",),
    ]
    assert store.list_namespaces() == everything
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "b", "f"),
    ]
    assert store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a",), suffix=("d", "*")) == [
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
    ]
    assert store.list_namespaces(max_depth=1) == [("a",), ("x",)]
    assert store.list_namespaces(limit=2) == everything[:2]
    assert store.list_namespaces(limit=2, offset=2) == everything[2:4]
    assert store.list_namespaces(offset=5) == everything[5:]
    assert store.list_namespaces(prefix=("nope",)) == []
    raw = store.batch(
        [ListNamespacesOp(match_conditions=(MatchCondition("suffix", ("c",)),), max_depth=2)]
    )
    assert raw == [[("a", "b")]]


def test_one_users_items_never_reach_another(backend: Backend) -> None:
    for store in (backend.make(), backend.make(index=INDEX)):
        store.put(("memories", "alice"), "a1", {"text": "alice loves hiking", "kind": "turn"})
        store.put(("memories", "alice"), "a2", {"text": "alice owns a bike", "kind": "note"})
        store.put(("memories", "bob"), "b1", {"text": "bob loves hiking too", "kind": "turn"})
        store.put(("memories", "bobby"), "c1", {"text": "hiking hiking hiking", "kind": "turn"})
        alice = ("memories", "alice")
        for kwargs in ({}, {"query": "hiking"}, {"filter": {"kind": "turn"}}, {"limit": 100}):
            found = store.search(alice, **kwargs)
            assert found and all(i.namespace == alice for i in found), kwargs
        bob = store.search(("memories", "bob"), query="alice hiking bike", limit=50)
        assert keys(bob) == ["b1"]
        assert store.list_namespaces(prefix=("memories", "bob")) == [("memories", "bob")]


def test_invalid_namespaces_raise_langgraphs_error(backend: Backend) -> None:
    store = backend.make()
    for bad in [("a.b",), ("",), ("ok", ""), ("a", 1)]:
        with pytest.raises(InvalidNamespaceError):
            store.put(bad, "k", {"v": 1})  # type: ignore[arg-type]
        with pytest.raises(InvalidNamespaceError):
            store.search(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidNamespaceError):
        store.put((), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError):
        store.list_namespaces(prefix=("a.b",))
    if backend.chroma:  # ops given straight to batch are checked too
        for op in [PutOp(("a.b",), "k", {"v": 1}), GetOp(("x.y",), "k"), SearchOp(("a.",))]:
            with pytest.raises(InvalidNamespaceError):
                store.batch([op])
        with pytest.raises(InvalidNamespaceError):
            store.batch([PutOp((), "k", {"v": 1})])


# --------------------------------------------------------------------------- filters

ROWS: dict[str, dict[str, Any]] = {
    "a": {"n": 1, "s": "apple", "f": 0.5, "nested": {"x": 1, "y": "p"}, "tags": ["t1"]},
    "b": {"n": 2, "s": "banana", "f": 1.5, "nested": {"x": 2, "y": "q"}, "tags": ["t1", "t2"]},
    "c": {"n": 3, "s": "cherry", "f": 2.5, "nested": {"x": 3, "y": "p"}, "tags": []},
    "d": {"n": 4, "s": "date", "f": 3.5, "nested": {"x": 4, "y": "q"}, "tags": ["t2"]},
}


@pytest.fixture
def rows(store: BaseStore) -> BaseStore:
    for k, v in ROWS.items():
        store.put(("fruit",), k, v)
    return store


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"n": 2}, "b"),
        ({"s": "cherry"}, "c"),
        ({"n": {"$eq": 3}}, "c"),
        ({"n": {"$ne": 3}}, "abd"),
        ({"n": {"$gt": 2}}, "cd"),
        ({"n": {"$gte": 2}}, "bcd"),
        ({"n": {"$lt": 2}}, "a"),
        ({"n": {"$lte": 2}}, "ab"),
        ({"f": {"$gt": 1.5, "$lte": 3.5}}, "cd"),
        ({"f": {"$gte": 1}}, "bcd"),
        ({"n": {"$gt": 1.5}}, "bcd"),
        ({"n": 2.0}, "b"),
        ({"n": {"$gte": 2}, "s": {"$ne": "date"}}, "bc"),
        ({"nested": {"y": "p"}}, "ac"),
        ({"nested": {"x": {"$gte": 2}, "y": "q"}}, "bd"),
        ({"tags": ["t1", "t2"]}, "b"),
        ({"tags": []}, "c"),
        ({"s": "nope"}, ""),
        ({"n": {"$gt": 99}}, ""),
    ],
)
def test_filter_operators(rows: BaseStore, flt: dict[str, Any], expected: str) -> None:
    assert sorted(keys(rows.search(("fruit",), filter=flt))) == list(expected)


@pytest.mark.parametrize(
    ("flt", "expected", "inmemory_diverges"),
    [
        ({"missing": "x"}, "", False),
        ({"missing": {"$eq": 1}}, "", False),
        ({"missing": None}, "abc", False),  # a missing field equals None
        ({"opt": None}, "bc", False),  # so does an explicit null
        ({"opt": {"$ne": None}}, "a", False),  # "is set"
        ({"opt": {"$ne": "zzz"}}, "a", True),  # set and different: missing never matches
        ({"missing": {"$ne": "x"}}, "", True),
        ({"missing": {"$gt": 0}}, "", True),  # InMemoryStore: float(None) crashes
        ({"missing": {"$gte": 0}}, "", True),
        ({"missing": {"$lt": 0}}, "", True),
        ({"missing": {"$lte": 0}}, "", True),
        ({"opt": {"$gt": 0}}, "a", True),
        ({"nested": {"deep": {"$gt": 0}}}, "", True),
    ],
)
def test_filters_on_missing_fields_never_match_and_never_crash(
    backend: Backend,
    request: pytest.FixtureRequest,
    flt: dict[str, Any],
    expected: str,
    inmemory_diverges: bool,
) -> None:
    store = backend.make()
    store.put(("ns",), "a", {"opt": 5, "nested": {}})
    store.put(("ns",), "b", {"opt": None})
    store.put(("ns",), "c", {"other": 1})
    if inmemory_diverges:
        backend.upstream_bug(request, "crashes or matches missing fields here (langgraph #7880)")
    assert sorted(keys(store.search(("ns",), filter=flt))) == list(expected)


def test_filters_compare_json_types_without_crashing(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    store = backend.make()
    store.put(("ns",), "num", {"v": 2})
    store.put(("ns",), "str", {"v": "2024-05-01"})
    store.put(("ns",), "bool", {"v": True})
    store.put(("ns",), "list", {"v": [1, 2]})
    backend.upstream_bug(request, "coerces with float() and crashes on non-numbers (#7880)")
    assert keys(store.search(("ns",), filter={"v": {"$gt": 1}})) == ["num"]
    assert keys(store.search(("ns",), filter={"v": {"$gte": "2024-01-01"}})) == ["str"]
    assert keys(store.search(("ns",), filter={"v": {"$lt": "2024-01-01"}})) == []
    assert keys(store.search(("ns",), filter={"v": True})) == ["bool"]
    assert keys(store.search(("ns",), filter={"v": 1})) == []  # True is not 1
    assert sorted(keys(store.search(("ns",), filter={"v": {"$ne": 2}}))) == ["bool", "list", "str"]
    assert keys(store.search(("ns",), filter={"v": {"$in": ["2024-05-01", 7]}})) == ["str"]
    assert sorted(keys(store.search(("ns",), filter={"v": {"$nin": [2, True]}}))) == [
        "list",
        "str",
    ]


def test_bad_filters_raise_clear_errors(backend: Backend) -> None:
    store = backend.make()
    store.put(("ns",), "k", {"n": 1})
    with pytest.raises(ValueError, match=r"\$regex|operator"):
        store.search(("ns",), filter={"n": {"$regex": "x"}})
    if backend.chroma:
        for bad in (
            {"n": {"$gt": None}},
            {"n": {"$in": "abc"}},
            {"n": {"$gt": 1, "plain": 2}},
            ["n"],
        ):
            with pytest.raises(MemoryStoreError) as err:
                store.search(("ns",), filter=bad)  # type: ignore[arg-type]
            assert isinstance(err.value, LlmctxError)
        with pytest.raises(MemoryStoreError, match="limit and offset"):
            store.search(("ns",), limit=-1)


def reference_match(value: dict[str, Any], flt: dict[str, Any]) -> bool:
    """The documented filter semantics, written out independently of the store."""

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    def eq(a: Any, b: Any) -> bool:
        if isinstance(a, bool) or isinstance(b, bool):
            return type(a) is type(b) and a == b
        if number(a) or number(b):
            return number(a) and number(b) and a == b
        return a == b

    def cond(v: Any, c: Any) -> bool:
        if isinstance(c, dict) and any(k.startswith("$") for k in c):
            present = v is not None
            for op, x in c.items():
                if op == "$eq":
                    ok = (not present) if x is None else present and eq(v, x)
                elif op == "$ne":
                    ok = present if x is None else present and not eq(v, x)
                elif op == "$in":
                    ok = any((not present) if y is None else present and eq(v, y) for y in x)
                elif op == "$nin":
                    ok = present and not any(eq(v, y) for y in x)
                elif (number(v) and number(x)) or (isinstance(v, str) and isinstance(x, str)):
                    ok = {"$gt": v > x, "$gte": v >= x, "$lt": v < x, "$lte": v <= x}[op]
                else:
                    ok = False
                if not ok:
                    return False
            return True
        if isinstance(c, dict):
            return isinstance(v, dict) and all(cond(v.get(k), cc) for k, cc in c.items())
        return cond(v, {"$eq": c})

    return all(cond(value.get(k), c) for k, c in flt.items())


def test_filters_agree_with_the_reference_on_random_data(backend: Backend) -> None:
    """Whatever Chroma's `where` pre-selects, results equal the documented semantics."""
    backend.only_chroma("crashes on missing fields and mixed types (#7880)")
    rng = random.Random(7)
    pool: list[Any] = [0, 1, 2, 2.0, 2.5, -3, 2**60, 2**60 + 1, True, False, None]
    pool += ["a", "b", "ab", "B", "2024-01-02", "x" * 200, "", [1], {"k": 1}]
    store = backend.make()
    values = {}
    for n in range(60):
        value: dict[str, Any] = {}
        for name in ("p", "q"):
            if rng.random() < 0.8:
                value[name] = rng.choice(pool)
        if rng.random() < 0.7:
            value["o"] = {"x": rng.choice(pool)}
        values[f"k{n:02}"] = value
    store.batch([PutOp(("r", str(n % 3)), k, v) for n, (k, v) in enumerate(values.items())])
    operands = [x for x in pool if not isinstance(x, dict | list) or x == [1]]
    for _ in range(150):
        field_ = rng.choice(["p", "q", "o"])
        op = rng.choice(["plain", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"])
        if op in ("$gt", "$gte", "$lt", "$lte"):
            x: Any = rng.choice([v for v in operands if isinstance(v, int | float | str)])
            if isinstance(x, bool):
                continue
        elif op in ("$in", "$nin"):
            x = rng.sample(operands, 2)
        else:
            x = rng.choice(operands)
        cond: Any = x if op == "plain" else {op: x}
        flt = {"o": {"x": cond}} if field_ == "o" else {field_: cond}
        limit = rng.choice([3, 100])
        offset = rng.choice([0, 2])
        expected = [k for k, v in values.items() if reference_match(v, flt)]
        got = keys(store.search(("r",), filter=flt, limit=100))
        assert sorted(got) == sorted(expected), flt
        page = keys(store.search(("r",), filter=flt, limit=limit, offset=offset))
        assert page == got[offset : offset + limit], (flt, limit, offset)


# --------------------------------------------------------------------------- pages


def test_pagination_is_complete_and_disjoint(store: BaseStore) -> None:
    store.batch([PutOp(("p",), f"k{n:02}", {"n": n, "even": n % 2 == 0}) for n in range(25)])
    everything = keys(store.search(("p",), limit=100))
    assert sorted(everything) == [f"k{n:02}" for n in range(25)]
    pages = [keys(store.search(("p",), limit=10, offset=o)) for o in (0, 10, 20, 30)]
    assert [len(p) for p in pages] == [10, 10, 5, 0]
    assert list(itertools.chain(*pages)) == everything
    evens = keys(store.search(("p",), filter={"even": True}, limit=100))
    assert len(evens) == 13
    assert keys(store.search(("p",), filter={"even": True}, limit=4, offset=4)) == evens[4:8]
    big = keys(store.search(("p",), filter={"n": {"$gte": 5}}, limit=100))
    assert keys(store.search(("p",), filter={"n": {"$gte": 5}}, limit=3, offset=6)) == big[6:9]
    assert store.search(("p",), limit=0) == []


def test_large_scopes_page_exactly(backend: Backend) -> None:
    """Dense and sparse scopes, exact and inexact filters, deep offsets: all exact."""
    store = backend.make()
    ops, expected_small, expected_big = [], [], []
    for n in range(1000):
        if n % 20 == 7:
            ops.append(PutOp(("small", "u"), f"s{n}", {"kind": "a", "n": n}))
            expected_small.append(f"s{n}")
        else:
            value = {"kind": "abc"[n % 3], "n": n, **({"o": {"k": n}} if n >= 300 else {})}
            ops.append(PutOp(("big",), f"b{n}", value))
            expected_big.append((f"b{n}", value))
    store.batch(ops)
    assert keys(store.search(("small",), limit=100)) == expected_small
    assert keys(store.search(("small",), limit=7, offset=20)) == expected_small[20:27]
    kind_a = [k for k, v in expected_big if v["kind"] == "a"]
    assert (
        keys(store.search(("big",), filter={"kind": "a"}, limit=20, offset=150)) == kind_a[150:170]
    )
    with_o = [k for k, v in expected_big if "o" in v]  # {"o": {}}: "o" is an object
    assert keys(store.search(("big",), filter={"o": {}}, limit=10, offset=300)) == with_o[300:310]
    late = [k for k, v in expected_big if v["n"] >= 500]
    got = keys(store.search(("big",), filter={"n": {"$gte": 500}}, limit=30, offset=200))
    assert got == late[200:230]
    assert keys(store.search(("small",), filter={"n": {"$gt": 900}}, limit=50)) == [
        k for k in expected_small if int(k[1:]) > 900
    ]
    every_c = {k for k, v in expected_big if v["kind"] == "c"}
    pages = [
        keys(store.search((), filter={"kind": "c"}, limit=50, offset=o)) for o in range(0, 400, 50)
    ]
    assert set(itertools.chain(*pages)) == every_c and sum(map(len, pages)) == len(every_c)


# --------------------------------------------------------------------------- query


def test_query_ranks_by_embedding_similarity(backend: Backend) -> None:
    store = backend.make(index=INDEX)
    docs = {
        "pie": "apple pie recipe with cinnamon",
        "car": "car engine repair manual",
        "apple": "apple orchard in autumn",
        "news": "stock market news today",
    }
    for k, text in docs.items():
        store.put(("docs",), k, {"text": text, "len": len(text)})
    store.put(("docs",), "hidden", {"text": "apple pie apple pie", "len": 99}, index=False)
    found = store.search(("docs",), query="apple pie recipe", limit=5)
    assert keys(found)[:2] == ["pie", "apple"]
    scores = [i.score for i in found if i.score is not None]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    assert found[-1].key == "hidden" and found[-1].score is None  # unembedded come last
    assert 0.5 < found[0].score <= 1.0 + 1e-6
    filtered = store.search(("docs",), query="apple pie", filter={"len": {"$lt": 24}})
    assert keys(filtered) == ["apple", "news"]
    page = store.search(("docs",), query="apple pie recipe", limit=2, offset=1)
    assert keys(page) == keys(found)[1:3]
    store.put(("docs",), "pie", {"text": "motor oil for the engine"})  # re-embedded
    assert keys(store.search(("docs",), query="engine oil", limit=1)) == ["pie"]


def test_query_with_several_vectors_per_item_uses_the_best(backend: Backend) -> None:
    index = {**INDEX, "fields": ["turns[*].text"]}
    store = backend.make(index=index)
    store.put(("c",), "one", {"turns": [{"text": "weather is sunny"}, {"text": "pizza time"}]})
    store.put(("c",), "two", {"turns": [{"text": "rain again"}, {"text": "cloudy skies"}]})
    assert keys(store.search(("c",), query="pizza", limit=1)) == ["one"]
    assert keys(store.search(("c",), query="cloudy", limit=1)) == ["two"]
    assert len(store.search(("c",), query="anything")) == 2


def test_query_finds_a_small_namespace_inside_a_big_store(backend: Backend) -> None:
    """Nearest neighbours of the whole store rarely fall in a small scope: still exact.

    (Texts are unique: InMemoryStore fails on equal texts embedded in one batch.)
    """
    store = backend.make(index=INDEX)
    rng = random.Random(3)
    words = ["apple", "pie", "engine", "oil", "rain", "sun", "cat", "dog", "tea", "map"]
    ops = [
        PutOp(("big",), f"b{n}", {"text": " ".join([*rng.choices(words, k=4), f"w{n}"]), "n": n})
        for n in range(120)
    ]
    ops += [
        PutOp(("small", "u"), "s1", {"text": "apple pie", "n": 1, "tag": "x"}),
        PutOp(("small", "u"), "s2", {"text": "engine oil", "n": 2, "tag": "x"}),
        PutOp(("small", "u"), "s3", {"text": "cat and dog", "n": 3, "tag": "y"}),
    ]
    store.batch(ops)
    assert keys(store.search(("small",), query="apple pie", limit=1)) == ["s1"]
    ranked = keys(store.search(("small",), query="engine oil", limit=3))
    assert ranked[0] == "s2" and sorted(ranked) == ["s1", "s2", "s3"]
    odd = store.search(("small",), query="apple pie", filter={"n": {"$ne": 1}}, limit=5)
    assert sorted(keys(odd)) == ["s2", "s3"]
    assert keys(store.search(("small",), query="apple", filter={"tag": {"$ne": "x"}})) == ["s3"]
    store.put(("small", "u"), "s1", {"text": "apple pie", "n": 1, "tag": ["x"]})  # not "x"
    assert keys(store.search(("small",), query="apple", filter={"tag": {"$ne": "x"}})) == [
        "s1",
        "s3",
    ]
    many = store.search(("big",), query="apple pie", filter={"n": {"$gte": 100}}, limit=50)
    assert sorted(i.value["n"] for i in many) == list(range(100, 120))
    scores = [i.score for i in many]
    assert scores == sorted(scores, reverse=True)


def test_query_without_an_embedder_is_lexical(backend: Backend) -> None:
    backend.only_chroma("ignores `query` without an embedder")
    store = backend.make()
    store.put(("m",), "alps", {"text": "We went hiking in the Alps last summer", "turn": 1})
    store.put(("m",), "boots", {"text": "New hiking boots", "turn": 2})
    store.put(("m",), "cars", {"text": "The car needs new tyres", "turn": 3})
    store.put(("m",), "quiet", {"text": "hiking alps"}, index=False)
    found = store.search(("m",), query="Hiking ALPS?")
    assert keys(found) == ["alps", "boots", "cars", "quiet"]
    assert all(0.0 <= i.score <= 1.0 for i in found[:3]) and found[-1].score is None
    assert found[0].score > found[1].score > found[2].score == 0.0
    assert keys(store.search(("m",), query="hiking", filter={"turn": {"$gte": 2}})) == [
        "boots",
        "cars",
    ]
    shorter_first = keys(store.search(("m",), query="hiking", limit=2))
    assert shorter_first == ["boots", "alps"]  # BM25 favours the shorter of two matches
    assert keys(store.search(("m",), query="hiking", limit=1, offset=1)) == ["alps"]
    store.put(("m",), "fields", {"title": "tyres", "body": "x"}, index=["title"])
    assert keys(store.search(("m",), query="tyres", limit=2)) == ["fields", "cars"]


# --------------------------------------------------------------------------- TTL


def test_ttl_hides_expired_items_everywhere_and_sweeps_them(backend: Backend) -> None:
    backend.only_chroma("has no TTL")
    store = backend.make()
    clock = backend.clock
    store.put(("t", "a"), "short", {"text": "short lived"}, ttl=1)
    store.put(("t", "b"), "long", {"text": "long lived"}, ttl=10)
    store.put(("t", "c"), "forever", {"text": "no ttl"})
    clock.advance(30)
    assert store.get(("t", "a"), "short", refresh_ttl=False) is not None
    clock.advance(31)  # 61 s after the put
    assert store.get(("t", "a"), "short") is None
    assert sorted(keys(store.search(("t",)))) == ["forever", "long"]
    assert keys(store.search(("t",), query="lived")) == ["long", "forever"]
    assert store.list_namespaces() == [("t", "b"), ("t", "c")]
    clock.advance(3600)
    assert store.list_namespaces() == [("t", "c")]
    assert store.sweep_ttl() == 0  # already swept on access
    assert store.count() == 1


def test_ttl_refreshes_on_read_unless_asked_not_to(backend: Backend) -> None:
    backend.only_chroma("has no TTL")
    store = backend.make()
    clock = backend.clock
    store.put(("t",), "read", {"v": 1}, ttl=1)
    store.put(("t",), "searched", {"v": 2}, ttl=1)
    store.put(("t",), "untouched", {"v": 3}, ttl=1)
    for _ in range(3):
        clock.advance(45)
        assert store.get(("t",), "read") is not None
        assert keys(store.search(("t",), filter={"v": 2})) == ["searched"]
    assert store.get(("t",), "untouched", refresh_ttl=False) is None
    clock.advance(45)
    assert store.get(("t",), "read", refresh_ttl=False) is not None
    clock.advance(30)
    assert store.get(("t",), "read") is None
    assert store.search(("t",), refresh_ttl=False) == []


def test_ttl_config_default_and_no_refresh(backend: Backend) -> None:
    backend.only_chroma("has no TTL")
    store = backend.make(ttl={"default_ttl": 2, "refresh_on_read": False})
    clock = backend.clock
    store.put(("t",), "default", {"v": 1})
    store.put(("t",), "own", {"v": 2}, ttl=10)
    store.put(("t",), "never", {"v": 3}, ttl=None)
    clock.advance(100)
    assert store.get(("t",), "default") is not None  # read, but not refreshed
    clock.advance(30)
    assert store.get(("t",), "default") is None
    assert sorted(keys(store.search(("t",)))) == ["never", "own"]
    clock.advance(10**6)
    assert keys(store.search(("t",))) == ["never"]


def test_overwrite_resets_ttl_and_expired_items_start_afresh(backend: Backend) -> None:
    backend.only_chroma("has no TTL")
    store = backend.make()
    clock = backend.clock
    store.put(("t",), "k", {"v": 1}, ttl=1)
    store.put(("t",), "k", {"v": 2})  # no TTL any more
    clock.advance(120)
    assert store.sweep_ttl() == 0
    assert store.get(("t",), "k").value == {"v": 2}
    store.put(("t",), "e", {"v": 1}, ttl=1)
    clock.advance(120)
    store.put(("t",), "e", {"v": 2})  # the old one had expired: a new item
    assert store.get(("t",), "e").created_at.timestamp() == clock.now
    with pytest.raises(MemoryStoreError, match="ttl"):
        store.put(("t",), "bad", {"v": 1}, ttl=-1)


# --------------------------------------------------------------------------- async


def test_async_api_matches_the_sync_one(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.make(index={**INDEX, "embed": abow_embed})
        await store.aput(("a", "u1"), "k1", {"text": "async apple pie"})
        await store.aput(("a", "u2"), "k2", {"text": "async car engine"})
        assert (await store.aget(("a", "u1"), "k1")).value == {"text": "async apple pie"}
        found = await store.asearch(("a",), query="apple pie", limit=1)
        assert keys(found) == ["k1"] and found[0].score is not None
        assert await store.alist_namespaces(prefix=("a",)) == [("a", "u1"), ("a", "u2")]
        results = await store.abatch(
            [
                GetOp(("a", "u2"), "k2"),
                SearchOp(("a",), {"text": "async car engine"}),
                PutOp(("a", "u3"), "k3", {"text": "third"}),
                ListNamespacesOp(max_depth=1),
            ]
        )
        assert results[0].key == "k2" and keys(results[1]) == ["k2"] and results[3] == [("a",)]
        await store.adelete(("a", "u1"), "k1")
        assert await store.aget(("a", "u1"), "k1") is None
        assert sorted(keys(await store.asearch(("a",)))) == ["k2", "k3"]

    asyncio.run(scenario())


# --------------------------------------------------------------------------- Chroma only


def test_values_must_be_json(backend: Backend) -> None:
    backend.only_chroma("accepts any Python object")
    store = backend.make()
    from datetime import datetime

    for bad in (
        {"when": datetime(2024, 1, 1)},
        {"nan": float("nan")},
        {1: "int key"},
        {"nested": {"set": {1, 2}}},
        ["not", "a", "mapping"],
    ):
        with pytest.raises(MemoryStoreError) as err:
            store.put(("ns",), "k", bad)  # type: ignore[arg-type]
        assert isinstance(err.value, LlmctxError)
    with pytest.raises(MemoryStoreError):  # one bad op fails the batch before any write
        store.batch([PutOp(("ns",), "good", {"v": 1}), PutOp(("ns",), "bad", {"v": {1, 2}})])
    assert store.search(("ns",)) == []


def test_persists_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "memory"
    with ChromaStore(path, collection="persist", index=INDEX) as store:
        store.put(("u", "1"), "k", {"text": "remember the deploy key", "n": 1})
        store.put(("u", "2"), "gone", {"text": "temporary"})
        store.delete(("u", "2"), "gone")
    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_store import INDEX
from llmctx.runtime.memory import ChromaStore
with ChromaStore({str(path)!r}, collection="persist", index=INDEX) as store:
    item = store.get(("u", "1"), "k")
    hits = store.search(("u",), query="deploy key", limit=1)
    print(json.dumps({{"value": item.value, "hits": [h.key for h in hits],
                      "score": hits[0].score, "ns": store.list_namespaces()}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["value"] == {"text": "remember the deploy key", "n": 1}
    assert got["hits"] == ["k"] and got["score"] > 0.5
    assert got["ns"] == [["u", "1"]]


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = ChromaStore(tmp_path / "m", collection="closing")
    store.put(("n",), "k", {"v": 1})
    store.close()
    store.close()  # idempotent
    with pytest.raises(MemoryStoreError, match="closed"):
        store.get(("n",), "k")
    with ChromaStore(tmp_path / "m", collection="closing") as again:
        assert again.get(("n",), "k").value == {"v": 1}


def test_from_settings_uses_the_workspace(tmp_path: Path) -> None:
    from llmctx.runtime.settings import Settings

    settings = Settings.load(workspace=tmp_path / ".llm")
    with ChromaStore.from_settings(settings) as store:
        store.put(("s",), "k", {"v": 1})
        assert store.location == str((tmp_path / ".llm" / "memory").resolve())
    assert any((tmp_path / ".llm" / "memory").iterdir())
    with ChromaStore() as default:  # no arguments: .llm/memory of the current folder
        assert default.location == str((tmp_path / ".llm" / "memory").resolve())
        assert default.get(("s",), "k").value == {"v": 1}


def test_bad_construction_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MemoryStoreError, match="at most one"):
        ChromaStore(tmp_path, url="http://127.0.0.1:1")
    with pytest.raises(MemoryStoreError, match="collection name"):
        ChromaStore(tmp_path, collection="x")
    with pytest.raises(MemoryStoreError, match="URL"):
        ChromaStore(url="ftp://host")
    with pytest.raises(MemoryStoreError, match="cannot reach"):
        ChromaStore(url="http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(MemoryStoreError, match="embed"):
        ChromaStore(tmp_path, index={"dims": 3})  # type: ignore[typeddict-item]
    store = ChromaStore(tmp_path, collection="dims", index={**INDEX, "dims": 3})
    with pytest.raises(EmbeddingError, match="dims"):
        store.put(("n",), "k", {"text": "x"})


@pytest.mark.parametrize("how", ["raise", "nan", "count"])
def test_a_failing_index_embedder_writes_nothing(tmp_path: Path, how: str) -> None:
    """An embedder failure is an EmbeddingError, raised before any write of the batch."""
    fail: list[str] = []

    def flaky(texts: list[str]) -> list[list[float]]:
        vectors = bow_embed(texts)
        if fail and fail[0] == "raise":
            raise TimeoutError("embedding server timed out")
        if fail and fail[0] == "nan":
            vectors[-1][0] = float("nan")  # the last text of the batch: failing midway
        if fail and fail[0] == "count":
            vectors = vectors[:-1]
        return vectors

    index = {"dims": DIMS, "embed": flaky, "fields": ["text"]}
    with ChromaStore(tmp_path / "m", collection="flaky", index=index) as store:
        store.put(("n",), "a", {"text": "apple pie"})
        store.put(("n",), "b", {"text": "engine oil"})
        before = [(i.key, i.value) for i in store.search(("n",), query="engine oil")]
        fail.append(how)
        ops = [
            PutOp(("n",), "a", {"text": "apple crumble"}),  # an update
            PutOp(("n",), "b", None),  # a delete
            *(PutOp(("n",), f"new{i}", {"text": f"new memory {i}"}) for i in range(30)),
        ]
        with pytest.raises(EmbeddingError, match="index embedder") as info:
            store.batch(ops)
        assert isinstance(info.value, LlmctxError)
        with pytest.raises(EmbeddingError):
            asyncio.run(store.abatch(ops))
        fail.clear()
        assert [(i.key, i.value) for i in store.search(("n",), query="engine oil")] == before
        assert store.count() == 2


def test_chroma_embedding_functions_and_no_default_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chroma's default ONNX model (a download) is never called; a Chroma EF is usable."""
    from chromadb.api.types import EmbeddingFunction
    from chromadb.utils.embedding_functions import DefaultEmbeddingFunction

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Chroma's default embedding function was used")

    monkeypatch.setattr(DefaultEmbeddingFunction, "__call__", refuse)

    class BowFunction(EmbeddingFunction):
        def __init__(self) -> None:
            pass

        def __call__(self, input: list[str]) -> list[Any]:
            import numpy as np

            return [np.array(v, dtype=np.float32) for v in bow_embed(list(input))]

    with ChromaStore(tmp_path / "m", collection="plain") as plain:
        plain.put(("n",), "k", {"text": "lexical only"})
        assert keys(plain.search(("n",), query="lexical")) == ["k"]
    index = {"dims": DIMS, "embed": BowFunction(), "fields": ["text"]}
    with ChromaStore(tmp_path / "m", collection="chroma-ef", index=index) as store:
        store.put(("n",), "a", {"text": "apple pie"})
        store.put(("n",), "b", {"text": "engine oil"})
        assert keys(store.search(("n",), query="engine", limit=1)) == ["b"]


def test_count_and_clear(backend: Backend) -> None:
    backend.only_chroma("has no count or clear")
    store = backend.make(index=INDEX)
    for user in ("u1", "u2"):
        for n in range(3):
            store.put(("m", user), f"{user}-{n}", {"text": f"memory {n} of {user}"})
    assert store.count() == 6 and store.count(("m", "u1")) == 3
    assert store.clear(("m", "u1")) == 3
    assert store.count() == 3 and store.search(("m", "u1"), query="memory") == []
    assert keys(store.search(("m",), query="memory 1 of u2", limit=1)) == ["u2-1"]
    assert store.clear() == 3 and store.list_namespaces() == []
