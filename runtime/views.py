"""Rich renderables shared by the front doors (the CLI and the `llmctx chat` REPL).

Each function turns plain data (versions, memory hits, a frame) into one table that
fits the given width, so a version list looks the same in `llmctx history` and in
`/history` inside a chat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

__all__ = ["budget_line", "budget_table", "clip", "hits_table", "versions_table"]


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, with an ellipsis when it was longer."""
    return text if len(text) <= width else text[: width - 1] + "…"


def versions_table(versions: Sequence[Any], thread: str) -> Table:
    """A thread's versions (`llmctx.runtime.versions.Version`), newest first.

    Fits 80 columns with the full checkpoint id (what diff and rollback take): no
    borders, the time of day only (the date is in the title).
    """
    days = sorted({v.time[:10] for v in versions})
    span = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    # With tags, the time loses its seconds and columns sit one space apart, so a row
    # still fits 80 columns.
    tagged = any(v.tags for v in versions)
    table = Table(
        title=f"versions of thread '{thread}', newest first ({span}, UTC)",
        box=None,
        pad_edge=False,
        header_style="bold",
        collapse_padding=tagged,
    )
    clock = slice(11, 16) if tagged else slice(11, 19)
    table.add_column("turn", justify="right", no_wrap=True)
    table.add_column("op", no_wrap=True)
    table.add_column("window\ntokens", justify="right", no_wrap=True)
    table.add_column("history\ntokens", justify="right", no_wrap=True)
    table.add_column("time", no_wrap=True)
    table.add_column("checkpoint", no_wrap=True)
    if tagged:
        table.add_column("tags", overflow="fold")
    for v in versions:
        time_of_day = v.time[clock] if len(days) == 1 else f"{v.time[5:10]} {v.time[11:16]}"
        row = [
            str(v.turn),
            v.op,
            str(v.window_tokens),
            str(v.history_tokens),
            time_of_day,
            v.checkpoint_id,
        ]
        table.add_row(*row, *([", ".join(v.tags)] if tagged else []))
    return table


def hits_table(rows: Sequence[Mapping[str, Any]], title: str, caption: str, width: int) -> Table:
    """Memory search hits, one line each at any `width`: short columns are clipped and
    the memory's text gets the rest of the line."""
    headers = ["score", "kind", "when"]
    caps = [5, 12, 22]
    cells = [[f"{r['score']:.3f}", str(r["kind"] or ""), r["when"] or ""] for r in rows]
    if len({r["domain"] for r in rows}) > 1:  # hits from several domains: say which
        headers.append("domain")
        caps.append(16)
        for row, r in zip(cells, rows, strict=True):
            row.append(str(r["domain"] or ""))
    cells = [[clip(c, cap) for c, cap in zip(row, caps, strict=True)] for row in cells]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    room = max(20, width - sum(widths) - 2 * len(widths))  # 2 spaces between columns
    # Text, not str: memories and queries may hold [brackets] that rich reads as markup.
    table = Table(title=Text(title), caption=caption, box=None, pad_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, justify="right" if header == "score" else "left", no_wrap=True)
    table.add_column("text", no_wrap=True)
    for row, r in zip(cells, rows, strict=True):
        table.add_row(*map(Text, row), Text(clip(" ".join(r["text"].split()), room)))
    return table


def budget_line(frame: Mapping[str, Any]) -> str:
    """One line on a frame's budget: its template, window and history tokens."""
    return (
        f"template '{frame.get('template', '?')}': window {frame.get('window_tokens', 0)} of "
        f"{frame.get('budget', 0)} tokens (history {frame.get('history_tokens', 0)} tokens)"
    )


def budget_table(frame: Mapping[str, Any]) -> Table:
    """How a frame spent its budget, tier by tier (limit, available, used, items)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for header in ("tier", "limit", "available", "used", "items"):
        table.add_column(header, justify="left" if header == "tier" else "right", no_wrap=True)
    for name, report in frame.get("tiers", {}).items():
        table.add_row(
            name,
            str(report.get("limit", "")),
            str(report.get("available", "")),
            str(report.get("used", "")),
            str(report.get("items", "")),
        )
    return table
