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

__all__ = ["NodeDeps", "resolve_deps"]


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


def resolve_deps(context: ContextConfig | None, settings: Settings | None = None) -> NodeDeps:
    """Merge the run's `ContextConfig` over the settings and load the template.

    The budget is `context.budget` when given, otherwise the template's (or the
    settings') context window minus its output reserve.
    """
    ctx = context or ContextConfig()
    settings = settings or ctx.settings or _default_settings()
    workspace = Path(ctx.workspace) if ctx.workspace else settings.workspace
    template = ctx.template if ctx.template is not None else settings.default_template
    if isinstance(template, str):
        template = _registry(workspace.resolve() / "templates").get(template)
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
