"""The summarize node: fold the oldest turns into summaries when the template says so.

**Trigger.** The template's compression checkpoint: when the unsummarized history
exceeds `trigger_tokens` (or `trigger_fraction` of the budget, whichever is lower),
the oldest turns are summarized until it is back under `target_tokens`
(`SummarizationPolicy.thresholds`). The check is O(1): the frame keeps the
history's and the summarized part's token totals.

**Incremental and hierarchical.** Turns are summarized once, oldest first, in chunks
of `chunk_size` messages (or tokens) that never split a tool unit, each into a
level-0 summary. When the summaries outgrow their share of the supporting tier
(`SUMMARY_SHARE`, the rest is for retrieved memories) they are
re-compressed: the oldest few are merged into one summary a level up. Raw text is
never summarized twice, so the tokens sent to the summarizer grow linearly with the
conversation.

**Fallback chain.** Clear tool outputs and prune (the prune node, re-applied after
every compaction), summarize, re-compress, and finally truncate the last summary
with a marker. Each step strictly shrinks something, so the chain neither loops nor
fails to fit.

**Nothing is lost.** Summaries record the ids they cover and the span of history
they stand for; summarized turns stay in `messages` and are listed in the frame's
`handoff` for the remember node to write to long-term memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.runtime import Runtime

from llmctx.nodes._deps import NodeDeps, resolve_deps
from llmctx.nodes._window import LazyCounts, calls_of, left_for_good, merged_pruned
from llmctx.nodes.budget import assemble_window, pinned_indices, summary_content
from llmctx.nodes.prune import prune_window
from llmctx.nodes.state import ContextConfig, ContextState, Frame, PrunedItem, Summary
from llmctx.runtime.summarizer import Summarizer, SummaryResult

__all__ = [
    "MERGE_FAN_IN",
    "SUMMARY_RATIO",
    "SUMMARY_SHARE",
    "needs_summary",
    "summarize",
    "summarize_window",
]

SUMMARY_RATIO = 0.2
"""A chunk's summary may use this fraction of the chunk's tokens."""

SUMMARY_SHARE = 0.5
"""The share of the supporting tier the summaries may fill before re-compression."""

MERGE_FAN_IN = 4
"""Re-compression merges up to this many of the oldest summaries into one."""

_MIN_SUMMARY_TOKENS = 16


def summarize(state: ContextState, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
    """LangGraph node: summarize when the template's trigger fires, else do nothing.

    Returns `{"context": frame}` after a compaction, and nothing otherwise (so the
    common turn adds no version). A frame built for another history is rebuilt
    first, and then always written, with both stages' removals in `pruned`.
    """
    deps = resolve_deps(runtime.context if runtime is not None else None)
    messages = state["messages"]
    frame = state.get("context")
    stale = not frame or frame.get("history_tail") != (str(messages[-1].id) if messages else "")
    if stale:
        frame = assemble_window(messages, deps, frame)
    if not needs_summary(frame, deps):
        return {"context": frame} if stale else {}
    info = getattr(runtime, "execution_info", None)
    version = getattr(info, "checkpoint_id", None) or None
    compacted = summarize_window(messages, deps, frame, deps.summarizer, version=version)
    if stale:
        compacted = {**compacted, "pruned": merged_pruned([frame, compacted], compacted)}
    return {"context": compacted}


def needs_summary(frame: Frame, deps: NodeDeps) -> bool:
    """The trigger check: history over the compression checkpoint, or summaries over
    their tier. Constant time."""
    policy = deps.template.summarization
    if not policy.enabled:
        return False
    trigger, _ = policy.thresholds(deps.budget)
    summarized = frame.get("summarized") or {}
    unsummarized = int(frame.get("history_tokens", 0)) - int(summarized.get("tokens", 0))
    if unsummarized > trigger:
        return True
    return sum(s["tokens"] for s in frame.get("summaries", [])) > _summary_room(frame, deps)


def summarize_window(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    frame: Frame,
    summarizer: Summarizer,
    *,
    version: str | None = None,
) -> Frame:
    """Compact the frame: summarize, re-compress, then rebuild and prune the window.

    Deterministic for a deterministic summarizer. The returned frame's `last_op` is
    `summarize`, with the tokens before and after.
    """
    policy = deps.template.summarization
    counter = deps.counter
    counts = LazyCounts(messages, counter)
    _, target = policy.thresholds(deps.budget)
    summarized = dict(frame.get("summarized") or {"count": 0, "last_id": "", "tokens": 0})
    boundary = int(summarized.get("count", 0))
    covered_tokens = int(summarized.get("tokens", 0))
    unsummarized = int(frame.get("history_tokens", 0)) - covered_tokens
    pinned, _ = pinned_indices(
        messages, set(frame.get("pinned", [])) | set(frame.get("template_pins", []))
    )
    stop = _protected_from(messages)
    summaries = list(frame.get("summaries", []))
    handoff: list[PrunedItem] = list(frame.get("handoff", []))
    made: list[str] = []
    input_tokens = 0

    # 1. Summarize the oldest unsummarized chunks until under the target.
    max_input = max(_MIN_SUMMARY_TOKENS, deps.budget // 2)
    while unsummarized > target and boundary < stop:
        end, chunk_tokens = _chunk(messages, counts, boundary, stop, policy, max_input)
        if end <= boundary:
            break
        span = range(boundary, end)
        sources = [i for i in span if i not in pinned]
        if sources:
            texts = [counter.truncate_text(_render(messages[i]), max_input) for i in sources]
            cap = max(_MIN_SUMMARY_TOKENS, int(chunk_tokens * SUMMARY_RATIO))
            cap = min(cap, max(_MIN_SUMMARY_TOKENS, _summary_room(frame, deps) // 2))
            result = summarizer.summarize(texts, prompt=policy.prompt, max_tokens=cap)
            input_tokens += result.input_tokens
            summary = _summary(
                [str(messages[i].id) for i in sources],
                result,
                level=0,
                span={
                    "first": str(messages[boundary].id),
                    "last": str(messages[end - 1].id),
                    "start": boundary,
                    "count": end - boundary,
                },
                deps=deps,
            )
            summaries.append(summary)
            made.append(summary["id"])
            handoff.extend(
                {"id": str(messages[i].id), "reason": f"summarized into {summary['id']}"}
                for i in sources
            )
        spent = sum(counts[i] for i in span)
        covered_tokens += spent
        unsummarized -= spent
        boundary = end
    if boundary:
        summarized = {
            "count": boundary,
            "last_id": str(messages[boundary - 1].id),
            "tokens": covered_tokens,
        }

    # 2. Re-compress: merge the oldest summaries while they overflow their tier.
    room = _summary_room(frame, deps)
    merged: list[str] = []
    while sum(s["tokens"] for s in summaries) > room and len(summaries) >= 2:
        group = summaries[:MERGE_FAN_IN]
        group_tokens = sum(s["tokens"] for s in group)
        cap = max(_MIN_SUMMARY_TOKENS, min(room // 2, group_tokens // 2))
        result = summarizer.summarize(
            [s["text"] for s in group], prompt=policy.prompt, max_tokens=cap
        )
        input_tokens += result.input_tokens
        first, last = group[0].get("span", {}), group[-1].get("span", {})
        start = int(first.get("start", 0))
        exact = all("start" in s.get("span", {}) for s in group)
        # A child made in this same compaction is in no version: cite what it covered.
        covers = [c for s in group for c in (s["covers"] if s["id"] in made else [s["id"]])]
        summary = _summary(
            covers,
            result,
            level=1 + max(int(s.get("level", 0)) for s in group),
            span={
                "first": first.get("first", ""),
                "last": last.get("last", ""),
                "start": start,
                "count": (
                    int(last.get("start", 0)) + int(last.get("count", 0)) - start
                    if exact  # frames written before spans carried `start`: sum instead
                    else sum(int(s.get("span", {}).get("count", 0)) for s in group)
                ),
            },
            deps=deps,
        )
        summaries = [summary, *summaries[len(group) :]]
        merged.extend(s["id"] for s in group)
        made.append(summary["id"])

    # 3. Last resort: a lone summary larger than its tier is truncated with a marker.
    if summaries and sum(s["tokens"] for s in summaries) > room:
        summaries = [_truncated_summary(summaries[0], room, deps)]

    compacted: Frame = {**frame, "summaries": summaries, "summarized": summarized}
    assembled = assemble_window(messages, deps, compacted, counts=counts)
    rebuilt = prune_window(messages, deps, assembled, version=version, counts=counts)
    made_set = set(made)
    pruned: list[PrunedItem] = [
        {"id": s, "reason": "re-compressed into a higher-level summary"} for s in merged
    ]
    # The rebuild is two stages: what either removed is this compaction's to report.
    pruned.extend(
        p for p in merged_pruned([assembled, rebuilt], rebuilt) if p["id"] not in made_set
    )
    handoff.extend(rebuilt.get("handoff", []))
    new_count = len([m for m in made if m not in merged])
    return {
        **rebuilt,
        "pruned": pruned,
        "handoff": left_for_good(handoff, rebuilt["window"]),
        "last_op": {
            "op": "summarize",
            "reason": (
                f"history over the compression checkpoint: {new_count} summary(ies) made, "
                f"{len(merged)} re-compressed; {input_tokens} tokens sent to the summarizer"
            ),
            "tokens_before": int(frame.get("window_tokens", 0)),
            "tokens_after": int(rebuilt.get("window_tokens", 0)),
            "entered": rebuilt["last_op"]["entered"],
            "left": rebuilt["last_op"]["left"],
        },
    }


def _summary_room(frame: Frame, deps: NodeDeps) -> int:
    """Tokens the summaries may use: `SUMMARY_SHARE` of the supporting tier.

    The rest is kept for retrieved memories; whatever neither uses flows on to the
    cache tier (older verbatim turns).
    """
    limit = deps.template.budget.tiers.allocate(deps.budget)["supporting"]
    return int(limit * SUMMARY_SHARE)


def _protected_from(messages: Sequence[BaseMessage]) -> int:
    """Summaries never reach the current turn: the latest user message and after."""
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return i
    return len(messages)


def _chunk(
    messages: Sequence[BaseMessage],
    counts: LazyCounts,
    start: int,
    stop: int,
    policy: Any,
    max_input: int,
) -> tuple[int, int]:
    """The end of the chunk that starts at `start`, and its tokens.

    A chunk holds `chunk_size` messages (or tokens), at most `max_input` tokens
    (the budget the summarizer's prompt must respect), and never ends between a
    tool call and its results.
    """
    end, tokens = start, 0
    while end < stop:
        unit_end = _unit_end(messages, end, stop)
        if unit_end is None:
            break  # a call whose results come in the current turn: not yet
        unit_tokens = sum(counts[i] for i in range(end, unit_end))
        if end > start and tokens + unit_tokens > max_input:
            break
        end = unit_end
        tokens += unit_tokens
        size = tokens if policy.chunk_unit == "tokens" else end - start
        if size >= policy.chunk_size:
            break
    return end, tokens


def _unit_end(messages: Sequence[BaseMessage], at: int, stop: int) -> int | None:
    """Where the unit starting at `at` ends: past the last result of its tool calls.

    Results may arrive after other messages (parallel tools, interleaved turns); the
    chunk then takes everything up to the last one. `None` when a result lies at or
    after `stop`; a call whose result never came is a unit of its own.
    """
    open_calls = set(calls_of(messages[at]))
    if not open_calls:
        return at + 1
    last = at
    for j in range(at + 1, len(messages)):
        message = messages[j]
        if isinstance(message, ToolMessage) and message.tool_call_id in open_calls:
            open_calls.discard(message.tool_call_id)
            last = j
            if not open_calls:
                break
    if last >= stop:
        return None
    return last + 1


def _render(message: BaseMessage) -> str:
    """A message as the summarizer reads it: `speaker: text`."""
    text = message.text if isinstance(message.text, str) else str(message.content)
    text = " ".join(text.split())
    if isinstance(message, ToolMessage):
        speaker = f"Tool {message.name or ''}".strip()
    elif message.name:
        speaker = message.name
    else:
        speaker = {"human": "User", "ai": "Assistant", "system": "System"}.get(
            message.type, message.type
        )
    if calls_of(message) and isinstance(message, AIMessage):
        calls = [*message.tool_calls, *message.invalid_tool_calls]
        names = ", ".join(str(c.get("name")) for c in calls)
        text = f"{text} (called {names})".strip()
    return f"{speaker}: {text}"


def _summary(
    covers: list[str],
    result: SummaryResult,
    *,
    level: int,
    span: dict[str, Any],
    deps: NodeDeps,
) -> Summary:
    digest = hashlib.sha1(
        "\x1f".join([str(level), *covers]).encode("utf-8"), usedforsecurity=False
    ).hexdigest()[:12]
    summary: Summary = {
        "id": f"llmctx:summary:{digest}",
        "text": result.text,
        "covers": covers,
        "tokens": 0,
        "level": level,
        "span": span,
        "input_tokens": result.input_tokens,
        "method": result.method,
    }
    summary["tokens"] = _item_tokens(summary, deps)
    return summary


def _item_tokens(summary: Summary, deps: NodeDeps) -> int:
    return deps.counter.count_message(
        SystemMessage(content=summary_content(summary), id=summary["id"])
    )


def _truncated_summary(summary: Summary, room: int, deps: NodeDeps) -> Summary:
    """The summary cut (with a marker) so that its window item fits `room` tokens."""
    marker = " [… summary truncated by llmctx to fit the budget]"
    text = summary["text"]
    keep = deps.counter.count_text(text)
    while True:
        cut = deps.counter.truncate_text(text, keep)
        candidate: Summary = {**summary, "text": (cut + marker) if cut else marker.strip()}
        candidate["tokens"] = _item_tokens(candidate, deps)
        if candidate["tokens"] <= room or keep == 0:
            return candidate
        keep = max(0, keep - max(1, candidate["tokens"] - room))
