"""Shared fixtures: every test runs isolated from the developer's environment.

Each test starts in its own empty `tmp_path`, without any `LLMCTX_*` variable, so no
test reads the developer's `.env` or `settings.toml`, nor writes `.llm/` into the repo.
Property tests draw the same examples every run (see the hypothesis profiles below).
`HF_HUB_OFFLINE=1` keeps embedding libraries from reaching for the network, and
tiktoken's downloads are refused outright (with an empty tiktoken cache), so token
counting always exercises the real offline fallback chain and never the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# Property tests are derandomized by default: every run (CI included) draws the same
# examples, so a red build always means a change broke something, never that a new
# random example turned up an old bug. `HYPOTHESIS_PROFILE=explore` searches with
# fresh random examples; whatever it finds gets a regression test with `@example`.
hypothesis_settings.register_profile("default", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Read before the autouse fixture clears every LLMCTX_* variable.
_REQUIRE_SERVICES = os.environ.get("LLMCTX_REQUIRE_SERVICES") == "1"

ServiceCheck = Callable[[str, Callable[[], object]], None]


def pytest_configure(config: pytest.Config) -> None:
    import tempfile

    import tiktoken.load

    os.environ["TIKTOKEN_CACHE_DIR"] = tempfile.mkdtemp(prefix="llmctx-tiktoken-")
    real_read = tiktoken.load.read_file

    def _refuse_downloads(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise ConnectionError(f"network disabled in tests: {blobpath}")
        return real_read(blobpath)

    tiktoken.load.read_file = _refuse_downloads


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LLMCTX_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def require_service() -> ServiceCheck:
    """`require_service("postgres", check)`: skip the test unless `check()` is truthy.

    With `LLMCTX_REQUIRE_SERVICES=1` (CI with the services up) an absent service fails
    the test instead, so a broken service cannot pass silently as skips.
    """

    def require(name: str, check: Callable[[], object]) -> None:
        try:
            available = bool(check())
            why = "check returned false"
        except Exception as exc:  # any failure to reach the service means "absent"
            available, why = False, f"{type(exc).__name__}: {exc}"
        if available:
            return
        message = f"service {name!r} is not available ({why})"
        if _REQUIRE_SERVICES:
            pytest.fail(f"{message} and LLMCTX_REQUIRE_SERVICES=1")
        pytest.skip(message)

    return require
