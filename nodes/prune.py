"""The prune node: apply the template's pruning policy to the window.

It runs after `allocate_budget` and edits that frame in four steps, in the order of
the compaction fallback chain (clear tool outputs, then prune):

1. **Old tool outputs.** The newest `keep_tool_outputs` tool results in the
   look-back horizon stay verbatim; older ones in the window are replaced by a
   placeholder naming the tool, the message and the version it lives in.
2. **Repetition.** With `dedupe`, an older message whose text repeats a newer one in
   the window leaves it (a tool result is replaced by a "duplicate of" placeholder
   instead, so its call keeps its answer).
3. **Distance from the focus.** The focus is the latest user message. Messages are
   linked by tool call ↔ result, reply-to (the message before, or an explicit
   `reply_to` in `additional_kwargs`), and shared rare entities or ids (names,
   numbers, identifiers, paths). Items more than `max_hops` links from the focus are
   dropped first: they stay in the cache tier only while the budget has room left
   after every nearer item (dropping them from a window with room to spare would
   lose context for nothing).
4. **Strategy.** The cache tier is refilled from the horizon, within `max_hops`
   first, best first: `recency` (newest), `lru` (most recently relevant to a
   focus, then newest) or `priority` (fewest hops, then newest).

Pinned messages and the important tier (the newest turns) are never pruned, and a
tool unit enters or leaves whole. Every id that leaves is recorded in `pruned` with
its reason and in `handoff` for long-term memory.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.runtime import Runtime

from llmctx.nodes._deps import NodeDeps, resolve_deps
from llmctx.nodes._window import (
    LazyCounts,
    calls_of,
    left_for_good,
    merged_pruned,
    message_item,
    tier_reports,
    units_between,
    with_oversized,
)
from llmctx.nodes.budget import assemble_window, horizon_floor, order_window
from llmctx.nodes.state import ContextConfig, ContextState, Frame, PrunedItem, WindowItem
from llmctx.runtime.tokens import REPLY_PRIMING

__all__ = ["MAX_VISITED", "entities", "hop_distances", "prune", "prune_window"]

_LRU_WINDOW = 1
"""Messages this many hops from a turn's focus count as used in that turn (LRU)."""

MAX_VISITED = 384
"""The hop search stops expanding once it has reached this many messages."""

_SMALLEST_MESSAGE = 4
"""No message costs less (the per-message framing): below this the cache tier is full."""


def prune(state: ContextState, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
    """LangGraph node: apply the pruning policy to the frame built by the budget node.

    Returns `{"context": frame}` when the window changed, and nothing otherwise (so
    a no-op does not make a new version). A frame built for another history is
    rebuilt first, and then always written, with both stages' removals in `pruned`.
    """
    deps = resolve_deps(runtime.context if runtime is not None else None)
    messages = state["messages"]
    frame = state.get("context")
    stale = not frame or frame.get("history_tail") != (str(messages[-1].id) if messages else "")
    if stale:
        frame = assemble_window(messages, deps, frame)
    version = _version_of(runtime)
    pruned = prune_window(messages, deps, frame, version=version)
    if stale:
        return {"context": {**pruned, "pruned": merged_pruned([frame, pruned], pruned)}}
    return {} if pruned is frame else {"context": pruned}


def prune_window(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    frame: Frame,
    *,
    version: str | None = None,
    counts: LazyCounts | None = None,
) -> Frame:
    """The frame with the pruning policy applied (the same object if nothing changed).

    Pure and deterministic. `version` names the checkpoint that holds the originals
    (placeholders cite it); without one they cite the thread history.
    """
    policy = deps.template.pruning
    counter = deps.counter
    counts = counts if counts is not None else LazyCounts(messages, counter)
    budget = deps.budget
    horizon = frame.get("horizon") or {}
    if frame.get("history_messages") == len(messages) and "floor" in horizon:
        floor = int(horizon["floor"])  # the budget node's, for this very history
    else:
        floor = horizon_floor(messages, counts, budget)
    # One validated link index per turn: its id map locates the window's messages and
    # its postings serve the hop search below.
    links = _index_for(messages, floor) if messages else None
    index: dict[str, int] = links.by_id if links is not None else {}
    window = list(frame.get("window", []))
    # Pins (and a long truncated message) may sit below the horizon, where the index
    # may not reach, or (reused from another history with the same first message) was
    # only verified from the horizon on: every hit is checked against the history.
    n = len(messages)
    for item in window:
        if item["kind"] != "message":
            continue
        i = index.get(item["id"], n)
        if i >= n or str(messages[i].id) != item["id"]:
            index = {str(m.id): i for i, m in enumerate(messages)}
            break

    kept_tools = _newest_tool_outputs(messages, floor, policy.keep_tool_outputs)
    shown = {
        it["id"]: it
        for it in window
        if it["kind"] == "message" and it.get("shown") == "placeholder"
    }
    where = f"version {version}" if version else "the thread history"
    pruned: list[PrunedItem] = []
    changed = False

    # 1. Old tool outputs: placeholders beyond the newest K.
    fixed: dict[int, WindowItem] = {}
    cache_before: list[str] = []
    for item in window:
        if item["kind"] != "message":
            continue
        i = index[item["id"]]
        if item["tier"] == "cache":
            cache_before.append(item["id"])
            continue
        if item.get("shown") == "placeholder" and i in kept_tools:
            item = message_item(messages[i], counts[i], item["tier"])  # among the last K again
            changed = True
        elif item["tier"] != "critical" and _clearable(messages[i], i, kept_tools, item):
            cleared = _placeholder(messages[i], counts[i], deps, where, item["tier"])
            if cleared is not None:
                item = cleared
                pruned.append(
                    {
                        "id": item["id"],
                        "reason": f"tool output cleared (keeps the last "
                        f"{policy.keep_tool_outputs})",
                    }
                )
                changed = True
        fixed[i] = item

    # 2. Repetition among the kept (non-cache) items: the newest copy stays.
    seen: dict[tuple[str, str], str] = {}
    if policy.dedupe:
        for i in sorted(fixed, reverse=True):
            key = _dedupe_key(messages[i])
            if key is None:
                continue
            if key not in seen:
                seen[key] = str(messages[i].id)
                continue
            item = fixed[i]
            if item["tier"] == "critical":
                continue
            original = seen[key]
            if isinstance(messages[i], ToolMessage):
                fixed[i] = _duplicate_placeholder(messages[i], original, counts[i], deps)
            elif not calls_of(messages[i]):
                del fixed[i]
            else:
                continue
            pruned.append({"id": str(messages[i].id), "reason": f"duplicate of {original}"})
            changed = True

    # 3 and 4. Re-select the cache tier by distance from the focus and the strategy.
    focus = _focus_index(messages)
    distances = (
        hop_distances(messages, floor, focus, policy.max_hops, index=links)
        if focus is not None
        else {}
    )
    head = [it for it in window if it["kind"] == "system"]
    supporting = [it for it in window if it["kind"] in ("summary", "memory")]
    fixed_tokens = deps.tools_tokens + REPLY_PRIMING
    used = fixed_tokens + sum(it["tokens"] for it in (*head, *supporting, *fixed.values()))
    room = budget - used
    taken = {str(messages[i].id) for i in fixed}
    # A message the window already shows as a retrieved memory needs no second copy.
    taken.update(str(it["message_id"]) for it in supporting if it.get("message_id"))
    candidates = _candidates(messages, floor, taken, distances, seen if policy.dedupe else None)
    turn = int(frame.get("turn", 0))
    last_used: dict[str, int] = {}
    if policy.strategy == "lru":
        last_used = _updated_last_used(frame, messages, floor, distances, turn)
    order = _rank(candidates, policy.strategy, distances, last_used, messages)
    cache: dict[int, WindowItem] = {}
    for unit in order:
        if room < _SMALLEST_MESSAGE:
            break
        full = sum(counts[j] for j in unit)
        if full > room and not any(j not in kept_tools and _is_tool(messages[j]) for j in unit):
            continue  # too big, and no tool output a placeholder could shrink
        items = _unit_items(messages, unit, counts, kept_tools, deps, where, shown)
        cost = sum(it["tokens"] for it in items.values())
        if cost <= room:
            cache.update(items)
            room -= cost
    cache_after = {str(messages[i].id) for i in cache}
    for mid in cache_before:
        if mid in cache_after:
            continue
        i = index[mid]
        distance = distances.get(i)
        if distance is None:
            reason = f"more than {policy.max_hops} hops from the focus"
        else:
            reason = f"evicted ({policy.strategy}, {distance} hops from the focus)"
        pruned.append({"id": mid, "reason": reason})
    if cache_after != set(cache_before) or any(
        it.get("content") != cache[index[it["id"]]].get("content")
        for it in window
        if it["kind"] == "message" and it["tier"] == "cache" and it["id"] in cache_after
    ):
        changed = True
    if not changed and last_used == frame.get("last_used", {}):
        return frame
    update: dict[str, Any] = {"last_used": last_used} if last_used else {}

    new_window = order_window(messages, head, supporting, {**fixed, **cache})
    window_tokens = fixed_tokens + sum(it["tokens"] for it in new_window)
    limits = deps.template.budget.tiers.allocate(budget)
    before_ids = {it["id"] for it in window if it["kind"] == "message"}
    after_ids = {it["id"] for it in new_window if it["kind"] == "message"}
    left = [mid for mid in before_ids if mid not in after_ids]
    reasons = {p["id"]: p["reason"] for p in pruned}
    handoff = list(frame.get("handoff", []))
    handoff.extend({"id": mid, "reason": reasons.get(mid, "pruned")} for mid in sorted(left))
    handoff = left_for_good(handoff, new_window)
    return {
        **frame,
        "window": new_window,
        "window_tokens": window_tokens,
        "tiers": tier_reports(limits, new_window, fixed_tokens),
        "pruned": with_oversized(pruned, frame.get("oversized", []), new_window),
        "handoff": handoff,
        **update,
        "last_op": {
            "op": "prune",
            "reason": _describe(pruned, policy.strategy, policy.max_hops),
            "tokens_before": int(frame.get("window_tokens", 0)),
            "tokens_after": window_tokens,
            "entered": len(after_ids - before_ids),
            "left": len(left),
        },
    }


# -- the reference graph ------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_][\w\-./:@#']*", re.UNICODE)
_STOP_WORDS = """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each few
    for from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just let me more most my myself no nor not now of off on once only
    or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your yours
    yourself yourselves yes yeah okay ok oh hey hi hello thanks thank please sure really well
    just like know think thing things something anything everything going great good nice
    wow cool awesome today yesterday tomorrow actually definitely totally always never maybe
    people time lot lots much many way ways make made sounds feel feeling glad love"""
_STOP = frozenset(_STOP_WORDS.split())


@lru_cache(maxsize=65_536)
def entities(text: str) -> frozenset[str]:
    """The entities and ids a text mentions: the nodes of the reference graph's links.

    Numbers and anything with a digit, `_`, `/` or an inner `.` (ids, versions, paths,
    dates), capitalized words (names), and longer content words, lowercased with a
    light plural/tense suffix strip. Common words are ignored.

    >>> sorted(entities("Caroline moved to Paris in 2022; see src/app.py"))
    ['2022', 'caroline', 'moved', 'paris', 'src/app.py']
    """
    found: set[str] = set()
    for match in _TOKEN.finditer(text):
        word = match.group(0).rstrip(".:/-'#@")
        if not word:
            continue
        lower = word.lower()
        if lower in _STOP:
            continue
        if word[0].isupper() or any(c.isdigit() or c in "_/." for c in word):
            found.add(lower)
        elif len(lower) >= 5:
            found.add(_stem(lower))
    return frozenset(found)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def hop_distances(
    messages: Sequence[BaseMessage],
    floor: int,
    focus: int,
    max_hops: int,
    *,
    index: _LinkIndex | None = None,
) -> dict[int, int]:
    """Breadth-first hop counts from `focus` over `messages[floor:]`, up to `max_hops`.

    Links: tool call ↔ each of its results; reply-to (a message and the one before
    it, or the message named by `additional_kwargs["reply_to"]`); and a shared
    entity, when that entity is rare in the horizon (at most 5% of its messages, and
    at least 2), so that a name said in every turn does not link everything.

    The entity and link index is kept per history and only extended with new
    messages, so a turn costs time in proportion to what the search visits; the
    search stops growing at `MAX_VISITED` messages (far more than a cache tier holds).
    """
    n = len(messages)
    if not floor <= focus < n:
        return {}
    if index is None:
        index = _index_for(messages, floor)
    cap = max(2, (n - floor) // 20)
    postings, ents, links = index.postings, index.ents, index.links
    distances = {focus: 0}
    queue = deque([focus])
    while queue:
        i = queue.popleft()
        d = distances[i]
        if d >= max_hops or len(distances) >= MAX_VISITED:
            continue
        near: list[int] = [j for j in (i - 1, i + 1) if floor <= j < n]
        near.extend(j for j in links.get(i, ()) if floor <= j < n)
        for entity in ents[i - index.start]:
            posting = postings[entity]
            lo = bisect_left(posting, floor)
            if len(posting) - lo <= cap:
                near.extend(posting[lo:])
        for j in near:
            if j not in distances and j < n:
                distances[j] = d + 1
                queue.append(j)
    return distances


class _LinkIndex:
    """Entities, postings and explicit links (tool pairs, reply-to) of one history.

    Positions are absolute indices into the history; `start` is the first indexed
    position. Only appended messages are indexed on later turns. A reused index is
    verified from the turn's horizon on (`matches`): below it, `by_id` may still hold
    another history's positions, so a lookup there must be checked.
    """

    __slots__ = ("by_id", "calls", "ents", "links", "postings", "sigs", "size", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.size = start
        self.sigs: list[tuple[Any, ...]] = []
        self.ents: list[frozenset[str]] = []
        self.postings: dict[str, list[int]] = {}
        self.links: dict[int, list[int]] = {}
        self.calls: dict[str, int] = {}
        self.by_id: dict[str, int] = {}

    def extend(self, messages: Sequence[BaseMessage]) -> None:
        for i in range(self.size, len(messages)):
            message = messages[i]
            found = entities(_text(message))
            self.sigs.append(_signature(message))
            self.ents.append(found)
            for entity in found:
                self.postings.setdefault(entity, []).append(i)
            mid = str(message.id)
            self.by_id[mid] = i
            for cid in calls_of(message):
                self.calls[cid] = i
            if isinstance(message, ToolMessage) and message.tool_call_id in self.calls:
                self._link(self.calls[message.tool_call_id], i)
            target = (message.additional_kwargs or {}).get("reply_to")
            if isinstance(target, str) and target in self.by_id:
                self._link(self.by_id[target], i)
        self.size = len(messages)

    def matches(self, messages: Sequence[BaseMessage], floor: int) -> bool:
        """Whether the indexed messages from `floor` on are still these messages.

        Checked every turn over the horizon (ids, content hashes and tool-call ids),
        so another history with the same ids, or a message edited in place, is never
        answered from a stale index.
        """
        if not self.start <= floor or self.size > len(messages):
            return False
        sigs, base = self.sigs, self.start
        return all(sigs[i - base] == _signature(messages[i]) for i in range(floor, self.size))

    def _link(self, a: int, b: int) -> None:
        self.links.setdefault(a, []).append(b)
        self.links.setdefault(b, []).append(a)


_INDEXES: OrderedDict[str, _LinkIndex] = OrderedDict()
_INDEXES_LOCK = threading.Lock()
_MAX_INDEXES = 32


def _index_for(messages: Sequence[BaseMessage], floor: int) -> _LinkIndex:
    """The link index of this history, extended to its end (rebuilt if rewritten)."""
    key = f"{messages[0].id}\x1f{_signature(messages[0])[1]}"
    with _INDEXES_LOCK:
        index = _INDEXES.get(key)
        if index is None or not index.matches(messages, floor):
            index = _LinkIndex(floor)
            _INDEXES[key] = index
            if len(_INDEXES) > _MAX_INDEXES:
                _INDEXES.popitem(last=False)
        _INDEXES.move_to_end(key)
        assert index is not None
        index.extend(messages)
        return index


# -- helpers ---------------------------------------------------------------------------


def _signature(message: BaseMessage) -> tuple[Any, ...]:
    content = message.content
    digest = hash(content) if type(content) is str else hash(repr(content))
    return (message.id, digest, tuple(calls_of(message)))


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    text = message.text
    return text if isinstance(text, str) else str(content)


def _version_of(runtime: Runtime[ContextConfig] | None) -> str | None:
    info = getattr(runtime, "execution_info", None)
    return getattr(info, "checkpoint_id", None) or None


def _focus_index(messages: Sequence[BaseMessage]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return i
    return None


def _newest_tool_outputs(messages: Sequence[BaseMessage], floor: int, keep: int) -> set[int]:
    """Indices of the newest `keep` tool results in the horizon: these stay verbatim."""
    kept: set[int] = set()
    for i in range(len(messages) - 1, floor - 1, -1):
        if len(kept) >= keep:
            break
        if isinstance(messages[i], ToolMessage):
            kept.add(i)
    return kept


def _is_tool(message: BaseMessage) -> bool:
    return isinstance(message, ToolMessage)


def _clearable(message: BaseMessage, i: int, kept: set[int], item: WindowItem) -> bool:
    return isinstance(message, ToolMessage) and i not in kept and "content" not in item


def _placeholder(
    message: BaseMessage, full: int, deps: NodeDeps, where: str, tier: str
) -> WindowItem | None:
    """A placeholder item for an old tool output, or `None` if it would not be smaller."""
    name = getattr(message, "name", None) or "tool"
    content = (
        f"[tool output of `{name}` cleared by llmctx: {full} tokens; the original is "
        f"message {message.id}, in {where}]"
    )
    tokens = deps.counter.count_message(message.model_copy(update={"content": content}))
    if tokens >= full:
        return None
    return message_item(
        message, tokens, tier, content=content, shown="placeholder", full_tokens=full
    )


def _duplicate_placeholder(
    message: BaseMessage, original: str, full: int, deps: NodeDeps
) -> WindowItem:
    content = f"[duplicate of message {original}]"
    tokens = deps.counter.count_message(message.model_copy(update={"content": content}))
    return message_item(
        message, tokens, "important", content=content, shown="placeholder", full_tokens=full
    )


def _dedupe_key(message: BaseMessage) -> tuple[str, str] | None:
    if isinstance(message, SystemMessage):
        return None
    text = _normalized(_text(message))
    if not text:
        return None
    return message.type, text


@lru_cache(maxsize=65_536)
def _normalized(text: str) -> str:
    return " ".join(text.split())


def _candidates(
    messages: Sequence[BaseMessage],
    floor: int,
    taken: set[str],
    distances: dict[int, int],
    seen: dict[tuple[str, str], str] | None,
) -> list[list[int]]:
    """Whole units in the horizon that are not in the window (nor repeat one)."""
    out: list[list[int]] = []
    for unit in units_between(messages, floor, len(messages)):
        if any(str(messages[j].id) in taken for j in unit):
            continue
        if seen is not None and len(unit) == 1:
            key = _dedupe_key(messages[unit[0]])
            if key is not None and key in seen:
                continue
        out.append(unit)
    return out


def _rank(
    units: list[list[int]],
    strategy: str,
    distances: dict[int, int],
    last_used: dict[str, int],
    messages: Sequence[BaseMessage],
) -> list[list[int]]:
    """Units within the hop limit first, ordered by the strategy; then the farther ones,
    newest first, which stay only while the budget has room for them."""

    def hops(unit: list[int]) -> int:
        return min(distances.get(j, 1 << 30) for j in unit)

    near = [u for u in units if any(j in distances for j in u)]
    far = sorted((u for u in units if not any(j in distances for j in u)), key=lambda u: -max(u))
    if strategy == "lru":
        near.sort(key=lambda u: (-last_used.get(str(messages[u[0]].id), -1), -max(u)))
    elif strategy == "priority":
        near.sort(key=lambda u: (hops(u), -max(u)))
    else:
        near.sort(key=lambda u: -max(u))
    return near + far


def _updated_last_used(
    frame: Frame,
    messages: Sequence[BaseMessage],
    floor: int,
    distances: dict[int, int],
    turn: int,
) -> dict[str, int]:
    """The LRU clock: messages near this turn's focus were used now; only the horizon
    is kept, so the map stays bounded."""
    horizon = {str(messages[i].id) for i in range(floor, len(messages))}
    last_used = {k: v for k, v in frame.get("last_used", {}).items() if k in horizon}
    for i, d in distances.items():
        if d <= _LRU_WINDOW:
            last_used[str(messages[i].id)] = turn
    return dict(sorted(last_used.items()))


def _unit_items(
    messages: Sequence[BaseMessage],
    unit: list[int],
    counts: LazyCounts,
    kept_tools: set[int],
    deps: NodeDeps,
    where: str,
    shown: dict[str, WindowItem],
) -> dict[int, WindowItem]:
    items: dict[int, WindowItem] = {}
    for j in unit:
        item = message_item(messages[j], counts[j], "cache")
        if isinstance(messages[j], ToolMessage) and j not in kept_tools:
            prior = shown.get(item["id"])
            if prior is not None and prior.get("full_tokens") == counts[j]:
                items[j] = {**prior, "tier": "cache"}
                continue
            cleared = _placeholder(messages[j], counts[j], deps, where, "cache")
            if cleared is not None:
                item = cleared
        items[j] = item
    return items


def _describe(pruned: list[PrunedItem], strategy: str, max_hops: int) -> str:
    if not pruned:
        return f"cache tier re-selected ({strategy}, within {max_hops} hops of the focus)"
    kinds: dict[str, int] = {}
    for item in pruned:
        reason = item["reason"].split(" (")[0]
        kinds[reason] = kinds.get(reason, 0) + 1
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(kinds.items()))
    return f"{parts}; cache tier by {strategy} within {max_hops} hops"
