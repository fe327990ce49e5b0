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
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from llmctx.runtime.errors import ConfigError, LlmctxError, ThreadNotFoundError
from llmctx.runtime.settings import Settings
from llmctx.runtime.views import hits_table, versions_table

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
memory_app = typer.Typer(
    help="Long-term memory: add, search, count and clear memories.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(templates_app, name="templates")
app.add_typer(memory_app, name="memory")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

WORKSPACE_OPT = typer.Option(
    None, "--workspace", "-w", help="The .llm workspace folder.", envvar=None
)
JSON_OPT = typer.Option(False, "--json", help="Print one JSON object instead of tables.")
USER_OPT = typer.Option(
    None, "--user", "-u", help="The user whose memories these are (default: 'default')."
)
MEMORY_OPT = typer.Option(
    True,
    "--memory/--no-memory",
    help="Write the turns to long-term memory and retrieve from it.",
)


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
    user: str | None = USER_OPT,
    memory: bool = MEMORY_OPT,
    workspace: Path | None = WORKSPACE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Feed a conversation turn by turn through the context graph; every turn is a version.

    Each turn is also written to the user's long-term memory, and memories of earlier
    turns are retrieved into the window (--no-memory turns both off).
    """
    _run_replay(
        transcript, conversation, thread, template, budget, workspace, as_json, user, memory
    )


@app.command()
@_user_errors
def demo(
    budget: int = typer.Option(2_000, "--budget", "-b", min=1, help="Window budget in tokens."),
    thread: str = typer.Option("demo", "--thread", "-t"),
    user: str | None = USER_OPT,
    memory: bool = MEMORY_OPT,
    workspace: Path | None = WORKSPACE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Replay the sample conversation shipped with llmctx (no file needed)."""
    from llmctx.runtime.transcripts import demo_transcript_path

    _run_replay(
        demo_transcript_path(), None, thread, None, budget, workspace, as_json, user, memory
    )


@app.command()
@_user_errors
def chat(
    template: str | None = typer.Option(
        None, "--template", "-t", help="Domain template to start with (default: settings)."
    ),
    thread: str = typer.Option("chat", "--thread", help="Thread id; reuse it to resume."),
    budget: int | None = typer.Option(
        None, "--budget", "-b", min=1, help="Window budget in tokens (all included)."
    ),
    user: str | None = USER_OPT,
    memory: bool = MEMORY_OPT,
    workspace: Path | None = WORKSPACE_OPT,
) -> None:
    """Talk to the configured model through the context pipeline; /help lists commands.

    Needs an OpenAI-compatible endpoint (LLMCTX_LLM_BASE_URL, LLMCTX_LLM_API_KEY).
    Every turn is a version of the thread; /switch, /history, /diff, /rollback,
    /budget and /memory work inside the chat.
    """
    from llmctx.graphs import build_agent
    from llmctx.nodes import switch_context_tool
    from llmctx.runtime.chat import ChatSession, no_model_message, run_repl
    from llmctx.runtime.embeddings import make_embedder
    from llmctx.runtime.models import chat_model
    from llmctx.runtime.savers import open_saver
    from llmctx.runtime.workspace import Workspace

    settings = _settings(workspace)
    model = chat_model(settings)
    if model is None:
        raise ConfigError(no_model_message())
    thread_id = _label(thread, "thread id", "--thread")
    user_id = _label(user, "user id", "--user") if user is not None else None
    name = template or settings.default_template
    _registry(workspace).get(name)  # an unknown template fails here, before any turn
    ws = Workspace.from_settings(settings)
    ws.ensure()
    with ExitStack() as stack:
        saver = stack.enter_context(open_saver(ws))
        store = stack.enter_context(_open_store(settings)) if memory else None
        agent = build_agent(
            model,
            [switch_context_tool()],
            template=name,
            checkpointer=saver,
            store=store,
            budget=budget,
            settings=settings,
            workspace=ws.root,
            user_id=user_id,
        )
        session = ChatSession(
            agent=agent,
            saver=saver,
            thread_id=thread_id,
            settings=settings,
            console=out,
            store=store,
            user_id=user_id,
            embedder=make_embedder(settings) if memory else None,
        )
        code = run_repl(session)
    raise typer.Exit(code)


def _run_replay(
    path: Path,
    conversation: int | None,
    thread: str | None,
    template: str | None,
    budget: int | None,
    workspace: Path | None,
    as_json: bool,
    user: str | None,
    memory: bool,
) -> None:
    from llmctx.graphs import build_context_graph
    from llmctx.graphs.replay import default_thread_id, replay
    from llmctx.runtime.savers import open_saver
    from llmctx.runtime.transcripts import load_transcript
    from llmctx.runtime.workspace import Workspace

    settings = _settings(workspace)
    user_id = _label(user, "user id", "--user") if user is not None else None
    transcript = load_transcript(path, conversation=conversation)
    thread_id = thread or default_thread_id(Path(path), conversation)
    ws = Workspace.from_settings(settings)
    ws.ensure()
    with ExitStack() as stack:
        saver = stack.enter_context(open_saver(ws))
        store = stack.enter_context(_open_store(settings)) if memory else None
        graph = build_context_graph(
            template=template or settings.default_template,
            checkpointer=saver,
            store=store,
            budget=budget,
            model=settings.model,
            workspace=ws.root,
            settings=settings,
            user_id=user_id,
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
        data["memory"] = _replay_memory(store, user_id)
    data["checkpoints"] = str(ws.path("versions"))
    if as_json:
        _print_json(data)
        return
    _print_replay(report, data)


def _replay_memory(store: Any, user_id: str | None) -> dict[str, Any] | None:
    """Where the replay's memories went, and how many the user has now."""
    if store is None:
        return None
    user = user_id or _default_user()
    return {
        "user": user,
        "location": store.location,
        "count": store.count((*_memory_root(), user)),
    }


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
    memory = data.get("memory")
    if memory:
        out.print(
            f"{_memories(memory['count'])} of user '{memory['user']}' in long-term memory "
            "(llmctx memory stats).",
            markup=False,
        )


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


# --------------------------------------------------------------------------- memory

SCOPE_USER_OPT = typer.Option(
    None, "--user", "-u", help="Only this user's memories (default: every user's)."
)
YES_OPT = typer.Option(
    False,
    "--yes",
    "-y",
    help="Delete without asking. Otherwise clear asks, and refuses (deleting nothing) "
    "when no answer can be read, e.g. in cron or CI.",
)

# A user id or domain becomes a namespace label: never empty, never holding a "."
# (LangGraph's rule), and kept plain so that listings stay readable.
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_@:+=-]{0,127}")
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_MAX_K = 1000


def _label(value: str, what: str, where: str) -> str:
    if not _LABEL.fullmatch(value):
        raise ConfigError(
            f"invalid {what} {value!r} ({where}): use 1-128 letters, digits and _ - @ : + =, "
            "starting with a letter or digit (no spaces, '.' or '/')"
        )
    return value


def _open_store(settings: Settings) -> Any:
    """The settings' memory store (embedded in `<workspace>/memory/`, or a server);
    a context manager that closes it. chromadb is imported here, on first use."""
    from llmctx.runtime.memory import ChromaStore

    return ChromaStore.from_settings(settings)


def _memory_root() -> tuple[str, ...]:
    from llmctx.nodes import MEMORY_ROOT

    return MEMORY_ROOT


def _default_user() -> str:
    from llmctx.nodes import DEFAULT_USER

    return DEFAULT_USER


def _default_domain(settings: Settings) -> str:
    """The namespace the default template's turns are remembered in (its first one)."""
    from llmctx.templates import TemplateRegistry

    name = settings.default_template
    template = TemplateRegistry(user_dir=settings.workspace / "templates").get(name)
    domain = template.retrieval.namespaces[0]
    return _label(domain, "domain", f"template '{name}', retrieval.namespaces")


def _memory_namespaces(store: Any, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every user/domain namespace under `prefix` that holds memories, sorted."""
    depth = len(_memory_root()) + 2
    found: list[tuple[str, ...]] = []
    while True:
        page = store.list_namespaces(prefix=prefix, max_depth=depth, limit=1000, offset=len(found))
        found.extend(page)
        if len(page) < 1000:
            return sorted(set(found))


def _namespace_parts(namespace: tuple[str, ...]) -> tuple[str | None, str | None]:
    """`(user, domain)` of a memory namespace (None where it is shorter)."""
    rest = namespace[len(_memory_root()) :]
    return (rest[0] if rest else None, rest[1] if len(rest) > 1 else None)


def _when(value: dict[str, Any]) -> str:
    when = value.get("when")
    if isinstance(when, str) and when:
        return when
    ts = value.get("ts")
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")
    return ""


def _embedder_info(settings: Settings) -> dict[str, Any]:
    provider = settings.embeddings.provider
    return {
        "provider": provider,
        "model": None if provider == "none" else settings.embeddings.model,
        "dense": provider != "none",
    }


@memory_app.command("add")
@_user_errors
def memory_add(
    text: str = typer.Argument(..., help="What to remember."),
    user: str | None = USER_OPT,
    domain: str | None = typer.Option(
        None, "--domain", "-d", help="The domain (default: the default template's namespace)."
    ),
    kind: str = typer.Option("note", "--kind", help="The memory's kind (note, fact, ...)."),
    importance: float | None = typer.Option(
        None, "--importance", help="0 to 1; ranks important memories higher (unset: 0.5)."
    ),
    workspace: Path | None = WORKSPACE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Remember a note for a user; replays and searches find it like any turn."""
    from llmctx.runtime.retrieval import HybridRetriever

    settings = _settings(workspace)
    text = text.strip()
    if not text:
        raise ConfigError("the memory's text is empty: llmctx memory add 'what to remember'")
    if not _KIND.fullmatch(kind):
        raise ConfigError(
            f"invalid kind {kind!r} (--kind): use 1-32 lowercase letters, digits, _ and -, "
            "starting with a letter"
        )
    if importance is not None and not 0.0 <= importance <= 1.0:
        raise ConfigError(f"--importance must be within 0 and 1, got {importance}")
    user_id = _label(user, "user id", "--user") if user is not None else _default_user()
    domain = _label(domain, "domain", "--domain") if domain is not None else None
    domain = domain or _default_domain(settings)
    namespace = (*_memory_root(), user_id, domain)
    now = time.time()
    value: dict[str, Any] = {
        "text": text,
        "kind": kind,
        "ts": now,
        "when": datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M"),
        "source": "cli",
    }
    if importance is not None:
        value["importance"] = importance
    with _open_store(settings) as store:
        before = store.count(namespace)
        # No embedder: vectors are the searcher's business, and would be dropped here.
        (key,) = HybridRetriever(store, dense="off").add(namespace, [value])
        count = store.count(namespace)
    data = {
        "id": key,
        "created": count > before,
        "user": user_id,
        "domain": domain,
        "namespace": list(namespace),
        "kind": kind,
        "text": text,
        "importance": importance,
        "count": count,
    }
    if as_json:
        _print_json(data)
        return
    verb = "added" if data["created"] else "updated"
    out.print(
        f"{verb} {kind} {key} for user '{user_id}' in domain '{domain}' ({_memories(count)} there)",
        markup=False,
        soft_wrap=True,
    )


@memory_app.command("search")
@_user_errors
def memory_search(
    query: str = typer.Argument(..., help="What to look for."),
    user: str | None = USER_OPT,
    domain: str | None = typer.Option(
        None, "--domain", "-d", help="Only this domain (default: every domain of the user)."
    ),
    k: int = typer.Option(5, "--top", "-k", help="How many memories to return."),
    workspace: Path | None = WORKSPACE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Search a user's memories, best first, as the retrieve node does (BM25 + dense)."""
    from llmctx.runtime.embeddings import make_embedder
    from llmctx.runtime.retrieval import HybridRetriever

    settings = _settings(workspace)
    if not query.strip():
        raise ConfigError("the search query is empty: llmctx memory search 'what to look for'")
    if not 1 <= k <= _MAX_K:
        raise ConfigError(f"-k must be between 1 and {_MAX_K}, got {k}")
    user_id = _label(user, "user id", "--user") if user is not None else _default_user()
    prefix: tuple[str, ...] = (*_memory_root(), user_id)
    if domain is not None:
        prefix = (*prefix, _label(domain, "domain", "--domain"))
    embedder = make_embedder(settings)
    with _open_store(settings) as store:
        retriever = HybridRetriever(store, embedder=embedder)
        hits = retriever.search(prefix, query, k=k)
        location = store.location
    rows = [
        {
            "id": hit.key,
            "namespace": list(hit.namespace),
            "domain": _namespace_parts(hit.namespace)[1],
            "score": round(hit.score, 6),
            "kind": hit.value.get("kind"),
            "when": _when(hit.value) or None,
            "text": hit.text,
            "message_id": hit.message_id,
            "thread": hit.value.get("thread"),
            "lexical_rank": hit.lexical_rank,
            "dense_rank": hit.dense_rank,
            "via": hit.via,
        }
        for hit in hits
    ]
    if as_json:
        _print_json(
            {
                "query": query,
                "user": user_id,
                "domain": domain,
                "k": k,
                "dense": retriever.dense,
                "embedder": embedder.name if embedder else None,
                "store": location,
                "hits": rows,
            }
        )
        return
    where = f"user '{user_id}'" + (f", domain '{domain}'" if domain else "")
    if not rows:
        out.print(f"no memories of {where} match {query!r}", markup=False, soft_wrap=True)
        return
    how = f"dense: {embedder.name}" if embedder else "lexical only"
    title = f"memories of {where} for {query!r}"
    out.print(hits_table(rows, title, f"{len(rows)} hit(s), {how}", out.width))


@memory_app.command("stats")
@_user_errors
def memory_stats(
    user: str | None = SCOPE_USER_OPT,
    workspace: Path | None = WORKSPACE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Count memories per user and domain; show where the store lives and the embedder."""
    settings = _settings(workspace)
    scope = _memory_root()
    if user is not None:
        scope = (*scope, _label(user, "user id", "--user"))
    with _open_store(settings) as store:
        rows = []
        for namespace in _memory_namespaces(store, scope):
            owner, domain = _namespace_parts(namespace)
            count = store.count(namespace)
            if count:
                rows.append({"user": owner, "domain": domain, "count": count})
        total = store.count(scope)
        location = store.location
    url = settings.memory.url
    data = {
        "user": user,
        "total": total,
        "namespaces": rows,
        "store": {
            "kind": "server" if url else "embedded",
            "location": location,
            "url": url,
            "collection": settings.memory.collection,
        },
        "embedder": _embedder_info(settings),
    }
    if as_json:
        _print_json(data)
        return
    if rows:
        table = Table(title="memories", box=None, pad_edge=False, header_style="bold")
        table.add_column("user", overflow="fold")
        table.add_column("domain", overflow="fold")
        table.add_column("memories", justify="right", no_wrap=True)
        for row in rows:
            table.add_row(Text(str(row["user"])), Text(str(row["domain"] or "")), str(row["count"]))
        out.print(table)
    whose = f" of user '{user}'" if user else ""
    kind = "a Chroma server" if url else "the embedded Chroma store"
    out.print(
        f"{_memories(total)}{whose} in {kind} at {location} "
        f"(collection {settings.memory.collection}).",
        markup=False,
        soft_wrap=True,  # keep the path whole
    )
    embedder = data["embedder"]
    if embedder["dense"]:
        out.print(f"Embedder: {embedder['provider']} {embedder['model']} (hybrid retrieval).")
    else:
        out.print("Embedder: none (lexical retrieval only).")


@memory_app.command("clear")
@_user_errors
def memory_clear(
    user: str | None = SCOPE_USER_OPT,
    domain: str | None = typer.Option(
        None, "--domain", "-d", help="Only this domain (of --user, else of every user)."
    ),
    yes: bool = YES_OPT,
    workspace: Path | None = WORKSPACE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Delete memories: every user's, one user's (--user), or one domain's (--domain)."""
    settings = _settings(workspace)
    user_id = _label(user, "user id", "--user") if user is not None else None
    domain = _label(domain, "domain", "--domain") if domain is not None else None
    root = _memory_root()
    with _open_store(settings) as store:
        if domain is not None and user_id is None:
            scopes = [ns for ns in _memory_namespaces(store, root) if len(ns) > len(root) + 1]
            scopes = [ns for ns in scopes if _namespace_parts(ns)[1] == domain]
        else:
            scopes = [(*root, *(x for x in (user_id, domain) if x is not None))]
        what = _scope_words(user_id, domain)
        count = sum(store.count(ns) for ns in scopes)
        location = store.location
        if count and not yes:
            _confirm_clear(f"Delete {_memories(count)} of {what} from {location}?", count, what)
        deleted = sum(store.clear(ns) for ns in scopes) if count else 0
    if as_json:
        _print_json(
            {
                "deleted": deleted,
                "user": user_id,
                "domain": domain,
                "scope": what,
                "store": location,
                "namespaces": [list(ns) for ns in scopes],
            }
        )
        return
    out.print(f"deleted {_memories(deleted)} of {what}", markup=False, soft_wrap=True)


def _memories(count: int) -> str:
    return f"{count} memor{'y' if count == 1 else 'ies'}"


def _scope_words(user: str | None, domain: str | None) -> str:
    if user and domain:
        return f"user '{user}' in domain '{domain}'"
    if user:
        return f"user '{user}' (every domain)"
    if domain:
        return f"every user in domain '{domain}'"
    return "every user"


def _confirm_clear(question: str, count: int, what: str) -> None:
    """Ask on the terminal; no answer (EOF) refuses with a user error, "no" cancels."""
    try:
        confirmed = typer.confirm(question, default=False, err=True)
    except typer.Abort:  # EOF (stdin closed, empty, or not a terminal) or Ctrl-C
        err.print()  # the prompt left its line open
        raise ConfigError(
            f"not deleting {_memories(count)} of {what}: no answer was given (stdin is "
            "closed or not interactive); pass --yes to delete without asking"
        ) from None
    if not sys.stdin.isatty():
        err.print()  # a piped answer is not echoed: end the prompt's line
    if not confirmed:
        err.print("cancelled: nothing deleted", markup=False)
        raise typer.Exit(1)


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
    out.print(versions_table(versions, thread))


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
        table.add_row(
            str(n), item["kind"], Text(item["id"]), str(item["tokens"]), item["tier"], Text(text)
        )
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


if __name__ == "__main__":
    main()
