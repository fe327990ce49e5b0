"""The switch node: change a thread's domain template, and keep what the new domain needs.

**Explicit switches**, three ways, all read by the next pipeline run (and cleared):
the `switch` state field (`graph.invoke({"messages": [...], "switch": {"template":
"business"}})` or `graph.update_state`), a `Command` (`switch_command("business")`;
invoked on its own it only records the request, which the next run applies), or the
model's `switch_context` tool (`switch_context_tool()`, which returns such a
`Command`). A request for an unknown template or strategy is a `SwitchError`, raised
before the frame changes; the request stays in the `switch` channel until replaced
or cleared (`graph.update_state(config, {"switch": None})`), as the error says.

**Automatic switches** (opt-in: `SwitchPolicy(auto=True)`) classify each new user
message against every candidate template's `triggers`: keyword hits (phrases,
case-insensitive, plurals and verb forms folded) and the similarity to the template's
example utterances (TF-IDF cosine, or the embedder's cosine when one is set), combined
as `1 - (1 - keywords) * (1 - examples)` with `keywords = 1 - 0.5 ** hits`. A candidate
wins when it reaches its threshold (`SwitchPolicy.threshold`, else its own
`triggers.threshold`) *and* beats the thread template's own score by `margin`, and
the last switch is at least `min_turns` user turns old: hysteresis, so borderline
messages do not make the thread flap.

**Which template runs** (highest first): an explicit request; the run's
`ContextConfig.template` (this run only: the next run without one switches back); the
thread's own template (`frame["thread_template"]`, sticky: set on the first turn and by
explicit and automatic switches); the graph's default (`build_context_graph(template=)`,
`ContextConfig.default_template`); `Settings.default_template`. A thread's first turn
has nothing to switch from: the template is chosen the same way, and no switch is
recorded.

**Strategies** say what the new template starts from (`SwitchStrategy`):

| strategy | recent turns | summaries | memories | pins | prune state |
|---|---|---|---|---|---|
| `minimal` | kept | kept | kept | user pins kept | kept |
| `optimal` (default) | kept | kept | dropped | user pins kept | reset |
| `aggressive` | latest user turn only | one hand-off summary | dropped | user pins kept | reset |
| `preserving` | kept | kept | kept and carried | user pins + the old template's | kept |

"Kept" turns are re-fitted by recency into the new template's budget split; the
template's system prompt, policies and its own pins (`template_pins`) always come from
the new template. Prune state is the old pruning policy's placeholders (cleared tool
outputs, duplicates) and LRU marks. `optimal` drops the old domain's retrieved
memories (the new template retrieves from its own namespaces); `preserving` carries
them next to the new domain's on the switch turn, and makes what the old template
pinned a pin of the thread. `aggressive` starts the new domain from the latest user
message (and what followed it): everything before it is covered by one hand-off
summary of the outgoing context (its summaries and window, with the summarizer of
the run and the new template's summary prompt), and stays reachable from the
history, long-term memory and the preserved frame. Every strategy keeps the
invariants of DESIGN.md §3: the window fits the budget exactly, tool pairs stay
whole, pins survive, whatever leaves the window is reported in `pruned` and handed
off (or is inside a summary's span), and the result is deterministic.

**Preservation.** The outgoing frame is kept in `preserved` under its template's name
(at most `max_preserved`, 5 by default; the least recently active is evicted). Switching
back restores it exactly (the same window when nothing was said in between); new
messages then enter it as they would any turn. The strategy applies only when there is
no preserved frame to restore.

**Versions and analytics.** A turn that switches is one version with
`last_op.op == "switch"` and a reason naming the trigger (`explicit`, `tool`,
`command`, `run context`, `thread template`, `auto: 0.62`), so `llmctx history` shows
it and `versions.rollback` to the version before undoes it (the preserved frames are
restored too). The frame's `last_switch` holds the last switch, and the `switches`
channel the count, the time taken (the decision, template load and starting frame)
and the last 100 transitions (`switch_stats`); a rollback does not rewind that log,
which records what happened.

Example:
    >>> graph = build_context_graph(template="general", switching=SwitchPolicy(auto=True))
    >>> graph.invoke({"messages": [("user", "My pandas groupby returns NaN")]}, config)
    >>> graph.invoke({"messages": [], "switch": {"template": "business"}}, config)
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Annotated, Any, Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool, InjectedToolCallId, StructuredTool
from langgraph.runtime import Runtime
from langgraph.types import Command
from pydantic import BaseModel, Field, create_model

from llmctx.nodes._deps import (
    NodeDeps,
    resolve_deps,
    run_settings,
    template_for,
    template_registry,
)
from llmctx.nodes._memory import embedder_for
from llmctx.nodes._window import LazyCounts, left_for_good
from llmctx.nodes.budget import HORIZON_FACTOR, assemble_window, summary_content
from llmctx.nodes.state import (
    ContextConfig,
    ContextState,
    Frame,
    Memory,
    PrunedItem,
    Summary,
    SwitchLog,
    SwitchRecord,
    SwitchRequest,
)
from llmctx.nodes.summarize import SUMMARY_SHARE
from llmctx.nodes.triggers import trigger_scores
from llmctx.runtime.errors import SwitchError, TemplateError, TemplateNotFoundError
from llmctx.runtime.settings import Settings
from llmctx.runtime.tokens import REPLY_PRIMING
from llmctx.templates import Template

__all__ = [
    "HANDOFF_INPUT_TOKENS",
    "HANDOFF_MAX_TOKENS",
    "MAX_PRESERVED",
    "SWITCH_LOG_SIZE",
    "SwitchPlan",
    "SwitchPolicy",
    "SwitchResult",
    "SwitchStats",
    "SwitchStrategy",
    "finish_switch",
    "plan_switch",
    "switch",
    "switch_command",
    "switch_context_tool",
    "switch_frame",
    "switch_stats",
    "with_active_template",
]

MAX_PRESERVED = 5
"""Frames of other templates kept for switching back, by default (LRU beyond that)."""

SWITCH_LOG_SIZE = 100
"""Transitions kept in the `switches` channel (the count and total time cover all)."""

HANDOFF_MAX_TOKENS = 400
"""The longest hand-off summary the `aggressive` strategy writes (also capped by the
summaries' share of the supporting tier)."""

HANDOFF_INPUT_TOKENS = 4 * HANDOFF_MAX_TOKENS
"""The newest outgoing-window turns the hand-off summary reads (with all the outgoing
summaries); older window turns stay inside its span, reachable from the history."""

_SOURCES = ("explicit", "tool", "command")
_REQUEST_KEYS = frozenset({"template", "strategy", "reason", "source"})


class SwitchStrategy(StrEnum):
    """What the new template starts from (the module docstring has the full table).

    - `minimal`: the outgoing frame as it is (turns, summaries, memories, user pins,
      prune placeholders and LRU marks); only the template changes.
    - `optimal`: the conversation (turns, summaries, user pins); the old domain's
      memories and prune state are dropped for the new template to rebuild.
    - `aggressive`: the latest user turn, plus one hand-off summary of everything
      before it (the outgoing summaries and window); memories and prune state dropped.
    - `preserving`: like `minimal`, and the old template's pins become pins of the
      thread, and its memories stay next to the new domain's on the switch turn.
    """

    MINIMAL = "minimal"
    OPTIMAL = "optimal"
    AGGRESSIVE = "aggressive"
    PRESERVING = "preserving"


def _strategy(value: Any, where: str) -> SwitchStrategy:
    try:
        return SwitchStrategy(value)
    except ValueError:
        names = ", ".join(s.value for s in SwitchStrategy)
        raise SwitchError(
            f"{where}: unknown switch strategy {value!r}; use one of {names}"
        ) from None


@dataclass(frozen=True)
class SwitchPolicy:
    """How a thread switches templates: automatic switching and the default strategy.

    `auto` turns on the classifier (off by default: only explicit requests and run
    contexts switch). `candidates` names the templates it may pick (`None`: every
    template in the registry). `threshold` overrides every template's
    `triggers.threshold`; `margin` is how much a candidate must out-score the thread's
    template, and `min_turns` how many user turns must pass after any switch before an
    automatic one. `max_preserved` bounds the frames kept for switching back.

    Pass it as `build_context_graph(switching=...)`, `context_node(switching=...)` or
    per run as `ContextConfig(switching=...)` (a dict of these fields works too).
    """

    auto: bool = False
    candidates: tuple[str, ...] | None = None
    strategy: SwitchStrategy | str = SwitchStrategy.OPTIMAL
    threshold: float | None = None
    margin: float = 0.1
    min_turns: int = 2
    max_preserved: int = MAX_PRESERVED

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", _strategy(self.strategy, "SwitchPolicy.strategy"))
        if self.candidates is not None:
            if isinstance(self.candidates, str) or not all(
                isinstance(c, str) and c for c in self.candidates
            ):
                raise SwitchError(
                    "SwitchPolicy.candidates must be a list of template names, or None for "
                    f"every template; got {self.candidates!r}"
                )
            object.__setattr__(self, "candidates", tuple(self.candidates))
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise SwitchError(
                f"SwitchPolicy.threshold must be in 0..1 (or None), got {self.threshold}"
            )
        if not 0.0 <= self.margin <= 1.0:
            raise SwitchError(f"SwitchPolicy.margin must be in 0..1, got {self.margin}")
        if self.min_turns < 0 or self.max_preserved < 0:
            raise SwitchError(
                "SwitchPolicy.min_turns and max_preserved must be >= 0, got "
                f"{self.min_turns} and {self.max_preserved}"
            )

    @classmethod
    def coerce(cls, value: SwitchPolicy | Mapping[str, Any] | None) -> SwitchPolicy:
        """The policy for `value`: itself, a dict of its fields, or the default."""
        if value is None:
            return _DEFAULT_POLICY
        if isinstance(value, SwitchPolicy):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise SwitchError(
                    f"unknown SwitchPolicy field(s) {sorted(unknown)}; "
                    f"expected {sorted(cls.__dataclass_fields__)}"
                )
            return cls(**value)
        raise SwitchError(
            f"switching must be a SwitchPolicy or a dict of its fields, got {type(value).__name__}"
        )


_DEFAULT_POLICY = SwitchPolicy()


# --------------------------------------------------------------------------- deciding


@dataclass(frozen=True)
class _Decision:
    """Which template runs this turn, why, and the thread's template afterwards."""

    template: Template
    trigger: str
    reason: str
    strategy: SwitchStrategy
    score: float | None
    home: str


def _name(template: Any) -> str | None:
    if template is None:
        return None
    return template.name if isinstance(template, Template) else str(template)


def _decide(
    messages: Sequence[BaseMessage],
    frame: Frame,
    request: Any,
    ctx: ContextConfig,
    policy: SwitchPolicy,
    settings: Settings,
) -> _Decision:
    """Apply the precedence: request > run context > auto > thread template."""
    home = (
        frame.get("thread_template")
        or frame.get("template")
        or _name(ctx.default_template)
        or settings.default_template
    )
    strategy = SwitchStrategy(policy.strategy)
    if request is not None:
        template, strategy, trigger, reason = _read_request(request, strategy, ctx, settings)
        return _Decision(template, trigger, reason, strategy, None, template.name)
    if ctx.template is not None:
        template = (
            ctx.template
            if isinstance(ctx.template, Template)
            else template_for(str(ctx.template), ctx, settings)
        )
        return _Decision(template, "run context", "run context", strategy, None, home)
    if policy.auto:
        pick = _auto(messages, frame, home, policy, ctx, settings)
        if pick is not None:
            template, score = pick
            reason = f"auto: {score:.2f}"
            return _Decision(template, "auto", reason, strategy, score, template.name)
    return _Decision(
        template_for(home, ctx, settings),
        "thread template",
        "thread template",
        strategy,
        None,
        home,
    )


def _read_request(
    request: Any, default: SwitchStrategy, ctx: ContextConfig, settings: Settings
) -> tuple[Template, SwitchStrategy, str, str]:
    """Validate a `SwitchRequest`; every problem is a `SwitchError` naming the fix."""
    clear = "or clear it with graph.update_state(config, {'switch': None})"
    if not isinstance(request, Mapping):
        raise SwitchError(
            "the switch request must be a dict like {'template': 'business'}, got "
            f"{type(request).__name__}; send a valid request {clear}"
        )
    unknown = set(request) - _REQUEST_KEYS
    if unknown:
        raise SwitchError(
            f"unknown switch request field(s) {sorted(unknown)}; expected "
            f"{sorted(_REQUEST_KEYS)}; send a valid request {clear}"
        )
    source = request.get("source") or "explicit"
    if source not in _SOURCES:
        raise SwitchError(
            f"switch request source {source!r} is not one of {', '.join(_SOURCES)}; "
            f"send a valid request {clear}"
        )
    name = request.get("template")
    if not isinstance(name, str) or not name:
        raise SwitchError(
            f"the switch request ({source}) names no template: {request!r}; add "
            f"'template': '<name>' {clear}"
        )
    strategy = default
    if request.get("strategy") is not None:
        strategy = _strategy(request["strategy"], f"switch request ({source}) to {name!r}")
    try:
        template = template_for(name, ctx, settings)
    except TemplateNotFoundError as exc:
        raise SwitchError(
            f"cannot switch to template {name!r} ({source} request): {exc}; request an "
            f"available template {clear}"
        ) from None
    reason = source if not request.get("reason") else f"{source}: {request['reason']}"
    return template, strategy, source, reason


def _auto(
    messages: Sequence[BaseMessage],
    frame: Frame,
    home: str,
    policy: SwitchPolicy,
    ctx: ContextConfig,
    settings: Settings,
) -> tuple[Template, float] | None:
    """The candidate the latest user message clearly belongs to, if any (hysteresis)."""
    at = _latest_human(messages)
    if at is None:
        return None
    known = _appended(messages, frame) if frame.get("history_messages") else 0
    if known is None:
        known = 0
    if at < known:
        return None  # no new user message: it was classified when it arrived
    last = frame.get("last_switch")
    if last is not None and policy.min_turns:
        now = int(frame.get("turn", 0)) + sum(
            1 for m in messages[known:] if isinstance(m, HumanMessage)
        )
        if now - int(last.get("turn", 0)) < policy.min_turns:
            return None
    templates = _candidates(policy, ctx, settings, home)
    raw = ctx.embedder if ctx.embedder is not None else embedder_for(settings)
    scores = trigger_scores(_text(messages[at]), templates, embedder=raw)
    base = scores.get(home, 0.0)
    for template in sorted(templates, key=lambda t: (-scores[t.name], t.name)):
        if template.name == home:
            continue
        score = scores[template.name]
        threshold = policy.threshold
        if threshold is None:
            threshold = template.triggers.threshold
        if score >= threshold and score >= base + policy.margin - 1e-9:
            return template, score
    return None


def _candidates(
    policy: SwitchPolicy, ctx: ContextConfig, settings: Settings, home: str
) -> list[Template]:
    """The candidate templates, plus the thread's own (scored for the margin)."""
    if policy.candidates is not None:
        names = list(policy.candidates)
        strict = True
    else:
        names = template_registry(ctx, settings).names()
        strict = False
    if home not in names:
        names.append(home)
    out: list[Template] = []
    for name in names:
        try:
            out.append(template_for(name, ctx, settings))
        except TemplateError:
            if strict or name == home:
                raise
            # A broken user template cannot be switched to; `templates validate` says why.
    return out


# --------------------------------------------------------------------------- preparing


@dataclass(frozen=True)
class SwitchPlan:
    """What the switch stage decided for one run, for the rest of the pipeline.

    `deps` are the run's dependencies with the template that runs; `start` is the
    frame the pipeline starts from (the thread's frame when nothing switches);
    `updates` are the channel writes besides `context` (`preserved`, `switch`).
    When the turn switches, `record` describes it, `outgoing` is the frame left, and
    `exact` says the restored frame is already current (use it as is). `carried` are
    memories the `preserving` strategy keeps next to newly retrieved ones.
    """

    deps: NodeDeps
    start: Frame
    thread_template: str
    updates: dict[str, Any] = field(default_factory=dict)
    record: SwitchRecord | None = None
    outgoing: Frame | None = None
    exact: bool = False
    carried: tuple[Memory, ...] = ()
    ms: float = 0.0
    log: SwitchLog | None = None

    @property
    def switched(self) -> bool:
        return self.record is not None


@dataclass(frozen=True)
class SwitchResult:
    """`switch_frame`'s result: the new frame, the `preserved` update and the record."""

    frame: Frame
    preserved: dict[str, Frame | None]
    record: SwitchRecord


def plan_switch(
    state: ContextState | Mapping[str, Any], context: ContextConfig | None
) -> SwitchPlan:
    """Decide which template runs this turn and, on a switch, the frame to start from.

    Pure apart from loading templates (cached). `context` is the run's merged
    `ContextConfig`. Raises `SwitchError` for an invalid request or policy, before
    anything is written.
    """
    began = time.perf_counter()
    ctx = context or ContextConfig()
    settings = run_settings(ctx)
    policy = SwitchPolicy.coerce(ctx.switching)
    messages = state["messages"]
    frame: Frame = state.get("context") or {}
    request = state.get("switch")
    decision = _decide(messages, frame, request, ctx, policy, settings)
    updates: dict[str, Any] = {"switch": None} if request is not None else {}
    deps = resolve_deps(ctx, settings, template=decision.template)
    active = frame.get("template")
    if active is None or active == decision.template.name:
        return SwitchPlan(deps, frame, decision.home, updates)
    counts = LazyCounts(messages, deps.counter)
    start, delta, restored, carried = _prepare(
        messages,
        deps,
        frame,
        state.get("preserved"),
        decision.strategy,
        policy.max_preserved,
        counts,
        _loaded(active, frame, ctx, settings),
    )
    exact = restored and _is_current(start, messages, deps)
    if delta:
        updates["preserved"] = delta
    record = _record(frame, decision, restored)
    return SwitchPlan(
        deps,
        start,
        decision.home,
        updates,
        record,
        frame,
        exact,
        carried,
        (time.perf_counter() - began) * 1000.0,
        state.get("switches"),
    )


def _loaded(name: str, frame: Frame, ctx: ContextConfig, settings: Settings) -> Template | None:
    """The template that built `frame`, if it still loads unchanged (else None)."""
    try:
        template = template_for(name, ctx, settings)
    except TemplateError:
        return None
    return template if template.fingerprint == frame.get("template_hash") else None


def _record(outgoing: Frame, decision: _Decision, restored: bool) -> SwitchRecord:
    return {
        "from": str(outgoing.get("template", "")),
        "to": decision.template.name,
        "strategy": decision.strategy.value,
        "trigger": decision.trigger,
        "reason": decision.reason,
        "score": decision.score,
        "turn": int(outgoing.get("turn", 0)),
        "restored": restored,
    }


def _prepare(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    outgoing: Frame,
    preserved: Mapping[str, Frame | None] | None,
    strategy: SwitchStrategy,
    max_preserved: int,
    counts: LazyCounts,
    outgoing_template: Template | None = None,
) -> tuple[Frame, dict[str, Frame | None], bool, tuple[Memory, ...]]:
    """The starting frame, the `preserved` delta, whether it is a restore, carried memories.

    `outgoing_template` (the template that built `outgoing`, when known) lets the new
    template reuse its pins when both pin the same way.
    """
    restore, delta = _preserve(
        preserved, str(outgoing.get("template", "")), outgoing, deps.template.name, max_preserved
    )
    carried: tuple[Memory, ...] = ()
    if restore is not None:
        pins = list(restore.get("pinned", []))
        extra = [p for p in outgoing.get("pinned", []) if p not in set(pins)]
        start: Frame = {**restore, "pinned": pins + extra} if extra else restore
    else:
        start, carried = _start(messages, deps, outgoing, strategy, counts)
    start = _rebase_pins(messages, start, deps.template, outgoing, outgoing_template)
    start = _rebase_oversized(messages, start, deps, counts)
    return start, delta, restore is not None, carried


def _preserve(
    preserved: Mapping[str, Frame | None] | None,
    outgoing_name: str,
    outgoing: Frame,
    target: str,
    max_preserved: int,
) -> tuple[Frame | None, dict[str, Frame | None]]:
    """Set the outgoing frame aside (LRU-bounded) and take the target's out, if kept."""
    kept = {name: f for name, f in (preserved or {}).items() if f is not None}
    delta: dict[str, Frame | None] = {}
    restore = kept.pop(target, None)
    if restore is not None:
        delta[target] = None
        restore = {k: v for k, v in restore.items() if k != "preserved_seq"}  # type: ignore[assignment]
    if max_preserved > 0 and outgoing_name:
        seq = 1 + max((int(f.get("preserved_seq", 0)) for f in kept.values()), default=0)
        parked: Frame = {**outgoing, "preserved_seq": seq}
        kept[outgoing_name] = parked
        delta[outgoing_name] = parked
    while len(kept) > max_preserved:
        # The frame set aside longest ago is the least recently active.
        victim = min(kept, key=lambda n: (int(kept[n].get("preserved_seq", 0)), n))
        del kept[victim]
        delta[victim] = None
    return restore, delta


def _start(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    outgoing: Frame,
    strategy: SwitchStrategy,
    counts: LazyCounts,
) -> tuple[Frame, tuple[Memory, ...]]:
    """The frame the new template starts from, per strategy (see `SwitchStrategy`)."""
    start: Frame = dict(outgoing)  # type: ignore[assignment]
    carried: tuple[Memory, ...] = ()
    if strategy in (SwitchStrategy.OPTIMAL, SwitchStrategy.AGGRESSIVE):
        start["memories"] = []
        start["last_used"] = {}
        start["window"] = [
            it for it in outgoing.get("window", []) if it.get("shown") != "placeholder"
        ]
    if strategy is SwitchStrategy.PRESERVING:
        pins = list(outgoing.get("pinned", []))
        seen = set(pins)
        pins.extend(p for p in outgoing.get("template_pins", []) if p not in seen)
        start["pinned"] = pins
        carried = tuple(outgoing.get("memories", []))
    if strategy is SwitchStrategy.AGGRESSIVE:
        start.update(_fresh_start(messages, deps, outgoing, counts))  # type: ignore[typeddict-item]
    return start, carried


def _fresh_start(
    messages: Sequence[BaseMessage], deps: NodeDeps, outgoing: Frame, counts: LazyCounts
) -> dict[str, Any]:
    """`aggressive`: the history before the latest user message becomes one hand-off
    summary, and the window's look-back starts at that message."""
    n = len(messages)
    at = _latest_human(messages)
    cut = n if at is None else at
    known = _appended(messages, outgoing)
    summaries = list(outgoing.get("summaries", []))
    summarized = outgoing.get("summarized") or {}
    count = int(summarized.get("count", 0))
    if count and not (count <= n and str(messages[count - 1].id) == summarized.get("last_id")):
        summaries = []  # the history was rewritten below them: they describe nothing now
    fresh: dict[str, Any] = {"memories": [], "last_used": {}}
    if cut == 0:
        fresh["summaries"] = []
        fresh["summarized"] = {"count": 0, "last_id": "", "tokens": 0}
    else:
        current = {str(m.id) for m in messages[cut:]}
        window_ids = [
            it["id"]
            for it in outgoing.get("window", [])
            if it["kind"] == "message" and it["id"] not in current
        ]
        by_id = _by_id(messages, set(window_ids))
        sources = _newest_within(
            [i for i in window_ids if i in by_id], by_id, deps, HANDOFF_INPUT_TOKENS
        )
        texts = [s["text"] for s in summaries if s.get("text")]
        texts.extend(_render(by_id[i]) for i in sources)
        summary = _handoff_summary(messages, deps, summaries, sources, texts, cut)
        if known is not None:
            total = int(outgoing.get("history_tokens", 0)) + sum(counts[i] for i in range(known, n))
            tokens = total - sum(counts[i] for i in range(cut, n))
        else:
            tokens = sum(counts[i] for i in range(cut))
        fresh["summaries"] = [summary]
        fresh["summarized"] = {"count": cut, "last_id": str(messages[cut - 1].id), "tokens": tokens}
    if known is not None and n:
        # Start the cache tier's look-back at the cut; `assemble_window` adds the
        # messages new since `known` to the horizon's tokens, so subtract them here.
        floor = min(cut, n - 1)
        tokens = sum(counts[i] for i in range(floor, n)) - sum(counts[i] for i in range(known, n))
        fresh["horizon"] = {"floor": floor, "tokens": tokens, "limit": HORIZON_FACTOR * deps.budget}
    return fresh


def _handoff_summary(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    summaries: list[Summary],
    sources: list[str],
    texts: list[str],
    cut: int,
) -> Summary:
    """One summary spanning `messages[:cut]`, written from the outgoing context."""
    level = 1 + max(int(s.get("level", 0)) for s in summaries) if summaries else 0
    covers = [s["id"] for s in summaries] + sources if level else list(sources)
    digest = hashlib.sha1(
        "\x1f".join(["handoff", str(level), str(cut), *covers]).encode("utf-8"),
        usedforsecurity=False,
    ).hexdigest()[:12]
    summary: Summary = {
        "id": f"llmctx:summary:{digest}",
        "text": "",
        "covers": covers,
        "tokens": 0,
        "level": level,
        "span": {
            "first": str(messages[0].id),
            "last": str(messages[cut - 1].id),
            "start": 0,
            "count": cut,
        },
        "input_tokens": 0,
        "method": "handoff",
    }
    room = int(deps.template.budget.tiers.allocate(deps.budget)["supporting"] * SUMMARY_SHARE)
    shell = _summary_tokens(summary, deps)
    cap = min(HANDOFF_MAX_TOKENS, room - shell)
    if texts and cap > 0:
        result = deps.summarizer.summarize(
            texts, prompt=deps.template.summarization.prompt, max_tokens=cap
        )
        summary["text"] = result.text
        summary["input_tokens"] = result.input_tokens
        summary["method"] = f"handoff:{result.method}"
    summary["tokens"] = _summary_tokens(summary, deps)
    while summary["text"] and summary["tokens"] > room:  # a boundary token off: trim
        keep = max(0, deps.counter.count_text(summary["text"]) - (summary["tokens"] - room))
        summary["text"] = deps.counter.truncate_text(summary["text"], keep)
        summary["tokens"] = _summary_tokens(summary, deps)
    return summary


def _newest_within(
    ids: list[str], by_id: Mapping[str, BaseMessage], deps: NodeDeps, limit: int
) -> list[str]:
    """The newest of `ids` (kept in order) whose messages fit `limit` tokens together."""
    kept: list[str] = []
    total = 0
    for mid in reversed(ids):
        total += deps.counter.count_message(by_id[mid])
        if total > limit and kept:
            break
        kept.append(mid)
    return kept[::-1]


def _summary_tokens(summary: Summary, deps: NodeDeps) -> int:
    return deps.counter.count_message(
        SystemMessage(content=summary_content(summary), id=summary["id"])
    )


def _rebase_pins(
    messages: Sequence[BaseMessage],
    start: Frame,
    template: Template,
    outgoing: Frame,
    outgoing_template: Template | None,
) -> Frame:
    """The new template's pins over the history the start frame has seen.

    The budget node keeps `template_pins` incrementally while the template is the
    same, and re-scans the whole history when it changes; doing that scan here (once,
    reading string contents directly), or reusing the outgoing template's pins when
    it pins the same way, keeps a switch's cost down on long histories. Same rule as
    the budget node: a message is pinned by id, by role, or by a pattern match.
    """
    if start.get("template_hash") == template.fingerprint:
        return start  # a restored frame of this very template: already current
    known = _appended(messages, start)
    if known is None:
        return start  # the history was rewritten: the budget node recomputes everything
    policy = template.pinned
    pins: list[str] = []
    if (
        outgoing_template is not None
        and outgoing_template.pinned == policy
        and outgoing.get("template_hash") == outgoing_template.fingerprint
        and outgoing.get("history_messages") == start.get("history_messages")
    ):
        pins = list(outgoing.get("template_pins", []))
    elif policy.ids or policy.roles or policy.patterns:
        ids, roles = set(policy.ids), set(policy.roles)
        searches = [p.search for p in policy.compiled]
        for i in range(known):
            message = messages[i]
            if (ids or roles) and (message.id in ids or message.type in roles):
                pins.append(str(message.id))
                continue
            content = message.content
            text = content if type(content) is str else message.text
            for search in searches:
                if search(text) is not None:
                    pins.append(str(message.id))
                    break
    return {**start, "template_pins": pins, "template_hash": template.fingerprint}


def _rebase_oversized(
    messages: Sequence[BaseMessage], start: Frame, deps: NodeDeps, counts: LazyCounts
) -> Frame:
    """`oversized` for the new important tier: filtered when the tier grew, re-measured
    when it shrank (the budget node only measures new messages)."""
    known = _appended(messages, start)
    if known is None:
        return start  # the budget node recomputes everything
    limit = deps.template.budget.tiers.allocate(deps.budget)["important"]
    old = (start.get("tiers") or {}).get("important", {}).get("limit")
    if old == limit:
        return start
    if old is not None and limit >= old:
        rebased = [list(x) for x in start.get("oversized", []) if int(x[1]) > limit]
    else:
        rebased = [[str(messages[i].id), counts[i]] for i in range(known) if counts[i] > limit]
    return {**start, "oversized": rebased}


def _is_current(frame: Frame, messages: Sequence[BaseMessage], deps: NodeDeps) -> bool:
    """The frame was built for exactly this history, template, budget and tools."""
    tail = str(messages[-1].id) if messages else ""
    if frame.get("history_messages") != len(messages) or frame.get("history_tail") != tail:
        return False
    if frame.get("template_hash") != deps.template.fingerprint:
        return False
    if frame.get("budget") != deps.budget or frame.get("tokenizer") != deps.counter.describe():
        return False
    fixed = int(frame.get("window_tokens", 0)) - sum(
        int(it["tokens"]) for it in frame.get("window", [])
    )
    return fixed == deps.tools_tokens + REPLY_PRIMING


# --------------------------------------------------------------------------- finishing


def finish_switch(frame: Frame, plan: SwitchPlan) -> dict[str, Any]:
    """The node update for a pipeline run: `frame` stamped with the switch, plus the
    channel writes (`preserved`, `switches`, the consumed `switch` request).

    On a switch, `last_op` becomes `switch` (its reason names the trigger, the
    templates and the strategy, and the stage that ran after it), `last_switch`
    records it, and the outgoing window's messages that the new one does not show are
    reported in `pruned` and `handoff`.
    """
    update = dict(plan.updates)
    if plan.record is None or plan.outgoing is None:
        if frame.get("thread_template") != plan.thread_template:
            frame = {**frame, "thread_template": plan.thread_template}
        update["context"] = frame
        return update
    outgoing = plan.outgoing
    record: SwitchRecord = {**plan.record, "turn": int(frame.get("turn", 0))}
    shown = {it["id"] for it in frame.get("window", []) if it["kind"] == "message"}
    before = [it["id"] for it in outgoing.get("window", []) if it["kind"] == "message"]
    left = [mid for mid in before if mid not in shown]
    why = f"left on switch {record['from']} → {record['to']} ({record['strategy']})"
    listed = {p["id"] for p in frame.get("pruned", [])}
    pruned: list[PrunedItem] = list(frame.get("pruned", []))
    pruned.extend({"id": mid, "reason": why} for mid in left if mid not in listed)
    handoff = left_for_good(
        [*frame.get("handoff", []), *({"id": mid, "reason": why} for mid in left)],
        frame.get("window", []),
    )
    op = frame.get("last_op") or {}
    reason = (
        f"{record['reason']}; {record['from']} → {record['to']} ({record['strategy']}"
        f"{', restored' if record['restored'] else ''})"
    )
    if op.get("op") not in (None, "assemble", "switch", "rollback", "branch"):
        reason += f"; then {op['op']}"
    before_set = set(before)
    new: Frame = {
        **frame,
        "thread_template": plan.thread_template,
        "last_switch": record,
        "pruned": pruned,
        "handoff": handoff,
        "last_op": {
            "op": "switch",
            "reason": reason,
            "tokens_before": int(outgoing.get("window_tokens", 0)),
            "tokens_after": int(frame.get("window_tokens", 0)),
            "entered": len(shown - before_set),
            "left": len(before_set - shown),
        },
    }
    update["context"] = new
    update["switches"] = _logged(plan.log, {**record, "ms": round(plan.ms, 3)})
    return update


def _logged(log: SwitchLog | None, record: SwitchRecord) -> SwitchLog:
    log = log or {"count": 0, "ms_total": 0.0, "transitions": []}
    return {
        "count": int(log.get("count", 0)) + 1,
        "ms_total": round(float(log.get("ms_total", 0.0)) + float(record.get("ms", 0.0)), 3),
        "transitions": [*log.get("transitions", []), record][-SWITCH_LOG_SIZE:],
    }


# --------------------------------------------------------------------------- node and helper


def switch(state: ContextState, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
    """LangGraph node: apply a pending or automatic switch (see the module docstring).

    Returns a partial update: the switched frame (assembled for the new template),
    the `preserved` and `switches` writes and the consumed request; `{}` (or only the
    cleared request) when nothing switches. Later standalone nodes resolve their
    template from the run context: wrap them with `with_active_template`.
    """
    context = ContextConfig.coerce(runtime.context) if runtime is not None else None
    plan = plan_switch(state, context)
    if not plan.switched:
        frame = state.get("context")
        update = dict(plan.updates)
        if frame and frame.get("thread_template") != plan.thread_template:
            update["context"] = {**frame, "thread_template": plan.thread_template}
        return update
    frame = plan.start
    if not plan.exact:
        frame = assemble_window(state["messages"], plan.deps, plan.start)
    return finish_switch(frame, plan)


def switch_frame(
    messages: Sequence[BaseMessage],
    deps: NodeDeps,
    previous: Frame,
    *,
    strategy: SwitchStrategy | str = SwitchStrategy.OPTIMAL,
    preserved: Mapping[str, Frame | None] | None = None,
    reason: str = "explicit",
    score: float | None = None,
    max_preserved: int = MAX_PRESERVED,
) -> SwitchResult:
    """Switch the frame `previous` to `deps.template`, as one pure, deterministic step.

    The new frame is assembled for the new template from what `strategy` keeps (or
    from `preserved[deps.template.name]`, restored). Returns it with the `preserved`
    update (the outgoing frame set aside, the restored one taken out, LRU evictions
    as `None`) and the switch record.

        >>> result = switch_frame(history, deps_business, frame, strategy="aggressive")
        >>> result.frame["last_op"]["op"], result.frame["template"]
        ('switch', 'business')
    """
    chosen = _strategy(strategy, "switch_frame")
    counts = LazyCounts(messages, deps.counter)
    start, delta, restored, _ = _prepare(
        messages, deps, previous, preserved, chosen, max_preserved, counts
    )
    frame = start
    if not (restored and _is_current(start, messages, deps)):
        frame = assemble_window(messages, deps, start, counts=counts)
    decision = _Decision(
        deps.template, reason.split(":")[0], reason, chosen, score, deps.template.name
    )
    plan = SwitchPlan(
        deps, start, deps.template.name, {}, _record(previous, decision, restored), previous
    )
    new = finish_switch(frame, plan)["context"]
    return SwitchResult(new, delta, new["last_switch"])


def with_active_template(node: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a context node so it runs with the thread's active template.

    Standalone nodes (`allocate_budget`, `prune`, `summarize`, `retrieve`, `remember`)
    take their template from the run context; after a `switch` node in the same graph
    they must use the frame's template instead.

        >>> builder.add_node("switch", switch)
        >>> builder.add_node("budget", with_active_template(allocate_budget))
    """

    def run(state: Any, runtime: Runtime[ContextConfig]) -> Any:
        frame = state.get("context") or {}
        name = frame.get("template")
        ctx = ContextConfig.coerce(runtime.context) or ContextConfig()
        if name and _name(ctx.template) != name:
            try:
                template = template_for(name, ctx)
            except TemplateNotFoundError:
                return node(state, runtime)  # a one-off Template object: nothing to follow
            runtime = runtime.override(context=replace(ctx, template=template))
        return node(state, runtime)

    run.__name__ = getattr(node, "__name__", "node")
    run.__doc__ = node.__doc__
    return run


# --------------------------------------------------------------------------- requests


def switch_command(
    template: str, *, strategy: SwitchStrategy | str | None = None, reason: str | None = None
) -> Command:
    """A `Command` that asks the next pipeline run to switch to `template`.

    >>> graph.invoke(switch_command("business", reason="budget talk"), config)
    """
    return Command(update={"switch": _request(template, strategy, reason, "command")})


def _request(
    template: str, strategy: SwitchStrategy | str | None, reason: str | None, source: str
) -> SwitchRequest:
    request: SwitchRequest = {"template": template, "source": source}  # type: ignore[typeddict-item]
    if strategy is not None:
        request["strategy"] = _strategy(strategy, f"switch to {template!r}").value
    if reason:
        request["reason"] = reason
    return request


def switch_context_tool(
    templates: Sequence[str] | None = None, *, name: str = "switch_context"
) -> BaseTool:
    """A LangChain tool the model calls to switch the thread's context template.

    `templates` are the names it may choose (default: every template of the default
    workspace's registry); the tool's schema lists them, so a wrong name is a
    validation error the model sees. The tool returns
    `Command(update={"switch": {...}, "messages": [ToolMessage(...)]})`; LangGraph's
    `ToolNode` (or llmctx's scheduler) applies it, and the next pipeline run switches.

        >>> tools = [search, switch_context_tool(["general", "technical", "business"])]
    """
    names = tuple(templates) if templates is not None else tuple(template_registry(None).names())
    if not names:
        raise SwitchError("switch_context_tool needs at least one template name")
    strategies = tuple(s.value for s in SwitchStrategy)
    schema: type[BaseModel] = create_model(
        "SwitchContext",
        template=(
            Literal[names],  # type: ignore[valid-type]
            Field(description="The domain template to switch to."),
        ),
        strategy=(
            Literal[strategies] | None,  # type: ignore[valid-type]
            Field(None, description="What to keep: " + ", ".join(strategies) + "."),
        ),
        reason=(str | None, Field(None, description="Why the topic changed, in a few words.")),
        tool_call_id=(Annotated[str, InjectedToolCallId], ...),
    )

    def switch_context(
        template: str,
        tool_call_id: str,
        strategy: str | None = None,
        reason: str | None = None,
    ) -> Command:
        request = _request(template, strategy, reason, "tool")
        note = f"Context switches to the {template!r} template for the next turn."
        return Command(
            update={
                "switch": request,
                "messages": [ToolMessage(note, tool_call_id=tool_call_id, name=name)],
            }
        )

    return StructuredTool.from_function(
        func=switch_context,
        name=name,
        description=(
            "Switch the conversation's context to another domain template when the "
            "topic changes. Templates: " + ", ".join(names) + "."
        ),
        args_schema=schema,
    )


# --------------------------------------------------------------------------- analytics


@dataclass(frozen=True)
class SwitchStats:
    """Switch analytics of one thread: how many, how long they took, which ones.

    `count` and `mean_ms` cover every switch; `p50_ms`, `p95_ms`, `max_ms`,
    `transitions` and `pairs` (`"a → b": n`) the last `SWITCH_LOG_SIZE`.
    """

    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    max_ms: float
    transitions: tuple[SwitchRecord, ...]
    pairs: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean_ms": self.mean_ms,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "max_ms": self.max_ms,
            "transitions": [dict(t) for t in self.transitions],
            "pairs": dict(self.pairs),
        }


def switch_stats(values: Any) -> SwitchStats:
    """The `SwitchStats` of a thread's state (`graph.get_state(config)` or its
    `.values`), or of a `SwitchLog` itself.

        >>> switch_stats(graph.get_state(config)).count
        2
    """
    if not isinstance(values, Mapping):  # a StateSnapshot
        values = getattr(values, "values", None)
    values = values if isinstance(values, Mapping) else {}
    log = values.get("switches") if "switches" in values else values
    log = log or {}
    transitions = tuple(log.get("transitions", []))
    samples = sorted(float(t.get("ms", 0.0)) for t in transitions)
    count = int(log.get("count", 0))
    pairs: Counter[str] = Counter(f"{t['from']} → {t['to']}" for t in transitions)
    return SwitchStats(
        count=count,
        mean_ms=round(float(log.get("ms_total", 0.0)) / count, 3) if count else 0.0,
        p50_ms=round(statistics.median(samples), 3) if samples else 0.0,
        p95_ms=round(samples[min(len(samples) - 1, int(0.95 * len(samples)))], 3)
        if samples
        else 0.0,
        max_ms=round(samples[-1], 3) if samples else 0.0,
        transitions=transitions,
        pairs=dict(sorted(pairs.items())),
    )


# --------------------------------------------------------------------------- small helpers


def _latest_human(messages: Sequence[BaseMessage]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return i
    return None


def _appended(messages: Sequence[BaseMessage], frame: Frame) -> int | None:
    """How many messages `frame` has seen, if the history only grew since; else None."""
    known = int(frame.get("history_messages", 0))
    tail = frame.get("history_tail")
    if 0 < known <= len(messages) and tail and str(messages[known - 1].id) == tail:
        return known
    return None


def _by_id(messages: Sequence[BaseMessage], wanted: set[str]) -> dict[str, BaseMessage]:
    """The messages with these ids, scanning from the newest (windows are recent)."""
    found: dict[str, BaseMessage] = {}
    for message in reversed(messages):
        if len(found) == len(wanted):
            break
        if str(message.id) in wanted:
            found[str(message.id)] = message
    return found


def _text(message: BaseMessage) -> str:
    text = message.text
    return text if isinstance(text, str) else str(message.content)


def _render(message: BaseMessage) -> str:
    """A message as the hand-off summarizer reads it: `speaker: text`."""
    speaker = {"human": "User", "ai": "Assistant", "system": "System", "tool": "Tool"}.get(
        message.type, message.type
    )
    return f"{message.name or speaker}: {' '.join(_text(message).split())}"
