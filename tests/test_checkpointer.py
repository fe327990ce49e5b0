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
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from llmctx.graphs import build_context_graph
from llmctx.nodes import ContextState
from llmctx.runtime._checkpoint_blobs import APPEND, FULL, W_PREFIX, ZDELTA
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
    rows = saver.conn.execute("SELECT kind FROM blobs WHERE channel = ?", (channel,))
    return [r[0] for r in rows]


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
    # Appends are compressed against the pending writes carrying the same messages.
    against_writes = saver.conn.execute(
        "SELECT count(*) FROM blobs WHERE channel = 'messages' AND dict_refs IS NOT NULL"
    ).fetchone()[0]
    assert against_writes >= 40


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
    assert ZDELTA in _kinds(saver, "context")

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
    changed = saver.list_versions("c", changed_only=True)
    assert [r.turn for r in changed] == list(range(12, 0, -1))
    assert saver.list_versions("c", limit=2, before=rows[0].checkpoint_id) == rows[1:3]


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
    prefix = saver.conn.execute(
        "SELECT count(*), max(length(value)) FROM writes WHERE channel = 'messages' AND kind = ?",
        (W_PREFIX,),
    ).fetchone()
    assert prefix[0] >= 11 and prefix[1] < 600  # never the whole list again
    # Each message is stored about once: later copies are compressed against it.
    refs = saver.conn.execute(
        "SELECT (SELECT count(*) FROM writes WHERE dict_refs IS NOT NULL) + "
        "(SELECT count(*) FROM blobs WHERE dict_refs IS NOT NULL)"
    ).fetchone()[0]
    assert refs >= 2 * 11
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
    big = saver.conn.execute(
        "SELECT max(length(value)) FROM writes WHERE channel = 'messages'"
    ).fetchone()[0]
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
    kinds = saver.conn.execute("SELECT kind FROM writes").fetchall()
    assert kinds == [(W_PREFIX,)]
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


def _older_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE checkpoints (thread_id TEXT)")
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
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
    ],
    ids=["random", "corrupt-header", "foreign", "sqlitesaver", "newer-schema", "older-schema"],
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
