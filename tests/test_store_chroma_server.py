"""The store suite again, on a Chroma server started on loopback (`chroma run`).

The server runs once per module, from the `chroma` CLI that ships with chromadb, on a
free port and a temporary folder; every test works on collections of its own. Skips
when the server cannot start, unless `LLMCTX_REQUIRE_SERVICES=1`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from llmctx.runtime.memory import ChromaStore
from tests.test_store import (  # the tests to run again, on the server
    Backend,
    chroma_factory,
    keys,
    rows,
    store,
    test_async_api_matches_the_sync_one,
    test_batch_reads_see_the_state_before_its_writes_and_the_last_put_wins,
    test_count_and_clear,
    test_filter_operators,
    test_filters_agree_with_the_reference_on_random_data,
    test_filters_on_missing_fields_never_match_and_never_crash,
    test_list_namespaces_prefix_suffix_depth_and_pages,
    test_one_users_items_never_reach_another,
    test_pagination_is_complete_and_disjoint,
    test_put_get_overwrite_delete,
    test_query_finds_a_small_namespace_inside_a_big_store,
    test_query_ranks_by_embedding_similarity,
    test_query_without_an_embedder_is_lexical,
    test_search_is_scoped_by_whole_label_namespace_prefixes,
    test_timestamps_are_utc_and_updated_on_overwrite,
    test_ttl_hides_expired_items_everywhere_and_sweeps_them,
    test_values_must_be_json,
    test_values_round_trip_as_json,
)

pytestmark = pytest.mark.services

__all__ = [
    "rows",
    "store",
    "test_async_api_matches_the_sync_one",
    "test_batch_reads_see_the_state_before_its_writes_and_the_last_put_wins",
    "test_count_and_clear",
    "test_filter_operators",
    "test_filters_agree_with_the_reference_on_random_data",
    "test_filters_on_missing_fields_never_match_and_never_crash",
    "test_list_namespaces_prefix_suffix_depth_and_pages",
    "test_one_users_items_never_reach_another",
    "test_pagination_is_complete_and_disjoint",
    "test_put_get_overwrite_delete",
    "test_query_finds_a_small_namespace_inside_a_big_store",
    "test_query_ranks_by_embedding_similarity",
    "test_query_without_an_embedder_is_lexical",
    "test_search_is_scoped_by_whole_label_namespace_prefixes",
    "test_timestamps_are_utc_and_updated_on_overwrite",
    "test_ttl_hides_expired_items_everywhere_and_sweeps_them",
    "test_values_must_be_json",
    "test_values_round_trip_as_json",
]

_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _heartbeat(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as response:
        return response.status == 200


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | Exception]:
    """`http://127.0.0.1:<port>` of a running server, or why it could not start."""
    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    folder = tmp_path_factory.mktemp("chroma-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    command = [exe, "run", "--path", str(folder / "db"), "--host", "127.0.0.1"]
    with (folder / "server.log").open("wb") as log:
        try:
            proc = subprocess.Popen(
                [*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        except OSError as exc:
            yield exc
            return
        try:
            deadline = time.monotonic() + _START_TIMEOUT_S
            outcome: str | Exception = TimeoutError(f"no heartbeat within {_START_TIMEOUT_S} s")
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    tail = (folder / "server.log").read_text(errors="replace")[-500:]
                    outcome = RuntimeError(f"chroma run exited with {proc.returncode}: {tail}")
                    break
                try:
                    if _heartbeat(url):
                        outcome = url
                        break
                except OSError:
                    time.sleep(0.2)
            yield outcome
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def server_url(chroma_server: str | Exception, require_service: Callable) -> str:
    def check() -> bool:
        if isinstance(chroma_server, Exception):
            raise chroma_server
        return True

    require_service("chroma", check)
    assert isinstance(chroma_server, str)
    return chroma_server


@pytest.fixture
def backend(server_url: str) -> Iterator[Backend]:
    b = Backend("chroma-server", chroma_factory(f"s{uuid.uuid4().hex[:8]}-", url=server_url))
    yield b
    for opened in b.opened:
        if isinstance(opened, ChromaStore):
            opened.close()


def test_from_settings_connects_to_the_configured_server(server_url: str) -> None:
    settings = SimpleNamespace(memory=SimpleNamespace(url=server_url, collection="from-settings"))
    with ChromaStore.from_settings(settings) as store:
        assert store.location == server_url
        store.put(("s",), "k", {"text": "over http"})
    with ChromaStore(url=server_url, collection="from-settings") as again:
        assert keys(again.search(("s",), query="http")) == ["k"]
