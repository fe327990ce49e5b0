"""Context operations as LangGraph nodes, and the state schema they share."""

from llmctx.nodes.budget import allocate_budget, assemble_window
from llmctx.nodes.state import (
    ContextConfig,
    ContextState,
    Frame,
    LastOp,
    PrunedItem,
    Summary,
    TierReport,
    WindowItem,
    merge_preserved,
    window_messages,
)

__all__ = [
    "ContextConfig",
    "ContextState",
    "Frame",
    "LastOp",
    "PrunedItem",
    "Summary",
    "TierReport",
    "WindowItem",
    "allocate_budget",
    "assemble_window",
    "merge_preserved",
    "window_messages",
]
