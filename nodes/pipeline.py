"""The whole context pipeline as one node: retrieve, budget, prune, summarize if due.

Run as one node, a turn's context change is one step, so a thread gets one version
per turn (whose `last_op` names the strongest operation that ran) instead of one
per operation. That keeps the version store small and makes "the version before a
compaction" simply the previous turn. The three nodes stay available on their own
for graphs that want a checkpoint after each.

Example:
    >>> builder.add_node("context", compress)  # in your own StateGraph
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langgraph.runtime import Runtime

from llmctx.nodes._deps import NodeDeps, resolve_deps
from llmctx.nodes._window import LazyCounts, left_for_good, with_oversized
from llmctx.nodes.budget import assemble_window
from llmctx.nodes.prune import prune_window
from llmctx.nodes.retrieve import retrieve_memories
from llmctx.nodes.state import ContextConfig, ContextState, Frame, PrunedItem
from llmctx.nodes.summarize import needs_summary, summarize_window

__all__ = ["compress", "compress_frame"]


def compress(state: ContextState, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
    """LangGraph node: the frame for this turn, after retrieve (when the graph has a
    store), budget, prune and summarize."""
    context = runtime.context if runtime is not None else None
    deps = resolve_deps(context)
    info = getattr(runtime, "execution_info", None)
    version = getattr(info, "checkpoint_id", None) or None
    previous = state.get("context") or {}
    store = getattr(runtime, "store", None)
    if store is not None and deps.template.retrieval.enabled:
        config = ContextConfig.coerce(context) if context is not None else None
        memories = retrieve_memories(
            state["messages"], deps, previous, store, user_id=getattr(config, "user_id", None)
        )
        previous = {**previous, "memories": memories}
    return {"context": compress_frame(state["messages"], deps, previous, version=version)}


def compress_frame(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    previous: Frame | None = None,
    *,
    version: str | None = None,
) -> Frame:
    """Budget → prune → (trigger check) → summarize, as one pure step.

    `pruned` and `handoff` gather what every stage removed; `last_op` is measured
    against the previous turn's window and names the last stage that changed it.
    """
    previous = previous or {}
    counts = LazyCounts(messages, deps.counter)
    assembled = assemble_window(messages, deps, previous, counts=counts)
    pruned = prune_window(messages, deps, assembled, version=version, counts=counts)
    final = pruned
    if needs_summary(pruned, deps):
        final = summarize_window(messages, deps, pruned, deps.summarizer, version=version)
    if final is assembled:
        return assembled
    stages = [assembled, pruned, final]
    before = {it["id"] for it in previous.get("window", []) if it["kind"] == "message"}
    shown = {it["id"]: it for it in final.get("window", []) if it["kind"] == "message"}
    after = set(shown)
    removed: list[PrunedItem] = []
    seen: set[str] = set()
    for stage in stages:
        for item in stage.get("pruned", []):
            mid = item["id"]
            back = mid in shown and "content" not in shown[mid]  # a later stage re-took it
            if item["reason"].startswith("oversized ("):
                continue  # re-derived below, against the final window
            if mid not in seen and not back:
                seen.add(mid)
                removed.append(item)
    handoff = left_for_good(
        [h for stage in stages for h in stage.get("handoff", [])], final["window"]
    )
    op = final["last_op"]
    return {
        **final,
        "pruned": with_oversized(removed, final.get("oversized", []), final["window"]),
        "handoff": handoff,
        "last_op": {
            **op,
            "tokens_before": int(previous.get("window_tokens", 0)),
            "entered": len(after - before),
            "left": len(before - after),
        },
    }
