"""Shared pieces of window building: cached counts, tool units, truncation, tiers.

Every context node builds or edits the same `Frame`; these helpers keep the rules
(tool pairs are atomic, counts are exact, oversized messages are truncated with a
marker, never dropped silently) in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, ToolMessage

from llmctx.runtime.tokens import TokenCounter
from llmctx.runtime.toolpairs import calls_of, results_after_calls

__all__ = ["calls_of", "results_after_calls"]  # re-exported for the nodes

if TYPE_CHECKING:  # annotations only: `nodes.state` imports this module at runtime
    from llmctx.nodes.state import Frame, PrunedItem, TierReport, WindowItem

TIERS = ("critical", "important", "supporting", "cache")
"""The tiers, in the order they are filled; unused space flows down this order."""

MIN_TRUNCATED_TOKENS = 24
"""Below this many tokens a truncated copy says nothing useful; the unit waits instead."""


class LazyCounts:
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


def in_tool_unit(message: BaseMessage) -> bool:
    return isinstance(message, ToolMessage) or bool(calls_of(message))


def units_between(messages: Sequence[BaseMessage], lo: int, hi: int) -> list[list[int]]:
    """The complete units of `messages[lo:hi]`, newest first.

    A unit is one plain message, or an AI message with tool calls plus every one of
    its results. Incomplete tool units (a call missing a result, a result whose call
    is outside the range) are left out: they can never be sent.
    """
    units: list[list[int]] = []
    pending: dict[str, int] = {}
    for i in range(hi - 1, lo - 1, -1):
        message = messages[i]
        if isinstance(message, ToolMessage):
            pending[message.tool_call_id] = i
            continue
        ids = calls_of(message)
        if ids:
            if all(cid in pending for cid in ids):
                units.append([i, *(pending.pop(cid) for cid in ids)])
            else:
                for cid in ids:
                    pending.pop(cid, None)
            continue
        units.append([i])
    return units


def truncated_copy(
    message: BaseMessage, max_tokens: int, counter: TokenCounter, full_tokens: int
) -> tuple[str, int] | None:
    """A truncated rendering of `message` that costs at most `max_tokens`, or `None`.

    The text keeps its beginning and ends with a marker naming the message id and
    its full size, so the model (and a reader) knows the rest is in the history.
    """
    marker = (
        f"\n[… truncated by llmctx: message {message.id} has {full_tokens} tokens; "
        "the full text is in the thread history]"
    )
    shell = message.model_copy(update={"content": marker})
    room = max_tokens - counter.count_message(shell)
    if room < 1 or max_tokens < MIN_TRUNCATED_TOKENS:
        return None
    text = message.text if isinstance(message.text, str) else str(message.content)
    keep = counter.truncate_text(text, room)
    while True:
        content = keep + marker
        tokens = counter.count_message(message.model_copy(update={"content": content}))
        if tokens <= max_tokens or not keep:
            break
        keep = counter.truncate_text(keep, max(0, counter.count_text(keep) - 1))
    if tokens > max_tokens:
        return None
    return content, tokens


def message_item(
    message: BaseMessage,
    tokens: int,
    tier: str,
    *,
    content: str | None = None,
    shown: str | None = None,
    full_tokens: int | None = None,
) -> WindowItem:
    item: WindowItem = {"kind": "message", "id": str(message.id), "tokens": tokens, "tier": tier}
    if content is not None:
        item["content"] = content
        item["shown"] = shown  # type: ignore[typeddict-item]
        item["full_tokens"] = int(full_tokens if full_tokens is not None else tokens)
    return item


def tier_reports(
    limits: dict[str, int], items: Iterable[WindowItem], fixed: int
) -> dict[str, TierReport]:
    """Per-tier limit, available (with the documented flow), used and item count.

    `fixed` (tool schemas and reply priming, which are not window items) is charged
    to the critical tier. Unused space flows critical → important → supporting →
    cache, and a critical overdraw is taken from the same order.
    """
    used = dict.fromkeys(TIERS, 0)
    count = dict.fromkeys(TIERS, 0)
    used["critical"] = fixed
    for item in items:
        used[item["tier"]] += item["tokens"]
        count[item["tier"]] += 1
    reports: dict[str, TierReport] = {}
    carry = 0
    for tier in TIERS:
        available = limits[tier] + carry
        reports[tier] = {
            "limit": limits[tier],
            "available": available,
            "used": used[tier],
            "items": count[tier],
        }
        carry = available - used[tier]
    return reports


def with_oversized(
    pruned: list[PrunedItem], oversized: Iterable[Sequence[Any]], window: Iterable[WindowItem]
) -> list[PrunedItem]:
    """`pruned` plus a report for every oversized message the window does not show.

    A message larger than its tier is never left out silently: each version lists
    the ones it does not show (in full or truncated), with their size.
    """
    shown = {it["id"] for it in window if it["kind"] == "message"}
    listed = {p["id"] for p in pruned}
    out = list(pruned)
    for mid, tokens in oversized:
        if mid not in shown and mid not in listed:
            out.append(
                {"id": mid, "reason": f"oversized ({tokens} tokens); the full text is in history"}
            )
    return out


def left_for_good(items: Iterable[PrunedItem], window: Iterable[WindowItem]) -> list[PrunedItem]:
    """Hand-offs without duplicates, and without what the window still shows verbatim."""
    verbatim = {it["id"] for it in window if it["kind"] == "message" and "content" not in it}
    seen: set[str] = set()
    out: list[PrunedItem] = []
    for item in items:
        if item["id"] not in seen and item["id"] not in verbatim:
            seen.add(item["id"])
            out.append(item)
    return out


def merged_pruned(stages: Iterable[Frame], final: Frame) -> list[PrunedItem]:
    """One operation's `pruned` for a chain of stages that ends in `final`.

    Each stage (assemble, prune, summarize's rebuild) lists only what it removed
    itself, so a chain run as one operation must gather every stage's list, or an
    eviction by an earlier stage goes unreported once a later stage changes the
    frame. An id a later stage took back verbatim is dropped; oversized reports are
    re-derived against `final`'s window.
    """
    shown = {it["id"]: it for it in final.get("window", []) if it["kind"] == "message"}
    seen: set[str] = set()
    out: list[PrunedItem] = []
    for stage in stages:
        for item in stage.get("pruned", []):
            mid = item["id"]
            if item["reason"].startswith("oversized ("):
                continue  # re-derived below, against the final window
            back = mid in shown and "content" not in shown[mid]  # a later stage re-took it
            if mid not in seen and not back:
                seen.add(mid)
                out.append(item)
    return with_oversized(out, final.get("oversized", []), final.get("window", []))
