"""The `llmctx` command line.

Every command reads `Settings` (flags > `LLMCTX_*` env > `.env` >
`.llm/config/settings.toml` > defaults). A user error (any `LlmctxError`) prints one
line on stderr and exits with code 2, with no traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmctx.runtime.errors import LlmctxError, ThreadNotFoundError
from llmctx.runtime.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="llmctx",
    help="Keep an LLM agent's context inside its token budget, exactly and reversibly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show the effective settings.", no_args_is_help=True)
templates_app = typer.Typer(help="List, show and validate domain templates.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(templates_app, name="templates")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

WORKSPACE_OPT = typer.Option(
    None, "--workspace", "-w", help="The .llm workspace folder.", envvar=None
)
JSON_OPT = typer.Option(False, "--json", help="Print one JSON object instead of tables.")


def _user_errors(fn: F) -> F:
    """Turn an `LlmctxError` into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LlmctxError as exc:
            message = " ".join(str(exc).split())
            err.print(f"error: {message}", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _settings(workspace: Path | None, **overrides: Any) -> Settings:
    return Settings.load(workspace=workspace, **overrides)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- workspace


@app.command()
@_user_errors
def init(workspace: Path | None = WORKSPACE_OPT) -> None:
    """Create the .llm/ workspace (folders with mode 0700, the file index)."""
    from llmctx.runtime.workspace import Workspace

    ws = Workspace.from_settings(_settings(workspace))
    ws.ensure()
    out.print(f"workspace ready at {ws.root}", soft_wrap=True)  # keep the path whole


@app.command()
@_user_errors
def status(workspace: Path | None = WORKSPACE_OPT, as_json: bool = JSON_OPT) -> None:
    """Report the workspace's health: size per folder, files, cleanup candidates."""
    from llmctx.runtime.workspace import Workspace, health_table

    ws = Workspace.from_settings(_settings(workspace))
    report = ws.health()
    if as_json:
        _print_json(report.to_dict())
    else:
        out.print(health_table(report))


@app.command()
@_user_errors
def gc(
    workspace: Path | None = WORKSPACE_OPT,
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would go; delete nothing."),
    as_json: bool = JSON_OPT,
) -> None:
    """Apply the lifecycle rules: expire cache entries and old, unused files."""
    from llmctx.runtime.workspace import Workspace, gc_table

    ws = Workspace.from_settings(_settings(workspace))
    report = ws.gc(dry_run=dry_run)
    if as_json:
        _print_json(report.to_dict())
    elif not report.candidates and not report.errors:
        out.print(f"gc: nothing to delete in {ws.root}", soft_wrap=True)
    else:
        out.print(gc_table(report))


# --------------------------------------------------------------------------- config


@config_app.command("show")
@_user_errors
def config_show(workspace: Path | None = WORKSPACE_OPT, as_json: bool = JSON_OPT) -> None:
    """Print the effective settings and where each value came from (secrets masked)."""
    settings = _settings(workspace)
    sources = Settings.sources(workspace=workspace)
    flat = _flatten(settings.redacted())
    if as_json:
        _print_json({k: {"value": v, "source": sources.get(k, "default")} for k, v in flat.items()})
        return
    table = Table(title="llmctx settings")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("source")
    for key, value in flat.items():
        table.add_row(key, json.dumps(value, default=str), sources.get(key, "default"))
    out.print(table)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --------------------------------------------------------------------------- templates


def _registry(workspace: Path | None) -> Any:
    from llmctx.templates import TemplateRegistry

    settings = _settings(workspace)
    return TemplateRegistry(user_dir=settings.workspace / "templates")


@templates_app.command("list")
@_user_errors
def templates_list(workspace: Path | None = WORKSPACE_OPT, as_json: bool = JSON_OPT) -> None:
    """List packaged and user templates (user ones override packaged ones)."""
    from llmctx.templates import info_dict, template_table

    infos = _registry(workspace).list()
    if as_json:
        _print_json([info_dict(info) for info in infos])
    else:
        out.print(template_table(infos))


@templates_app.command("show")
@_user_errors
def templates_show(
    name: str, workspace: Path | None = WORKSPACE_OPT, as_json: bool = JSON_OPT
) -> None:
    """Show a template fully resolved (inheritance applied)."""
    from llmctx.templates import template_detail, template_dict

    registry = _registry(workspace)
    template = registry.get(name)
    if as_json:
        _print_json(template_dict(template))
    elif out.is_terminal:
        out.print(template_detail(template, registry.info(name)))
    else:  # piped: plain YAML, ready to copy into a user template
        sys.stdout.write(template.to_yaml())


@templates_app.command("validate")
@_user_errors
def templates_validate(
    path: Path, workspace: Path | None = WORKSPACE_OPT, as_json: bool = JSON_OPT
) -> None:
    """Validate a template file; errors point to file, line and field."""
    template = _registry(workspace).validate(path)
    if as_json:
        _print_json({"valid": True, "name": template.name, "path": str(path)})
    else:
        out.print(f"{path}: valid template '{template.name}'")


# --------------------------------------------------------------------------- replay


@app.command()
@_user_errors
def replay(
    transcript: Path = typer.Argument(..., help="A JSONL chat or a LoCoMo JSON file."),
    conversation: int | None = typer.Option(
        None, "--conversation", "-c", help="Which conversation of a multi-conversation file."
    ),
    thread: str | None = typer.Option(None, "--thread", "-t", help="Thread id to replay into."),
    template: str | None = typer.Option(None, "--template", help="Domain template name."),
    budget: int | None = typer.Option(
        None, "--budget", "-b", min=1, help="Window budget in tokens (all included)."
    ),
    workspace: Path | None = WORKSPACE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Feed a conversation turn by turn through the context graph; every turn is a version."""
    _run_replay(transcript, conversation, thread, template, budget, workspace, as_json)


@app.command()
@_user_errors
def demo(
    budget: int = typer.Option(2_000, "--budget", "-b", min=1, help="Window budget in tokens."),
    thread: str = typer.Option("demo", "--thread", "-t"),
    workspace: Path | None = WORKSPACE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Replay the sample conversation shipped with llmctx (no file needed)."""
    from llmctx.runtime.transcripts import demo_transcript_path

    _run_replay(demo_transcript_path(), None, thread, None, budget, workspace, as_json)


def _run_replay(
    path: Path,
    conversation: int | None,
    thread: str | None,
    template: str | None,
    budget: int | None,
    workspace: Path | None,
    as_json: bool,
) -> None:
    from llmctx.graphs import build_context_graph
    from llmctx.graphs.replay import default_thread_id, replay
    from llmctx.runtime.savers import open_saver
    from llmctx.runtime.transcripts import load_transcript
    from llmctx.runtime.workspace import Workspace

    settings = _settings(workspace)
    transcript = load_transcript(path, conversation=conversation)
    thread_id = thread or default_thread_id(Path(path), conversation)
    ws = Workspace.from_settings(settings)
    ws.ensure()
    with open_saver(ws) as saver:
        graph = build_context_graph(
            template=template or settings.default_template,
            checkpointer=saver,
            budget=budget,
            model=settings.model,
            workspace=ws.root,
            settings=settings,
        )
        show_progress = not as_json and out.is_terminal
        if show_progress:
            with Progress(
                TextColumn("[bold]replaying {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=out,
                transient=True,
            ) as progress:
                task = progress.add_task(thread_id, total=None)

                def _tick(record: Any, done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                report = replay(transcript, graph, thread_id=thread_id, on_turn=_tick)
        else:
            report = replay(transcript, graph, thread_id=thread_id)
    data = report.to_dict()
    data["checkpoints"] = str(ws.path("versions"))
    if as_json:
        _print_json(data)
        return
    _print_replay(report, data)


# The op every turn runs; the table names an op only when it is another one.
_USUAL_OP = "assemble"


def _print_replay(report: Any, data: dict[str, Any]) -> None:
    # One line per turn at 80 columns: short numeric columns, and `changed` never wraps.
    table = Table(title=f"replay into thread '{report.thread_id}'", caption=report.source)
    table.add_column("turn", justify="right")
    table.add_column("added\nmsgs", justify="right")
    table.add_column("history\nmsgs", justify="right")
    table.add_column("history\ntokens", justify="right")
    table.add_column("window\nmsgs", justify="right")
    table.add_column("window\ntokens", justify="right")
    table.add_column("window\nchange", no_wrap=True)
    for t in report.turns:
        changed = f"+{t.entered} -{t.left}" if (t.entered or t.left) else "="
        if t.op and t.op != _USUAL_OP:
            changed = f"{changed} {t.op}"
        table.add_row(
            str(t.turn),
            str(t.added),
            str(t.history_messages),
            str(t.history_tokens),
            str(t.window_messages),
            str(t.window_tokens),
            changed,
        )
    if not report.turns:
        out.print(
            f"Nothing to replay: all {report.skipped_messages} message(s) of {report.source} "
            f"are already in thread '{report.thread_id}'."
        )
        out.print(f"Versions in {data['checkpoints']} (llmctx history {report.thread_id}).")
        return
    out.print(table)
    out.print(
        f"{len(report.turns)} turn(s) replayed, {report.skipped_messages} message(s) already "
        f"in the thread; history {data['history_tokens']} tokens; largest window "
        f"{report.max_window_tokens} of {report.budget} tokens; template {report.template}."
    )
    out.print(f"{_tokens_note(report.tokenizer)}; {report.elapsed_s:.1f}s.")
    out.print(f"Versions in {data['checkpoints']} (llmctx history {report.thread_id}).")


def _tokens_note(tok: dict[str, Any]) -> str:
    """One short sentence on how tokens were counted, and why if not with the model's
    own encoding (the full fallback reason stays in `--json`)."""
    encoding = tok.get("encoding", "?")
    wanted = tok.get("model_encoding")
    model = tok.get("model", "the model")
    if not tok.get("exact", False):
        why = _short_reason(tok.get("fallback_reason"))
        return f"Token counts are APPROXIMATE: no tiktoken encoding loaded{why and f' ({why})'}"
    if tok.get("exact_for_model", False):
        return f"Tokens counted exactly with {encoding}, {model}'s own encoding"
    if not wanted:
        return f"Tokens counted with {encoding} ({model} is unknown to tiktoken)"
    why = _short_reason(tok.get("fallback_reason"))
    return f"Tokens counted with {encoding}, not {model}'s own {wanted}{why and f' ({why})'}"


def _short_reason(reason: str | None) -> str:
    """The gist of a fallback reason: `cannot load o200k_base: ConnectionError: HTTPS...`
    becomes `cannot load o200k_base: ConnectionError`."""
    if not reason:
        return ""
    short = ": ".join(reason.split("; ")[0].split(": ")[:2])
    return short if len(short) <= 80 else short[:77] + "..."


# --------------------------------------------------------------------------- history


@app.command()
@_user_errors
def history(
    thread: str,
    limit: int | None = typer.Option(None, "--limit", "-n", min=1),
    workspace: Path | None = WORKSPACE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """List a thread's context versions, newest first."""
    from llmctx.runtime.savers import open_saver
    from llmctx.runtime.versions import history as read_history
    from llmctx.runtime.workspace import Workspace

    ws = Workspace.from_settings(_settings(workspace))
    with open_saver(ws) as saver:
        versions = read_history(saver, thread, limit=limit)
    if not versions:
        raise ThreadNotFoundError(
            f"thread '{thread}' has no versions in {ws.root}; "
            "replay a transcript into it first (llmctx replay FILE --thread ...)"
        )
    if as_json:
        _print_json({"thread_id": thread, "versions": [v.to_dict() for v in versions]})
        return
    # Fits 80 columns with the full checkpoint id (what diff/rollback will take): no
    # borders, the time of day only (the date is in the title), the step in --json only.
    days = sorted({v.time[:10] for v in versions})
    span = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    table = Table(
        title=f"versions of thread '{thread}', newest first ({span}, UTC)",
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    table.add_column("turn", justify="right")
    table.add_column("op")
    table.add_column("window\ntokens", justify="right")
    table.add_column("history\ntokens", justify="right")
    table.add_column("time")
    table.add_column("checkpoint", no_wrap=True)
    for v in versions:
        time_of_day = v.time[11:19] if len(days) == 1 else f"{v.time[5:10]} {v.time[11:16]}"
        table.add_row(
            str(v.turn),
            v.op,
            str(v.window_tokens),
            str(v.history_tokens),
            time_of_day,
            v.checkpoint_id,
        )
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="llmctx")
