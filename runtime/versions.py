"""Context versions read from, and written through, LangGraph checkpoints.

A *version* is a checkpoint in which the frame (the `context` channel) changed: its
`context` channel version differs from its parent's. The input checkpoint of a turn
only adds messages; the checkpoint after the pipeline records the new window.

Everything here works through any `BaseCheckpointSaver` (in memory, SQLite, Postgres,
the embedded saver), reading frames as plain dicts:

- `history`, `get` and `diff` read;
- `rollback` and `branch` write *new* checkpoints with LangGraph's `update_state`
  (so they need the compiled graph), and never rewrite history;
- `tag`/`untag` name versions (`llmctx.runtime.tags`);
- `prune` deletes old checkpoints but the last N versions and the tagged ones, and
  `expire_threads` deletes whole threads idle for too long.

A version is named by its checkpoint id, a unique prefix of one (4+ characters), a
tag, `head` (the newest version) or `head~N` (N versions before it).

Example:
    >>> with open_saver(".llm") as saver:
    ...     graph = build_context_graph(checkpointer=saver)
    ...     for v in history(saver, "demo", limit=3):
    ...         print(v.turn, v.op, v.window_tokens, v.tags)
    ...     print(diff(saver, "demo", "head~1", "head").to_dict()["entered"])
    ...     rollback(graph, "demo", "head~1")
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from langchain_core.messages import BaseMessage, SystemMessage
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from llmctx.runtime.errors import (
    ThreadNotFoundError,
    UnsupportedSaverError,
    VersionError,
    VersionNotFoundError,
)
from llmctx.runtime.retention import delete_checkpoints, thread_activity
from llmctx.runtime.tags import TagStore, tag_store_for
from llmctx.runtime.toolpairs import results_after_calls

__all__ = [
    "PruneReport",
    "SupportsVersionListing",
    "Version",
    "VersionDiff",
    "VersionError",
    "VersionNotFoundError",
    "VersionState",
    "branch",
    "diff",
    "diff_renderable",
    "expire_threads",
    "get",
    "history",
    "prune",
    "resolve",
    "rollback",
    "tag",
    "untag",
]

CONTEXT_CHANNEL = "context"
MIN_PREFIX = 4
_HEAD = re.compile(r"(?i)head(?:~(\d+))?")
_PREVIEW = 60
# Metadata a DeltaChannel leaves behind: its values need older checkpoints to rebuild.
_DELTA_MARKERS = ("counters_since_delta_snapshot", "delta_writes_versioned")


@dataclass(frozen=True)
class Version:
    """One context version: where it sits in the thread and what its frame says.

    `tokens_exact` is False when the frame was counted with the approximate fallback
    (no tiktoken encoding could be loaded), so every report can flag it.
    """

    checkpoint_id: str
    parent_id: str | None
    step: int
    time: str
    op: str
    reason: str
    template: str | None
    turn: int | None
    window_tokens: int
    history_tokens: int
    history_messages: int
    tokens_exact: bool
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tags"] = list(self.tags)
        return data

    @classmethod
    def from_row(cls, row: Any, tags: Sequence[str] = ()) -> Version:
        """A version from a `list_versions` row: an object with the fields of
        `llmctx.runtime.checkpointer.VersionRow`, or a mapping with those keys."""

        def field_(name: str, default: Any = None) -> Any:
            if isinstance(row, Mapping):
                return row.get(name, default)
            return getattr(row, name, default)

        turn, step = field_("turn"), field_("step")
        return cls(
            checkpoint_id=str(field_("checkpoint_id")),
            parent_id=field_("parent_id"),
            step=int(step) if step is not None else -1,
            time=str(field_("ts") or ""),
            op=str(field_("op") or ""),
            reason=str(field_("reason") or ""),
            template=field_("template"),
            turn=int(turn) if turn is not None else None,
            window_tokens=int(field_("window_tokens") or 0),
            history_tokens=int(field_("history_tokens") or 0),
            history_messages=int(field_("history_messages") or 0),
            tokens_exact=bool(field_("tokens_exact") or False),
            tags=tuple(sorted(tags)),
        )


@runtime_checkable
class SupportsVersionListing(Protocol):
    """A saver that lists a thread's versions from metadata alone (no channel values),
    as `LlmctxSaver.list_versions` does.

    `list_versions(thread_id, before=ID, limit=N, changed_only=True)` returns the
    versions newest first (`before` exclusive), each row with the fields of
    `llmctx.runtime.checkpointer.VersionRow` (`checkpoint_id`, `parent_id`, `step`,
    `ts`, `op`, `reason`, `template`, `turn`, `window_tokens`, `history_tokens`,
    `history_messages`, `tokens_exact`) as attributes or mapping keys.
    """

    def list_versions(
        self,
        thread_id: str,
        checkpoint_ns: str = "",
        *,
        before: str | None = None,
        limit: int | None = None,
        changed_only: bool = False,
    ) -> Sequence[Any]: ...


# --------------------------------------------------------------------------- reading


def history(
    saver: BaseCheckpointSaver,
    thread_id: str,
    *,
    limit: int | None = None,
    before: str | None = None,
    ops: Iterable[str] | None = None,
    tags: TagStore | None = None,
) -> list[Version]:
    """The thread's versions, newest first.

    `before` (any version reference) keeps those older than it, `ops` those whose
    last operation is one of `ops`, and `limit` caps the count after filtering. An
    unknown thread has no versions (`[]`).
    """
    store = tags if tags is not None else tag_store_for(saver)
    by_checkpoint = store.by_checkpoint(thread_id)
    before_id = resolve(saver, thread_id, before, tags=store).checkpoint["id"] if before else None
    wanted = set(ops) if ops is not None else None
    if isinstance(saver, SupportsVersionListing):
        rows = saver.list_versions(
            thread_id,
            before=before_id,
            limit=limit if wanted is None else None,
            changed_only=True,
        )
        versions = [Version.from_row(r) for r in rows]
        versions = [
            replace(v, tags=tuple(sorted(by_checkpoint.get(v.checkpoint_id, ())))) for v in versions
        ]
    else:
        versions = [
            _to_version(t, by_checkpoint.get(t.checkpoint["id"], ()))
            for t in reversed(_version_tuples(_checkpoints(saver, thread_id)))
        ]
        if before_id is not None:
            versions = [v for v in versions if v.checkpoint_id < before_id]
    if wanted is not None:
        versions = [v for v in versions if v.op in wanted]
    return versions[:limit] if limit is not None else versions


@dataclass(frozen=True)
class VersionState:
    """A version's frame and the window it describes, as the model saw it.

    `messages` is the assembled window: history messages by id, and the system
    prompt, summaries and memories (which carry their own text) as system messages.
    """

    thread_id: str
    version: Version
    frame: dict[str, Any]
    messages: list[BaseMessage]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: the version, the frame and the window's messages."""
        return {
            "thread_id": self.thread_id,
            "version": self.version.to_dict(),
            "frame": self.frame,
            "messages": [_message_dict(m) for m in self.messages],
        }


def get(
    saver: BaseCheckpointSaver, thread_id: str, version: str, *, tags: TagStore | None = None
) -> VersionState:
    """The frame and window messages of one version (any reference, see the module)."""
    store = tags if tags is not None else tag_store_for(saver)
    tup, frame = _resolve_frame(saver, thread_id, version, store, "show")
    names = store.by_checkpoint(thread_id).get(tup.checkpoint["id"], ())
    messages = _window(frame, _messages(tup), tup.checkpoint["id"])
    return VersionState(thread_id, _to_version(tup, names), frame, messages)


def resolve(
    saver: BaseCheckpointSaver, thread_id: str, ref: str, *, tags: TagStore | None = None
) -> CheckpointTuple:
    """The checkpoint a reference names: a tag, `head`/`head~N`, an id or a unique prefix.

    Raises `ThreadNotFoundError` for a thread without checkpoints and
    `VersionNotFoundError` for an unknown, ambiguous or too short reference.
    """
    ref = ref.strip()
    if not ref:
        raise VersionNotFoundError("empty version reference; give a checkpoint id, prefix or tag")
    store = tags if tags is not None else tag_store_for(saver)
    tagged = store.get(thread_id, ref)
    if tagged is not None:
        tup = saver.get_tuple(_config(thread_id, tagged))
        if tup is None:
            raise VersionNotFoundError(
                f"tag {ref!r} of thread {thread_id!r} names checkpoint {tagged}, which no "
                f"longer exists (pruned?); remove it with: llmctx tag {thread_id} --delete {ref}"
            )
        return tup
    head = _HEAD.fullmatch(ref)
    if head:
        back = int(head.group(1) or 0)
        versions = history(saver, thread_id, limit=back + 1, tags=store)
        _require_thread(saver, thread_id, versions)
        if len(versions) <= back:
            raise VersionNotFoundError(
                f"{ref}: thread {thread_id!r} has only {len(versions)} version(s)"
            )
        return _get_tuple(saver, thread_id, versions[back].checkpoint_id)
    exact = saver.get_tuple(_config(thread_id, ref))
    if exact is not None:
        return exact
    return _get_tuple(saver, thread_id, _match_prefix(saver, thread_id, ref))


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class VersionDiff:
    """What changed from version `a` to version `b` of a thread.

    `entered`/`left` list window items ({kind, id, tokens, preview}) in window
    order; `numbers` maps budget, window_tokens, history_tokens, history_messages
    and turn to `(a, b)`; `tiers` maps each tier to `{"used": (a, b), "limit": (a,
    b)}`. `template` is `(from, to)` when the template switched.
    """

    thread_id: str
    a: Version
    b: Version
    entered: list[dict[str, Any]]
    left: list[dict[str, Any]]
    summaries_added: list[str]
    summaries_removed: list[str]
    template: tuple[str | None, str | None] | None
    numbers: dict[str, tuple[int | None, int | None]]
    tiers: dict[str, dict[str, tuple[int | None, int | None]]]
    pinned_added: list[str] = field(default_factory=list)
    pinned_removed: list[str] = field(default_factory=list)

    @property
    def window_changed(self) -> bool:
        return bool(self.entered or self.left)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; each number also gets its delta (`b - a`)."""

        def pair(values: tuple[int | None, int | None]) -> dict[str, Any]:
            a, b = values
            delta = b - a if a is not None and b is not None else None
            return {"a": a, "b": b, "delta": delta}

        return {
            "thread_id": self.thread_id,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "entered": self.entered,
            "left": self.left,
            "summaries_added": self.summaries_added,
            "summaries_removed": self.summaries_removed,
            "template": (
                {"from": self.template[0], "to": self.template[1]} if self.template else None
            ),
            "numbers": {k: pair(v) for k, v in self.numbers.items()},
            "tiers": {t: {k: pair(v) for k, v in d.items()} for t, d in self.tiers.items()},
            "pinned_added": self.pinned_added,
            "pinned_removed": self.pinned_removed,
        }


def diff(
    saver: BaseCheckpointSaver,
    thread_id: str,
    a: str,
    b: str,
    *,
    tags: TagStore | None = None,
) -> VersionDiff:
    """Compare two versions of a thread (any references; `a` is the "before").

    Example:
        >>> d = diff(saver, "chat", "head~1", "head")
        >>> [item["id"] for item in d.left]  # what the last turn pushed out
    """
    store = tags if tags is not None else tag_store_for(saver)
    ta, tb = resolve(saver, thread_id, a, tags=store), resolve(saver, thread_id, b, tags=store)
    fa, fb = _frame(ta), _frame(tb)
    names = store.by_checkpoint(thread_id)
    va = _to_version(ta, names.get(ta.checkpoint["id"], ()))
    vb = _to_version(tb, names.get(tb.checkpoint["id"], ()))
    by_id = {str(m.id): m for m in _messages(ta)}
    by_id.update({str(m.id): m for m in _messages(tb)})
    items_a = {(i["kind"], i["id"]): i for i in fa.get("window", [])}
    items_b = {(i["kind"], i["id"]): i for i in fb.get("window", [])}
    entered = [_diff_item(i, by_id) for k, i in items_b.items() if k not in items_a]
    left = [_diff_item(i, by_id) for k, i in items_a.items() if k not in items_b]
    sums_a = [s["id"] for s in fa.get("summaries", [])]
    sums_b = [s["id"] for s in fb.get("summaries", [])]
    pins_a, pins_b = list(fa.get("pinned", [])), list(fb.get("pinned", []))
    numbers = {
        key: (fa.get(key), fb.get(key))
        for key in ("budget", "window_tokens", "history_tokens", "history_messages", "turn")
    }
    tiers_a, tiers_b = fa.get("tiers", {}), fb.get("tiers", {})
    tiers = {
        tier: {
            part: (tiers_a.get(tier, {}).get(part), tiers_b.get(tier, {}).get(part))
            for part in ("used", "limit")
        }
        for tier in [*tiers_a, *(t for t in tiers_b if t not in tiers_a)]
    }
    switched = fa.get("template") != fb.get("template")
    return VersionDiff(
        thread_id=thread_id,
        a=va,
        b=vb,
        entered=entered,
        left=left,
        summaries_added=[s for s in sums_b if s not in sums_a],
        summaries_removed=[s for s in sums_a if s not in sums_b],
        template=(fa.get("template"), fb.get("template")) if switched else None,
        numbers=numbers,
        tiers=tiers,
        pinned_added=[p for p in pins_b if p not in pins_a],
        pinned_removed=[p for p in pins_a if p not in pins_b],
    )


def diff_renderable(d: VersionDiff) -> RenderableType:
    """A rich rendering of a diff: header, number changes, then the window lines
    (`-` left in red, `+` entered in green), summaries and pins."""
    parts: list[RenderableType] = []
    parts.append(Text(f"diff of thread '{d.thread_id}'", style="bold"))
    parts.append(Text(f"a: {_version_label(d.a)}", style="red"))
    parts.append(Text(f"b: {_version_label(d.b)}", style="green"))
    if d.template:
        parts.append(Text(f"template: {d.template[0]} → {d.template[1]}", style="yellow"))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("", "a", "b", "Δ"):
        table.add_column(column, justify="left" if not column else "right")
    rows = [(k.replace("_", " "), v) for k, v in d.numbers.items()]
    rows += [(f"{tier} {part}", v) for tier, p in d.tiers.items() for part, v in p.items()]
    for label, (x, y) in rows:
        if x is None and y is None:
            continue
        delta = y - x if x is not None and y is not None else None
        style = "" if not delta else ("green" if delta < 0 else "red")
        shown = "" if delta is None else (f"{delta:+d}" if delta else "=")
        table.add_row(label, _num(x), _num(y), Text(shown, style=style))
    parts.append(table)
    if not d.window_changed:
        parts.append(Text("window unchanged", style="dim"))
    for sign, items, style in (("-", d.left, "red"), ("+", d.entered, "green")):
        for item in items:
            line = Text(
                f"{sign} {item['kind']:<7} {item['id']} {item['tokens']:>5} tok  ", style=style
            )
            line.append(item["preview"], style="dim")
            line.no_wrap = True
            line.overflow = "ellipsis"
            parts.append(line)
    for label, ids in (
        ("summaries added", d.summaries_added),
        ("summaries removed", d.summaries_removed),
        ("pinned added", d.pinned_added),
        ("pinned removed", d.pinned_removed),
    ):
        if ids:
            parts.append(Text(f"{label}: {', '.join(ids)}"))
    return Group(*parts)


# --------------------------------------------------------------------------- writing


def rollback(
    graph: Any,
    thread_id: str,
    version: str,
    *,
    as_node: str | None = None,
    tags: TagStore | None = None,
) -> Version:
    """Make an old frame the head again, as a new checkpoint: history is not rewritten.

    `graph` is the compiled graph (with its checkpointer) that owns the thread;
    LangGraph's `update_state` writes the new checkpoint "as" `as_node` (by default,
    the node that last wrote the thread). The new frame equals the old one except
    `last_op` (`op="rollback"`); the other-domain frames (`preserved`) are restored
    too; `messages` is unchanged, so nothing said since is lost, and the next turn
    builds on the restored window. The old head stays in history. Returns the new
    version.
    """
    saver = _graph_saver(graph)
    store = tags if tags is not None else tag_store_for(saver)
    target, frame = _resolve_frame(saver, thread_id, version, store, "roll back to")
    head = _get_tuple(saver, thread_id, None)
    restored = copy.deepcopy(frame)
    restored["last_op"] = _op(
        "rollback", f"rollback to {target.checkpoint['id']}", _frame(head), frame
    )
    update: dict[str, Any] = {CONTEXT_CHANNEL: restored}
    old_preserved = target.checkpoint["channel_values"].get("preserved") or {}
    head_preserved = head.checkpoint["channel_values"].get("preserved") or {}
    if old_preserved != head_preserved:
        update["preserved"] = {
            **{name: None for name in head_preserved if name not in old_preserved},
            **copy.deepcopy(old_preserved),
        }
    node = as_node or _writer_node(graph, head)
    config = graph.update_state(_config(thread_id), update, as_node=node)
    written = _get_tuple(saver, thread_id, config["configurable"]["checkpoint_id"])
    return _to_version(written)


def branch(
    graph: Any,
    thread_id: str,
    version: str,
    new_thread_id: str,
    *,
    as_node: str | None = None,
    tags: TagStore | None = None,
) -> Version:
    """Start `new_thread_id` from a version of `thread_id`; the source is untouched.

    The new thread's first checkpoint holds the version's messages (the history up
    to it, not what came later), its frame (`last_op.op="branch"`) and preserved
    frames, written with `update_state` (not the saver's `copy_thread`, which would
    copy every later checkpoint too). Tags are not copied. Returns the new version.
    """
    saver = _graph_saver(graph)
    if new_thread_id == thread_id:
        raise VersionError("a branch needs a new thread id, not the source's own")
    if saver.get_tuple(_config(new_thread_id)) is not None:
        raise VersionError(f"thread {new_thread_id!r} already exists; branch into a new thread id")
    source, frame = _resolve_frame(saver, thread_id, version, tags, "branch from")
    copied = copy.deepcopy(frame)
    copied["last_op"] = _op(
        "branch", f"branch of {thread_id!r} at {source.checkpoint['id']}", {}, frame
    )
    values: dict[str, Any] = {
        "messages": list(_messages(source)),
        CONTEXT_CHANNEL: copied,
    }
    preserved = source.checkpoint["channel_values"].get("preserved")
    if preserved:
        values["preserved"] = copy.deepcopy(preserved)
    node = as_node or _writer_node(graph, source)
    config = graph.update_state(_config(new_thread_id), values, as_node=node)
    return _to_version(_get_tuple(saver, new_thread_id, config["configurable"]["checkpoint_id"]))


def tag(
    saver: BaseCheckpointSaver,
    thread_id: str,
    version: str,
    name: str,
    *,
    force: bool = False,
    tags: TagStore | None = None,
) -> Version:
    """Name a version; names are unique per thread (`force` moves an existing one).

    Returns the tagged version, with all its tags.
    """
    store = tags if tags is not None else tag_store_for(saver)
    tup, _ = _resolve_frame(saver, thread_id, version, store, "tag")
    store.set(thread_id, name, tup.checkpoint["id"], force=force)
    return _to_version(tup, store.by_checkpoint(thread_id).get(tup.checkpoint["id"], ()))


def untag(
    saver: BaseCheckpointSaver, thread_id: str, name: str, *, tags: TagStore | None = None
) -> str:
    """Remove a tag; return the checkpoint id it named (`TagError` if unknown)."""
    store = tags if tags is not None else tag_store_for(saver)
    return store.delete(thread_id, name)


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True)
class PruneReport:
    """What `prune` kept and deleted (or would, with `dry_run`)."""

    thread_id: str
    kept_versions: list[str]
    deleted: list[str]
    tags_removed: list[str]
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune(
    saver: BaseCheckpointSaver,
    thread_id: str,
    *,
    keep_last: int,
    keep_tagged: bool = True,
    dry_run: bool = False,
    tags: TagStore | None = None,
) -> PruneReport:
    """Delete a thread's checkpoints older than its last `keep_last` versions.

    Tagged versions are kept too unless `keep_tagged=False` (then their tags go with
    them). Everything from the `keep_last`-th newest version on stays, so the recent
    history is intact. Savers that cannot delete single checkpoints raise
    `UnsupportedSaverError` (see `llmctx.runtime.retention`); threads whose state
    uses a `DeltaChannel` are refused, since their values need older checkpoints.
    """
    if keep_last < 1:
        raise VersionError(f"keep_last must be at least 1, got {keep_last}")
    store = tags if tags is not None else tag_store_for(saver)
    entries = _index(saver, thread_id)
    _require_thread(saver, thread_id, entries)
    if any(marker in e.metadata for e in entries for marker in _DELTA_MARKERS):
        raise UnsupportedSaverError(
            f"thread {thread_id!r} uses a DeltaChannel, whose values are rebuilt from "
            "older checkpoints; its versions cannot be pruned one by one"
        )
    versions = [e.checkpoint_id for e in _version_entries(entries)]
    kept = versions[-keep_last:]
    cutoff = kept[0] if kept else entries[-1].checkpoint_id
    tagged = store.by_checkpoint(thread_id)
    protected = set(tagged) if keep_tagged else set()
    doomed = [
        e.checkpoint_id
        for e in entries
        if e.checkpoint_id < cutoff and e.checkpoint_id not in protected
    ]
    gone = set(doomed)
    kept_versions = [cid for cid in versions if cid not in gone]
    removed = sorted(name for cid in doomed for name in tagged.get(cid, ()))
    if not dry_run:
        delete_checkpoints(saver, thread_id, doomed)
        if removed:
            store.delete_thread(thread_id, removed)
    return PruneReport(thread_id, kept_versions[::-1], doomed, removed, dry_run)


def expire_threads(
    saver: BaseCheckpointSaver,
    older_than: timedelta,
    *,
    keep_tagged: bool = True,
    dry_run: bool = False,
    prefix: str = "",
    now: datetime | None = None,
    tags: TagStore | None = None,
) -> list[str]:
    """Delete every thread whose newest checkpoint is older than `older_than`.

    Only threads whose id starts with `prefix` are considered (all by default).
    Threads with a tag are kept unless `keep_tagged=False` (then their tags go too).
    Uses the saver's `delete_thread`, which every LangGraph saver implements. Returns
    the expired thread ids, sorted.
    """
    store = tags if tags is not None else tag_store_for(saver)
    cutoff = (now or datetime.now(UTC)) - older_than
    protected = store.tagged_threads() if keep_tagged else set()
    expired = sorted(
        thread
        for thread, ts in thread_activity(saver).items()
        if thread.startswith(prefix) and thread not in protected and ts and _parse_ts(ts) < cutoff
    )
    if not dry_run:
        for thread in expired:
            saver.delete_thread(thread)
            store.delete_thread(thread)
    return expired


# --------------------------------------------------------------------------- helpers


def _config(thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    configurable: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _checkpoints(saver: BaseCheckpointSaver, thread_id: str) -> list[CheckpointTuple]:
    """The thread's root-namespace checkpoints, oldest first (uuid6 ids sort by time)."""
    tuples = list(saver.list(_config(thread_id)))
    tuples.sort(key=lambda t: t.checkpoint["id"])
    return tuples


def _version_tuples(tuples: Sequence[CheckpointTuple]) -> list[CheckpointTuple]:
    """The checkpoints whose `context` channel version differs from their parent's."""
    wanted = {e.checkpoint_id for e in _version_entries([_entry(t) for t in tuples])}
    return [t for t in tuples if t.checkpoint["id"] in wanted]


@dataclass(frozen=True)
class _Entry:
    """What version bookkeeping needs of a checkpoint, without its channel values."""

    checkpoint_id: str
    parent_id: str | None
    context_version: Any
    metadata: Mapping[str, Any]


def _entry(tup: CheckpointTuple) -> _Entry:
    return _Entry(tup.checkpoint["id"], _parent_id(tup), _context_version(tup), tup.metadata or {})


def _index(saver: BaseCheckpointSaver, thread_id: str) -> list[_Entry]:
    """The thread's root checkpoints, oldest first, as `_Entry`s: from the saver's
    metadata-only listing when its rows carry `summary_version`, else from `list`."""
    if isinstance(saver, SupportsVersionListing):
        rows = list(saver.list_versions(thread_id))
        if all(_row_has(r, "summary_version") for r in rows):
            entries = [
                _Entry(
                    str(_row(r, "checkpoint_id")),
                    _row(r, "parent_id"),
                    _row(r, "summary_version"),
                    _row(r, "metadata") or {},
                )
                for r in rows
            ]
            return sorted(entries, key=lambda e: e.checkpoint_id)
    return [_entry(t) for t in _checkpoints(saver, thread_id)]


def _row(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)


def _row_has(row: Any, name: str) -> bool:
    return name in row if isinstance(row, Mapping) else hasattr(row, name)


def _version_entries(entries: Sequence[_Entry]) -> list[_Entry]:
    """The entries whose `context` channel version differs from their parent's.

    Comparing with the parent (not the previous checkpoint by time) stays right on
    forked threads; a checkpoint whose parent was pruned counts as a version.
    """
    seen = {e.checkpoint_id: e.context_version for e in entries}
    out = []
    for entry in entries:
        if entry.context_version is None:
            continue
        parent = entry.parent_id
        if parent is not None and parent in seen and seen[parent] == entry.context_version:
            continue
        out.append(entry)
    return out


def _context_version(tup: CheckpointTuple) -> Any:
    return tup.checkpoint.get("channel_versions", {}).get(CONTEXT_CHANNEL)


def _parent_id(tup: CheckpointTuple) -> str | None:
    return tup.parent_config["configurable"].get("checkpoint_id") if tup.parent_config else None


def _resolve_frame(
    saver: BaseCheckpointSaver,
    thread_id: str,
    version: str,
    tags: TagStore | None,
    purpose: str,
) -> tuple[CheckpointTuple, dict[str, Any]]:
    """Resolve a version reference to a checkpoint that has a frame, or raise."""
    tup = resolve(saver, thread_id, version, tags=tags)
    frame = _frame(tup)
    if not frame:
        raise VersionError(
            f"checkpoint {tup.checkpoint['id']} of thread {thread_id!r} has no frame (the "
            f"context pipeline had not run), so there is nothing to {purpose}; pick a "
            "version listed by llmctx history"
        )
    return tup, frame


def _frame(tup: CheckpointTuple) -> dict[str, Any]:
    return tup.checkpoint.get("channel_values", {}).get(CONTEXT_CHANNEL) or {}


def _messages(tup: CheckpointTuple) -> list[BaseMessage]:
    return list(tup.checkpoint.get("channel_values", {}).get("messages") or [])


def _to_version(tup: CheckpointTuple, tags: Iterable[str] = ()) -> Version:
    frame = _frame(tup)
    last_op = frame.get("last_op", {})
    return Version(
        checkpoint_id=tup.checkpoint["id"],
        parent_id=_parent_id(tup),
        step=int(tup.metadata.get("step", -1)) if tup.metadata else -1,
        time=tup.checkpoint.get("ts", ""),
        op=str(last_op.get("op", "")),
        reason=str(last_op.get("reason", "")),
        template=frame.get("template"),
        turn=frame.get("turn"),
        window_tokens=int(frame.get("window_tokens", 0)),
        history_tokens=int(frame.get("history_tokens", 0)),
        history_messages=int(frame.get("history_messages", 0)),
        tokens_exact=bool(frame.get("tokenizer", {}).get("exact", False)),
        tags=tuple(sorted(tags)),
    )


def _get_tuple(
    saver: BaseCheckpointSaver, thread_id: str, checkpoint_id: str | None
) -> CheckpointTuple:
    tup = saver.get_tuple(_config(thread_id, checkpoint_id))
    if tup is None:
        if checkpoint_id is None:
            raise ThreadNotFoundError(f"thread {thread_id!r} has no checkpoints")
        raise VersionNotFoundError(f"thread {thread_id!r} has no checkpoint {checkpoint_id}")
    return tup


def _require_thread(saver: BaseCheckpointSaver, thread_id: str, found: Sequence[Any]) -> None:
    if not found and saver.get_tuple(_config(thread_id)) is None:
        raise ThreadNotFoundError(
            f"thread {thread_id!r} has no checkpoints; check the thread id (and the "
            "workspace or --target), or replay a transcript into it first"
        )


def _match_prefix(saver: BaseCheckpointSaver, thread_id: str, ref: str) -> str:
    """The one checkpoint id starting with `ref`: versions first, then all checkpoints."""
    prefix = ref.lower()
    if len(prefix) < MIN_PREFIX:
        raise VersionNotFoundError(
            f"{ref!r} is not a tag of thread {thread_id!r}, and too short for an id "
            f"prefix (give at least {MIN_PREFIX} characters)"
        )
    entries = _index(saver, thread_id)
    _require_thread(saver, thread_id, entries)
    for pool in (_version_entries(entries), entries):
        matches = [e.checkpoint_id for e in pool if e.checkpoint_id.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
            raise VersionNotFoundError(
                f"{ref!r} matches {len(matches)} versions of thread {thread_id!r} "
                f"({shown}); give more characters"
            )
    raise VersionNotFoundError(
        f"thread {thread_id!r} has no version, tag or checkpoint {ref!r}; "
        f"list them with: llmctx history {thread_id}"
    )


def _window(frame: Mapping[str, Any], history: list[BaseMessage], where: str) -> list[BaseMessage]:
    """Assemble a frame's window from the history, like `nodes.state.window_messages`."""
    by_id = {str(m.id): m for m in history}
    out: list[BaseMessage] = []
    missing: list[str] = []
    for item in frame.get("window", []):
        if item["kind"] == "message":
            message = by_id.get(item["id"])
            if message is None:
                missing.append(item["id"])
            elif "content" in item:  # shown as a placeholder or truncated copy
                out.append(message.model_copy(update={"content": item["content"]}))
            else:
                out.append(message)
        else:
            out.append(SystemMessage(content=item.get("content", ""), id=item["id"]))
    if missing:
        raise VersionError(
            f"the window of checkpoint {where} refers to message(s) missing from its "
            f"history: {', '.join(missing[:5])}; the checkpoint is incomplete"
        )
    return results_after_calls(out)


def _graph_saver(graph: Any) -> BaseCheckpointSaver:
    saver = getattr(graph, "checkpointer", None)
    if not isinstance(saver, BaseCheckpointSaver):
        raise VersionError(
            "rollback and branch need the compiled graph with its checkpointer, e.g. "
            "build_context_graph(checkpointer=saver)"
        )
    return saver


def _writer_node(graph: Any, tup: CheckpointTuple) -> str:
    """The node that last ran on a checkpoint, for `update_state(as_node=...)`.

    Writing "as" that node leaves no task pending; `versions_seen` records what each
    node saw when it last ran, so the node with the newest entry ran last.
    """
    nodes = [n for n in graph.nodes if not n.startswith("__")]
    if len(nodes) == 1:
        return nodes[0]
    seen = tup.checkpoint.get("versions_seen", {})
    latest = sorted(
        ((max(seen[n].values()), n) for n in nodes if seen.get(n)),
        key=lambda pair: pair[0],
    )
    if latest and (len(latest) == 1 or latest[-1][0] != latest[-2][0]):
        return latest[-1][1]
    raise VersionError(
        "cannot tell which node of the graph wrote the frame; pass as_node= "
        f"(one of {', '.join(nodes)})"
    )


def _op(op: str, reason: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> dict:
    ids_before = {i["id"] for i in before.get("window", []) if i["kind"] == "message"}
    ids_after = {i["id"] for i in after.get("window", []) if i["kind"] == "message"}
    return {
        "op": op,
        "reason": reason,
        "tokens_before": int(before.get("window_tokens", 0)),
        "tokens_after": int(after.get("window_tokens", 0)),
        "entered": len(ids_after - ids_before),
        "left": len(ids_before - ids_after),
    }


def _diff_item(item: Mapping[str, Any], by_id: Mapping[str, BaseMessage]) -> dict[str, Any]:
    if item["kind"] == "message":
        message = by_id.get(item["id"])
        preview = _message_preview(message) if message is not None else "(not in history)"
    else:
        preview = _clip(str(item.get("content", "")))
    return {
        "kind": item["kind"],
        "id": item["id"],
        "tokens": int(item.get("tokens", 0)),
        "preview": preview,
    }


def _message_preview(message: BaseMessage) -> str:
    text = message.text if isinstance(message.text, str) else str(message.content)
    calls = getattr(message, "tool_calls", None)
    if not text.strip() and calls:
        text = "calls " + ", ".join(str(c.get("name")) for c in calls)
    return f"{message.type}: {_clip(text)}"


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _PREVIEW else flat[: _PREVIEW - 1] + "…"


def _message_dict(message: BaseMessage) -> dict[str, Any]:
    data: dict[str, Any] = {"id": message.id, "type": message.type, "content": message.content}
    for attr in ("tool_calls", "tool_call_id", "name"):
        value = getattr(message, attr, None)
        if value:
            data[attr] = value
    return data


def _version_label(v: Version) -> str:
    names = f" [{', '.join(v.tags)}]" if v.tags else ""
    return f"{v.checkpoint_id} (turn {v.turn}, {v.op}){names}"


def _num(value: int | None) -> str:
    return "" if value is None else str(value)


def _parse_ts(ts: str) -> datetime:
    parsed = datetime.fromisoformat(ts)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
