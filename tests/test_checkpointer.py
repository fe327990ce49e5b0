"""`LlmctxSaver` beyond the conformance suite: storage scheme, graphs, durability.

The reference for every value read back is LangGraph's own `InMemorySaver` running
the same graph, so the incremental storage must be invisible to a graph.
"""

from __future__ import annotations

import asyncio
import operator
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypedDict
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, MessagesState, StateGraph

from llmctx.graphs import build_context_graph
from llmctx.nodes import ContextState
from llmctx.runtime._checkpoint_blobs import (
    APPEND,
    FULL,
    SPILL,
    W_BLOB,
    W_PREFIX,
    BlobCache,
    BlobReader,
    WriteEntry,
    source_of,
)
from llmctx.runtime._checkpoint_body import decode_body, encode_body, flatten, unflatten
from llmctx.runtime._checkpoint_codec import REF_COST
from llmctx.runtime._checkpoint_keys import (
    pack_id,
    pack_ts,
    pack_version,
    unpack_id,
    unpack_ts,
    unpack_version,
)
from llmctx.runtime._checkpoint_schema import APPLICATION_ID
from llmctx.runtime.checkpointer import CheckpointStoreError, LlmctxSaver
from llmctx.runtime.errors import LlmctxError

TEXT = "the quick brown fox jumps over the lazy dog while the model counts tokens " * 8


def _chat_graph(checkpointer: Any) -> Any:
    def chat(state: MessagesState) -> dict[str, Any]:
        n = len(state["messages"])
        return {"messages": [AIMessage(f"reply {n}: {TEXT}", id=f"ai-{n}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    builder.add_edge("chat", END)
    return builder.compile(checkpointer=checkpointer)


def _run_chat(graph: Any, thread: str, turns: int, start: int = 0) -> None:
    for i in range(start, start + turns):
        config = {"configurable": {"thread_id": thread}, "metadata": {"run_id": f"{thread}-run{i}"}}
        graph.invoke({"messages": [HumanMessage(f"question {i}: {TEXT}", id=f"h-{i}")]}, config)


def _history_values(graph: Any, thread: str) -> list[tuple[int, dict[str, Any]]]:
    config = {"configurable": {"thread_id": thread}}
    return [(s.metadata["step"], s.values) for s in graph.get_state_history(config)]


def _kinds(saver: LlmctxSaver, channel: str) -> list[int]:
    rows = saver.conn.execute(
        "SELECT kind FROM blobs b JOIN names n ON n.id = b.ch WHERE n.name = ?", (channel,)
    )
    return [r[0] for r in rows]


def _compressed_against_another(saver: LlmctxSaver, channel: str) -> int:
    """How many rows of `channel` are stored compressed against another row."""
    return saver.conn.execute(
        "SELECT count(*) FROM blobs b JOIN names n ON n.id = b.ch "
        "WHERE n.name = ? AND b.src_ch IS NOT NULL",
        (channel,),
    ).fetchone()[0]


def _write_rows(saver: LlmctxSaver) -> list[tuple[int, list[tuple[str, WriteEntry]]]]:
    """Every `writes` row: its stored size and its writes (channel name, entry)."""
    names = dict(saver.conn.execute("SELECT id, name FROM names"))
    out = []
    rows = saver.conn.execute("SELECT t, z, data, src_ch, src_ver FROM writes").fetchall()
    for t, z, data, src_ch, src_ver in rows:
        reader = BlobReader(saver.conn, saver.serde, BlobCache(0), saver._names, t)
        entries = [(names[e.ch], e) for e in reader.writes(z, data, source_of(src_ch, src_ver))]
        out.append((len(data) + (REF_COST if src_ch is not None else 0), entries))
    return out


def _write_kinds(saver: LlmctxSaver, channel: str) -> list[int]:
    return [e.kind for _, entries in _write_rows(saver) for ch, e in entries if ch == channel]


@pytest.fixture
def saver(tmp_path: Path) -> LlmctxSaver:
    with LlmctxSaver(tmp_path / "checkpoints.sqlite") as s:
        yield s


# -- storage scheme -------------------------------------------------------------------


def test_messages_are_stored_incrementally_and_read_back_exactly(saver: LlmctxSaver) -> None:
    graph, reference = _chat_graph(saver), _chat_graph(InMemorySaver())
    _run_chat(graph, "t", 25)
    _run_chat(reference, "t", 25)
    assert _history_values(graph, "t") == _history_values(reference, "t")
    kinds = _kinds(saver, "messages")
    assert kinds.count(APPEND) >= 45 and kinds.count(FULL) <= 3
    # Each message is stored once: the pending write that carried it is a reference
    # to the row of the history that stores it since.
    assert _write_kinds(saver, "messages").count(W_BLOB) >= 45
    # The input message is stored twice (the input, then the history): the second
    # copy is compressed against the first.
    assert _compressed_against_another(saver, "messages") >= 20


def test_a_fresh_process_reads_what_another_wrote(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with LlmctxSaver(path) as first:
        _run_chat(_chat_graph(first), "t", 12)
        expected = _history_values(_chat_graph(first), "t")
    with LlmctxSaver(path) as second:  # cold cache: every value from disk
        graph = _chat_graph(second)
        assert _history_values(graph, "t") == expected
        _run_chat(graph, "t", 3, start=12)  # and keeps appending correctly
        assert len(graph.get_state({"configurable": {"thread_id": "t"}}).values["messages"]) == 30


def test_context_frame_is_delta_compressed_and_summarized(saver: LlmctxSaver) -> None:
    graph = build_context_graph(checkpointer=saver, budget=600)
    reference = build_context_graph(checkpointer=InMemorySaver(), budget=600)
    config = {"configurable": {"thread_id": "c"}}
    for i in range(12):
        turn = {"messages": [HumanMessage(f"q{i} {TEXT}", id=f"h{i}"), AIMessage("ok", id=f"a{i}")]}
        graph.invoke(turn, config)
        reference.invoke(turn, config)
    assert _history_values(graph, "c") == _history_values(reference, "c")
    # Every frame after the first is stored against its previous version, and the
    # pipeline's pending write of it is a reference to that row.
    assert _compressed_against_another(saver, "context") >= 10
    assert set(_write_kinds(saver, "context")) == {W_BLOB}

    # The summary texts a frame repeats from its previous version are stored once.
    elided = saver.conn.execute(
        "SELECT count(*) FROM blobs WHERE summary IS NOT NULL AND src_ch IS NOT NULL"
    ).fetchone()[0]
    assert elided >= 10
    _assert_versions_match_frames(saver, graph, config)
    rows = saver.list_versions("c")
    changed = saver.list_versions("c", changed_only=True)
    assert [r.turn for r in changed] == list(range(12, 0, -1))
    assert saver.list_versions("c", limit=2, before=rows[0].checkpoint_id) == rows[1:3]
    # Deleting the versions the others' summaries were stored against keeps them whole.
    saver.delete_checkpoints("c", [r.checkpoint_id for r in changed[3:9]])
    _assert_versions_match_frames(saver, graph, config)
    with LlmctxSaver(saver.path) as cold:
        _assert_versions_match_frames(cold, graph, config)


def _assert_versions_match_frames(saver: LlmctxSaver, graph: Any, config: Any) -> None:
    rows = saver.list_versions("c")
    states = list(graph.get_state_history(config))
    assert [r.checkpoint_id for r in rows] == [
        s.config["configurable"]["checkpoint_id"] for s in states
    ]
    for row, state in zip(rows, states, strict=True):
        frame = state.values.get("context")
        if frame is None:
            assert row.op is None and row.turn is None
            continue
        assert (row.op, row.reason) == (frame["last_op"]["op"], frame["last_op"]["reason"])
        assert (row.template, row.turn) == (frame["template"], frame["turn"])
        assert row.window_tokens == frame["window_tokens"]
        assert row.history_tokens == frame["history_tokens"]
        assert row.history_messages == frame["history_messages"]
        assert row.tokens_exact == frame["tokenizer"]["exact"]


def test_fork_from_an_old_checkpoint_keeps_both_branches(saver: LlmctxSaver) -> None:
    def scenario(checkpointer: Any) -> tuple[Any, Any, Any]:
        graph = build_context_graph(checkpointer=checkpointer, budget=2_000)
        config = {"configurable": {"thread_id": "f"}}
        for i in range(6):
            graph.invoke({"messages": [HumanMessage(f"q{i} {TEXT}", id=f"h{i}")]}, config)
        head = graph.get_state(config)
        old = next(
            s
            for s in graph.get_state_history(config)
            if s.values.get("context", {}).get("turn") == 3
        )
        forked = graph.update_state(old.config, {"messages": [HumanMessage("fork", id="fork")]})
        graph.invoke({"messages": [HumanMessage("after fork", id="after")]}, forked)
        return graph, head, old

    graph, head, old = scenario(saver)
    ref_graph, ref_head, _ = scenario(InMemorySaver())
    config = {"configurable": {"thread_id": "f"}}
    branch = graph.get_state(config)
    assert branch.values == ref_graph.get_state(config).values
    ids = [m.id for m in branch.values["messages"]]
    assert ids == [m.id for m in old.values["messages"]] + ["fork", "after"]
    # The original head and every checkpoint on its branch still read back intact.
    assert graph.get_state(head.config).values == head.values == ref_head.values
    assert _history_values(graph, "f") == _history_values(ref_graph, "f")


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["append", "replace", "fork", "frame"]), st.integers(0, 5)),
        min_size=1,
        max_size=25,
    )
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_sequence_of_puts_reads_back_exactly(
    tmp_path: Path, ops: list[tuple[str, int]]
) -> None:
    """Appends, rewrites and forks, written with deltas, read back as they were put."""
    path = tmp_path / f"p{abs(hash(tuple(ops)))}.sqlite"
    with LlmctxSaver(path, delta_depth=3, append_ratio=0.5) as s:
        expected: dict[str, dict[str, Any]] = {}
        heads: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        values: dict[str, Any] = {"items": [], "frame": {"n": 0, "window": list(range(50))}}
        versions: dict[str, Any] = {}
        parent: dict[str, Any] = {"configurable": {"thread_id": "h", "checkpoint_ns": ""}}
        for op, n in ops:
            values = {"items": list(values["items"]), "frame": dict(values["frame"])}
            versions = dict(versions)
            if op == "fork" and heads:
                parent, values, versions = heads[n % len(heads)]
                values = {"items": list(values["items"]), "frame": dict(values["frame"])}
                versions = dict(versions)
            elif op == "append":
                values["items"] = values["items"] + [f"m{len(heads)}-{k}" for k in range(n)]
            elif op == "replace":
                values["items"] = [f"r{len(heads)}"] * n
            else:
                values["frame"] = {**values["frame"], "n": n, "window": list(range(50 + n))}
            new = {ch: s.get_next_version(versions.get(ch), None) for ch in values}
            versions.update(new)
            checkpoint = {
                "v": 4,
                "id": f"{len(heads):08d}",
                "ts": "2026-01-01T00:00:00+00:00",
                "channel_values": values,
                "channel_versions": versions,
                "versions_seen": {},
                "updated_channels": list(new),
            }
            parent = s.put(parent, checkpoint, {"source": "loop", "step": len(heads)}, new)
            expected[checkpoint["id"]] = values
            heads.append((parent, values, versions))
        for cid, vals in expected.items():
            got = s.get_tuple(
                {"configurable": {"thread_id": "h", "checkpoint_ns": "", "checkpoint_id": cid}}
            )
            assert got is not None and got.checkpoint["channel_values"] == vals
    with LlmctxSaver(path) as cold:
        listed = {t.checkpoint["id"]: t.checkpoint["channel_values"] for t in cold.list(None)}
        assert listed == expected


# -- the compact layout: packed keys, body deltas, write references, spill -------------

_UUIDS = st.uuids().map(str)


@given(
    ids=st.lists(st.one_of(_UUIDS, st.text(max_size=40), _UUIDS.map(str.upper)), max_size=6),
    versions=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 10**10 - 1), st.integers(0, 2**40 - 1)).map(
                lambda cr: f"{cr[0]:010d}.{cr[1]:010x}"
            ),
            st.text(max_size=30),
            st.integers(),
        ),
        max_size=6,
    ),
    times=st.lists(
        st.one_of(
            st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
            st.datetimes(timezones=st.timezones()).map(datetime.isoformat),
            st.datetimes().map(datetime.isoformat),
            st.text(max_size=30),
        ),
        max_size=6,
    ),
)
def test_packed_keys_read_back_exactly_and_keep_their_order(
    ids: list[str], versions: list[Any], times: list[str]
) -> None:
    for value in ids:
        packed = pack_id(value)
        assert unpack_id(packed) == value
        assert isinstance(packed, bytes) == (
            value == str(UUID(value)) if _is_uuid(value) else False
        )
    uuids = [i for i in ids if isinstance(pack_id(i), bytes)]
    assert sorted(uuids) == sorted(uuids, key=pack_id)  # blob order is string order
    for version in versions:
        assert unpack_version(pack_version(version)) == str(version)
    for ts in times:
        for cid in (str(uuid6()), "not-a-uuid", str(uuid4())):
            packed_id = pack_id(cid)
            assert unpack_ts(pack_ts(ts, packed_id), packed_id) == ts


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return len(value) == 36


_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # what msgpack (and so the serde) can hold
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["0000000003.00000000ab", "0000000004.ffffffffff"]),
    st.lists(st.text(max_size=5), max_size=3),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
    st.just({}),
    st.dictionaries(st.integers(0, 9), st.integers(-(2**63), 2**63 - 1), max_size=2),
)
_BODIES = st.recursive(
    _LEAVES, lambda inner: st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=20
).filter(lambda b: isinstance(b, dict))


@given(bodies=st.lists(_BODIES, min_size=1, max_size=5))
def test_checkpoint_bodies_are_stored_as_deltas_that_read_back_exactly(
    bodies: list[dict[str, Any]],
) -> None:
    serde = JsonPlusSerializer()
    names: dict[str, int] = {}
    by_id: dict[int, str] = {}

    def name_id(name: str) -> int:
        by_id.setdefault(names.setdefault(name, len(names)), name)
        return names[name]

    parent = None
    for body in bodies:
        flat = flatten(body)
        assert unflatten(flat) == body
        data = encode_body(flat, parent, name_id, serde)
        assert decode_body(data, parent, by_id.__getitem__, serde) == flat
        parent = flat


def test_a_langgraph_step_body_is_a_few_dozen_bytes(saver: LlmctxSaver) -> None:
    graph = _chat_graph(saver)
    _run_chat(graph, "b", 12)
    bodies = saver.conn.execute("SELECT depth, length(body) FROM checkpoints").fetchall()
    deltas = [size for depth, size in bodies if depth > 0]
    assert len(deltas) >= len(bodies) - 2
    assert max(deltas) < 80
    ids = saver.conn.execute("SELECT DISTINCT typeof(id), length(id) FROM checkpoints").fetchall()
    assert ids == [("blob", 16)]  # LangGraph's UUID ids, packed
    # And a fresh process (no cached bodies) reads every checkpoint back the same.
    with LlmctxSaver(saver.path) as cold:
        assert _history_values(_chat_graph(cold), "b") == _history_values(graph, "b")


def _spill_rows(saver: LlmctxSaver) -> int:
    dangling = saver.conn.execute(
        "SELECT count(*) FROM blobs WHERE typeof(data) = 'integer' "
        "AND data NOT IN (SELECT id FROM spill)"
    ).fetchone()[0]
    assert dangling == 0
    return saver.conn.execute("SELECT count(*) FROM spill").fetchone()[0]


def test_large_values_spill_and_are_freed_with_their_rows(saver: LlmctxSaver) -> None:
    big = os.urandom(4 * SPILL).hex()  # does not compress below the spill threshold
    version = saver.get_next_version(None, None)

    def put(thread: str, value: str) -> RunnableConfig:
        checkpoint = {
            "v": 4,
            "id": str(uuid6()),
            "ts": "2026-01-01T00:00:00+00:00",
            "channel_values": {"doc": value},
            "channel_versions": {"doc": version},
            "versions_seen": {},
            "updated_channels": ["doc"],
        }
        config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        return saver.put(config, checkpoint, {"step": 0}, {"doc": version})

    config = put("s", big)
    assert _spill_rows(saver) == 1
    saver.copy_thread("s", "s2")
    assert _spill_rows(saver) == 2  # the copy owns its payload
    saver.delete_thread("s")
    assert _spill_rows(saver) == 1
    copy = {"configurable": {**config["configurable"], "thread_id": "s2"}}
    got = saver.get_tuple(copy)
    assert got is not None and got.checkpoint["channel_values"]["doc"] == big
    put("s2", big[::-1])  # the same version written again: the old payload is freed
    assert _spill_rows(saver) == 1
    got = saver.get_tuple({"configurable": {"thread_id": "s2"}})
    assert got is not None and got.checkpoint["channel_values"]["doc"] == big[::-1]


@pytest.mark.parametrize("writes_first", [True, False], ids=["writes-first", "put-first"])
def test_a_write_the_next_checkpoint_stores_becomes_a_reference(
    saver: LlmctxSaver, writes_first: bool
) -> None:
    """LangGraph saves a step's writes and the next checkpoint in either order; both
    ways the write ends up a reference to the row that stores its value."""
    first = [HumanMessage(f"question {TEXT}", id="h")]
    reply = [AIMessage(f"answer {TEXT}", id="a")]
    base = {"configurable": {"thread_id": "r", "checkpoint_ns": ""}}
    v1 = saver.get_next_version(None, None)
    v2 = saver.get_next_version(v1, None)

    def checkpoint(cid: str, items: list[Any], version: str) -> dict[str, Any]:
        return {
            "v": 4,
            "id": cid,
            "ts": "2026-01-01T00:00:00+00:00",
            "channel_values": {"messages": items},
            "channel_versions": {"messages": version},
            "versions_seen": {},
            "updated_channels": ["messages"],
        }

    c1 = saver.put(base, checkpoint(str(uuid6()), first, v1), {"step": 0}, {"messages": v1})
    second = checkpoint(str(uuid6()), [*first, *reply], v2)
    if writes_first:
        saver.put_writes(c1, [("messages", reply)], "task")
        saver.put(c1, second, {"step": 1}, {"messages": v2})
    else:
        saver.put(c1, second, {"step": 1}, {"messages": v2})
        saver.put_writes(c1, [("messages", reply)], "task")
    assert _write_kinds(saver, "messages") == [W_BLOB]
    assert _kinds(saver, "messages") == [FULL, APPEND]
    for reader in (saver, LlmctxSaver(saver.path)):
        got = reader.get_tuple(c1)
        assert got is not None and got.pending_writes == [("task", "messages", reply)]


# -- an agent graph whose first node writes the whole history back every turn -------


def _agent_graph(checkpointer: Any, replace: dict[str, int] | None = None) -> Any:
    """START -> echo -> context pipeline (a subgraph node) -> model.

    The `echo` node writes the whole `messages` list back every turn, as user nodes
    that return `state["messages"]` do (llmctx's own pipeline returns only the frame),
    so the saver must store only what is new. While
    `replace["from"]` <= the message count, the model also rewrites message
    `replace["at"]` by id (not an append).
    """

    def model(state: ContextState) -> dict[str, Any]:
        n = len(state["messages"])
        out: list[Any] = [AIMessage(f"answer {n}: {TEXT}", id=f"ai-{n}")]
        if replace is not None and n >= replace["from"]:
            old = state["messages"][replace["at"]]
            out.append(HumanMessage(f"edited at {n}", id=old.id))
        return {"messages": out}

    def echo(state: ContextState) -> dict[str, Any]:
        return {"messages": list(state["messages"])}

    builder = StateGraph(ContextState)
    builder.add_node("echo", echo)
    builder.add_node("context", build_context_graph(budget=700))
    builder.add_node("model", model)
    builder.add_edge(START, "echo")
    builder.add_edge("echo", "context")
    builder.add_edge("context", "model")
    return builder.compile(checkpointer=checkpointer)


def _run_agent(graph: Any, thread: str, turns: int, start: int = 0) -> None:
    for i in range(start, start + turns):
        config = {"configurable": {"thread_id": thread}, "metadata": {"run_id": f"{thread}-{i}"}}
        graph.invoke({"messages": [HumanMessage(f"q{i}: {TEXT} {i}", id=f"h{i}")]}, config)


def _full_history(saver: Any, thread: str) -> list[tuple[Any, ...]]:
    """Every checkpoint's values and pending writes (channel, value), oldest first."""
    out = []
    for t in reversed(list(saver.list({"configurable": {"thread_id": thread}}))):
        writes = sorted(((c, repr(v)) for _, c, v in t.pending_writes), key=repr)
        out.append((t.metadata.get("step"), t.checkpoint["channel_values"], writes))
    return out


def test_a_node_returning_the_whole_history_stores_only_what_is_new(saver: LlmctxSaver) -> None:
    graph, reference = _agent_graph(saver), _agent_graph(InMemorySaver())
    _run_agent(graph, "a", 12)
    _run_agent(reference, "a", 12)
    assert _full_history(saver, "a") == _full_history(reference.checkpointer, "a")
    prefix = [
        size
        for size, entries in _write_rows(saver)
        if any(ch == "messages" and e.kind == W_PREFIX for ch, e in entries)
    ]
    assert len(prefix) >= 11 and max(prefix) < 600  # never the whole list again
    # Each message is stored about once: later copies are references to it, or
    # compressed against it.
    refs = _write_kinds(saver, "messages").count(W_BLOB)
    assert refs + _compressed_against_another(saver, "messages") >= 2 * 11
    with LlmctxSaver(saver.path) as cold:  # and a fresh process reads the same
        assert _full_history(cold, "a") == _full_history(reference.checkpointer, "a")


def test_a_replaced_message_is_not_read_as_a_stale_prefix(saver: LlmctxSaver) -> None:
    """add_messages replacing by id makes a non-append list: never served from the
    cached head (a stale-prefix bug would show the old text of message 1)."""
    rewrite = {"at": 1, "from": 3}
    graph, reference = _agent_graph(saver, rewrite), _agent_graph(InMemorySaver(), rewrite)
    _run_agent(graph, "r", 6)
    _run_agent(reference, "r", 6)
    head = graph.get_state({"configurable": {"thread_id": "r"}}).values["messages"]
    assert head[1].content.startswith("edited at")
    assert _full_history(saver, "r") == _full_history(reference.checkpointer, "r")
    with LlmctxSaver(saver.path) as cold:
        assert _full_history(cold, "r") == _full_history(reference.checkpointer, "r")


def test_reading_an_old_version_keeps_storing_appends(saver: LlmctxSaver) -> None:
    graph = _agent_graph(saver)
    _run_agent(graph, "o", 6)
    config = {"configurable": {"thread_id": "o"}}
    old = list(graph.get_state_history(config))[-4]
    graph.get_state(old.config)  # a read of an old version must not become the delta base
    fulls = _kinds(saver, "messages").count(FULL)
    _run_agent(graph, "o", 3, start=6)
    assert _kinds(saver, "messages").count(FULL) == fulls
    big = max(
        size for size, entries in _write_rows(saver) if any(ch == "messages" for ch, _ in entries)
    )
    assert big < 1_000


def test_an_old_version_is_served_as_a_prefix_of_the_head(saver: LlmctxSaver) -> None:
    rewrite = {"at": 3, "from": 19}  # from turn 10 on
    graph, reference = _agent_graph(saver, rewrite), _agent_graph(InMemorySaver(), rewrite)
    _run_agent(graph, "p", 9)
    _run_agent(reference, "p", 9)
    config = {"configurable": {"thread_id": "p"}}
    states = list(graph.get_state_history(config))
    expected = [s.values for s in reference.get_state_history(config)]
    assert [s.values for s in states] == expected
    head_tuple, old_tuple = (
        saver.get_tuple(config),
        saver.get_tuple(states[len(states) // 2].config),
    )
    assert head_tuple is not None and old_tuple is not None
    head = head_tuple.checkpoint["channel_values"]["messages"]
    old = old_tuple.checkpoint["channel_values"]["messages"]
    # Served from the head's list: the same message objects, nothing decoded.
    assert 0 < len(old) < len(head) and all(a is b for a, b in zip(old, head, strict=False))
    # After message 3 is replaced the old versions are no prefix of the head any more:
    # each must still read its own text, not the head's.
    _run_agent(graph, "p", 2, start=9)
    _run_agent(reference, "p", 2, start=9)
    assert graph.get_state(config).values["messages"][3].content.startswith("edited at")
    assert [s.values for s in graph.get_state_history(config)] == [
        s.values for s in reference.get_state_history(config)
    ]


def test_forks_and_rewrites_keep_every_pending_write_exact(saver: LlmctxSaver) -> None:
    def scenario(checkpointer: Any) -> Any:
        graph = _agent_graph(checkpointer)
        _run_agent(graph, "f", 5)
        config = {"configurable": {"thread_id": "f"}}
        old = list(graph.get_state_history(config))[-7]
        forked = graph.update_state(old.config, {"messages": [HumanMessage("fork", id="fk")]})
        graph.invoke({"messages": [HumanMessage("after fork", id="af")]}, forked)
        _run_agent(graph, "f", 2, start=5)
        return graph

    scenario(saver)
    reference = scenario(InMemorySaver())
    assert _full_history(saver, "f") == _full_history(reference.checkpointer, "f")
    with LlmctxSaver(saver.path) as cold:
        assert _full_history(cold, "f") == _full_history(reference.checkpointer, "f")


def test_deleting_sources_recompresses_what_depends_on_them(saver: LlmctxSaver) -> None:
    graph = _agent_graph(saver)
    _run_agent(graph, "d", 10)
    config = {"configurable": {"thread_id": "d"}}
    ids = [t.config["configurable"]["checkpoint_id"] for t in saver.list(config)][::-1]
    doomed = ids[4:30]  # the middle turns: the first copies of many messages
    survivors = {i: v for i, v in zip(ids, _full_history(saver, "d"), strict=True)}
    for cid in doomed:
        del survivors[cid]
    # Another connection deletes, so this saver's cached sources are stale.
    with LlmctxSaver(saver.path) as other:
        other.delete_checkpoints("d", doomed)
    left = [t.config["configurable"]["checkpoint_id"] for t in saver.list(config)][::-1]
    assert dict(zip(left, _full_history(saver, "d"), strict=True)) == survivors
    _run_agent(graph, "d", 3, start=10)  # this saver goes on writing correctly
    with LlmctxSaver(saver.path) as cold:
        history = _full_history(cold, "d")
        got = dict(zip(left, history, strict=False))
        assert got == survivors
        assert len(history[-1][1]["messages"]) == 26
    saver.prune(["d"], strategy="keep_latest")
    assert len(graph.get_state(config).values["messages"]) == 26


def test_a_rewritten_version_keeps_the_writes_built_on_it(saver: LlmctxSaver) -> None:
    base = {"configurable": {"thread_id": "w", "checkpoint_ns": ""}}
    first = [HumanMessage(f"m{i} {TEXT}", id=f"m{i}") for i in range(3)]
    version = saver.get_next_version(None, None)

    def checkpoint(items: list[Any]) -> dict[str, Any]:
        return {
            "v": 4,
            "id": "00000001",
            "ts": "2026-01-01T00:00:00+00:00",
            "channel_values": {"messages": items},
            "channel_versions": {"messages": version},
            "versions_seen": {},
            "updated_channels": ["messages"],
        }

    config = saver.put(base, checkpoint(first), {"step": 0}, {"messages": version})
    saver.put_writes(config, [("messages", [*first, AIMessage("extra", id="x")])], "task")
    assert _write_kinds(saver, "messages") == [W_PREFIX]
    saver.put(base, checkpoint([HumanMessage("other", id="o")]), {"step": 0}, {"messages": version})
    got = saver.get_tuple(config)
    assert got is not None
    assert got.pending_writes == [("task", "messages", [*first, AIMessage("extra", id="x")])]
    assert got.checkpoint["channel_values"]["messages"] == [HumanMessage("other", id="o")]


# -- maintenance ---------------------------------------------------------------------


def test_prune_and_delete_for_runs_leave_survivors_readable(saver: LlmctxSaver) -> None:
    graph = _chat_graph(saver)
    _run_chat(graph, "a", 10)
    _run_chat(graph, "b", 10)
    config_b = {"configurable": {"thread_id": "b"}}
    before_b = graph.get_state(config_b).values

    saver.prune(["a"], strategy="keep_latest")
    assert len(list(saver.list({"configurable": {"thread_id": "a"}}))) == 1
    assert len(graph.get_state({"configurable": {"thread_id": "a"}}).values["messages"]) == 20
    assert graph.get_state(config_b).values == before_b

    # Deleting the middle runs removes the writes later appends were compressed
    # against: those values are re-compressed first, so every survivor still reads.
    runs = sorted({t.metadata["run_id"] for t in saver.list(config_b)})
    saver.delete_for_runs(runs[3:6])
    survivors = list(saver.list(config_b))
    assert survivors and all(t.metadata["run_id"] not in runs[3:6] for t in survivors)
    assert graph.get_state(config_b).values == before_b
    with LlmctxSaver(saver.path) as cold:
        assert _chat_graph(cold).get_state(config_b).values == before_b

    saver.copy_thread("b", "b2")
    assert graph.get_state({"configurable": {"thread_id": "b2"}}).values == before_b
    saver.delete_thread("b")
    assert graph.get_state(config_b).values == {}
    assert graph.get_state({"configurable": {"thread_id": "b2"}}).values == before_b


def _extend(state: list[str], writes: Sequence[list[str]]) -> list[str]:
    return [*state, *(item for batch in writes for item in batch)]


class _DeltaState(TypedDict):
    log: Annotated[list[str], DeltaChannel(_extend, snapshot_frequency=3)]
    count: Annotated[int, operator.add]


def _delta_graph(checkpointer: Any) -> Any:
    def step(state: _DeltaState) -> dict[str, Any]:
        return {"log": [f"step{state['count']}"], "count": 1}

    builder = StateGraph(_DeltaState)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_edge("step", END)
    return builder.compile(checkpointer=checkpointer)


def test_delta_channel_threads_rebuild_through_prune_and_copy(saver: LlmctxSaver) -> None:
    graph, reference = _delta_graph(saver), _delta_graph(InMemorySaver())
    config = {"configurable": {"thread_id": "d"}}
    for i in range(8):
        graph.invoke({"log": [f"in{i}"], "count": 0}, config)
        reference.invoke({"log": [f"in{i}"], "count": 0}, config)
    expected = reference.get_state(config).values
    assert graph.get_state(config).values == expected
    assert _history_values(graph, "d") == _history_values(reference, "d")

    saver.copy_thread("d", "d2")
    assert graph.get_state({"configurable": {"thread_id": "d2"}}).values == expected
    saver.prune(["d"], strategy="keep_latest")
    assert graph.get_state(config).values == expected
    graph.invoke({"log": ["more"], "count": 0}, config)
    reference.invoke({"log": ["more"], "count": 0}, config)
    assert graph.get_state(config).values == reference.get_state(config).values


# -- concurrency and durability ------------------------------------------------------------


def test_concurrent_writers_in_one_process(saver: LlmctxSaver) -> None:
    graph = _chat_graph(saver)
    errors: list[BaseException] = []

    def run(thread: str) -> None:
        try:
            _run_chat(graph, thread, 8)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(f"w{i}",)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    async def run_async() -> None:
        async def one(thread: str) -> None:
            config = {"configurable": {"thread_id": thread}}
            for i in range(6):
                msg = HumanMessage(f"async {i}", id=f"x{thread}{i}")
                await graph.ainvoke({"messages": [msg]}, config)

        await asyncio.gather(*(one(f"async{i}") for i in range(4)))

    asyncio.run(run_async())
    assert not errors
    for i in range(4):
        assert (
            len(graph.get_state({"configurable": {"thread_id": f"w{i}"}}).values["messages"]) == 16
        )
        assert (
            len(graph.get_state({"configurable": {"thread_id": f"async{i}"}}).values["messages"])
            == 12
        )


_WRITER = """
import sys
from langchain_core.messages import HumanMessage
from tests.test_checkpointer import _chat_graph
from llmctx.runtime.checkpointer import LlmctxSaver

path, thread, turns = sys.argv[1], sys.argv[2], int(sys.argv[3])
with LlmctxSaver(path) as saver:
    graph = _chat_graph(saver)
    config = {"configurable": {"thread_id": thread}}
    for i in range(turns):
        graph.invoke({"messages": [HumanMessage(f"q{i}", id=f"{thread}-{i}")]}, config)
        print(graph.get_state(config).config["configurable"]["checkpoint_id"], flush=True)
"""


def _writer(path: Path, thread: str, turns: int) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), thread, str(turns)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_savers_taking_turns_on_one_thread_read_back_exactly(tmp_path: Path) -> None:
    """Each saver's caches (delta bases, sources, bodies, pending writes to turn into
    references) go stale whenever the other writes; what each stores must still read
    back exactly, in both and in a fresh process."""
    path = tmp_path / "shared.sqlite"
    reference = _agent_graph(InMemorySaver())
    with LlmctxSaver(path) as first, LlmctxSaver(path) as second:
        graphs = [_agent_graph(first), _agent_graph(second)]
        for i in range(8):
            _run_agent(graphs[i % 2], "x", 1, start=i)
            _run_agent(reference, "x", 1, start=i)
        expected = _full_history(reference.checkpointer, "x")
        assert _full_history(first, "x") == expected
        assert _full_history(second, "x") == expected
    with LlmctxSaver(path) as cold:
        assert _full_history(cold, "x") == expected


def test_two_processes_writing_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    LlmctxSaver(path).close()
    procs = [_writer(path, thread, 25) for thread in ("p1", "p2")]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with LlmctxSaver(path) as saver:
        graph = _chat_graph(saver)
        for thread in ("p1", "p2"):
            messages = graph.get_state({"configurable": {"thread_id": thread}}).values["messages"]
            assert [m.id for m in messages if isinstance(m, HumanMessage)] == [
                f"{thread}-{i}" for i in range(25)
            ]
            assert len(list(saver.list({"configurable": {"thread_id": thread}}))) == 75


def test_sigkill_mid_write_keeps_every_committed_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    proc = _writer(path, "k", 100_000)
    committed: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        committed.append(line.strip())
        if len(committed) >= 40:
            break
    os.kill(proc.pid, signal.SIGKILL)  # almost surely inside the next turn's writes
    proc.wait(timeout=30)
    with LlmctxSaver(path) as saver:
        assert saver.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for checkpoint_id in committed:
            config = {
                "configurable": {
                    "thread_id": "k",
                    "checkpoint_ns": "",
                    "checkpoint_id": checkpoint_id,
                }
            }
            tup = saver.get_tuple(config)
            assert tup is not None and tup.checkpoint["channel_values"]["messages"]
        _run_chat(_chat_graph(saver), "k", 2, start=10_000)  # and the thread goes on


# -- refusing files that are not ours ------------------------------------------------


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()


def _newer(path: Path) -> None:
    LlmctxSaver(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()


def _older_schema(path: Path, version: int = 1) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE checkpoints (thread_id TEXT)")
    if version > 1:
        conn.execute("CREATE TABLE blobs (thread_id TEXT)")
        conn.execute("CREATE TABLE writes (thread_id TEXT)")
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version={version}")
    conn.commit()
    conn.close()


def _langgraph_sqlite(path: Path) -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(path)
    SqliteSaver(conn).setup()
    conn.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(os.urandom(5000)), "not a SQLite database"),
        (lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(5000)), "unreadable"),
        (_foreign, "foreign SQLite database"),
        (_langgraph_sqlite, "SqliteSaver"),
        (_newer, "newer llmctx"),
        (_older_schema, "older llmctx"),
        (lambda p: _older_schema(p, 2), r"older llmctx \(schema 2"),
    ],
    ids=[
        "random",
        "corrupt-header",
        "foreign",
        "sqlitesaver",
        "newer-schema",
        "older-schema",
        "schema-2",
    ],
)
def test_a_file_that_is_not_ours_is_refused_not_reset(
    tmp_path: Path, make: Any, message: str
) -> None:
    path = tmp_path / "checkpoints.sqlite"
    make(path)
    before = path.read_bytes()
    with pytest.raises(CheckpointStoreError, match=message) as info:
        LlmctxSaver(path)
    assert isinstance(info.value, LlmctxError)
    assert "Move the file away" in str(info.value)
    assert path.read_bytes() == before
