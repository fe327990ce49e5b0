"""The whole context pipeline as one node: switch, retrieve, budget, prune, summarize.

Run as one node, a turn's context change is one step, so a thread gets one version
per turn (whose `last_op` names the strongest operation that ran: `switch` when the
template changed) instead of one per operation. That keeps the version store small
and makes "the version before a compaction" (or a switch) simply the previous turn.
The nodes stay available on their own for graphs that want a checkpoint after each.

Example:
    >>> builder.add_node("context", compress)  # in your own StateGraph
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langgraph.runtime import Runtime

from llmctx.nodes._deps import NodeDeps
from llmctx.nodes._window import LazyCounts, left_for_good, merged_pruned
from llmctx.nodes.budget import assemble_window
from llmctx.nodes.prune import prune_window
from llmctx.nodes.retrieve import retrieve_memories
from llmctx.nodes.state import ContextConfig, ContextState, Frame
from llmctx.nodes.summarize import needs_summary, summarize_window
from llmctx.nodes.switch import finish_switch, plan_switch

__all__ = ["compress", "compress_frame"]


def compress(state: ContextState, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
    """LangGraph node: the frame for this turn, after switch (a pending request, the
    run's template or the classifier), retrieve (when the graph has a store), budget,
    prune and summarize.

    Besides `context` it may write `preserved` and `switches` (on a switch) and clear
    a consumed `switch` request. The template precedence is in `llmctx.nodes.switch`.
    """
    context = ContextConfig.coerce(runtime.context) if runtime is not None else None
    plan = plan_switch(state, context)
    if plan.exact:  # switched back with nothing new: the preserved frame, exactly
        return finish_switch(plan.start, plan)
    deps = plan.deps
    info = getattr(runtime, "execution_info", None)
    version = getattr(info, "checkpoint_id", None) or None
    previous = plan.start
    store = getattr(runtime, "store", None)
    if store is not None and deps.template.retrieval.enabled:
        memories = retrieve_memories(
            state["messages"], deps, previous, store, user_id=getattr(context, "user_id", None)
        )
        if plan.carried:  # `preserving`: the old domain's memories stay, after the new
            ids = {m["id"] for m in memories}
            memories = [*memories, *(m for m in plan.carried if m["id"] not in ids)]
        previous = {**previous, "memories": memories}
    frame = compress_frame(state["messages"], deps, previous, version=version)
    return finish_switch(frame, plan)


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
    after = {it["id"] for it in final.get("window", []) if it["kind"] == "message"}
    handoff = left_for_good(
        [h for stage in stages for h in stage.get("handoff", [])], final["window"]
    )
    op = final["last_op"]
    return {
        **final,
        "pruned": merged_pruned(stages, final),
        "handoff": handoff,
        "last_op": {
            **op,
            "tokens_before": int(previous.get("window_tokens", 0)),
            "entered": len(after - before),
            "left": len(before - after),
        },
    }
