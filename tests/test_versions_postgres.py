"""The versions API on a real `PostgresSaver`: the same tests as `test_versions.py`.

Postgres is shared between runs, so every test works on thread ids unique to it (the
`tid` fixture) and deletes its threads and tags afterwards. Skips when Postgres is
unreachable, unless `LLMCTX_REQUIRE_SERVICES=1`. The URL comes from
`LLMCTX_TEST_POSTGRES_URL`, by default `postgresql://postgres@127.0.0.1:5432/test`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver

from llmctx.runtime.savers import open_saver
from llmctx.runtime.tags import tag_store_for
from tests.test_versions import (  # the tests to run again, on Postgres
    _offline_tokenizer,
    test_branch_forks_a_new_thread_and_leaves_the_source_alone,
    test_diff_reports_window_summary_budget_template_and_pins,
    test_expire_threads_deletes_idle_threads_but_tagged_ones,
    test_get_materializes_the_window_for_every_reference,
    test_history_filters_and_shows_tags,
    test_prune_keeps_the_last_versions_and_the_tagged_ones,
    test_rollback_past_a_compaction_restores_the_window_and_keeps_history,
    test_rollback_restores_preserved_frames,
    test_tags_are_unique_per_thread_and_need_a_known_version,
    test_unknown_ambiguous_and_short_references_are_clear_errors,
)

# Read at import: the autouse fixture in conftest clears every LLMCTX_* variable.
URL = os.environ.get("LLMCTX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.services

__all__ = [
    "_offline_tokenizer",
    "test_branch_forks_a_new_thread_and_leaves_the_source_alone",
    "test_diff_reports_window_summary_budget_template_and_pins",
    "test_expire_threads_deletes_idle_threads_but_tagged_ones",
    "test_get_materializes_the_window_for_every_reference",
    "test_history_filters_and_shows_tags",
    "test_prune_keeps_the_last_versions_and_the_tagged_ones",
    "test_rollback_past_a_compaction_restores_the_window_and_keeps_history",
    "test_rollback_restores_preserved_frames",
    "test_tags_are_unique_per_thread_and_need_a_known_version",
    "test_unknown_ambiguous_and_short_references_are_clear_errors",
]


def _reachable() -> bool:
    import psycopg

    with psycopg.connect(URL, connect_timeout=3) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


@pytest.fixture
def prefix() -> str:
    return f"v{uuid.uuid4().hex[:10]}"


@pytest.fixture
def saver(require_service: Callable, prefix: str) -> Iterator[BaseCheckpointSaver]:
    require_service("postgres", _reachable)
    with open_saver(URL) as pg:
        try:
            yield pg
        finally:
            with pg._cursor() as cur:  # this test's threads only
                cur.execute(
                    "SELECT DISTINCT thread_id FROM checkpoints WHERE thread_id LIKE %s",
                    (f"{prefix}-%",),
                )
                threads = [row["thread_id"] for row in cur.fetchall()]
            tags = tag_store_for(pg)
            for thread in threads:
                pg.delete_thread(thread)
            for thread in tags.tagged_threads():
                if thread.startswith(f"{prefix}-"):
                    tags.delete_thread(thread)


@pytest.fixture
def tid(prefix: str) -> Callable[[str], str]:
    return lambda name: f"{prefix}-{name}"


def test_tags_live_in_the_same_database(saver: BaseCheckpointSaver, prefix: str) -> None:
    import psycopg

    tags = tag_store_for(saver)
    tags.set(f"{prefix}-t", "here", "0000")
    with psycopg.connect(URL) as conn:
        rows = conn.execute(
            "SELECT name, checkpoint_id FROM llmctx_tags WHERE thread_id = %s", (f"{prefix}-t",)
        ).fetchall()
    assert rows == [("here", "0000")]


def test_prune_frees_unreferenced_blobs(saver: BaseCheckpointSaver, tid: Callable) -> None:
    from llmctx.graphs import build_context_graph
    from llmctx.runtime import versions as V
    from tests.test_versions import _grow

    t = tid("blobs")
    graph = build_context_graph(checkpointer=saver, budget=500)
    _grow(graph, t, 5)
    unreferenced = """
        SELECT count(*) AS n FROM checkpoint_blobs b WHERE b.thread_id = %s AND NOT EXISTS (
            SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id
            AND c.checkpoint_ns = b.checkpoint_ns
            AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)
    """
    count = "SELECT count(*) AS n FROM checkpoint_blobs WHERE thread_id = %s"
    with saver._cursor() as cur:
        before = cur.execute(count, (t,)).fetchone()["n"]
    V.prune(saver, t, keep_last=1)
    with saver._cursor() as cur:
        after = cur.execute(count, (t,)).fetchone()["n"]
        assert cur.execute(unreferenced, (t,)).fetchone()["n"] == 0
    assert after < before
    assert V.get(saver, t, "head").version.turn == 5


def test_cli_reads_a_postgres_target(saver: BaseCheckpointSaver, tid: Callable) -> None:
    from llmctx.graphs import build_context_graph
    from tests.test_versions import _grow, _json, _user_error

    t = tid("cli")
    _grow(build_context_graph(checkpointer=saver, budget=500), t, 3)
    versions = _json("history", t, "--target", URL)["versions"]
    assert [v["turn"] for v in versions] == [3, 2, 1]
    assert _json("tag", t, "head~2", "first", "--target", URL)["tags"] == ["first"]
    rolled = _json("rollback", t, "first", "--target", URL)
    assert rolled["turn"] == 1 and rolled["op"] == "rollback"
    assert _json("diff", t, "head~1", "head", "--target", URL)["left"]
    assert "no version, tag" in _user_error("show", t, "nope", "--target", URL)
