"""The `llmctx` command line.

Every command reads `Settings` (flags > `LLMCTX_*` env > `.env` >
`.llm/config/settings.toml` > defaults). A user error (any `LlmctxError`) prints one
line on stderr and exits with code 2, with no traceback.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmctx.runtime.errors import ConfigError, LlmctxError, ThreadNotFoundError
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


# --------------------------------------------------------------------------- versions

TARGET_OPT = typer.Option(
    None,
    "--target",
    help="A postgresql:// URL to read instead of the workspace's embedded saver.",
)


@contextmanager
def _versions_saver(workspace: Path | None, target: str | None) -> Iterator[Any]:
    """The saver holding the versions: `--target` if given, else the workspace's."""
    from llmctx.runtime.savers import open_saver
    from llmctx.runtime.workspace import Workspace

    if target:
        with open_saver(target) as saver:
            yield saver
        return
    ws = Workspace.from_settings(_settings(workspace))
    with open_saver(ws) as saver:
        yield saver


def _context_graph(saver: Any, workspace: Path | None) -> Any:
    """The context graph over `saver`, for rollback and branch (`update_state`)."""
    from llmctx.graphs import build_context_graph

    return build_context_graph(checkpointer=saver, settings=_settings(workspace))


def _where(workspace: Path | None, target: str | None) -> str:
    if target:
        return "the --target database"
    return str(_settings(workspace).workspace)


@app.command()
@_user_errors
def history(
    thread: str,
    limit: int | None = typer.Option(None, "--limit", "-n", min=1),
    ops: str | None = typer.Option(
        None, "--ops", help="Only these operations, comma-separated (e.g. summarize,rollback)."
    ),
    before: str | None = typer.Option(
        None, "--before", help="Only versions older than this one (id, prefix, tag, head~N)."
    ),
    workspace: Path | None = WORKSPACE_OPT,
    target: str | None = TARGET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """List a thread's context versions, newest first."""
    from llmctx.runtime.versions import history as read_history

    wanted = [op.strip() for op in ops.split(",") if op.strip()] if ops else None
    with _versions_saver(workspace, target) as saver:
        versions = read_history(saver, thread, limit=limit, ops=wanted, before=before)
        exists = bool(versions) or saver.get_tuple(_thread_config(thread)) is not None
    if not exists:
        raise ThreadNotFoundError(
            f"thread '{thread}' has no versions in {_where(workspace, target)}; "
            "replay a transcript into it first (llmctx replay FILE --thread ...)"
        )
    if as_json:
        _print_json({"thread_id": thread, "versions": [v.to_dict() for v in versions]})
        return
    if not versions:
        out.print(f"thread '{thread}' has no versions matching the filters")
        return
    # Fits 80 columns with the full checkpoint id (what diff/rollback take): no
    # borders, the time of day only (the date is in the title), the step in --json only.
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
    out.print(table)


def _thread_config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}


@app.command()
@_user_errors
def show(
    thread: str,
    version: str = typer.Argument(..., help="Checkpoint id, unique prefix, tag or head~N."),
    workspace: Path | None = WORKSPACE_OPT,
    target: str | None = TARGET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Show one version: its frame and the window the model saw."""
    from llmctx.runtime.versions import get

    with _versions_saver(workspace, target) as saver:
        state = get(saver, thread, version)
    if as_json:
        _print_json(state.to_dict())
        return
    v, frame = state.version, state.frame
    tags = f" [{', '.join(v.tags)}]" if v.tags else ""
    out.print(f"[bold]thread '{thread}'[/bold] version {v.checkpoint_id}{tags}", soft_wrap=True)
    out.print(
        f"turn {v.turn}, {v.op}: {v.reason}; template {v.template}; window "
        f"{v.window_tokens} of {frame.get('budget')} tokens; history {v.history_tokens} "
        f"tokens in {v.history_messages} messages; {v.time}",
        markup=False,
    )
    table = Table(title="window", box=None, pad_edge=False, header_style="bold")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("tier", no_wrap=True)
    table.add_column("text", no_wrap=True)
    items = frame.get("window", [])
    # Clip the text to what is left of the line, so the other columns keep their width.
    fixed = max((len(i["id"]) for i in items), default=2) + len(str(len(items))) + 7 + 6 + 9
    room = max(20, out.width - fixed - 10)
    for n, (item, message) in enumerate(zip(items, state.messages, strict=True)):
        text = " ".join(str(message.text or message.content).split())
        text = text if len(text) <= room else text[: room - 1] + "…"
        table.add_row(str(n), item["kind"], item["id"], str(item["tokens"]), item["tier"], text)
    out.print(table)
    for summary in frame.get("summaries", []):
        out.print(
            f"summary {summary['id']} covers {len(summary['covers'])} message(s)", markup=False
        )


@app.command()
@_user_errors
def diff(
    thread: str,
    a: str = typer.Argument(..., help="The older version (id, prefix, tag, head~N)."),
    b: str = typer.Argument(..., help="The newer version."),
    workspace: Path | None = WORKSPACE_OPT,
    target: str | None = TARGET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Compare two versions: window in/out, summaries, template, budget and pins."""
    from llmctx.runtime.versions import diff as version_diff
    from llmctx.runtime.versions import diff_renderable

    with _versions_saver(workspace, target) as saver:
        result = version_diff(saver, thread, a, b)
    if as_json:
        _print_json(result.to_dict())
    else:
        out.print(diff_renderable(result))


@app.command()
@_user_errors
def rollback(
    thread: str,
    version: str = typer.Argument(..., help="The version to make the head again."),
    workspace: Path | None = WORKSPACE_OPT,
    target: str | None = TARGET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Make an old frame the head again, as a new version (history is kept)."""
    from llmctx.runtime.versions import rollback as do_rollback

    with _versions_saver(workspace, target) as saver:
        new = do_rollback(_context_graph(saver, workspace), thread, version)
    if as_json:
        _print_json(new.to_dict())
        return
    out.print(
        f"rolled back thread '{thread}': {new.reason}; new version {new.checkpoint_id} "
        f"(window {new.window_tokens} tokens)",
        markup=False,
        soft_wrap=True,
    )


@app.command()
@_user_errors
def tag(
    thread: str,
    version: str | None = typer.Argument(None, help="The version to name."),
    name: str | None = typer.Argument(None, help="The tag name (unique per thread)."),
    delete: str | None = typer.Option(None, "--delete", "-d", help="Remove this tag."),
    force: bool = typer.Option(False, "--force", "-f", help="Move the tag if it exists."),
    workspace: Path | None = WORKSPACE_OPT,
    target: str | None = TARGET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Name a version (tagged versions survive prune); without arguments, list tags."""
    from llmctx.runtime.tags import tag_store_for
    from llmctx.runtime.versions import tag as do_tag
    from llmctx.runtime.versions import untag as do_untag

    with _versions_saver(workspace, target) as saver:
        if delete is not None:
            cid = do_untag(saver, thread, delete)
            data: dict[str, Any] = {"thread_id": thread, "deleted": delete, "checkpoint_id": cid}
            message = f"removed tag '{delete}' (was {cid})"
        elif version is None:
            tags = tag_store_for(saver).for_thread(thread)
            data = {"thread_id": thread, "tags": tags}
            message = (
                "\n".join(f"{n}\t{c}" for n, c in tags.items()) or f"thread '{thread}' has no tags"
            )
        elif name is None:
            raise ConfigError("give a tag name: llmctx tag THREAD VERSION NAME")
        else:
            v = do_tag(saver, thread, version, name, force=force)
            data = v.to_dict()
            message = f"tagged {v.checkpoint_id} (turn {v.turn}) as '{name}'"
    if as_json:
        _print_json(data)
    else:
        out.print(message, markup=False, soft_wrap=True)


@app.command()
@_user_errors
def untag(
    thread: str,
    name: str,
    workspace: Path | None = WORKSPACE_OPT,
    target: str | None = TARGET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Remove a tag (same as tag THREAD --delete NAME)."""
    from llmctx.runtime.versions import untag as do_untag

    with _versions_saver(workspace, target) as saver:
        cid = do_untag(saver, thread, name)
    if as_json:
        _print_json({"thread_id": thread, "deleted": name, "checkpoint_id": cid})
    else:
        out.print(f"removed tag '{name}' (was {cid})", markup=False, soft_wrap=True)


@app.command()
@_user_errors
def branch(
    thread: str,
    version: str = typer.Argument(..., help="The version to start from."),
    new_thread: str = typer.Argument(..., help="The new thread's id."),
    workspace: Path | None = WORKSPACE_OPT,
    target: str | None = TARGET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Fork a thread at a version into a new thread; the source is untouched."""
    from llmctx.runtime.versions import branch as do_branch

    with _versions_saver(workspace, target) as saver:
        new = do_branch(_context_graph(saver, workspace), thread, version, new_thread)
    if as_json:
        _print_json({"thread_id": new_thread, **new.to_dict()})
        return
    out.print(
        f"thread '{new_thread}' starts at turn {new.turn} of '{thread}' "
        f"({new.history_messages} messages); version {new.checkpoint_id}",
        markup=False,
        soft_wrap=True,
    )


@app.command()
@_user_errors
def prune(
    thread: str,
    keep_last: int | None = typer.Option(
        None, "--keep-last", "-k", help="How many of the newest versions to keep."
    ),
    keep_tagged: bool = typer.Option(
        True, "--keep-tagged/--no-keep-tagged", help="Keep tagged versions too."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report; delete nothing."),
    workspace: Path | None = WORKSPACE_OPT,
    target: str | None = TARGET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Delete a thread's old checkpoints, keeping the last N versions and tagged ones."""
    from llmctx.runtime.versions import prune as do_prune

    if keep_last is None:
        raise ConfigError("say how many versions to keep: llmctx prune THREAD --keep-last N")
    with _versions_saver(workspace, target) as saver:
        report = do_prune(
            saver, thread, keep_last=keep_last, keep_tagged=keep_tagged, dry_run=dry_run
        )
    if as_json:
        _print_json(report.to_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    tags = f"; tags removed: {', '.join(report.tags_removed)}" if report.tags_removed else ""
    out.print(
        f"thread '{thread}': kept {len(report.kept_versions)} version(s), {verb} "
        f"{len(report.deleted)} checkpoint(s){tags}",
        markup=False,
    )


@app.command()
@_user_errors
def expire(
    older_than: str = typer.Option(
        ..., "--older-than", help="Idle time, e.g. 30d, 12h, 90m: threads idle longer go."
    ),
    prefix: str = typer.Option("", "--prefix", help="Only threads whose id starts with this."),
    keep_tagged: bool = typer.Option(
        True, "--keep-tagged/--no-keep-tagged", help="Keep threads that have tags."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report; delete nothing."),
    workspace: Path | None = WORKSPACE_OPT,
    target: str | None = TARGET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Delete whole threads whose newest checkpoint is older than --older-than."""
    from llmctx.runtime.versions import expire_threads

    age = _parse_duration(older_than)
    with _versions_saver(workspace, target) as saver:
        expired = expire_threads(
            saver, age, keep_tagged=keep_tagged, dry_run=dry_run, prefix=prefix
        )
    if as_json:
        _print_json({"expired": expired, "dry_run": dry_run})
        return
    verb = "would expire" if dry_run else "expired"
    out.print(f"{verb} {len(expired)} thread(s){': ' if expired else ''}{', '.join(expired)}")


_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w` → a timedelta."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise ConfigError(
            f"invalid duration {text!r}: use a number and a unit, e.g. 30d, 12h, 90m, 45s, 2w"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def main() -> None:
    """Console-script entry point."""
    app(prog_name="llmctx")
