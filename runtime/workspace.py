"""The `.llm/` workspace: its folders, a lifecycle index, cleanup and a health report.

Layout (created on first use, every folder mode 0700 whatever the umask):

    .llm/
      index.sqlite      lifecycle index (WAL); never a cleanup candidate
      contexts/ versions/ templates/ sessions/ analytics/ cache/ config/ memory/

`Workspace.path(folder, *parts)` is the only way in: it rejects `..`, absolute parts
and symlinks that lead out of the folder, raising `WorkspacePathError`.

**Index and filesystem.** The index (table `files`, one row per file, keyed by its
POSIX path relative to the root, e.g. `cache/answer.json`) records what the filesystem
cannot tell reliably: when a file was created, last written and last read through
this API, and how often it was read. The filesystem stays the truth for what exists
and how big it is. Health and gc scan the folders (`lstat`, symlinks never followed)
and join each regular file with its row; a file's *last use* is the latest of every
timestamp known for it (row times, mtime, atime), so files written by other code
(SQLite, Chroma) are judged by their mtime/atime and count as read 0 times.
`sync()` adds rows for such files and drops rows whose file has vanished.

Example:
    >>> ws = Workspace("/tmp/demo/.llm").ensure()        # doctest: +SKIP
    >>> ws.write_text("cache/answer.json", "{}")         # doctest: +SKIP
    >>> ws.gc(dry_run=True).candidates                    # doctest: +SKIP
    []
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict
from rich.console import Group
from rich.filesize import decimal
from rich.table import Table
from rich.text import Text

from llmctx.runtime.errors import ConfigError, WorkspaceError, WorkspacePathError
from llmctx.runtime.settings import Settings

__all__ = [
    "FOLDERS",
    "INDEX_NAME",
    "Candidate",
    "FolderStats",
    "GcReport",
    "HealthReport",
    "SyncReport",
    "Workspace",
    "gc_table",
    "health_table",
]

FOLDERS: tuple[str, ...] = (
    "contexts",
    "versions",
    "templates",
    "sessions",
    "analytics",
    "cache",
    "config",
    "memory",
)
INDEX_NAME = "index.sqlite"

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_BUSY_TIMEOUT_S = 10.0
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path         TEXT PRIMARY KEY,   -- POSIX path relative to the root: 'cache/a.json'
    folder       TEXT NOT NULL,      -- first component of path
    size         INTEGER NOT NULL,   -- bytes at the last write/access/sync
    created_at   REAL NOT NULL,      -- epoch seconds (injected clock)
    updated_at   REAL NOT NULL,      -- last write recorded
    accessed_at  REAL NOT NULL,      -- last read recorded (creation time until then)
    access_count INTEGER NOT NULL DEFAULT 0
)
"""
_Target = str | os.PathLike[str]


# --------------------------------------------------------------------------- reports


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (what `llmctx ... --json` prints)."""
        return self.model_dump(mode="json")


class Candidate(_Report):
    """A file the lifecycle rules would delete, and why."""

    path: str  # relative to the workspace root, POSIX separators
    folder: str
    size: int
    rule: Literal["cache_ttl", "age"]
    reason: str
    last_used: float  # epoch seconds: latest of index times, mtime and atime
    access_count: int
    indexed: bool


class GcReport(_Report):
    """What `gc` found and, unless it was a dry run, deleted."""

    root: str
    dry_run: bool
    candidates: list[Candidate]
    candidate_bytes: int  # total size of the candidates
    deleted: list[str]  # empty on a dry run
    bytes_freed: int  # 0 on a dry run
    rows_dropped: int  # index rows removed (deleted files and vanished ones)
    errors: list[str]


class FolderStats(_Report):
    """Size and state of one workspace folder."""

    name: str
    exists: bool
    files: int
    bytes: int
    mode: str | None  # octal, e.g. '0700'; None when missing
    protected: bool


class HealthReport(_Report):
    """The state of the workspace, computed without changing anything."""

    root: str
    exists: bool
    layout_complete: bool
    permissions_ok: bool
    missing: list[str]
    bad_permissions: list[str]
    folders: list[FolderStats]
    total_files: int
    total_bytes: int
    index_exists: bool
    index_rows: int
    index_bytes: int  # index.sqlite plus its -wal/-shm files
    unindexed_files: int  # on disk, no index row (see `Workspace.sync`)
    stale_rows: int  # index rows whose file is gone
    candidates: list[Candidate]
    candidate_bytes: int
    checked_at: float

    @property
    def ok(self) -> bool:
        """Whether the layout is complete and every folder is private (0700)."""
        return self.layout_complete and self.permissions_ok


class SyncReport(_Report):
    """How `sync` reconciled the index with the filesystem."""

    added: int
    updated: int
    dropped: int


@dataclass(frozen=True)
class _Entry:
    """A regular file found on disk, joined with its index row (if any)."""

    rel: str
    folder: str
    size: int
    mtime: float
    atime: float
    row: sqlite3.Row | None


# --------------------------------------------------------------------------- workspace


class Workspace:
    """The `.llm/` folder: safe paths, a lifecycle index, `gc` and `health`.

    `root` defaults to `settings.workspace`; `settings` defaults to `Settings.load()`.
    `now` returns epoch seconds; inject one to age files in tests.
    Nothing is created until `ensure()`, `path()` or a write/record call.

    Example:
        >>> ws = Workspace.from_settings(Settings.load(workspace="/tmp/x/.llm"))  # doctest: +SKIP
        >>> p = ws.path("versions", "checkpoints.sqlite")  # folder now exists, 0700
    """

    def __init__(
        self,
        root: Path | str | None = None,
        settings: Settings | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings if settings is not None else Settings.load()
        raw = Path(root) if root is not None else self.settings.workspace
        try:
            self.root = raw.expanduser().resolve()
        except (OSError, RuntimeError) as exc:
            raise WorkspaceError(f"cannot resolve workspace {raw}: {exc}") from None
        self.index_path = self.root / INDEX_NAME
        self._now = now
        self._ensured = False
        unknown = sorted(set(self.settings.lifecycle.protected) - set(FOLDERS))
        if unknown:
            raise ConfigError(
                f"invalid setting 'lifecycle.protected': unknown folder(s) {unknown}; "
                f"use names from {list(FOLDERS)}"
            )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, now: Callable[[], float] = time.time
    ) -> Workspace:
        """The workspace at `settings.workspace`."""
        return cls(None, settings, now=now)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # ------------------------------------------------------------------ layout

    def ensure(self) -> Workspace:
        """Create the root, every folder (mode 0700) and the index; return `self`.

        Idempotent: it also restores 0700 on folders whose mode drifted. A folder that
        is a symlink or a file is refused, since it could lead out of the workspace.
        """
        try:
            if self.root.exists() and not self.root.is_dir():
                raise WorkspaceError(f"workspace {self.root} is a file; move it or pick another")
            self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            os.chmod(self.root, _DIR_MODE)
            for name in FOLDERS:
                folder = self.root / name
                if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                    raise WorkspaceError(
                        f"{folder} must be a real directory (found a symlink or file); "
                        "move it away and run `llmctx init`"
                    )
                folder.mkdir(mode=_DIR_MODE, exist_ok=True)
                os.chmod(folder, _DIR_MODE)
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            os.chmod(self.index_path, _FILE_MODE)
        except OSError as exc:
            raise WorkspaceError(
                f"cannot create workspace {self.root}: {exc}; check its permissions "
                "or set LLMCTX_WORKSPACE to a writable folder"
            ) from None
        self._ensured = True
        return self

    @property
    def exists(self) -> bool:
        """Whether the root folder exists (the layout may still be incomplete)."""
        return self.root.is_dir()

    def path(self, folder: str, *parts: _Target) -> Path:
        """An absolute path inside `folder`, guaranteed to resolve inside it.

        Ensures the layout exists (once per instance); creates nothing below `folder`.
        Raises `WorkspaceError` for an unknown folder and `WorkspacePathError` for
        `..`, absolute parts, NUL bytes or symlinks that resolve outside the folder.

        Example:
            >>> ws.path("cache", "embeddings", "a.json")  # doctest: +SKIP
            PosixPath('/home/me/proj/.llm/cache/embeddings/a.json')
            >>> ws.path("cache", "../config/x")  # doctest: +SKIP
            Traceback (most recent call last):
            llmctx.runtime.errors.WorkspacePathError: path 'cache/../config/x' ...
        """
        if folder not in FOLDERS:
            raise WorkspaceError(
                f"unknown workspace folder {folder!r}; use one of {', '.join(FOLDERS)}"
            )
        shown = "/".join([folder, *(os.fspath(p) for p in parts)])
        relative = Path()
        for part in parts:
            piece = Path(part)
            if piece.is_absolute() or piece.anchor:
                raise WorkspacePathError(
                    f"path {shown!r} has an absolute part {os.fspath(part)!r}; "
                    f"give a path relative to {self.root / folder}"
                )
            if ".." in piece.parts:
                raise WorkspacePathError(
                    f"path {shown!r} contains '..'; give a path inside {self.root / folder}"
                )
            relative /= piece
        if not self._ensured:
            self.ensure()
        base = self.root / folder
        try:
            resolved = (base / relative).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # NUL byte, symlink loop
            raise WorkspacePathError(f"path {shown!r} cannot be resolved: {exc}") from None
        if not resolved.is_relative_to(base):
            raise WorkspacePathError(
                f"path {shown!r} resolves to {resolved}, outside {base} "
                "(a symlink leads out); remove the symlink or use another name"
            )
        return resolved

    # ------------------------------------------------------------------ lifecycle index

    def record_write(self, target: _Target) -> None:
        """Record that `target` was created or rewritten (size from disk, clock `now`).

        `target` is a path from `path()` or workspace-relative (`"cache/a.json"`).
        """
        path, rel, folder = self._locate(target)
        size = self._size_of(path, rel)
        now = self._now()
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO files (path, folder, size, created_at, updated_at, accessed_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(path) DO UPDATE SET"
                " size=excluded.size, updated_at=excluded.updated_at",
                (rel, folder, size, now, now, now),
            )

    def record_access(self, target: _Target) -> None:
        """Record one read of `target`: bump `access_count`, set `accessed_at`."""
        path, rel, folder = self._locate(target)
        size = self._size_of(path, rel)
        now = self._now()
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO files"
                " (path, folder, size, created_at, updated_at, accessed_at, access_count)"
                " VALUES (?, ?, ?, ?, ?, ?, 1)"
                " ON CONFLICT(path) DO UPDATE SET size=excluded.size,"
                " accessed_at=excluded.accessed_at, access_count=access_count + 1",
                (rel, folder, size, now, now, now),
            )

    def forget(self, target: _Target) -> bool:
        """Drop `target`'s index row (the file stays); return whether a row existed."""
        _, rel, _ = self._locate(target)
        with self._connect() as conn:
            return conn.execute("DELETE FROM files WHERE path = ?", (rel,)).rowcount > 0

    def stat(self, target: _Target) -> dict[str, Any] | None:
        """The index row of `target` as a dict, or None if it is not indexed."""
        _, rel, _ = self._locate(target)
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM files WHERE path = ?", (rel,)).fetchone()
        return dict(row) if row is not None else None

    # ------------------------------------------------------------------ file helpers

    def write_bytes(self, target: _Target, data: bytes) -> Path:
        """Atomically write `data` (temp file + rename, mode 0600) and record it."""
        path, rel, _ = self._locate(target)
        try:
            self._make_parents(path)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise WorkspaceError(f"cannot write {rel}: {exc}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # replaces a symlink itself, never its target
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise WorkspaceError(f"cannot write {rel}: {exc}") from None
            raise
        self.record_write(path)
        return path

    def write_text(self, target: _Target, text: str, encoding: str = "utf-8") -> Path:
        """Atomically write `text` and record it; see `write_bytes`."""
        return self.write_bytes(target, text.encode(encoding))

    def read_bytes(self, target: _Target) -> bytes:
        """Read `target` (never through a final symlink) and record the access."""
        path, rel, _ = self._locate(target)
        with self._open_raw(path, rel, "rb") as fh:
            data = fh.read()
        self.record_access(path)
        return data

    def read_text(self, target: _Target, encoding: str = "utf-8") -> str:
        """Read `target` as text and record the access."""
        return self.read_bytes(target).decode(encoding)

    @contextlib.contextmanager
    def open(self, target: _Target, mode: str = "r", **kwargs: Any) -> Iterator[IO[Any]]:
        """Open `target` as a context manager, recording the read or write.

        Reads are recorded on open, writes (modes with w/a/x/+) when the file closes.
        New files get mode 0600 and parent folders 0700.

        Example:
            >>> with ws.open("sessions/s1.jsonl", "a") as fh:  # doctest: +SKIP
            ...     fh.write("{}\\n")
        """
        path, rel, _ = self._locate(target)
        writing = any(flag in mode for flag in "wax+")
        if writing:
            self._make_parents(path)
        try:
            with self._open_raw(path, rel, mode, **kwargs) as fh:
                if not writing:
                    self.record_access(path)
                yield fh
        finally:
            if writing and path.is_file():  # recorded even if the body raised midway
                self.record_write(path)

    # ------------------------------------------------------------------ reconcile

    def sync(self) -> SyncReport:
        """Reconcile the index with the disk: add unseen files, refresh, drop vanished.

        Added rows take their times from mtime/atime and start with 0 reads; rows are
        refreshed when the file's size or mtime moved past the recorded write.
        """
        self.ensure()
        entries = self._scan(self._rows())
        added = updated = 0
        with self._connect() as conn:
            for e in entries:
                if e.row is None:
                    conn.execute(
                        "INSERT INTO files (path, folder, size, created_at, updated_at,"
                        " accessed_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (e.rel, e.folder, e.size, e.mtime, e.mtime, max(e.mtime, e.atime)),
                    )
                    added += 1
                elif e.size != e.row["size"] or e.mtime > e.row["updated_at"]:
                    conn.execute(
                        "UPDATE files SET size = ?, updated_at = MAX(updated_at, ?) WHERE path = ?",
                        (e.size, e.mtime, e.rel),
                    )
                    updated += 1
            dropped = self._drop_vanished(conn, {e.rel for e in entries})
        return SyncReport(added=added, updated=updated, dropped=dropped)

    # ------------------------------------------------------------------ cleanup / health

    def gc(self, dry_run: bool = False) -> GcReport:
        """Delete the files the lifecycle rules select (nothing at all on a dry run).

        Rules (`settings.lifecycle`), never applied in `protected` folders:
        - `cache/` files whose last write is `cache_ttl_hours` old expire;
        - elsewhere, files unused for `max_age_days` AND read fewer than
          `min_access_count` times go.
        Symlinks are never followed or deleted, and the index is never a candidate.
        A real run also drops index rows of deleted or vanished files and removes
        folders the deletions left empty.
        """
        rows = self._rows()
        entries = self._scan(rows)
        candidates = self._candidates(entries)
        deleted: list[str] = []
        errors: list[str] = []
        freed = dropped = 0
        if not dry_run:
            for c in candidates:
                path = self.root / c.path
                try:
                    if not stat.S_ISREG(path.lstat().st_mode):  # swapped since the scan
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    errors.append(f"{c.path}: {exc}")
                    continue
                deleted.append(c.path)
                freed += c.size
                self._prune_empty_dirs(path.parent, self.root / c.folder)
            if self.index_path.exists():
                with self._connect() as conn:
                    dropped = self._drop_vanished(conn, {e.rel for e in entries} - set(deleted))
        return GcReport(
            root=str(self.root),
            dry_run=dry_run,
            candidates=candidates,
            candidate_bytes=sum(c.size for c in candidates),
            deleted=deleted,
            bytes_freed=freed,
            rows_dropped=dropped,
            errors=errors,
        )

    def health(self) -> HealthReport:
        """Sizes, counts, index state, gc candidates and layout checks; changes nothing."""
        rows = self._rows()
        entries = self._scan(rows)
        protected = set(self.settings.lifecycle.protected)
        folders: list[FolderStats] = []
        missing: list[str] = []
        bad_modes: list[str] = []
        for name in ("", *FOLDERS):  # "" is the root itself
            path = self.root / name if name else self.root
            try:
                st = path.lstat()
            except FileNotFoundError:
                st = None
            is_dir = st is not None and stat.S_ISDIR(st.st_mode)
            perms = stat.S_IMODE(st.st_mode) if st is not None else None
            if not is_dir:
                missing.append(name or ".")
            elif perms != _DIR_MODE:
                bad_modes.append(name or ".")
            if name:
                mine = [e for e in entries if e.folder == name]
                folders.append(
                    FolderStats(
                        name=name,
                        exists=is_dir,
                        files=len(mine),
                        bytes=sum(e.size for e in mine),
                        mode=f"{perms:04o}" if perms is not None else None,
                        protected=name in protected,
                    )
                )
        on_disk = {e.rel for e in entries}
        candidates = self._candidates(entries)
        index_files = [self.root / f"{INDEX_NAME}{s}" for s in ("", "-wal", "-shm")]
        return HealthReport(
            root=str(self.root),
            exists=self.exists,
            layout_complete=not missing,
            permissions_ok=not bad_modes and not missing,
            missing=missing,
            bad_permissions=bad_modes,
            folders=folders,
            total_files=len(entries),
            total_bytes=sum(e.size for e in entries),
            index_exists=self.index_path.is_file(),
            index_rows=len(rows),
            index_bytes=sum(p.stat().st_size for p in index_files if p.is_file()),
            unindexed_files=sum(1 for e in entries if e.row is None),
            stale_rows=len(set(rows) - on_disk),
            candidates=candidates,
            candidate_bytes=sum(c.size for c in candidates),
            checked_at=self._now(),
        )

    # ------------------------------------------------------------------ internals

    def _connect(self) -> contextlib.closing[sqlite3.Connection]:
        """A short-lived autocommit connection; safe across threads and processes."""
        if not self.index_path.exists() and self._ensured:
            self._ensured = False  # the workspace was removed under us: rebuild it
            self.ensure()
        conn = sqlite3.connect(self.index_path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return contextlib.closing(conn)

    def _rows(self) -> dict[str, sqlite3.Row]:
        """Every index row by relative path; empty (and nothing created) without an index."""
        if not self.index_path.is_file():
            return {}
        with self._connect() as conn:
            try:
                rows = conn.execute("SELECT * FROM files").fetchall()
            except sqlite3.OperationalError:  # the table was never created
                return {}
        return {row["path"]: row for row in rows}

    def _locate(self, target: _Target) -> tuple[Path, str, str]:
        """Resolve a target to (absolute path, relative POSIX path, folder), safely."""
        raw = Path(target)
        if raw.is_absolute():
            try:
                resolved = raw.resolve()
            except (OSError, RuntimeError, ValueError) as exc:
                raise WorkspacePathError(f"path {os.fspath(target)!r}: {exc}") from None
            if not resolved.is_relative_to(self.root):
                raise WorkspacePathError(
                    f"path {os.fspath(target)!r} is outside the workspace {self.root}"
                )
            parts = resolved.relative_to(self.root).parts
        else:
            parts = raw.parts
        if len(parts) < 2 or parts[0] not in FOLDERS:
            raise WorkspacePathError(
                f"path {os.fspath(target)!r} is not a file inside a workspace folder; "
                f"use '<folder>/<name>' with a folder from {', '.join(FOLDERS)}"
            )
        path = self.path(parts[0], *parts[1:])
        return path, path.relative_to(self.root).as_posix(), parts[0]

    def _size_of(self, path: Path, rel: str) -> int:
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise WorkspaceError(f"cannot record {rel}: no such file; write it first") from None
        if not stat.S_ISREG(st.st_mode):
            raise WorkspaceError(f"cannot record {rel}: not a regular file")
        return st.st_size

    def _open_raw(self, path: Path, rel: str, mode: str, **kwargs: Any) -> IO[Any]:
        """`open` that refuses a final symlink and creates files 0600."""

        def opener(name: str, flags: int) -> int:
            return os.open(name, flags | os.O_NOFOLLOW, _FILE_MODE)

        try:
            return open(path, mode, opener=opener, **kwargs)  # the caller closes it
        except FileNotFoundError:
            raise WorkspaceError(f"{rel} does not exist in {self.root}") from None

    def _make_parents(self, path: Path) -> None:
        """Create the folders between the workspace folder and `path`, each 0700."""
        folder = self.root / path.relative_to(self.root).parts[0]
        current = folder
        for part in path.parent.relative_to(folder).parts:
            current = current / part
            if not current.is_dir():
                current.mkdir(mode=_DIR_MODE)
                os.chmod(current, _DIR_MODE)

    def _scan(self, rows: dict[str, sqlite3.Row]) -> list[_Entry]:
        """Every regular file below the folders (symlinks skipped), sorted by path."""
        entries: list[_Entry] = []
        for folder in FOLDERS:
            base = self.root / folder
            if base.is_symlink() or not base.is_dir():
                continue
            for dirpath, _dirs, files in os.walk(base, followlinks=False):
                for name in files:
                    path = Path(dirpath, name)
                    try:
                        st = path.lstat()
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    rel = path.relative_to(self.root).as_posix()
                    entries.append(
                        _Entry(rel, folder, st.st_size, st.st_mtime, st.st_atime, rows.get(rel))
                    )
        return sorted(entries, key=lambda e: e.rel)

    def _candidates(self, entries: list[_Entry]) -> list[Candidate]:
        """Apply the lifecycle rules to scanned files (see `gc`)."""
        rules = self.settings.lifecycle
        protected = set(rules.protected)
        now = self._now()
        found: list[Candidate] = []
        for e in entries:
            if e.folder in protected:
                continue
            row = e.row
            updated = max(e.mtime, row["updated_at"] if row else e.mtime)
            last_used = max(updated, e.atime, row["accessed_at"] if row else e.atime)
            count = row["access_count"] if row else 0
            rule: Literal["cache_ttl", "age"] | None = None
            if e.folder == "cache" and now - updated >= rules.cache_ttl_hours * 3600:
                rule = "cache_ttl"
                reason = (
                    f"cache entry written {(now - updated) / 3600:.1f} h ago "
                    f"(cache_ttl_hours={rules.cache_ttl_hours:g})"
                )
            elif now - last_used >= rules.max_age_days * 86400 and count < rules.min_access_count:
                rule = "age"
                reason = (
                    f"unused for {(now - last_used) / 86400:.1f} days "
                    f"(max_age_days={rules.max_age_days:g}) and read {count} time(s) "
                    f"(min_access_count={rules.min_access_count})"
                )
            if rule is not None:
                found.append(
                    Candidate(
                        path=e.rel,
                        folder=e.folder,
                        size=e.size,
                        rule=rule,
                        reason=reason,
                        last_used=last_used,
                        access_count=count,
                        indexed=row is not None,
                    )
                )
        return found

    @staticmethod
    def _drop_vanished(conn: sqlite3.Connection, present: set[str]) -> int:
        stale = [r[0] for r in conn.execute("SELECT path FROM files") if r[0] not in present]
        conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in stale])
        return len(stale)

    @staticmethod
    def _prune_empty_dirs(directory: Path, stop: Path) -> None:
        """Remove now-empty folders from `directory` up to (not including) `stop`."""
        while directory != stop and directory.is_relative_to(stop):
            try:
                directory.rmdir()
            except OSError:  # not empty, or gone
                return
            directory = directory.parent


# --------------------------------------------------------------------------- rendering


def health_table(report: HealthReport) -> Group:
    """A rich table of a `HealthReport` and a summary line under it, for `llmctx status`."""
    state = "ok" if report.ok else "needs `llmctx init`"
    table = Table(title=f"workspace {report.root} ({state})")
    table.add_column("folder")
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    table.add_column("mode")
    table.add_column("protected")
    for f in report.folders:
        table.add_row(
            f.name,
            str(f.files),
            decimal(f.bytes),
            f.mode or "[red]missing[/red]",
            "yes" if f.protected else "",
        )
    table.add_section()
    table.add_row("total", str(report.total_files), decimal(report.total_bytes), "", "")
    summary = (
        f"index: {report.index_rows} rows, {decimal(report.index_bytes)}; "
        f"{report.unindexed_files} unindexed, {report.stale_rows} stale; "
        f"gc candidates: {len(report.candidates)} ({decimal(report.candidate_bytes)})"
    )
    return Group(table, Text(summary))


def gc_table(report: GcReport) -> Group:
    """A rich table of a `GcReport` and a summary line under it, for `llmctx gc`."""
    title = "gc (dry run)" if report.dry_run else "gc"
    table = Table(title=f"{title}: {report.root}")
    table.add_column("path")
    table.add_column("size", justify="right")
    table.add_column("reason")
    for c in report.candidates:
        table.add_row(c.path, decimal(c.size), c.reason)
    if report.dry_run:
        summary = (
            f"{len(report.candidates)} candidate(s), {decimal(report.candidate_bytes)} "
            "would be freed; nothing deleted"
        )
    else:
        summary = f"deleted {len(report.deleted)} file(s), freed {decimal(report.bytes_freed)}" + (
            f"; {len(report.errors)} error(s)" if report.errors else ""
        )
    return Group(table, Text(summary))
