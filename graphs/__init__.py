"""Graphs composed from the context nodes: the context pipeline and replay."""

from llmctx.graphs.context import build_context_graph, context_node
from llmctx.graphs.replay import ReplayReport, TurnRecord, default_thread_id, replay

__all__ = [
    "ReplayReport",
    "TurnRecord",
    "build_context_graph",
    "context_node",
    "default_thread_id",
    "replay",
]
