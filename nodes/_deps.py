"""Resolve what a context node needs (template, token counter, budget) from its Runtime.

Nodes stay plain functions of `(state, runtime)`: everything run-specific arrives in
`runtime.context` (a `ContextConfig`), and the expensive objects behind it (settings,
template registries, tokenizers) are built once per process and shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmctx.nodes.state import ContextConfig
from llmctx.runtime.errors import ConfigError
from llmctx.runtime.models import chat_model
from llmctx.runtime.settings import Settings
from llmctx.runtime.summarizer import ExtractiveSummarizer, Summarizer, make_summarizer
from llmctx.runtime.tokens import TokenCounter
from llmctx.templates import Template, TemplateRegistry

__all__ = ["NodeDeps", "resolve_deps", "run_settings", "template_for", "template_registry"]


@dataclass(frozen=True)
class NodeDeps:
    """Everything a context node needs for one run, resolved and typed."""

    template: Template
    counter: TokenCounter
    budget: int
    tools: tuple[Any, ...]
    tools_tokens: int
    settings: Settings
    summarizer: Summarizer
    embedder: Any = None


@lru_cache(maxsize=1)
def _default_settings() -> Settings:
    """Settings for graphs built without `settings=`: loaded once per process."""
    return Settings.load()


@lru_cache(maxsize=16)
def _registry(user_dir: Path) -> TemplateRegistry:
    return TemplateRegistry(user_dir=user_dir)


@lru_cache(maxsize=16)
def _counter(model: str, encoding: str | None) -> TokenCounter:
    return TokenCounter(model, encoding=encoding)


@lru_cache(maxsize=16)
def _extractive(counter: TokenCounter) -> Summarizer:
    return ExtractiveSummarizer(counter)


# Tool schemas are often unhashable dicts; a run reuses one ContextConfig, so key the
# count by the tuple's identity and keep the tuple alive alongside it.
_TOOLS_CACHE: dict[tuple[int, int], tuple[tuple[Any, ...], int]] = {}


def _tools_tokens(counter: TokenCounter, tools: tuple[Any, ...]) -> int:
    if not tools:
        return 0
    key = (id(counter), id(tools))
    hit = _TOOLS_CACHE.get(key)
    if hit is not None and hit[0] is tools:
        return hit[1]
    if len(_TOOLS_CACHE) > 256:
        _TOOLS_CACHE.clear()
    count = counter.count_tools(list(tools))
    _TOOLS_CACHE[key] = (tools, count)
    return count


def run_settings(context: ContextConfig | None, settings: Settings | None = None) -> Settings:
    """The settings a run uses: `settings`, else the run's, else `Settings.load()` (once)."""
    return settings or (context.settings if context is not None else None) or _default_settings()


def template_registry(
    context: ContextConfig | None, settings: Settings | None = None
) -> TemplateRegistry:
    """The registry of the run's workspace (`<workspace>/templates` over the packaged
    templates), shared per process."""
    settings = run_settings(context, settings)
    workspace = Path(context.workspace) if context is not None and context.workspace else None
    return _registry((workspace or settings.workspace).resolve() / "templates")


def template_for(
    name: str, context: ContextConfig | None, settings: Settings | None = None
) -> Template:
    """The template `name`: the run's own `Template` object of that name (its `template`
    or `default_template`) if it has one, else the registry's."""
    if context is not None:
        for candidate in (context.template, context.default_template):
            if isinstance(candidate, Template) and candidate.name == name:
                return candidate
    return template_registry(context, settings).get(name)


def resolve_deps(
    context: ContextConfig | None,
    settings: Settings | None = None,
    *,
    template: Template | str | None = None,
) -> NodeDeps:
    """Merge the run's `ContextConfig` over the settings and load the template.

    The template is `template` when given (the switch stage passes the thread's
    active one), else the run's `template`, its `default_template`, then
    `Settings.default_template`. The budget is `context.budget` when given,
    otherwise the template's (or the settings') context window minus its output
    reserve.
    """
    ctx = context or ContextConfig()
    settings = run_settings(ctx, settings)
    if template is None:
        template = ctx.template if ctx.template is not None else ctx.default_template
    if template is None:
        template = settings.default_template
    if isinstance(template, str):
        template = template_for(template, ctx, settings)
    counter = _counter(ctx.model or settings.model, settings.tokenizer)
    if ctx.budget is not None:
        budget = ctx.budget
    else:
        window = template.budget.context_window or settings.context_window
        reserve = template.budget.output_reserve
        reserve = settings.output_reserve if reserve is None else reserve
        budget = window - reserve
    if budget <= 0:
        raise ConfigError(
            f"the window budget must be positive (got {budget}); raise context_window "
            "or lower output_reserve, or pass a larger --budget"
        )
    tools = tuple(ctx.tools)
    if ctx.summarizer is not None:
        summarizer = make_summarizer(ctx.summarizer, counter)
    else:
        model = chat_model(settings)
        summarizer = make_summarizer(model, counter) if model else _extractive(counter)
    return NodeDeps(
        template=template,
        counter=counter,
        budget=budget,
        tools=tools,
        tools_tokens=_tools_tokens(counter, tools),
        settings=settings,
        summarizer=summarizer,
        embedder=ctx.embedder,
    )
