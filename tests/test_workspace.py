"""The `.llm/` workspace: layout, safe paths, lifecycle index, gc and health."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from llmctx.runtime.errors import ConfigError, WorkspaceError, WorkspacePathError
from llmctx.runtime.settings import Settings
from llmctx.runtime.workspace import (
    FOLDERS,
    INDEX_NAME,
    Workspace,
    gc_table,
    health_table,
)

DAY = 86_400.0
HOUR = 3_600.0


class Clock:
    """A clock tests move by hand; it starts at the real time so mtimes agree."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# tests/conftest.py isolates every test (no LLMCTX_* env, cwd = tmp_path).


@pytest.fixture
def umask() -> Iterator[Any]:
    """Set a umask for the test, restoring the old one afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_ws(tmp_path: Path, clock: Clock, **lifecycle: Any) -> Workspace:
    settings_ = Settings.load(workspace=tmp_path / ".llm", lifecycle=lifecycle)
    return Workspace.from_settings(settings_, now=clock)


@pytest.fixture
def ws(tmp_path: Path, clock: Clock) -> Workspace:
    return make_ws(tmp_path, clock).ensure()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_ensure_creates_every_folder_0700_whatever_the_umask(
    tmp_path: Path, clock: Clock, umask: Any, mask: int
) -> None:
    umask(mask)
    ws = make_ws(tmp_path, clock).ensure()
    assert mode(ws.root) == 0o700
    for name in FOLDERS:
        assert (ws.root / name).is_dir()
        assert mode(ws.root / name) == 0o700, name
    assert mode(ws.root / INDEX_NAME) == 0o600
    written = ws.write_text("contexts/deep/er/a.json", "{}")
    assert mode(written) == 0o600
    assert mode(written.parent) == mode(written.parent.parent) == 0o700


def test_nothing_is_created_before_first_use(tmp_path: Path, clock: Clock) -> None:
    ws = make_ws(tmp_path, clock)
    report = ws.health()
    assert not ws.root.exists()
    assert not report.exists and not report.layout_complete and not report.ok
    assert set(report.missing) == {".", *FOLDERS}
    ws.path("cache", "x.json")  # first use creates the layout, not the file
    assert ws.health().ok
    assert not (ws.root / "cache" / "x.json").exists()


def test_ensure_is_idempotent_and_repairs_modes(ws: Workspace) -> None:
    ws.write_text("sessions/s.jsonl", "hello")
    os.chmod(ws.root / "sessions", 0o755)
    before = ws.stat("sessions/s.jsonl")
    assert ws.ensure() is ws
    ws.ensure()
    assert mode(ws.root / "sessions") == 0o700
    assert (ws.root / "sessions" / "s.jsonl").read_text() == "hello"
    assert ws.stat("sessions/s.jsonl") == before


def test_ensure_refuses_a_symlinked_folder(tmp_path: Path, clock: Clock) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    root = tmp_path / ".llm"
    root.mkdir()
    (root / "cache").symlink_to(outside, target_is_directory=True)
    with pytest.raises(WorkspaceError, match="cache"):
        make_ws(tmp_path, clock).ensure()
    assert list(outside.iterdir()) == []


def test_unknown_folder_lists_the_valid_ones(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError) as info:
        ws.path("secrets", "a")
    assert not isinstance(info.value, WorkspacePathError)
    assert all(name in str(info.value) for name in FOLDERS)


def test_unknown_protected_folder_is_a_config_error(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(ConfigError, match="memroy"):
        make_ws(tmp_path, clock, protected=["memroy"])


# ----------------------------------------------------------------------------- traversal


@pytest.mark.parametrize(
    "parts",
    [("../x",), ("a/../../x",), ("..",), ("a", "..", "b"), ("/etc/passwd",), ("a", "/tmp/x")],
)
def test_traversal_is_refused(ws: Workspace, tmp_path: Path, parts: tuple[str, ...]) -> None:
    before = tree(tmp_path)
    with pytest.raises(WorkspacePathError) as info:
        ws.path("contexts", *parts)
    assert parts[-1] in str(info.value) or ".." in str(info.value)
    with pytest.raises(WorkspacePathError):
        ws.write_text(Path("contexts", *parts), "x")
    assert tree(tmp_path) == before


def test_absolute_target_outside_or_at_root_is_refused(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(WorkspacePathError, match="outside"):
        ws.write_text(tmp_path / "evil.txt", "x")
    with pytest.raises(WorkspacePathError, match=INDEX_NAME):
        ws.record_write(ws.root / INDEX_NAME)
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_leading_out_is_refused(ws: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (ws.root / "cache" / "dir").symlink_to(outside, target_is_directory=True)
    (ws.root / "cache" / "file").symlink_to(outside / "secret.txt")

    with pytest.raises(WorkspacePathError, match="outside"):
        ws.path("cache", "dir", "new.txt")
    with pytest.raises(WorkspacePathError):
        ws.write_text("cache/dir/new.txt", "x")
    with pytest.raises(WorkspacePathError):
        ws.read_text("cache/file")
    with pytest.raises(WorkspacePathError):
        ws.write_text("cache/file", "overwritten")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"


def test_symlink_staying_inside_the_folder_is_allowed(ws: Workspace) -> None:
    ws.write_text("contexts/real.json", "{}")
    (ws.root / "contexts" / "alias.json").symlink_to(ws.root / "contexts" / "real.json")
    assert ws.path("contexts", "alias.json") == ws.root / "contexts" / "real.json"


_PIECES = st.sampled_from(["a", "b", "..", ".", "", "out", "/", "//x", "\x00", "é", "~", "\\"])


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.lists(_PIECES | st.text(max_size=6), max_size=6).map("/".join))
def test_path_is_inside_the_folder_or_refused(ws: Workspace, tmp_path: Path, raw: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    link = ws.root / "contexts" / "out"
    if not link.is_symlink():
        link.symlink_to(outside, target_is_directory=True)
    try:
        result = ws.path("contexts", raw)
    except WorkspacePathError:
        pass
    else:
        assert result.is_absolute()
        assert result == result.resolve()
        assert result.is_relative_to(ws.root / "contexts")
    assert list(outside.iterdir()) == []


# ----------------------------------------------------------------------------- lifecycle


def test_lifecycle_records_create_update_and_access(ws: Workspace, clock: Clock) -> None:
    t0 = clock.t
    path = ws.write_text("contexts/a.json", "12345")
    assert path == ws.root / "contexts" / "a.json"
    row = ws.stat("contexts/a.json")
    assert row == {
        "path": "contexts/a.json",
        "folder": "contexts",
        "size": 5,
        "created_at": t0,
        "updated_at": t0,
        "accessed_at": t0,
        "access_count": 0,
    }

    clock.advance(10)
    ws.write_bytes(path, b"1234567890")  # absolute targets work too
    row = ws.stat(path)
    assert row is not None
    assert (row["created_at"], row["updated_at"], row["size"]) == (t0, t0 + 10, 10)

    clock.advance(5)
    assert ws.read_text("contexts/a.json") == "1234567890"
    assert ws.read_bytes("contexts/a.json") == b"1234567890"
    row = ws.stat(path)
    assert row is not None
    assert (row["access_count"], row["accessed_at"], row["updated_at"]) == (2, t0 + 15, t0 + 10)

    assert ws.forget("contexts/a.json") is True
    assert ws.stat("contexts/a.json") is None
    assert path.exists()
    assert ws.forget("contexts/a.json") is False


def test_open_records_reads_and_writes(ws: Workspace) -> None:
    with ws.open("sessions/s1.jsonl", "a") as fh:
        fh.write('{"a": 1}\n')
    with ws.open("sessions/s1.jsonl", "a") as fh:
        fh.write('{"b": 2}\n')
    row = ws.stat("sessions/s1.jsonl")
    assert row is not None and row["size"] == 18 and row["access_count"] == 0
    with ws.open("sessions/s1.jsonl") as fh:
        assert fh.read().count("\n") == 2
    row = ws.stat("sessions/s1.jsonl")
    assert row is not None and row["access_count"] == 1


def test_recording_a_missing_file_explains(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError, match="no such file"):
        ws.record_write("analytics/none.csv")
    with pytest.raises(WorkspaceError, match="does not exist"):
        ws.read_text("analytics/none.csv")


def test_concurrent_accesses_are_all_counted(ws: Workspace) -> None:
    ws.write_text("analytics/hits.csv", "x")

    def hit() -> None:
        for _ in range(25):
            ws.record_access("analytics/hits.csv")

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row = ws.stat("analytics/hits.csv")
    assert row is not None and row["access_count"] == 200


# ----------------------------------------------------------------------------- gc


def test_gc_by_age(tmp_path: Path, clock: Clock) -> None:
    ws = make_ws(tmp_path, clock, max_age_days=30, min_access_count=1).ensure()
    ws.write_text("contexts/old.json", "old!")
    ws.write_text("contexts/read.json", "r")
    ws.read_text("contexts/read.json")
    ws.write_text("contexts/recent.json", "r")
    clock.advance(40 * DAY)
    ws.write_text("contexts/rewritten.json", "new")  # written recently, never read
    clock.advance(20 * DAY)

    report = ws.gc()
    assert [c.path for c in report.candidates] == ["contexts/old.json", "contexts/recent.json"]
    assert all(c.rule == "age" and "max_age_days=30" in c.reason for c in report.candidates)
    assert report.deleted == ["contexts/old.json", "contexts/recent.json"]
    assert report.bytes_freed == 5
    assert not (ws.root / "contexts" / "old.json").exists()
    assert (ws.root / "contexts" / "read.json").exists()
    assert (ws.root / "contexts" / "rewritten.json").exists()
    assert ws.stat("contexts/old.json") is None
    assert report.rows_dropped == 2


def test_recent_access_keeps_an_unpopular_file(tmp_path: Path, clock: Clock) -> None:
    ws = make_ws(tmp_path, clock, max_age_days=30, min_access_count=5).ensure()
    ws.write_text("analytics/a.csv", "x")
    clock.advance(45 * DAY)
    ws.read_text("analytics/a.csv")
    clock.advance(15 * DAY)
    assert ws.gc(dry_run=True).candidates == []
    clock.advance(16 * DAY)
    assert [c.path for c in ws.gc(dry_run=True).candidates] == ["analytics/a.csv"]


def test_gc_by_access_count(tmp_path: Path, clock: Clock) -> None:
    ws = make_ws(tmp_path, clock, max_age_days=30, min_access_count=3).ensure()
    for name, reads in [("twice", 2), ("thrice", 3)]:
        ws.write_text(f"sessions/{name}", name)
        for _ in range(reads):
            ws.read_text(f"sessions/{name}")
    clock.advance(31 * DAY)
    (cand,) = ws.gc().candidates
    assert (cand.path, cand.access_count, cand.indexed) == ("sessions/twice", 2, True)
    assert "read 2 time(s)" in cand.reason
    assert (ws.root / "sessions" / "thrice").exists()
    assert not (ws.root / "sessions" / "twice").exists()


def test_cache_entries_expire_after_their_ttl(tmp_path: Path, clock: Clock) -> None:
    ws = make_ws(tmp_path, clock, cache_ttl_hours=24).ensure()
    ws.write_text("cache/emb/a.json", "aaa")
    ws.read_text("cache/emb/a.json")  # reads do not extend a cache entry's life
    clock.advance(20 * HOUR)
    ws.write_text("cache/b.json", "b")
    clock.advance(5 * HOUR)

    report = ws.gc()
    assert [(c.path, c.rule, c.size) for c in report.candidates] == [
        ("cache/emb/a.json", "cache_ttl", 3)
    ]
    assert "cache_ttl_hours=24" in report.candidates[0].reason
    assert not (ws.root / "cache" / "emb").exists()  # emptied subfolder removed
    assert (ws.root / "cache").is_dir()
    assert (ws.root / "cache" / "b.json").exists()


def test_protected_folders_are_never_collected(tmp_path: Path, clock: Clock) -> None:
    ws = make_ws(tmp_path, clock).ensure()
    for name in FOLDERS:
        ws.write_text(f"{name}/f.bin", "x" * 10)
    clock.advance(400 * DAY)
    report = ws.gc()
    assert {c.folder for c in report.candidates} == {"contexts", "sessions", "analytics", "cache"}
    for name in ("versions", "memory", "templates", "config"):
        assert (ws.root / name / "f.bin").exists()
    assert report.bytes_freed == 40

    custom = make_ws(tmp_path / "other", clock, protected=["cache"])
    custom.write_text("cache/kept", "x")
    custom.write_text("memory/now-unprotected", "x")
    clock.advance(400 * DAY)
    assert [c.path for c in custom.gc().candidates] == ["memory/now-unprotected"]


def test_dry_run_deletes_nothing(ws: Workspace, clock: Clock) -> None:
    ws.write_text("contexts/a", "aaaa")
    ws.write_text("cache/b", "bb")
    rows_before = ws.health().index_rows
    files_before = tree(ws.root)
    clock.advance(365 * DAY)

    report = ws.gc(dry_run=True)
    assert report.dry_run
    assert [c.path for c in report.candidates] == ["cache/b", "contexts/a"]
    assert report.candidate_bytes == 6
    assert report.deleted == [] and report.bytes_freed == 0 and report.rows_dropped == 0
    assert tree(ws.root) == files_before
    assert ws.health().index_rows == rows_before


def test_gc_spares_the_index_and_symlink_targets(
    ws: Workspace, clock: Clock, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (ws.root / "cache" / "link").symlink_to(victim)
    (ws.root / "contexts" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    clock.advance(1000 * DAY)
    report = ws.gc()
    assert all(INDEX_NAME not in c.path and "link" not in c.path for c in report.candidates)
    assert (ws.root / INDEX_NAME).exists()
    assert victim.read_text() == "keep me"
    assert (ws.root / "cache" / "link").is_symlink()


# ----------------------------------------------------------------------------- filesystem


def test_unindexed_files_are_seen_and_synced(ws: Workspace, clock: Clock) -> None:
    (ws.root / "sessions" / "saver.sqlite").write_bytes(b"\0" * 100)  # written by SQLite
    ws.write_text("contexts/gone.json", "{}")
    (ws.root / "contexts" / "gone.json").unlink()  # deleted behind our back

    health = ws.health()
    assert (health.unindexed_files, health.stale_rows, health.total_files) == (1, 1, 1)
    clock.advance(60 * DAY)
    (cand,) = ws.gc(dry_run=True).candidates
    assert (cand.path, cand.indexed, cand.access_count) == ("sessions/saver.sqlite", False, 0)
    clock.advance(-60 * DAY)

    sync = ws.sync()
    assert (sync.added, sync.dropped) == (1, 1)
    row = ws.stat("sessions/saver.sqlite")
    assert row is not None and row["size"] == 100 and row["access_count"] == 0
    assert ws.sync().model_dump() == {"added": 0, "updated": 0, "dropped": 0}

    with (ws.root / "sessions" / "saver.sqlite").open("ab") as fh:  # grows outside the API
        fh.write(b"\0" * 50)
    assert ws.sync().updated == 1
    row = ws.stat("sessions/saver.sqlite")
    assert row is not None and row["size"] == 150


def test_recent_mtime_protects_an_old_indexed_file(ws: Workspace, clock: Clock) -> None:
    ws.write_text("analytics/live.db", "x")
    clock.advance(100 * DAY)
    target = ws.root / "analytics" / "live.db"
    os.utime(target, (clock.t, clock.t))  # another writer touched it just now
    assert ws.gc(dry_run=True).candidates == []


# ----------------------------------------------------------------------------- health


def test_health_numbers_match_what_was_written(ws: Workspace) -> None:
    ws.write_bytes("contexts/a", b"a" * 10)
    ws.write_bytes("contexts/sub/b", b"b" * 20)
    ws.write_bytes("memory/m", b"m" * 7)
    report = ws.health()
    by_name = {f.name: f for f in report.folders}
    assert [f.name for f in report.folders] == list(FOLDERS)
    assert (by_name["contexts"].files, by_name["contexts"].bytes) == (2, 30)
    assert (by_name["memory"].files, by_name["memory"].bytes, by_name["memory"].protected) == (
        1,
        7,
        True,
    )
    assert by_name["cache"].files == 0 and by_name["cache"].mode == "0700"
    assert (report.total_files, report.total_bytes, report.index_rows) == (3, 37, 3)
    assert report.ok and report.index_exists and report.index_bytes > 0
    assert report.candidates == [] and report.unindexed_files == report.stale_rows == 0
    json.dumps(report.to_dict())  # JSON-safe for `llmctx status --json`


def test_health_flags_bad_modes_and_missing_folders(ws: Workspace) -> None:
    os.chmod(ws.root / "config", 0o755)
    (ws.root / "analytics").rmdir()
    report = ws.health()
    assert report.bad_permissions == ["config"]
    assert report.missing == ["analytics"]
    assert not report.layout_complete and not report.permissions_ok and not report.ok
    ws.ensure()
    assert ws.health().ok


def test_tables_render(ws: Workspace, clock: Clock) -> None:
    ws.write_text("cache/x", "x")
    clock.advance(2 * DAY)
    console = Console(record=True, width=200)
    console.print(health_table(ws.health()))
    console.print(gc_table(ws.gc(dry_run=True)))
    console.print(gc_table(ws.gc()))
    out = console.export_text()
    assert all(name in out for name in FOLDERS)
    assert "cache/x" in out and "would be freed" in out and "deleted 1 file(s)" in out
    json.dumps(ws.gc(dry_run=True).to_dict())
