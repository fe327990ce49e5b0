"""The remember node: write the conversation to long-term memory, off the response path.

Every message new since the last write becomes a memory (a `turn`, or a `tool`
result), and so does every active summary not yet written. Each carries its
sources: `message_id` (or the summary's `covers`), `thread`, `session`, `turn`
(index of the user turn it belongs to), `ts` and a readable `when`. Since every turn
is written when it arrives, turns that are later evicted or summarized are already
in memory: nothing the window drops is lost.

**Off the response path.** Add it as a *deferred* node
(`builder.add_node("remember", remember, defer=True)`): LangGraph runs it once the
rest of the run is done, so the model's answer never waits for a memory write.
**Crash-safe.** The node is one LangGraph task: if the process dies before it
finishes, resuming the thread runs it again, and the writes are idempotent (a
memory's key is its message or summary id). Its progress mark is the `remembered`
channel, written in the same step as the memories.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore

from llmctx.nodes._deps import NodeDeps, resolve_deps
from llmctx.nodes._memory import (
    embedder_for,
    memory_namespace,
    message_text,
    retriever_for,
    speaker_of,
    when_of,
)
from llmctx.nodes.state import ContextConfig, ContextState, Frame
from llmctx.runtime.transcripts import message_meta

__all__ = ["remember", "remember_messages"]


def remember(state: ContextState, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
    """LangGraph node: write new turns and summaries to the store (needs the graph's store)."""
    context = runtime.context if runtime is not None else None
    deps = resolve_deps(context)
    store = getattr(runtime, "store", None)
    if store is None:
        return {}
    config = ContextConfig.coerce(context) if context is not None else None
    info = getattr(runtime, "execution_info", None)
    mark = remember_messages(
        state["messages"],
        deps,
        state.get("context") or {},
        store,
        state.get("remembered") or {},
        user_id=getattr(config, "user_id", None),
        thread=getattr(info, "thread_id", None),
    )
    return {"remembered": mark}


def remember_messages(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    frame: Frame,
    store: BaseStore,
    mark: dict[str, Any],
    *,
    user_id: str | None = None,
    thread: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Write what is new since `mark` and return the new mark. Idempotent."""
    now = time.time() if now is None else now
    start, turn = _resume(messages, mark)
    values: list[dict[str, Any]] = []
    for i in range(start, len(messages)):
        message = messages[i]
        if isinstance(message, HumanMessage):
            turn += 1
        if isinstance(message, SystemMessage):
            continue
        text = message_text(message)
        if not text:
            continue
        meta = message_meta(message)
        value: dict[str, Any] = {
            "text": f"{speaker_of(message)}: {text}",
            "kind": "tool" if isinstance(message, ToolMessage) else "turn",
            "message_id": str(message.id),
            "speaker": speaker_of(message),
            "turn": i,
            "user_turn": turn,
            "ts": now,
        }
        session = meta.get("session")
        if session is not None:
            value["session"] = session
        if thread:
            value["thread"] = thread
        when = when_of(message)
        if when:
            value["when"] = when
        values.append(value)
    written = set(mark.get("summaries", []))
    active = [s for s in frame.get("summaries", []) if s["text"]]
    for summary in active:
        if summary["id"] in written:
            continue
        span = summary.get("span") or {}
        value = {
            "text": summary["text"],
            "kind": "summary",
            "summary_id": summary["id"],
            "covers": list(summary.get("covers", [])),
            "first": span.get("first", ""),
            "last": span.get("last", ""),
            "ts": now,
            "importance": 0.7,
        }
        if thread:
            value["thread"] = thread
        values.append(value)
    if values:
        namespace = memory_namespace(user_id, deps.template.retrieval.namespaces[0])
        keys = [v.get("message_id") or v["summary_id"] for v in values]
        retriever = retriever_for(store, embedder_for(deps.settings, deps.embedder))
        retriever.add(namespace, values, keys=keys)
    return {
        "count": len(messages),
        "last_id": str(messages[-1].id) if messages else "",
        "turn": turn,
        "summaries": sorted(s["id"] for s in active),
    }


def _resume(messages: Sequence[BaseMessage], mark: dict[str, Any]) -> tuple[int, int]:
    """Where to start writing: after the mark, or from the top if history was rewritten."""
    count = int(mark.get("count", 0))
    if 0 < count <= len(messages) and str(messages[count - 1].id) == mark.get("last_id"):
        return count, int(mark.get("turn", 0))
    return 0, 0
