"""`llmctx chat`: a scripted stdin against a fake OpenAI-compatible endpoint.

The model is a loopback server speaking the chat-completions API (`tests._fake_openai`),
so the whole real path runs: settings → `ChatOpenAI` → HTTP → the agent graph → the
workspace's saver and memory. Each test scripts stdin and checks both what was printed
and what the thread holds afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctx.runtime.cli import app
from llmctx.runtime.savers import open_saver
from llmctx.runtime.versions import history
from tests._fake_openai import FakeOpenAI, fake_openai

runner = CliRunner()
CLI = [sys.executable, "-m", "llmctx.runtime.cli"]


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with fake_openai() as server:
        monkeypatch.setenv("LLMCTX_LLM_BASE_URL", server.url)
        monkeypatch.delenv("LLMCTX_LLM__BASE_URL", raising=False)
        yield server


def _chat(ws: Path, script: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["chat", "-w", str(ws), "--no-memory", *args], input=script)
    return result.exit_code, result.output


def _systems(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "system"]


def test_no_model_configured_is_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    for name in ("LLMCTX_LLM_BASE_URL", "LLMCTX_LLM__BASE_URL", "LLMCTX_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMCTX_LLM__PROVIDER", "auto")
    result = runner.invoke(app, ["chat", "-w", str(tmp_path / ".llm")], input="hello\n")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "no chat model is configured" in lines[0]
    assert "LLMCTX_LLM_BASE_URL" in lines[0]


def test_turns_reach_the_model_through_the_window(tmp_path: Path, endpoint: FakeOpenAI) -> None:
    endpoint.replies[:] = ["Hi! How can I help?", "Postgres it is."]
    ws = tmp_path / ".llm"
    code, output = _chat(ws, "hello\nwhich database?\n", "--template", "technical")
    assert code == 0, output
    assert "Hi! How can I help?" in output and "Postgres it is." in output
    assert "[technical · window" in output
    assert len(endpoint.requests) == 2
    # The template's system prompt leads the window; the history follows.
    first, second = endpoint.requests
    assert _systems(first)[0].startswith("You are a senior software engineer")
    users = [m["content"] for m in second["messages"] if m["role"] == "user"]
    assert users == ["hello", "which database?"]
    with open_saver(ws) as saver:
        versions = history(saver, "chat")
    assert len(versions) >= 2
    assert {v.template for v in versions} == {"technical"}


def test_a_thread_resumes_in_a_new_session(tmp_path: Path, endpoint: FakeOpenAI) -> None:
    ws = tmp_path / ".llm"
    endpoint.replies[:] = ["first answer", "second answer"]
    assert _chat(ws, "remember the number 42\n", "--thread", "t1")[0] == 0
    assert _chat(ws, "what was the number?\n", "--thread", "t1")[0] == 0
    users = [m["content"] for m in endpoint.requests[-1]["messages"] if m["role"] == "user"]
    assert users == ["remember the number 42", "what was the number?"]


def test_history_budget_diff_and_rollback(tmp_path: Path, endpoint: FakeOpenAI) -> None:
    ws = tmp_path / ".llm"
    script = "\n".join(
        [
            "/history",  # before any turn
            "first question",
            "second question",
            "/history 5",
            "/budget",
            "/diff",
            "/rollback head~1",
            "/history 1",
            "/quit",
            "never sent",
        ]
    )
    code, output = _chat(ws, script + "\n", "--budget", "3000")
    assert code == 0, output
    assert "no versions yet" in output
    assert "versions of thread 'chat'" in output
    assert "template 'general': window 288 of 3000 tokens" in output  # /budget
    for tier in ("critical", "important", "supporting", "cache"):
        assert tier in output
    assert "rollback to" in output
    assert len(endpoint.requests) == 2  # /quit stopped before "never sent"
    with open_saver(ws) as saver:
        versions = history(saver, "chat")
    assert versions[0].op == "rollback"


def test_bad_commands_do_not_end_the_session(tmp_path: Path, endpoint: FakeOpenAI) -> None:
    ws = tmp_path / ".llm"
    script = "/nope\n/rollback\n/rollback zzzz\n/history x\n/diff 'unclosed\nstill here\n"
    code, output = _chat(ws, script)
    assert code == 0, output
    assert "unknown command /nope" in output
    assert "usage: /rollback VERSION" in output
    assert "usage: /history [N]" in output
    assert output.count("error:") == 5
    assert len(endpoint.requests) == 1  # the session went on to send "still here"


def test_unknown_template_fails_before_any_turn(tmp_path: Path, endpoint: FakeOpenAI) -> None:
    code, output = _chat(tmp_path / ".llm", "hello\n", "--template", "nope")
    assert code == 2
    assert "nope" in output
    assert endpoint.requests == []


def test_memory_command_searches_the_users_memories(tmp_path: Path, endpoint: FakeOpenAI):
    ws = tmp_path / ".llm"
    endpoint.replies[:] = ["Noted.", "ok"]
    script = "our deploys go through the ops/deploy pipeline\nthanks\n/memory deploy pipeline\n"
    result = runner.invoke(app, ["chat", "-w", str(ws), "--user", "alice"], input=script)
    assert result.exit_code == 0, result.output
    assert "memories of user 'alice' for 'deploy pipeline'" in result.output
    assert "ops/deploy" in result.output


def test_chat_reads_a_piped_stdin(tmp_path: Path) -> None:
    """The real command in a subprocess: stdin is a pipe, the endpoint comes from env."""
    with fake_openai(["piped answer"]) as server:
        env = {**os.environ, "LLMCTX_LLM_BASE_URL": server.url}
        env.pop("LLMCTX_LLM__BASE_URL", None)
        proc = subprocess.run(
            [*CLI, "chat", "--no-memory", "-w", str(tmp_path / ".llm")],
            input="hello from a pipe\n/budget\n",
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert "piped answer" in proc.stdout
        assert "you>" not in proc.stdout  # no prompt when stdin is not a terminal
        sent = json.dumps(server.requests[0])
        assert "hello from a pipe" in sent


def test_switch_command_is_a_version_and_changes_the_prompt(
    tmp_path: Path, endpoint: FakeOpenAI
) -> None:
    ws = tmp_path / ".llm"
    script = "how do I fix this traceback?\n/switch business\n/budget\nwhat should we charge?\n"
    code, output = _chat(ws, script + "/switch nope\n/switch general sideways\n", "-t", "technical")
    assert code == 0, output
    assert "switched from 'technical' to 'business'" in output
    assert "template 'business': window" in output  # /budget before the next message
    assert "error:" in output and "nope" in output and "sideways" in output
    first, second = endpoint.requests
    assert _systems(first)[0].startswith("You are a senior software engineer")
    assert _systems(second)[0].startswith("You are a pragmatic business advisor")
    with open_saver(ws) as saver:
        versions = history(saver, "chat")
    ops = [v.op for v in reversed(versions)]
    assert ops[:2] == ["assemble", "switch"]
    assert versions[0].template == "business"


def test_the_model_can_switch_with_the_switch_context_tool(
    tmp_path: Path, endpoint: FakeOpenAI
) -> None:
    endpoint.replies[:] = [
        [("switch_context", {"template": "business", "reason": "pricing question"})],
        "Let's talk pricing.",
    ]
    ws = tmp_path / ".llm"
    code, output = _chat(ws, "what should we charge for the pro plan?\n", "-t", "technical")
    assert code == 0, output
    assert "Let's talk pricing." in output
    assert "[business · window" in output
    tools = [t["function"]["name"] for t in endpoint.requests[0]["tools"]]
    assert tools == ["switch_context"]
    assert _systems(endpoint.requests[1])[0].startswith("You are a pragmatic business advisor")
