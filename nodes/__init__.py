"""Context operations as LangGraph nodes, and the state schema they share."""

from llmctx.nodes._deps import NodeDeps, resolve_deps
from llmctx.nodes._memory import DEFAULT_USER, MEMORY_ROOT, memory_namespace
from llmctx.nodes.budget import allocate_budget, assemble_window
from llmctx.nodes.pipeline import compress, compress_frame
from llmctx.nodes.prune import entities, hop_distances, prune, prune_window
from llmctx.nodes.remember import remember, remember_messages
from llmctx.nodes.retrieve import retrieve, retrieve_memories
from llmctx.nodes.schedule import ToolScheduler
from llmctx.nodes.state import (
    ContextConfig,
    ContextState,
    Frame,
    LastOp,
    Memory,
    PrunedItem,
    Summary,
    SwitchLog,
    SwitchRecord,
    SwitchRequest,
    TierReport,
    WindowItem,
    merge_preserved,
    window_messages,
)
from llmctx.nodes.summarize import needs_summary, summarize, summarize_window
from llmctx.nodes.switch import (
    SwitchPlan,
    SwitchPolicy,
    SwitchResult,
    SwitchStats,
    SwitchStrategy,
    finish_switch,
    plan_switch,
    switch,
    switch_command,
    switch_context_tool,
    switch_frame,
    switch_stats,
    with_active_template,
)
from llmctx.nodes.triggers import trigger_scores

__all__ = [
    "DEFAULT_USER",
    "MEMORY_ROOT",
    "ContextConfig",
    "ContextState",
    "Frame",
    "LastOp",
    "Memory",
    "NodeDeps",
    "PrunedItem",
    "Summary",
    "SwitchLog",
    "SwitchPlan",
    "SwitchPolicy",
    "SwitchRecord",
    "SwitchRequest",
    "SwitchResult",
    "SwitchStats",
    "SwitchStrategy",
    "TierReport",
    "ToolScheduler",
    "WindowItem",
    "allocate_budget",
    "assemble_window",
    "compress",
    "compress_frame",
    "entities",
    "finish_switch",
    "hop_distances",
    "memory_namespace",
    "merge_preserved",
    "needs_summary",
    "plan_switch",
    "prune",
    "prune_window",
    "remember",
    "remember_messages",
    "resolve_deps",
    "retrieve",
    "retrieve_memories",
    "summarize",
    "summarize_window",
    "switch",
    "switch_command",
    "switch_context_tool",
    "switch_frame",
    "switch_stats",
    "trigger_scores",
    "window_messages",
    "with_active_template",
]
