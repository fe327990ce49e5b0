"""The `Template` schema: one domain's prompt, budget split and context policies.

A template is plain data, validated once at load time and shared read-only afterwards
(every model is frozen and lists become tuples). Every field has a default except
`name`, so a small template is short:

    >>> t = Template(name="notes", system_prompt="You take meeting notes.")
    >>> t.budget.tiers.allocate(1000)
    {'critical': 200, 'important': 400, 'supporting': 300, 'cache': 100}

**Always pinned.** Whatever `pinned` says, the template's system prompt and the latest
user message are pinned: they are in every window. `pinned` adds more (message ids,
whole roles, or messages whose text matches a pattern).

`Template.fingerprint` is a stable hash of the resolved template (after `extends:`);
record it with a window to know exactly which template version built it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "NAME_PATTERN",
    "BudgetPolicy",
    "PinPolicy",
    "PruningPolicy",
    "RetrievalPolicy",
    "SummarizationPolicy",
    "Template",
    "TierSplit",
    "Triggers",
]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""Template names: lowercase letters, digits, `_` and `-`; they are also file stems."""

TIER_TOLERANCE = 1e-6

DEFAULT_SUMMARY_PROMPT = """\
Summarize the conversation below so that it can replace the original messages.
Preserve: the user's goals and constraints, decisions made and their reasons, open
questions, and any names, numbers, dates or identifiers that later turns may need.
Drop greetings, repetition and abandoned ideas. Write in the third person, as a
compact list of facts, in the order they happened."""


class _Policy(BaseModel):
    """Base of every template model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Copy, dropping memoised values (fingerprint, compiled patterns) of the original.

        Pydantic copies `__dict__` whole, so without this a copy made with `update=`
        would keep the original's stale `fingerprint`.
        """
        copy = super().model_copy(update=update, deep=deep)
        for name in _cached_names(type(self)):
            copy.__dict__.pop(name, None)
        return copy


def _cached_names(cls: type) -> tuple[str, ...]:
    return tuple(
        name
        for klass in cls.__mro__
        for name, attr in vars(klass).items()
        if isinstance(attr, cached_property)
    )


class TierSplit(_Policy):
    """How the token budget is divided between the four tiers (fractions summing to 1).

    - `critical`: the system prompt, tool schemas, pinned items and the latest user turn;
    - `important`: the recent conversation, kept verbatim;
    - `supporting`: the running summary and retrieved memories;
    - `cache`: kept tool outputs and slack, which also absorbs rounding.
    """

    critical: float = Field(0.20, ge=0.0, le=1.0)
    important: float = Field(0.40, ge=0.0, le=1.0)
    supporting: float = Field(0.30, ge=0.0, le=1.0)
    cache: float = Field(0.10, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> TierSplit:
        total = self.critical + self.important + self.supporting + self.cache
        if abs(total - 1.0) > TIER_TOLERANCE:
            raise ValueError(
                f"tier fractions must sum to 1.0, got {total:.6g} "
                f"(critical={self.critical}, important={self.important}, "
                f"supporting={self.supporting}, cache={self.cache})"
            )
        return self

    def allocate(self, total: int) -> dict[str, int]:
        """Split `total` tokens between the tiers exactly (largest remainder method).

        The parts always sum to `total`, and the same inputs give the same parts.
        """
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        shares = self.model_dump()
        floors = {tier: math.floor(total * frac) for tier, frac in shares.items()}
        left = total - sum(floors.values())
        # Ties keep declaration order, so the split is deterministic.
        order = sorted(shares, key=lambda t: -(total * shares[t] - floors[t]))
        for tier in order[:left]:
            floors[tier] += 1
        return floors


class BudgetPolicy(_Policy):
    """Window size overrides and the tier split.

    `context_window` and `output_reserve` left as `None` mean "use the settings value"
    (`Settings.context_window`, `Settings.output_reserve`).
    """

    context_window: int | None = Field(None, gt=0)
    output_reserve: int | None = Field(None, ge=0)
    tiers: TierSplit = Field(default_factory=TierSplit)

    @model_validator(mode="after")
    def _reserve_fits(self) -> BudgetPolicy:
        cw, reserve = self.context_window, self.output_reserve
        if cw is not None and reserve is not None and reserve >= cw:
            raise ValueError(
                f"output_reserve ({reserve}) must be smaller than context_window ({cw})"
            )
        return self

    def budget_tokens(self, context_window: int, output_reserve: int) -> int:
        """Tokens the window may use, with the template's values over the given defaults."""
        cw = self.context_window if self.context_window is not None else context_window
        reserve = self.output_reserve if self.output_reserve is not None else output_reserve
        if reserve >= cw:
            raise ValueError(
                f"output_reserve ({reserve}) must be smaller than context_window ({cw})"
            )
        return cw - reserve


class PruningPolicy(_Policy):
    """How messages leave the window when it is over budget.

    - `strategy`: `recency` drops the oldest first, `lru` drops the least recently
      referenced first, `priority` drops the lowest-tier first (then oldest);
    - `keep_tool_outputs`: the K most recent tool results kept verbatim; older ones
      may be pruned (always together with their tool call, never half a pair);
    - `max_hops`: messages within this many reply/tool-call links of a pinned message
      are protected along with it;
    - `dedupe`: drop exact repeats of a message's content, keeping the latest.
    """

    strategy: Literal["recency", "lru", "priority"] = "recency"
    keep_tool_outputs: int = Field(3, ge=0, le=1000)
    max_hops: int = Field(3, ge=0, le=50)
    dedupe: bool = True


class SummarizationPolicy(_Policy):
    """When and how older messages are folded into a running summary.

    Summarization starts once the window holds `trigger_tokens` (or, if set,
    `trigger_fraction` of the budget, whichever is lower) and shrinks it toward
    `target_tokens`, in chunks of `chunk_size` messages or tokens (`chunk_unit`).
    `prompt` is the domain's instruction to the summarizer: what must survive.
    """

    enabled: bool = True
    trigger_tokens: int = Field(50_000, gt=0)
    target_tokens: int = Field(30_000, gt=0)
    trigger_fraction: float | None = Field(None, gt=0.0, le=1.0)
    chunk_size: int = Field(20, gt=0)
    chunk_unit: Literal["messages", "tokens"] = "messages"
    prompt: str = Field(DEFAULT_SUMMARY_PROMPT, min_length=1)

    @model_validator(mode="after")
    def _target_below_trigger(self) -> SummarizationPolicy:
        if self.target_tokens >= self.trigger_tokens:
            raise ValueError(
                f"target_tokens ({self.target_tokens}) must be smaller than "
                f"trigger_tokens ({self.trigger_tokens})"
            )
        return self

    def thresholds(self, budget_tokens: int) -> tuple[int, int]:
        """`(trigger, target)` in tokens for a window of `budget_tokens`.

        With `trigger_fraction`, the trigger is the lower of the two limits and the
        target is scaled by the same ratio, so target < trigger always holds.
        """
        trigger = self.trigger_tokens
        if self.trigger_fraction is not None:
            trigger = min(trigger, max(1, math.floor(budget_tokens * self.trigger_fraction)))
        target = self.target_tokens * trigger // self.trigger_tokens
        return trigger, min(target, trigger - 1)


class RetrievalPolicy(_Policy):
    """Long-term memory retrieval for this domain.

    `namespaces` empty means the template's own namespace (its name); the loader
    fills that in, so the resolved template always lists what it searches.
    """

    enabled: bool = True
    k: int = Field(4, ge=1, le=100)
    min_score: float = Field(0.2, ge=0.0, le=1.0)
    namespaces: tuple[str, ...] = ()

    @field_validator("namespaces")
    @classmethod
    def _clean_namespaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique_nonempty(value, "namespace")


class Triggers(_Policy):
    """What makes the switch node move to this template.

    `keywords` are matched case-insensitively (stored lowercase); `examples` are
    utterances typical of the domain, compared by similarity; the switch happens when
    the score reaches `threshold` (0..1).
    """

    keywords: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    threshold: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("keywords")
    @classmethod
    def _clean_keywords(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique_nonempty(tuple(k.lower() for k in value), "keyword")

    @field_validator("examples")
    @classmethod
    def _clean_examples(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique_nonempty(value, "example")


class PinPolicy(_Policy):
    """Messages pinned in addition to the system prompt and latest user message.

    - `ids`: message ids to pin;
    - `roles`: pin every message of these types (`system`, `human`, `ai`, `tool`);
    - `patterns`: regular expressions; a message whose text matches one is pinned.

    Pinned items count against the `critical` tier, so pin sparingly.
    """

    ids: tuple[str, ...] = ()
    roles: tuple[Literal["system", "human", "ai", "tool"], ...] = ()
    patterns: tuple[str, ...] = ()

    @field_validator("ids")
    @classmethod
    def _clean_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique_nonempty(value, "id")

    @field_validator("patterns")
    @classmethod
    def _compile_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return _unique_nonempty(value, "pattern")

    @cached_property
    def compiled(self) -> tuple[re.Pattern[str], ...]:
        """The patterns, compiled once."""
        return tuple(re.compile(p) for p in self.patterns)


class Template(_Policy):
    """A resolved domain template (inheritance already applied).

    `tools` lists the tool names this domain may call and advertises to the model;
    `None` (the default) means every registered tool, `[]` means none.
    """

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    system_prompt: str = Field("You are a helpful assistant.", min_length=1)
    budget: BudgetPolicy = Field(default_factory=BudgetPolicy)
    pruning: PruningPolicy = Field(default_factory=PruningPolicy)
    summarization: SummarizationPolicy = Field(default_factory=SummarizationPolicy)
    retrieval: RetrievalPolicy = Field(default_factory=RetrievalPolicy)
    tools: tuple[str, ...] | None = None
    triggers: Triggers = Field(default_factory=Triggers)
    pinned: PinPolicy = Field(default_factory=PinPolicy)

    @field_validator("tools")
    @classmethod
    def _clean_tools(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else _unique_nonempty(value, "tool name")

    @model_validator(mode="after")
    def _default_namespace(self) -> Template:
        if not self.retrieval.namespaces:
            retrieval = self.retrieval.model_copy(update={"namespaces": (self.name,)})
            object.__setattr__(self, "retrieval", retrieval)  # still building: frozen later
        return self

    @cached_property
    def fingerprint(self) -> str:
        """A stable 16-hex-digit hash of every resolved field.

        Equal templates have equal fingerprints across processes and platforms; any
        change to a field (including a prompt's wording) changes it.
        """
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def to_yaml(self) -> str:
        """The resolved template as YAML, in field order (what `templates show` prints)."""
        return yaml.dump(
            self.model_dump(mode="json"),
            Dumper=_BlockDumper,
            sort_keys=False,
            allow_unicode=True,
            width=88,
        )


class _BlockDumper(yaml.SafeDumper):
    """Dumps multi-line strings (prompts) as `|` blocks, the way they are written."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def _unique_nonempty(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Reject empty strings and duplicates, keeping order (duplicates are likely typos)."""
    seen: set[str] = set()
    for value in values:
        if not value:
            raise ValueError(f"empty {what}")
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)
    return values
