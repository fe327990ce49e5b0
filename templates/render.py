"""Data and rich renderables for the `llmctx templates list|show|validate` commands.

Everything here is pure: functions take registry results and return data or rich
objects; the CLI decides where to print them.

Example:
    >>> from rich.console import Console
    >>> from llmctx.templates import TemplateRegistry
    >>> Console().print(template_table(TemplateRegistry().list()))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmctx.templates.registry import TemplateInfo
from llmctx.templates.schema import Template

if TYPE_CHECKING:  # rich is imported on first render: it costs ~40 ms at import time
    from rich.panel import Panel
    from rich.table import Table

__all__ = ["info_dict", "template_detail", "template_dict", "template_table"]


def info_dict(info: TemplateInfo) -> dict[str, Any]:
    """A JSON-safe dict of one `TemplateInfo` (for `templates list --json`)."""
    return {
        "name": info.name,
        "description": info.description,
        "source": info.source,
        "path": info.path,
        "extends": info.extends,
        "overrides": info.overrides,
        "fingerprint": info.fingerprint,
        "error": info.error,
    }


def template_dict(template: Template) -> dict[str, Any]:
    """The resolved template as JSON-safe data, plus its `fingerprint`."""
    return {**template.model_dump(mode="json"), "fingerprint": template.fingerprint}


def template_table(infos: list[TemplateInfo]) -> Table:
    """A table of templates: name, source, extends, description (or the error)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Templates", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("source")
    table.add_column("extends")
    table.add_column("description", overflow="fold")
    for info in infos:
        source = f"{info.source} (overrides)" if info.overrides else info.source
        description = (
            Text(f"error: {info.error.splitlines()[0]}", style="red")
            if info.error
            else Text(info.description)
        )
        table.add_row(info.name, source, info.extends or "", description)
    return table


def template_detail(template: Template, info: TemplateInfo | None = None) -> Panel:
    """A panel showing the resolved template as YAML, titled with name and fingerprint."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.syntax import Syntax
    from rich.text import Text

    header = Text()
    if info is not None:
        header.append(f"{info.source}: {info.path}\n", style="dim")
        if info.extends:
            header.append(f"extends: {info.extends}\n", style="dim")
    body = Syntax(template.to_yaml(), "yaml", word_wrap=True)
    return Panel(
        Group(header, body) if header.plain else body,
        title=f"{template.name} [{template.fingerprint}]",
        title_align="left",
    )
