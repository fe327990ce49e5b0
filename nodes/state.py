"""The state model: an append-only history and a window that is a view of it.

`ContextState.messages` holds the whole conversation (`add_messages` reducer, every
message with a stable id). `ContextState.context` holds the active **frame**: what the
model will see (the window), how the budget was spent, and the last operation, so that
each checkpoint explains itself. Pruning and summarization change the frame, never
`messages`.

Frames are plain `TypedDict`s, so they checkpoint as JSON-like data with any saver
and read back identically in another process or version of llmctx.

Embed the pipeline in your own graph by extending the state::

    class MyState(ContextState):
        plan: str

and call the model with `window_messages(state)`, never with `state["messages"]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import AnyMessage, BaseMessage, SystemMessage
from langgraph.graph.message import add_messages

# typing_extensions: pydantic (graph JSON schemas, LangGraph Studio) rejects
# typing.TypedDict on Python < 3.12.
from typing_extensions import TypedDict

from llmctx.nodes._window import results_after_calls
from llmctx.runtime.errors import ConfigError

__all__ = [
    "ContextConfig",
    "ContextState",
    "Frame",
    "LastOp",
    "Memory",
    "PrunedItem",
    "Summary",
    "SwitchLog",
    "SwitchRecord",
    "SwitchRequest",
    "TierReport",
    "WindowItem",
    "merge_preserved",
    "window_messages",
]

ItemKind = Literal["system", "message", "summary", "memory"]


class WindowItem(TypedDict):
    """One entry of the window, in the order the model sees it.

    `kind="message"` items refer to `messages` by `id`; the other kinds carry their
    own `content`, so an old version renders exactly as it did, whatever the
    template or memory hold today. A message item that also carries `content` is
    shown in place of the original (`shown` says why: a `placeholder` for a cleared
    tool output or duplicate, or a `truncated` copy of an oversized message, with
    its `full_tokens`); the original stays in `messages`. A `memory` item recalled
    from a message names it in `message_id`.
    """

    kind: ItemKind
    id: str
    tokens: int
    tier: str
    content: NotRequired[str]
    shown: NotRequired[Literal["truncated", "placeholder"]]
    full_tokens: NotRequired[int]
    message_id: NotRequired[str]


class TierReport(TypedDict):
    """How one budget tier was spent.

    `limit` is the tier's share of the budget (the template's split), `available`
    that share plus what earlier tiers left unused (negative flow when the critical
    tier overdraws), `used` the exact tokens of its items and `items` their count.
    """

    limit: int
    available: NotRequired[int]
    used: int
    items: int


class Summary(TypedDict):
    """A summary and what it covers.

    `covers` lists the ids it summarized: message ids for a level-0 summary, the
    child summaries' ids for a higher level (those children are in earlier
    versions). `span` names the contiguous run of history it stands for (first and
    last message id, message count), so the raw turns stay reachable from the
    current state. `tokens` is the exact cost of its window item.
    """

    id: str
    text: str
    covers: list[str]
    tokens: int
    level: NotRequired[int]
    span: NotRequired[dict[str, Any]]
    input_tokens: NotRequired[int]
    method: NotRequired[str]


class Memory(TypedDict):
    """A long-term memory injected into the window (by the retrieve node)."""

    id: str
    text: str
    tokens: int
    score: NotRequired[float]
    message_id: NotRequired[str]


class PrunedItem(TypedDict):
    """A message the last operation took out of the window, and why."""

    id: str
    reason: str


class LastOp(TypedDict):
    """What produced this frame: the operation, its reason and its token effect."""

    op: str
    reason: str
    tokens_before: int
    tokens_after: int
    entered: int
    left: int


class SwitchRequest(TypedDict):
    """An explicit request to switch the thread's template, read (and cleared) by the
    next pipeline run.

    Set it with the input (`graph.invoke({"messages": [...], "switch": {"template":
    "business"}})`), `graph.update_state(config, {"switch": {...}})`, a
    `Command(update={"switch": {...}})` (see `llmctx.nodes.switch_command`) or the
    model's `switch_context` tool. `strategy` is one of `minimal`, `optimal`,
    `aggressive`, `preserving` (default: the switch policy's); `reason` is free text
    for the version log; `source` says who asked (`explicit`, the default, `tool` or
    `command`) and names the trigger in `last_op.reason`.
    """

    template: str
    strategy: NotRequired[str]
    reason: NotRequired[str]
    source: NotRequired[Literal["explicit", "tool", "command"]]


SwitchRecord = TypedDict(
    "SwitchRecord",
    {
        "from": str,
        "to": str,
        "strategy": str,
        "trigger": str,
        "reason": str,
        "score": float | None,
        "turn": int,
        "restored": bool,
        "ms": NotRequired[float],
    },
)
SwitchRecord.__doc__ = """One template switch: `from` → `to`, with the `strategy`, the `trigger`
(`explicit`, `tool`, `command`, `run context`, `thread template` or `auto`), the full
`reason`, the classifier's `score` (automatic switches), the user `turn` it happened at and
whether the target's preserved frame was `restored`. The frame's `last_switch` has no `ms`
(frames are deterministic); the `switches` log adds the time the switch took."""


class SwitchLog(TypedDict):
    """The `switches` channel: every switch of the thread, for monitoring.

    `count` and `ms_total` cover the whole thread; `transitions` keeps the last
    `SWITCH_LOG_SIZE` (100) records, with their `ms`. Read it with
    `llmctx.nodes.switch_stats`.
    """

    count: int
    ms_total: float
    transitions: list[SwitchRecord]


class Frame(TypedDict, total=False):
    """The active context: template, focus, budget report, window and provenance.

    `pruned` lists what the *last* operation removed from the window; earlier
    removals are in earlier versions (`llmctx history`, `versions.diff`). `pinned`
    holds the ids a user pinned; `template_pins` those the template's pin policy
    matched (kept incrementally, recomputed when the template changes).
    `summaries` are the active summaries, oldest first; `summarized` records how far
    they reach into the history (`count` messages, ending at `last_id`, worth
    `tokens`). `memories` are retrieved long-term memories. `handoff` lists the
    messages that left the context during this pipeline run (evicted or
    summarized), for the remember node to write to long-term memory. `last_used`
    maps recent message ids to the turn they were last relevant (the LRU strategy).
    `horizon` is how far back the cache tier may look (`floor` index, the `tokens`
    from there to the end, and their `limit`), kept incrementally. `oversized` lists
    `[id, tokens]` of the messages larger than the important tier; every version
    reports in `pruned` those it does not show.

    `thread_template` is the thread's own template: what runs when no run names one
    (set on the first turn, changed by explicit and automatic switches, not by a
    run's `ContextConfig.template`). `last_switch` records the latest switch (see
    `SwitchRecord`). `preserved_seq` is set only on frames held in `preserved`: the
    order they were set aside in, for LRU eviction; it is removed on restore.
    """

    template: str
    template_hash: str
    focus: str
    turn: int
    budget: int
    tiers: dict[str, TierReport]
    window: list[WindowItem]
    window_tokens: int
    history_tokens: int
    history_messages: int
    history_tail: str
    summaries: list[Summary]
    summarized: dict[str, Any]
    horizon: dict[str, int]
    oversized: list[list[Any]]
    memories: list[Memory]
    pruned: list[PrunedItem]
    handoff: list[PrunedItem]
    last_used: dict[str, int]
    pinned: list[str]
    template_pins: list[str]
    last_op: LastOp
    tokenizer: dict[str, Any]
    thread_template: str
    last_switch: SwitchRecord
    preserved_seq: int


def merge_preserved(
    left: dict[str, Frame] | None, right: dict[str, Frame] | None
) -> dict[str, Frame]:
    """Reducer for `preserved`: merge by template name; a `None` value drops a frame."""
    merged = dict(left or {})
    for name, frame in (right or {}).items():
        if frame is None:
            merged.pop(name, None)
        else:
            merged[name] = frame
    return merged


class ContextState(TypedDict):
    """The graph state every llmctx node reads and updates.

    `preserved` holds the frames of the thread's other templates, by name (at most
    `SwitchPolicy.max_preserved`), restored when the thread switches back.
    `remembered` is the remember node's progress mark (how much of `messages` and
    which summaries are in long-term memory); it is not part of the frame, so a
    memory write does not make a new context version. `plan` is the scheduler's
    record of the last tool-call plan (its DAG, critical path and timings;
    `llmctx.runtime.PlanRecord`). `switch` is a pending `SwitchRequest` (the next
    pipeline run reads it and sets it back to `None`); `switches` is the thread's
    `SwitchLog`.
    """

    messages: Annotated[list[AnyMessage], add_messages]
    context: NotRequired[Frame]
    preserved: NotRequired[Annotated[dict[str, Frame], merge_preserved]]
    remembered: NotRequired[dict[str, Any]]
    plan: NotRequired[dict[str, Any]]
    switch: NotRequired[SwitchRequest | None]
    switches: NotRequired[SwitchLog]


@dataclass(frozen=True)
class ContextConfig:
    """Run-scoped settings for the context nodes (LangGraph's Runtime context).

    Pass it per run with `graph.invoke(state, config, context=ContextConfig(...))`;
    anything left `None` falls back to the graph's defaults, then to `Settings`.

    `template` is a template name or a `Template` object for this run only (a switch
    when it differs from the thread's template; the next run without one switches
    back); `default_template` is the template a new thread starts with (what
    `build_context_graph(template=...)` sets), below the thread's own template;
    `switching` is a `SwitchPolicy` (or a dict of its fields) for automatic switching
    and the default strategy. `budget` caps the window's
    total tokens (system prompt, tool schemas and reply priming included); `tools`
    are the tool schemas the model will be sent, so that they are counted too;
    `settings` (a `Settings`) replaces the process-wide `Settings.load()`;
    `summarizer` is a LangChain chat model or an `llmctx.runtime.Summarizer` (unset:
    the configured LLM if any, else the extractive summarizer); `user_id` selects
    whose long-term memories are read and written (each user has their own
    namespace); `embedder` (LangChain `Embeddings` or a Chroma embedding function)
    replaces the configured one for dense retrieval.
    """

    template: Any = None
    budget: int | None = None
    model: str | None = None
    workspace: Path | None = None
    tools: tuple[Any, ...] = field(default_factory=tuple)
    settings: Any = None
    summarizer: Any = None
    user_id: str | None = None
    embedder: Any = None
    default_template: Any = None
    switching: Any = None  # a SwitchPolicy or a dict of its fields (see nodes.switch)

    def over(self, defaults: ContextConfig | None) -> ContextConfig:
        """This run's values, with anything unset taken from `defaults`."""
        if defaults is None:
            return self
        return ContextConfig(
            template=self.template if self.template is not None else defaults.template,
            budget=self.budget if self.budget is not None else defaults.budget,
            model=self.model or defaults.model,
            workspace=self.workspace or defaults.workspace,
            tools=self.tools or defaults.tools,
            settings=self.settings if self.settings is not None else defaults.settings,
            summarizer=self.summarizer if self.summarizer is not None else defaults.summarizer,
            user_id=self.user_id or defaults.user_id,
            embedder=self.embedder if self.embedder is not None else defaults.embedder,
            default_template=(
                self.default_template
                if self.default_template is not None
                else defaults.default_template
            ),
            switching=self.switching if self.switching is not None else defaults.switching,
        )

    @classmethod
    def coerce(cls, value: ContextConfig | dict[str, Any] | None) -> ContextConfig | None:
        """Accept the dataclass, a plain dict of its fields, or `None`; anything else
        (or an unknown field) is a `ConfigError`."""
        if value is None or isinstance(value, ContextConfig):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ConfigError(
                    f"unknown ContextConfig field(s) {sorted(unknown)}; "
                    f"expected {sorted(cls.__dataclass_fields__)}"
                )
            data = dict(value)
            if "tools" in data:
                data["tools"] = tuple(data["tools"])
            return cls(**data)
        raise ConfigError(
            f"the run context must be a ContextConfig or a dict of its fields, "
            f"got {type(value).__name__}"
        )


def window_messages(state: ContextState | dict[str, Any]) -> list[BaseMessage]:
    """Assemble the messages the model sees, from the frame's window.

    This is the one place where the window becomes a prompt. Without a frame (the
    pipeline has not run yet) it raises `KeyError`, rather than silently sending the
    raw history. The window keeps the history's order, except that each tool result
    follows its call's AI message directly (with that message's other results, in
    call order), as providers require; the items and tokens are the window's.
    """
    frame = state["context"]
    items = frame.get("window", [])
    wanted = {item["id"] for item in items if item["kind"] == "message"}
    by_id: dict[str | None, BaseMessage] = {}
    # The window is mostly the newest messages, so scan from the end and stop early.
    for message in reversed(state["messages"]):
        if len(by_id) == len(wanted):
            break
        if message.id in wanted:
            by_id[message.id] = message
    out: list[BaseMessage] = []
    for item in items:
        if item["kind"] == "message":
            message = by_id[item["id"]]
            if "content" in item:  # a placeholder or a truncated copy stands in for it
                message = message.model_copy(update={"content": item["content"]})
            out.append(message)
        else:  # the system prompt, summaries and memories reach the model as system text
            out.append(SystemMessage(content=item.get("content", ""), id=item["id"]))
    return results_after_calls(out)
