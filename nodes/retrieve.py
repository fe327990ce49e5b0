"""The retrieve node: bring the long-term memories this turn needs into the frame.

It queries the store (hybrid BM25 + dense retrieval, `llmctx.runtime.HybridRetriever`)
with the latest user message (plus, for a follow-up, a short message that names
nothing or points back, "and her sister?", the two turns before it as the focus),
under the template's namespaces for the run's user. The template's `k`
best hits above `min_score` always qualify; further hits fill the rest of the memory
room (the supporting tier minus the summaries) while they score at least `min_score`
of the best one. Hits are rendered with their date and counted exactly; memories of
messages the window already shows are skipped. The ids and scores go into the frame
(`memories`), where the budget node places them.

Without a store, or with retrieval disabled by the template, it does nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore

from llmctx.nodes._deps import NodeDeps, resolve_deps
from llmctx.nodes._memory import (
    embedder_for,
    memory_content,
    memory_namespace,
    message_text,
    retriever_for,
)
from llmctx.nodes.state import ContextConfig, ContextState, Frame, Memory

__all__ = ["MEMORY_ITEM_PREFIX", "is_follow_up", "retrieve", "retrieve_memories"]

MEMORY_ITEM_PREFIX = "llmctx:memory:"

_FOCUS_CHARS = 400

_SHORT_QUERY_WORDS = 8
"""Shorter messages may be follow-ups (see `is_follow_up`): the turns before them then
join the query as focus."""

_POINTS_BACK = re.compile(
    r"^\W*(and|but|also|or|so|then|what about|how about)\b"
    r"|\b(it|that|this|those|these|there|then|same|else|other|another)\b",
    re.IGNORECASE,
)
"""Words that refer to something said before: a message using them is a follow-up."""

_APOSTROPHE = re.compile("['\u2019]")

_FILL_CANDIDATES = 32
"""Hits fetched per namespace to fill the memory room (the template's k at least)."""


def retrieve(state: ContextState, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
    """LangGraph node: set the frame's `memories` for this turn (needs the graph's store)."""
    context = runtime.context if runtime is not None else None
    deps = resolve_deps(context)
    store = getattr(runtime, "store", None)
    frame: Frame = state.get("context") or {}
    if store is None or not deps.template.retrieval.enabled:
        return {}
    user = getattr(ContextConfig.coerce(context), "user_id", None) if context else None
    memories = retrieve_memories(state["messages"], deps, frame, store, user_id=user)
    if memories == frame.get("memories", []):
        return {}
    return {"context": {**frame, "memories": memories}}


def retrieve_memories(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    frame: Frame,
    store: BaseStore,
    *,
    user_id: str | None = None,
    embedder: Any = None,
) -> list[Memory]:
    """The memories for the latest user message, best first, within their room."""
    policy = deps.template.retrieval
    query_at = _latest_human(messages)
    if query_at is None or not policy.enabled:
        return []
    query = message_text(messages[query_at])
    if not query:
        return []
    focus = ""
    if is_follow_up(query):  # "and her sister?": the turns before say what it is about
        focus = " ".join(
            message_text(m)
            for m in messages[max(0, query_at - 2) : query_at]
            if not isinstance(m, ToolMessage | SystemMessage)
        )[-_FOCUS_CHARS:]
    retriever = retriever_for(store, embedder_for(deps.settings, embedder or deps.embedder))
    # Only what is sure to be shown again is excluded: pins, the recent turns, and
    # the messages new this turn. The cache tier is re-chosen every turn, so its
    # turns stay eligible as memories.
    known = int(frame.get("history_messages", 0))
    shown = {
        it["id"]
        for it in frame.get("window", [])
        if it["kind"] == "message" and it["tier"] in ("critical", "important")
    }
    shown.update(str(m.id) for m in messages[min(known, len(messages)) :])
    hits = []
    for domain in policy.namespaces:
        hits.extend(
            retriever.search(
                memory_namespace(user_id, domain),
                query,
                k=max(policy.k, _FILL_CANDIDATES),
                focus=focus or None,
                exclude_ids=shown,
            )
        )
    hits.sort(key=lambda h: (-h.score, h.key))
    # The template's k best always qualify (above `min_score`); after them, hits keep
    # filling the room while they score at least `min_score` of the best one.
    top = hits[0].score if hits else 0.0
    hits = [
        h
        for rank, h in enumerate(hits)
        if (h.score >= policy.min_score if rank < policy.k else h.score >= policy.min_score * top)
    ]
    room = _memory_room(frame, deps)
    out: list[Memory] = []
    seen: set[str] = set()
    for hit in hits:
        if hit.key in seen:
            continue
        seen.add(hit.key)
        content = memory_content({**hit.value, "text": hit.text})
        item_id = f"{MEMORY_ITEM_PREFIX}{hit.key}"
        tokens = deps.counter.count_message(SystemMessage(content=content, id=item_id))
        if tokens > room:
            continue
        room -= tokens
        memory: Memory = {"id": item_id, "text": content, "tokens": tokens, "score": hit.score}
        if hit.message_id:
            memory["message_id"] = hit.message_id  # type: ignore[typeddict-unknown-key]
        out.append(memory)
    return out


def is_follow_up(query: str) -> bool:
    """Whether a user message needs the turns before it to be understood.

    A short message is a follow-up unless it names what it is about: a name or a
    number ("When did Melanie paint a sunrise?" stands alone), and it does not point
    back ("and her sister?", "When was that?", "What about Jon?").
    """
    words = query.split()
    if len(words) >= _SHORT_QUERY_WORDS:
        return False
    if _POINTS_BACK.search(query):
        return True
    return not any(_is_name(w) for w in words[1:])


def _is_name(word: str) -> bool:
    """A capitalized word (not the pronoun I) or one holding a digit: `Melanie`, `2021`."""
    if any(c.isdigit() for c in word):
        return True
    return word[:1].isupper() and _APOSTROPHE.split(word)[0].rstrip("?!.,;:") != "I"


def _memory_room(frame: Frame, deps: NodeDeps) -> int:
    """The supporting tier minus what the active summaries take."""
    limit = deps.template.budget.tiers.allocate(deps.budget)["supporting"]
    return max(0, limit - sum(int(s["tokens"]) for s in frame.get("summaries", [])))


def _latest_human(messages: Sequence[BaseMessage]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return i
    return None
