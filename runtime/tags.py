"""Tags: names for context versions, kept beside the checkpoints of any saver.

LangGraph's savers have no place for a user's labels, so tags live in one small SQL
table, `llmctx_tags(thread_id, name, checkpoint_id, created_at)`, with the primary
key `(thread_id, name)`: a name is unique per thread, and one version may carry
several names. Where the table lives follows the saver (`tag_store_for`):

- a `PostgresSaver`: in the same database, over the saver's own connection or pool;
- a saver on a SQLite file (a `path` attribute, or a `sqlite3.Connection` as
  `conn`, like `SqliteSaver`): in the workspace's `.llm/versions/tags.sqlite` when
  the file is in a `versions/` folder, else in `<file>.tags` beside it, so two
  databases in one folder never share tags;
- a saver with a `tag_store` attribute (a `TagStore`, or a callable returning one);
- anything else (`InMemorySaver`): an in-memory table that lives as long as the saver.

Example:
    >>> store = TagStore.sqlite(".llm/versions/tags.sqlite")
    >>> store.set("chat", "before-refactor", "1f0a...")
    >>> store.for_thread("chat")
    {'before-refactor': '1f0a...'}
"""

from __future__ import annotations

import re
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmctx.runtime.errors import TagError
from llmctx.runtime.retention import is_postgres_saver

__all__ = ["TAGS_FILE", "TagError", "TagStore", "tag_store_for", "validate_tag_name"]

TAGS_FILE = "tags.sqlite"
_WORKSPACE_FOLDER = "versions"  # `.llm/versions/`: the workspace's checkpoint folder
_TABLE = "llmctx_tags"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RESERVED = re.compile(r"(?i)head(~\d+)?")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    thread_id TEXT NOT NULL,
    name TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (thread_id, name)
)
"""


def validate_tag_name(name: str) -> str:
    """Return `name` if it can name a version, else raise `TagError`.

    Names are 1-64 letters, digits, `.`, `_` or `-`, starting with a letter or digit;
    `head` and `head~N` are reserved for "the newest version" and "N versions back".
    """
    if not _NAME.fullmatch(name):
        raise TagError(
            f"invalid tag name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if _RESERVED.fullmatch(name):
        raise TagError(f"tag name {name!r} is reserved (head, head~N); choose another name")
    return name


class TagStore:
    """Tag names of versions, unique per thread, in one SQL table.

    Build one with `TagStore.sqlite(path)`, `TagStore.memory()` or
    `TagStore.postgres(conn_or_url)`, or let `tag_store_for(saver)` pick the place.
    """

    def __init__(
        self,
        connect: Callable[[], AbstractContextManager[Any]],
        *,
        placeholder: str,
        exists: Callable[[], bool] | None = None,
    ) -> None:
        self._connect = connect
        self._ph = placeholder
        self._exists = exists
        self._ready = False

    # ------------------------------------------------------------------ factories

    @classmethod
    def sqlite(cls, path: str | Path) -> TagStore:
        """Tags in a SQLite file, created on the first write (reads of a missing file
        find no tags)."""
        target = Path(path)

        @contextmanager
        def connect() -> Iterator[sqlite3.Connection]:
            target.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(target), timeout=30.0)
            try:
                with conn:  # commits, or rolls back on error
                    yield conn
            finally:
                conn.close()

        return cls(connect, placeholder="?", exists=target.is_file)

    @classmethod
    def memory(cls) -> TagStore:
        """Tags in an in-memory SQLite database, for savers that persist nothing."""
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        lock = threading.Lock()

        @contextmanager
        def connect() -> Iterator[sqlite3.Connection]:
            with lock, conn:
                yield conn

        return cls(connect, placeholder="?")

    @classmethod
    def postgres(cls, conn: Any, lock: Any = None) -> TagStore:
        """Tags in a Postgres database: `conn` is a URL, a psycopg `Connection` or a
        `ConnectionPool` (a `PostgresSaver`'s `conn`; pass its `lock` too)."""
        import psycopg
        from psycopg.rows import tuple_row

        @contextmanager
        def connect() -> Iterator[Any]:
            if isinstance(conn, str):
                with psycopg.connect(conn, autocommit=True) as own, own.transaction():
                    yield own.cursor(row_factory=tuple_row)
                return
            held = lock if lock is not None else nullcontext()
            pool_connection = getattr(conn, "connection", None)
            with held:
                if isinstance(conn, psycopg.Connection) or pool_connection is None:
                    with conn.transaction():
                        yield conn.cursor(row_factory=tuple_row)
                else:
                    with pool_connection() as pooled, pooled.transaction():
                        yield pooled.cursor(row_factory=tuple_row)

        return cls(connect, placeholder="%s")

    # ------------------------------------------------------------------ queries

    def set(self, thread_id: str, name: str, checkpoint_id: str, *, force: bool = False) -> None:
        """Name `checkpoint_id` on `thread_id`.

        Re-tagging the same version is a no-op; a name already on another version is
        a `TagError` unless `force` moves it.
        """
        validate_tag_name(name)
        current = self.get(thread_id, name)
        if current == checkpoint_id:
            return
        if current is not None and not force:
            raise TagError(
                f"tag {name!r} already names version {current} on thread {thread_id!r}; "
                "untag it first, or move it with force (--force)"
            )
        p = self._ph
        now = datetime.now(UTC).isoformat()
        with self._session(write=True) as db:
            db.execute(
                f"DELETE FROM {_TABLE} WHERE thread_id = {p} AND name = {p}", (thread_id, name)
            )
            db.execute(
                f"INSERT INTO {_TABLE} (thread_id, name, checkpoint_id, created_at) "
                f"VALUES ({p}, {p}, {p}, {p})",
                (thread_id, name, checkpoint_id, now),
            )

    def delete(self, thread_id: str, name: str) -> str:
        """Remove a tag; return the checkpoint id it named. Unknown → `TagError`."""
        current = self.get(thread_id, name)
        if current is None:
            known = ", ".join(sorted(self.for_thread(thread_id))) or "none"
            raise TagError(f"thread {thread_id!r} has no tag {name!r} (its tags: {known})")
        p = self._ph
        with self._session(write=True) as db:
            db.execute(
                f"DELETE FROM {_TABLE} WHERE thread_id = {p} AND name = {p}", (thread_id, name)
            )
        return current

    def get(self, thread_id: str, name: str) -> str | None:
        """The checkpoint id a tag names, or `None`."""
        p = self._ph
        rows = self._query(
            f"SELECT checkpoint_id FROM {_TABLE} WHERE thread_id = {p} AND name = {p}",
            (thread_id, name),
        )
        return rows[0][0] if rows else None

    def for_thread(self, thread_id: str) -> dict[str, str]:
        """Every tag of a thread: name → checkpoint id, by name."""
        p = self._ph
        rows = self._query(
            f"SELECT name, checkpoint_id FROM {_TABLE} WHERE thread_id = {p} ORDER BY name",
            (thread_id,),
        )
        return {name: cid for name, cid in rows}

    def by_checkpoint(self, thread_id: str) -> dict[str, list[str]]:
        """Every tagged checkpoint of a thread: checkpoint id → its tag names."""
        out: dict[str, list[str]] = {}
        for name, cid in self.for_thread(thread_id).items():
            out.setdefault(cid, []).append(name)
        return out

    def tagged_threads(self) -> set[str]:
        """The threads that have at least one tag."""
        return {row[0] for row in self._query(f"SELECT DISTINCT thread_id FROM {_TABLE}", ())}

    def delete_thread(self, thread_id: str, names: list[str] | None = None) -> None:
        """Drop a thread's tags (only `names`, when given)."""
        p = self._ph
        with self._session(write=True) as db:
            if names is None:
                db.execute(f"DELETE FROM {_TABLE} WHERE thread_id = {p}", (thread_id,))
            else:
                for name in names:
                    db.execute(
                        f"DELETE FROM {_TABLE} WHERE thread_id = {p} AND name = {p}",
                        (thread_id, name),
                    )

    # ------------------------------------------------------------------ plumbing

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._exists is not None and not self._ready and not self._exists():
            return []  # never written: no file to create for a read
        with self._session(write=False) as db:
            return list(db.execute(sql, params).fetchall())

    @contextmanager
    def _session(self, *, write: bool) -> Iterator[Any]:
        with self._connect() as db:
            if not self._ready or write:
                db.execute(_SCHEMA)
                self._ready = True
            yield db


# One in-memory store per saver object that has no place of its own.
_MEMORY_STORES: weakref.WeakKeyDictionary[Any, TagStore] = weakref.WeakKeyDictionary()
_MEMORY_LOCK = threading.Lock()


def tag_store_for(saver: Any) -> TagStore:
    """The `TagStore` that belongs with `saver` (see the module docstring)."""
    own = getattr(saver, "tag_store", None)
    if isinstance(own, TagStore):
        return own
    if callable(own):
        return own()
    if is_postgres_saver(saver):
        return TagStore.postgres(saver.conn, getattr(saver, "lock", None))
    path = _saver_file(saver)
    if path is not None:
        name = TAGS_FILE if path.parent.name == _WORKSPACE_FOLDER else f"{path.name}.tags"
        return TagStore.sqlite(path.with_name(name))
    with _MEMORY_LOCK:
        store = _MEMORY_STORES.get(saver)
        if store is None:
            store = _MEMORY_STORES[saver] = TagStore.memory()
        return store


def _saver_file(saver: Any) -> Path | None:
    """The SQLite file a saver writes to: its `path` attribute, or the main database
    of its `conn` (a `sqlite3.Connection`); `None` for `:memory:` and other savers."""
    path = getattr(saver, "path", None)
    if isinstance(path, str | Path) and str(path) not in ("", ":memory:"):
        return Path(path)
    conn = getattr(saver, "conn", None)
    if not isinstance(conn, sqlite3.Connection):
        return None
    lock = getattr(saver, "lock", None)
    with lock if lock is not None else nullcontext():
        rows = conn.execute("PRAGMA database_list").fetchall()
    for _, name, file in rows:
        if name == "main" and file:
            return Path(file)
    return None
