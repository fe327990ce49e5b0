"""The budget node: assemble the window inside the token budget, tier by tier.

The budget (the model's context window minus the output reserve, or the run's
`budget`) is split into four tiers by the template's `TierSplit`:

| tier | holds |
|---|---|
| critical | the system prompt, tool schemas, pinned messages, the latest user message |
| important | the newest turns not yet summarized, verbatim |
| supporting | the active summaries, then retrieved memories |
| cache | older verbatim turns and tool outputs |

Tiers are filled in that order, and what a tier leaves unused flows to the next
(critical → important → supporting → cache); a critical tier that needs more than
its share takes it from the following tiers in the same order. Every count is exact
(`TokenCounter`: per-message overhead, tool schemas and reply priming included).
Tool pairs are atomic: an `AIMessage` with tool calls enters the window only with
every one of its `ToolMessage`s, and a `ToolMessage` never enters without its call.

This node is the recency baseline; prune re-selects the cache tier by relevance and
summarize folds old turns into the supporting tier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.runtime import Runtime

from llmctx.nodes._deps import NodeDeps, resolve_deps
from llmctx.nodes._window import (
    LazyCounts,
    calls_of,
    in_tool_unit,
    message_item,
    tier_reports,
    truncated_copy,
    with_oversized,
)
from llmctx.nodes.state import (
    ContextConfig,
    ContextState,
    Frame,
    PrunedItem,
    Summary,
    WindowItem,
)
from llmctx.runtime.errors import BudgetError
from llmctx.runtime.tokens import REPLY_PRIMING, TokenCounter

__all__ = ["HORIZON_FACTOR", "allocate_budget", "assemble_window", "summary_content"]

SYSTEM_ITEM_ID = "llmctx:system"

HORIZON_FACTOR = 2
"""The cache tier looks back at most this many budgets' worth of tokens.

Older turns are reached through the summaries, long-term memory and earlier
versions; bounding the look-back keeps a turn's cost independent of the history.
"""


def allocate_budget(state: ContextState, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
    """LangGraph node: rebuild the frame's window for the current history.

    Returns a partial update of `context` only; `messages` is never touched.
    """
    deps = resolve_deps(runtime.context if runtime is not None else None)
    previous: Frame = state.get("context") or {}
    frame = assemble_window(state["messages"], deps, previous)
    return {"context": frame}


def assemble_window(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    previous: Frame | None = None,
    *,
    counts: LazyCounts | None = None,
) -> Frame:
    """Compute the tiered frame for `messages` under `deps.budget`. Pure, deterministic.

    A unit too large for the room left is shown truncated (with a marker naming the
    message) when it is the newest one, and pinned messages are truncated when the
    pins alone overflow: an oversized message is never dropped silently. Raises
    `BudgetError` only when the system prompt and tool schemas alone exceed the
    budget, or the pins cannot be truncated into it.
    """
    previous = previous or {}
    counter = deps.counter
    counts = counts if counts is not None else LazyCounts(messages, counter)
    budget = deps.budget
    limits = deps.template.budget.tiers.allocate(budget)

    system_prompt = deps.template.system_prompt.strip()
    head: list[WindowItem] = []
    fixed = deps.tools_tokens + REPLY_PRIMING
    system_tokens = 0
    if system_prompt:
        system_tokens = counter.count_message(
            SystemMessage(content=system_prompt, id=SYSTEM_ITEM_ID)
        )
        head.append(
            {
                "kind": "system",
                "id": SYSTEM_ITEM_ID,
                "tokens": system_tokens,
                "tier": "critical",
                "content": system_prompt,
            }
        )
    if fixed + system_tokens > budget:
        raise BudgetError(
            f"the system prompt ({system_tokens} tokens) and tool schemas "
            f"({deps.tools_tokens} tokens) alone exceed the budget of {budget}; raise the "
            "budget, shorten the template's system prompt or send fewer tools"
        )

    start = _appended_since(messages, previous)
    boundary, summaries, summarized, reset = _summarized_state(messages, previous)
    same_template = previous.get("template_hash") == deps.template.fingerprint
    template_pins = _template_pins(
        messages, deps, previous.get("template_pins", []) if same_template else None, start
    )
    pinned_ids = set(previous.get("pinned", [])) | set(template_pins)
    pinned, unpinnable = pinned_indices(messages, pinned_ids)

    # critical: the pins, truncated (largest first) only if they cannot all fit.
    room = budget - fixed - system_tokens
    pin_items = _fit_pins(messages, sorted(pinned), counts, room, deps)
    critical_used = fixed + system_tokens + sum(it["tokens"] for it in pin_items.values())
    carry = limits["critical"] - critical_used

    # important: the newest whole units above the summarized boundary.
    # Placeholders the prune node made stay as they were (same text, same version).
    prior = {
        it["id"]: it
        for it in previous.get("window", [])
        if it["kind"] == "message" and it.get("shown") == "placeholder"
    }
    walk = _RecencyWalk(messages, counts, pinned, counter, prior)
    available = limits["important"] + carry
    important = walk.take(available, floor=boundary, tier="important")
    carry = available - sum(it["tokens"] for it in important.values())

    # supporting: summaries (oldest first), then memories.
    available = limits["supporting"] + carry
    shown_ids = {str(messages[i].id) for i in (*pin_items, *important)}
    supporting, left_out = _supporting(
        summaries, previous.get("memories", []), available, shown_ids
    )
    carry = available - sum(it["tokens"] for it in supporting)

    # cache: older units, continuing the same walk (also below the boundary).
    available = limits["cache"] + carry
    horizon = _horizon(messages, counts, budget, previous, start)
    floor = horizon["floor"]
    cache = walk.take(available, floor=floor, tier="cache", truncate=True)

    window = order_window(messages, head, supporting, {**pin_items, **important, **cache})
    window_tokens = fixed + sum(item["tokens"] for item in window)

    before_ids = [it["id"] for it in previous.get("window", []) if it["kind"] == "message"]
    after_ids = {it["id"] for it in window if it["kind"] == "message"}
    left_ids = [i for i in before_ids if i not in after_ids]
    before_set = set(before_ids)
    entered = sum(1 for i in after_ids if i not in before_set)
    pruned: list[PrunedItem] = [
        {"id": mid, "reason": "out of budget (recency)"} for mid in left_ids
    ]
    pruned.extend(walk.excluded)
    pruned.extend(unpinnable)
    pruned.extend(left_out)
    oversized = _oversized(messages, counts, limits["important"], previous, start)
    if reset:
        pruned.append({"id": "llmctx:summaries", "reason": reset})

    frame: Frame = {
        **previous,
        "template": deps.template.name,
        "template_hash": deps.template.fingerprint,
        "focus": _focus(messages),
        "turn": sum(1 for m in messages if isinstance(m, HumanMessage)),
        "budget": budget,
        "tiers": tier_reports(limits, window, fixed),
        "window": window,
        "window_tokens": window_tokens,
        "history_tokens": _history_tokens(messages, counter, previous, start),
        "history_messages": len(messages),
        "history_tail": str(messages[-1].id) if messages else "",
        "summaries": summaries,
        "summarized": summarized,
        "horizon": horizon,
        "oversized": oversized,
        "pruned": with_oversized(pruned, oversized, window),
        "handoff": [{"id": mid, "reason": "left the window (recency)"} for mid in left_ids],
        "pinned": list(previous.get("pinned", [])),
        "template_pins": template_pins,
        "last_op": {
            "op": "assemble",
            "reason": f"tiered window within {budget} tokens",
            "tokens_before": int(previous.get("window_tokens", 0)),
            "tokens_after": window_tokens,
            "entered": entered,
            "left": len(left_ids),
        },
        "tokenizer": counter.describe(),
    }
    return frame


def order_window(
    messages: Sequence[BaseMessage],
    head: list[WindowItem],
    supporting: list[WindowItem],
    by_index: dict[int, WindowItem],
) -> list[WindowItem]:
    """The window in the order the model reads it.

    System text first (the system prompt, the pinned leading system messages, then
    summaries and memories), so providers that accept system text only at the start
    take it; then the conversation in history order.
    """
    ordered = sorted(by_index)
    leading = [i for i in ordered if isinstance(messages[i], SystemMessage)]
    leading_set = set(leading)
    window = list(head)
    window.extend(by_index[i] for i in leading)
    window.extend(supporting)
    window.extend(by_index[i] for i in ordered if i not in leading_set)
    return window


def _horizon(
    messages: Sequence[BaseMessage],
    counts: LazyCounts,
    budget: int,
    previous: Frame,
    start: int | None,
) -> dict[str, int]:
    """The look-back horizon, moved forward incrementally while the history only grows."""
    known = previous.get("horizon")
    limit = HORIZON_FACTOR * budget
    if start is None or not known or known.get("limit") != limit:
        floor = horizon_floor(messages, counts, budget)
        tokens = sum(counts[i] for i in range(floor, len(messages)))
        return {"floor": floor, "tokens": tokens, "limit": limit}
    floor, tokens = int(known["floor"]), int(known["tokens"])
    tokens += sum(counts[i] for i in range(start, len(messages)))
    while tokens > limit and floor < len(messages) - 1:
        tokens -= counts[floor]
        floor += 1
    return {"floor": floor, "tokens": tokens, "limit": limit}


def horizon_floor(messages: Sequence[BaseMessage], counts: LazyCounts, budget: int) -> int:
    """The oldest index the cache tier may draw from (see `HORIZON_FACTOR`)."""
    limit = HORIZON_FACTOR * budget
    total = 0
    for i in range(len(messages) - 1, -1, -1):
        total += counts[i]
        if total > limit:
            # The newest message is always within reach, however large.
            return min(i + 1, len(messages) - 1)
    return 0


def summary_content(summary: Summary) -> str:
    """How a summary reads in the window."""
    span = summary.get("span") or {}
    count = span.get("count", len(summary.get("covers", [])))
    return f"Summary of {count} earlier message(s):\n{summary['text']}"


def _oversized(
    messages: Sequence[BaseMessage],
    counts: LazyCounts,
    limit: int,
    previous: Frame,
    start: int | None,
) -> list[list[Any]]:
    """`[id, tokens]` of every message larger than the important tier, kept as the
    history grows (only new messages are measured)."""
    known = list(previous.get("oversized", [])) if start is not None else []
    for i in range(start if start is not None else 0, len(messages)):
        if counts[i] > limit:
            known.append([str(messages[i].id), counts[i]])
    return known


def _focus(messages: Sequence[BaseMessage]) -> str:
    """What the current turn is about: the latest user message, shortened."""
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            text = " ".join(str(messages[i].text).split())
            return text if len(text) <= 160 else text[:157] + "..."
    return ""


def _summarized_state(
    messages: Sequence[BaseMessage], previous: Frame
) -> tuple[int, list[Summary], dict[str, Any], str | None]:
    """Where the summarized part of the history ends, and the summaries to keep.

    The boundary is checked against the history (count and last id). If the history
    was rewritten below it, the summaries no longer describe it and are dropped;
    the messages are still in the history, so nothing is lost.
    """
    summaries = list(previous.get("summaries", []))
    summarized = dict(previous.get("summarized") or {})
    count = int(summarized.get("count", 0))
    if not count:
        return 0, summaries, {"count": 0, "last_id": "", "tokens": 0}, None
    last_id = summarized.get("last_id")
    if count <= len(messages) and str(messages[count - 1].id) == last_id:
        return count, summaries, summarized, None
    for i in range(min(count, len(messages)) - 1, -1, -1):
        if str(messages[i].id) == last_id:
            return i + 1, summaries, {**summarized, "count": i + 1}, None
    empty = {"count": 0, "last_id": "", "tokens": 0}
    return 0, [], empty, "history rewritten below the summaries; they were dropped"


def _supporting(
    summaries: list[Summary], memories: list[Any], available: int, shown: set[str]
) -> tuple[list[WindowItem], list[PrunedItem]]:
    """Summaries (all, or the newest that fit, in order), then the memories that fit.

    A memory of a message the window already shows verbatim is skipped.
    """
    items: list[WindowItem] = []
    left_out: list[PrunedItem] = []
    room = available
    kept: list[Summary] = []
    for summary in reversed(summaries):
        if summary["tokens"] <= room:
            kept.append(summary)
            room -= summary["tokens"]
        else:
            left_out.append(
                {"id": summary["id"], "reason": "summary out of budget; re-compress pending"}
            )
    for summary in reversed(kept):
        items.append(
            {
                "kind": "summary",
                "id": summary["id"],
                "tokens": summary["tokens"],
                "tier": "supporting",
                "content": summary_content(summary),
            }
        )
    for memory in memories:
        if memory.get("message_id") in shown:
            continue
        if memory["tokens"] <= room:
            room -= memory["tokens"]
            item: WindowItem = {
                "kind": "memory",
                "id": memory["id"],
                "tokens": memory["tokens"],
                "tier": "supporting",
                "content": memory["text"],
            }
            if memory.get("message_id"):
                item["message_id"] = memory["message_id"]
            items.append(item)
        else:
            left_out.append({"id": memory["id"], "reason": "memory out of budget"})
    return items, left_out


def _fit_pins(
    messages: Sequence[BaseMessage],
    pinned: list[int],
    counts: LazyCounts,
    room: int,
    deps: NodeDeps,
) -> dict[int, WindowItem]:
    """Window items for the pinned messages, truncating the largest if they overflow.

    Water-filling: every pin gets an equal share of the room, and pins smaller than
    their share pass the rest on. A pin is never dropped; if even truncated copies
    cannot fit, that is a `BudgetError`.
    """
    items = {i: message_item(messages[i], counts[i], "critical") for i in pinned}
    total = sum(counts[i] for i in pinned)
    if total <= room:
        return items
    caps = _water_fill({i: counts[i] for i in pinned}, room)
    for i in pinned:
        if caps[i] >= counts[i]:
            continue
        cut = truncated_copy(messages[i], caps[i], deps.counter, counts[i])
        if cut is None:
            raise BudgetError(
                f"{len(pinned)} pinned message(s) need {total} tokens and cannot be "
                f"truncated into the {room} tokens the budget leaves for them; raise the "
                "budget or unpin messages"
            )
        content, tokens = cut
        items[i] = message_item(
            messages[i],
            tokens,
            "critical",
            content=content,
            shown="truncated",
            full_tokens=counts[i],
        )
    return items


def _water_fill(sizes: dict[int, int], room: int) -> dict[int, int]:
    """Caps that share `room` equally, small items passing their unused share on."""
    caps: dict[int, int] = {}
    left = len(sizes)
    for i in sorted(sizes, key=lambda j: (sizes[j], j)):
        share = max(0, room) // left
        caps[i] = min(sizes[i], share)
        room -= caps[i]
        left -= 1
    return caps


class _RecencyWalk:
    """Walks back from the newest message taking whole units, across tiers.

    Each `take` continues where the previous one stopped, so the important and
    cache tiers together form one contiguous recency run. A unit that does not fit
    ends the tier's run; if it is the newest unit, or larger than the tier's whole
    room, it is shown truncated instead (or reported when not even a truncated copy
    fits), so an oversized message is never dropped silently.
    """

    def __init__(
        self,
        messages: Sequence[BaseMessage],
        counts: LazyCounts,
        pinned: set[int],
        counter: TokenCounter,
        prior: dict[str, WindowItem] | None = None,
    ) -> None:
        self._messages = messages
        self._counts = counts
        self._pinned = pinned
        self._counter = counter
        self._prior = prior or {}
        self._next = len(messages) - 1
        self._pending: dict[str, int] = {}
        self._first = True
        self.excluded: list[PrunedItem] = []

    def take(
        self, room: int, *, floor: int, tier: str, truncate: bool = False
    ) -> dict[int, WindowItem]:
        """Take units newest first into `room` tokens, not below index `floor`.

        With `truncate` (the last tier, which holds all the room left), a unit that
        does not fit is shown truncated when it is the newest unit or larger than
        the whole room; otherwise it ends the run.
        """
        taken: dict[int, WindowItem] = {}
        used = 0
        messages = self._messages
        while self._next >= floor:
            i = self._next
            message = messages[i]
            if isinstance(message, ToolMessage):
                self._pending[message.tool_call_id] = i
                self._next -= 1
                continue
            ids = calls_of(message)
            unit = [i]
            if ids:
                if not all(cid in self._pending for cid in ids):
                    for cid in ids:
                        self._pending.pop(cid, None)
                    self.excluded.append(
                        {"id": str(message.id), "reason": "tool call without all its results"}
                    )
                    self._next -= 1
                    continue
                unit.extend(self._pending[cid] for cid in ids)
            members = [j for j in unit if j not in self._pinned]
            cost = sum(self._cost(j) for j in members)
            if used + cost > room:
                # A unit that could never fit this tier, or the newest one, is shown
                # truncated rather than left out; any other unit ends the run here.
                if not (truncate and members and (self._first or cost > room)):
                    return taken
                self._next -= 1
                for cid in ids:
                    self._pending.pop(cid, None)
                fitted = self._truncated_unit(members, room - used, tier)
                if fitted is None:
                    self.excluded.extend(
                        {
                            "id": str(messages[j].id),
                            "reason": f"oversized unit ({cost} tokens) with no room for a "
                            "truncated copy",
                        }
                        for j in sorted(members)
                    )
                else:
                    taken.update(fitted)
                    self._first = False
                return taken
            for cid in ids:
                self._pending.pop(cid, None)
            for j in members:
                taken[j] = self._item(j, tier)
            used += cost
            self._next -= 1
            if members:
                self._first = False
        if self._next < 0:
            # The whole history was walked: whatever is still pending never had a call.
            self.excluded.extend(
                {"id": str(messages[j].id), "reason": "tool result without its call"}
                for j in sorted(self._pending.values())
            )
            self._pending.clear()
        return taken

    def _prior_item(self, j: int) -> WindowItem | None:
        """The placeholder the previous frame showed for message `j`, if still valid."""
        if not self._prior:
            return None
        item = self._prior.get(str(self._messages[j].id))
        if item is not None and item.get("full_tokens") == self._counts[j]:
            return item
        return None

    def _cost(self, j: int) -> int:
        prior = self._prior_item(j)
        return prior["tokens"] if prior is not None else self._counts[j]

    def _item(self, j: int, tier: str) -> WindowItem:
        prior = self._prior_item(j)
        if prior is not None:
            return {**prior, "tier": tier}
        return message_item(self._messages[j], self._counts[j], tier)

    def _truncated_unit(
        self, members: list[int], room: int, tier: str
    ) -> dict[int, WindowItem] | None:
        """The unit with its largest members truncated to fit `room`, or `None`."""
        counts, messages = self._counts, self._messages
        caps = _water_fill({j: counts[j] for j in members}, room)
        items: dict[int, WindowItem] = {}
        for j in members:
            if caps[j] >= counts[j]:
                items[j] = message_item(messages[j], counts[j], tier)
                continue
            cut = truncated_copy(messages[j], caps[j], self._counter, counts[j])
            if cut is None:
                return None
            content, tokens = cut
            items[j] = message_item(
                messages[j], tokens, tier, content=content, shown="truncated", full_tokens=counts[j]
            )
        return items


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


def pinned_indices(
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
        if any(in_tool_unit(messages[i]) for i in by_id):
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


def _tool_units(messages: Sequence[BaseMessage]) -> dict[int, list[int]]:
    """Map each index in a tool unit to the unit's indices (`[]` if incomplete)."""
    results = {m.tool_call_id: i for i, m in enumerate(messages) if isinstance(m, ToolMessage)}
    units: dict[int, list[int]] = {}
    claimed: set[int] = set()
    for i, m in enumerate(messages):
        ids = calls_of(m)
        if ids:
            found = [results[c] for c in ids if c in results]
            unit = [i, *found] if len(found) == len(ids) else []
            for j in [i, *found]:
                units[j] = unit
                claimed.add(j)
    for j in results.values():
        if j not in claimed:
            units[j] = []
    return units
