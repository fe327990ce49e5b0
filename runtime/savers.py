"""Open the checkpointer that holds every context version.

The embedded default is `LlmctxSaver`: one SQLite file, `<workspace>/versions/
checkpoints.sqlite` (WAL mode), which stores each turn incrementally, so every turn
of every thread is a LangGraph checkpoint that survives the process. A
`postgresql://` URL opens a `PostgresSaver` instead, for sharing beyond one machine
(needs the optional `langgraph-checkpoint-postgres` package).

Example:
    >>> with open_saver(".llm") as saver:
    ...     graph = build_context_graph(checkpointer=saver)
    >>> async with open_async_saver(".llm") as saver:
    ...     await graph.ainvoke(...)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver

from llmctx.runtime.checkpointer import LlmctxSaver
from llmctx.runtime.errors import ConfigError
from llmctx.runtime.workspace import Workspace

__all__ = ["CHECKPOINT_FILE", "checkpoint_path", "open_async_saver", "open_saver"]

CHECKPOINT_FILE = "checkpoints.sqlite"
_POSTGRES = ("postgresql://", "postgres://")


def checkpoint_path(target: str | Path | Workspace) -> Path:
    """The embedded checkpoint file of a workspace (path or `Workspace`)."""
    workspace = target if isinstance(target, Workspace) else Workspace(Path(target))
    return workspace.path("versions", CHECKPOINT_FILE)


def _postgres_missing() -> ConfigError:
    return ConfigError(
        "a postgresql:// target needs langgraph-checkpoint-postgres; "
        "install it with: pip install 'llmctx[postgres]'"
    )


@contextmanager
def open_saver(target: str | Path | Workspace) -> Iterator[BaseCheckpointSaver]:
    """Yield a checkpointer for a workspace (path or `Workspace`) or a Postgres URL.

    The connection is closed when the block ends. A checkpoint file that is not an
    llmctx store raises `CheckpointStoreError` (it is never reset).
    """
    if isinstance(target, str) and target.startswith(_POSTGRES):
        try:
            from langgraph.checkpoint.postgres import PostgresSaver
        except ImportError:  # pragma: no cover - depends on the optional extra
            raise _postgres_missing() from None
        with PostgresSaver.from_conn_string(target) as saver:
            saver.setup()
            yield saver
        return
    with LlmctxSaver(checkpoint_path(target)) as saver:
        yield saver


@asynccontextmanager
async def open_async_saver(target: str | Path | Workspace) -> AsyncIterator[BaseCheckpointSaver]:
    """Like `open_saver`, for `ainvoke`/`astream`: `AsyncPostgresSaver` for a URL.

    The embedded `LlmctxSaver` serves both APIs (its async methods run the sync ones
    in a worker thread under its lock).
    """
    if isinstance(target, str) and target.startswith(_POSTGRES):
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        except ImportError:  # pragma: no cover - depends on the optional extra
            raise _postgres_missing() from None
        async with AsyncPostgresSaver.from_conn_string(target) as saver:
            await saver.setup()
            yield saver
        return
    async with LlmctxSaver(checkpoint_path(target)) as saver:
        yield saver
