"""The budget node: assemble the window inside the token budget.

The window is the template's system prompt, the pinned messages, and the most recent
messages that fit, counted exactly with the model's tokenizer (per-message overhead,
tool schemas and reply priming included). Tool pairs are atomic: an `AIMessage` with
tool calls enters the window only together with every one of its `ToolMessage`s, and a
`ToolMessage` never enters without its call.

Later operations (retrieve, prune, summarize) refine this frame; this node is the
recency baseline they start from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.runtime import Runtime

from llmctx.nodes._deps import NodeDeps, resolve_deps
from llmctx.nodes.state import ContextConfig, ContextState, Frame, PrunedItem, WindowItem
from llmctx.runtime.errors import BudgetError
from llmctx.runtime.tokens import REPLY_PRIMING, TokenCounter

__all__ = ["allocate_budget", "assemble_window"]

SYSTEM_ITEM_ID = "llmctx:system"


def allocate_budget(state: ContextState, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
    """LangGraph node: rebuild the frame's window for the current history.

    Returns a partial update of `context` only; `messages` is never touched.
    """
    deps = resolve_deps(runtime.context if runtime is not None else None)
    previous: Frame = state.get("context") or {}
    frame = assemble_window(state["messages"], deps, previous)
    return {"context": frame}


def assemble_window(
    messages: Sequence[BaseMessage], deps: NodeDeps, previous: Frame | None = None
) -> Frame:
    """Compute the frame for `messages` under `deps.budget`. Pure and deterministic.

    Raises `BudgetError` when the pinned items alone (system prompt, tool schemas,
    pinned messages, the latest user message) do not fit.
    """
    previous = previous or {}
    counter = deps.counter
    counts = _LazyCounts(messages, counter)
    budget = deps.budget

    system_prompt = deps.template.system_prompt.strip()
    items_head: list[WindowItem] = []
    fixed = deps.tools_tokens + REPLY_PRIMING
    if system_prompt:
        tokens = counter.count_message(SystemMessage(content=system_prompt, id=SYSTEM_ITEM_ID))
        items_head.append(
            {
                "kind": "system",
                "id": SYSTEM_ITEM_ID,
                "tokens": tokens,
                "tier": "critical",
                "content": system_prompt,
            }
        )
        fixed += tokens

    start = _appended_since(messages, previous)
    same_template = previous.get("template_hash") == deps.template.fingerprint
    template_pins = _template_pins(
        messages, deps, previous.get("template_pins", []) if same_template else None, start
    )
    pinned_ids = set(previous.get("pinned", [])) | set(template_pins)
    pinned, unpinnable = _pinned_indices(messages, pinned_ids)
    pinned_cost = sum(counts[i] for i in pinned)
    critical = fixed + pinned_cost
    if critical > budget:
        raise BudgetError(
            f"the pinned context needs {critical} tokens (system prompt, tool schemas, "
            f"{len(pinned)} pinned message(s)) but the budget is {budget}; raise the "
            "budget or shorten the system prompt"
        )

    selected, excluded = _recent_units(messages, counts, budget - critical, pinned)
    chosen = sorted(set(selected) | pinned)
    window: list[WindowItem] = list(items_head)
    window_tokens = fixed
    for i in chosen:
        tokens = counts[i]
        window_tokens += tokens
        window.append(
            {
                "kind": "message",
                "id": str(messages[i].id),
                "tokens": tokens,
                "tier": "critical" if i in pinned else "important",
            }
        )
    recent_tokens = window_tokens - critical

    before_ids = [it["id"] for it in previous.get("window", []) if it["kind"] == "message"]
    after_ids = {it["id"] for it in window if it["kind"] == "message"}
    left_ids = [i for i in before_ids if i not in after_ids]
    before_set = set(before_ids)
    entered = sum(1 for i in after_ids if i not in before_set)
    pruned: list[PrunedItem] = [
        {"id": mid, "reason": "out of budget (recency)"} for mid in left_ids
    ]
    pruned.extend(excluded)
    pruned.extend(unpinnable)

    frame: Frame = {
        **previous,
        "template": deps.template.name,
        "template_hash": deps.template.fingerprint,
        "turn": sum(1 for m in messages if isinstance(m, HumanMessage)),
        "budget": budget,
        "tiers": {
            "critical": {"limit": budget, "used": critical, "items": len(items_head) + len(pinned)},
            "important": {
                "limit": budget - critical,
                "used": recent_tokens,
                "items": len(chosen) - len(pinned),
            },
        },
        "window": window,
        "window_tokens": window_tokens,
        "history_tokens": _history_tokens(messages, counter, previous, start),
        "history_messages": len(messages),
        "history_tail": str(messages[-1].id) if messages else "",
        "pruned": pruned,
        "pinned": list(previous.get("pinned", [])),
        "template_pins": template_pins,
        "last_op": {
            "op": "assemble",
            "reason": f"recency window within {budget} tokens",
            "tokens_before": int(previous.get("window_tokens", 0)),
            "tokens_after": window_tokens,
            "entered": entered,
            "left": len(left_ids),
        },
        "tokenizer": counter.describe(),
    }
    frame.setdefault("summaries", [])
    return frame


class _LazyCounts:
    """Per-index message counts, computed (through the counter's cache) on first use.

    The window walk touches only the messages it may take, so a turn costs time in
    proportion to the window, not to the whole history.
    """

    __slots__ = ("_counter", "_done", "_messages")

    def __init__(self, messages: Sequence[BaseMessage], counter: TokenCounter) -> None:
        self._messages = messages
        self._counter = counter
        self._done: dict[int, int] = {}

    def __getitem__(self, index: int) -> int:
        count = self._done.get(index)
        if count is None:
            count = self._done[index] = self._counter.count_message(self._messages[index])
        return count


def _appended_since(messages: Sequence[BaseMessage], previous: Frame) -> int | None:
    """Where the messages new since `previous` start, or `None` if history was rewritten.

    The history only grows in normal operation; a rollback, a removal or another
    thread's frame breaks the check (same length prefix, same last message id), and
    then everything derived from the history is recomputed.
    """
    known = int(previous.get("history_messages", 0))
    tail = previous.get("history_tail")
    if 0 < known <= len(messages) and tail and str(messages[known - 1].id) == tail:
        return known
    return None


def _history_tokens(
    messages: Sequence[BaseMessage], counter: TokenCounter, previous: Frame, start: int | None
) -> int:
    """Tokens of the whole history, counted incrementally while it only grows."""
    if start is not None:
        return int(previous.get("history_tokens", 0)) + sum(counter.count_many(messages[start:]))
    return sum(counter.count_many(messages))


def _template_pins(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    known: list[str] | None,
    start: int | None,
) -> list[str]:
    """Ids the template pins by id, role or pattern; only new messages are scanned."""
    policy = deps.template.pinned
    if not (policy.ids or policy.roles or policy.patterns):
        return []
    if known is None or start is None:
        known, start = [], 0
    ids = set(policy.ids)
    roles = set(policy.roles)
    patterns = policy.compiled
    found = list(known)
    for message in messages[start:]:
        if (
            message.id in ids
            or message.type in roles
            or (patterns and any(p.search(message.text) for p in patterns))
        ):
            found.append(str(message.id))
    return found


def _pinned_indices(
    messages: Sequence[BaseMessage], pinned_ids: set[str]
) -> tuple[set[int], list[PrunedItem]]:
    """The latest user message, the leading system messages, and pinned ids.

    A pinned message that belongs to a tool unit pins the whole unit; if the unit is
    incomplete it cannot be sent at all, and is reported instead of pinned.
    """
    pinned: set[int] = set()
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            pinned.add(i)
            break
    for i, message in enumerate(messages):
        if not isinstance(message, SystemMessage):
            break
        pinned.add(i)
    unpinnable: list[PrunedItem] = []
    if pinned_ids:
        by_id = [i for i, m in enumerate(messages) if m.id in pinned_ids]
        if any(_in_tool_unit(messages[i]) for i in by_id):
            units = _tool_units(messages)
            for i in by_id:
                unit = units.get(i, [i])
                if unit:
                    pinned.update(unit)
                else:
                    unpinnable.append(
                        {
                            "id": str(messages[i].id),
                            "reason": "pinned, but its tool pair is incomplete",
                        }
                    )
        else:
            pinned.update(by_id)
    return pinned, unpinnable


def _in_tool_unit(message: BaseMessage) -> bool:
    return isinstance(message, ToolMessage) or bool(
        isinstance(message, AIMessage) and message.tool_calls
    )


def _tool_units(messages: Sequence[BaseMessage]) -> dict[int, list[int]]:
    """Map each index in a tool unit to the unit's indices (`[]` if incomplete)."""
    results = {m.tool_call_id: i for i, m in enumerate(messages) if isinstance(m, ToolMessage)}
    units: dict[int, list[int]] = {}
    claimed: set[int] = set()
    for i, m in enumerate(messages):
        if isinstance(m, AIMessage) and m.tool_calls:
            ids = [str(c.get("id")) for c in m.tool_calls]
            found = [results[c] for c in ids if c in results]
            unit = [i, *found] if len(found) == len(ids) else []
            for j in [i, *found]:
                units[j] = unit
                claimed.add(j)
    for j in results.values():
        if j not in claimed:
            units[j] = []
    return units


def _recent_units(
    messages: Sequence[BaseMessage],
    counts: _LazyCounts,
    room: int,
    pinned: set[int],
) -> tuple[list[int], list[PrunedItem]]:
    """Walk back from the newest message, taking whole tool units while they fit.

    A unit is one message, or an AI message with tool calls plus all of its results.
    The walk stops at the first unit that does not fit, so the recent part of the
    window is contiguous. Tool results without their call, and calls missing a
    result, are never eligible; those met on the walk are returned with a reason.
    """
    selected: list[int] = []
    excluded: list[PrunedItem] = []
    pending: dict[str, int] = {}
    used = 0
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, ToolMessage):
            pending[message.tool_call_id] = i
            continue
        unit = [i]
        if isinstance(message, AIMessage) and message.tool_calls:
            call_ids = [str(call.get("id")) for call in message.tool_calls]
            if not all(cid in pending for cid in call_ids):
                for cid in call_ids:
                    pending.pop(cid, None)
                excluded.append(
                    {"id": str(message.id), "reason": "tool call without all its results"}
                )
                continue
            unit.extend(pending.pop(cid) for cid in call_ids)
        if len(unit) == 1:
            cost = 0 if i in pinned else counts[i]
        else:
            cost = sum(counts[j] for j in unit if j not in pinned)
        if used + cost > room:
            break
        used += cost
        selected.extend(unit)
    else:
        # The whole history fit: whatever is still pending never had a call.
        excluded.extend(
            {"id": str(messages[j].id), "reason": "tool result without its call"}
            for j in sorted(pending.values())
        )
    return selected, excluded
