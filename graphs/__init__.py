"""Graphs composed from the context nodes: the context pipeline, the agent and replay."""

from llmctx.graphs.agent import AgentState, apply_switch, build_agent
from llmctx.graphs.context import build_context_graph, context_node
from llmctx.graphs.middleware import ContextAgentState, ContextMiddleware, SystemPromptPolicy
from llmctx.graphs.replay import ReplayReport, TurnRecord, default_thread_id, replay

__all__ = [
    "AgentState",
    "ContextAgentState",
    "ContextMiddleware",
    "ReplayReport",
    "SystemPromptPolicy",
    "TurnRecord",
    "apply_switch",
    "build_agent",
    "build_context_graph",
    "context_node",
    "default_thread_id",
    "replay",
]
