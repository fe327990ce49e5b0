"""Open the checkpointer that holds every context version.

The embedded default is a SQLite file in `<workspace>/versions/` (WAL mode), so every
turn of every thread is a LangGraph checkpoint that survives the process. A
`postgresql://` URL opens a `PostgresSaver` instead, for sharing beyond one machine
(needs the optional `langgraph-checkpoint-postgres` package).

Example:
    >>> with open_saver(".llm") as saver:
    ...     graph = build_context_graph(checkpointer=saver)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from llmctx.runtime.errors import ConfigError
from llmctx.runtime.workspace import Workspace

__all__ = ["CHECKPOINT_FILE", "open_saver"]

CHECKPOINT_FILE = "checkpoints.sqlite"


@contextmanager
def open_saver(target: str | Path | Workspace) -> Iterator[BaseCheckpointSaver]:
    """Yield a checkpointer for a workspace (path or `Workspace`) or a Postgres URL.

    The connection is closed when the block ends.
    """
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        try:
            from langgraph.checkpoint.postgres import PostgresSaver
        except ImportError:  # pragma: no cover - depends on the optional extra
            raise ConfigError(
                "a postgresql:// target needs langgraph-checkpoint-postgres; "
                "install it with: pip install 'llmctx[postgres]'"
            ) from None
        with PostgresSaver.from_conn_string(target) as saver:
            saver.setup()
            yield saver
        return
    workspace = target if isinstance(target, Workspace) else Workspace(Path(target))
    path = workspace.path("versions", CHECKPOINT_FILE)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        saver = SqliteSaver(conn)
        saver.setup()
        yield saver
    finally:
        conn.close()
