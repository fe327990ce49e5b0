"""Domain templates: the `Template` schema, packaged YAML templates and the registry.

A template bundles one domain's system prompt, budget split and context policies
(pruning, summarization, retrieval, switch triggers, pins). Packaged templates live in
`llmctx/templates/builtin/`; user templates in `<workspace>/templates/` override them
by name and may `extends:` any other.

Example:
    >>> from llmctx.templates import load_template
    >>> load_template("creative").pruning.dedupe
    False

This package imports nothing from llmctx except `llmctx.runtime.errors`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from llmctx.templates.registry import TemplateInfo, TemplateRegistry
from llmctx.templates.render import info_dict, template_detail, template_dict, template_table
from llmctx.templates.schema import (
    BudgetPolicy,
    PinPolicy,
    PruningPolicy,
    RetrievalPolicy,
    SummarizationPolicy,
    Template,
    TierSplit,
    Triggers,
)

__all__ = [
    "BudgetPolicy",
    "PinPolicy",
    "PruningPolicy",
    "RetrievalPolicy",
    "SummarizationPolicy",
    "Template",
    "TemplateInfo",
    "TemplateRegistry",
    "TierSplit",
    "Triggers",
    "default_registry",
    "info_dict",
    "load_template",
    "template_detail",
    "template_dict",
    "template_table",
]


@lru_cache(maxsize=16)
def _registry_for(user_dir: Path | None) -> TemplateRegistry:
    return TemplateRegistry(user_dir)


def default_registry(user_dir: Path | str | None = None) -> TemplateRegistry:
    """A shared registry per `user_dir` (its cache is shared by every caller)."""
    key = Path(user_dir).expanduser().absolute() if user_dir is not None else None
    return _registry_for(key)


def load_template(name: str, user_dir: Path | str | None = None) -> Template:
    """The resolved template `name`, via the shared registry for `user_dir`."""
    return default_registry(user_dir).get(name)
