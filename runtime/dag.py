"""The DAG of one AI message's tool calls: references, validation, plan and critical path.

A tool-call argument may refer to an earlier call's result (or a field of it). Three
syntaxes are accepted; the structured one is canonical because it cannot be confused
with ordinary text:

- structured (canonical): ``{"$ref": "<call id>", "path": "field.sub"}``;
- LLMCompiler: ``"$1"`` or ``"${1}"`` (1-based position of the call in the message;
  an unbraced ``$N`` that names no call is left as text, e.g. ``"$100-$200"``);
- NESTFUL: ``"$var1$"`` or ``"$var1.field$"`` (a call id or ``varN`` label, then a path).

A reference that is a whole argument value is replaced by the referenced value itself
(any JSON type); a reference embedded in a longer string is replaced by its text. A
key is looked up as a call id first, then as a 1-based position (``1``; ``var1`` too
unless the ids themselves are ``varN`` labels, as in NESTFUL).

This module is pure (no LangGraph): `llmctx.nodes.schedule` executes the plan.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired

from typing_extensions import TypedDict

from llmctx.runtime.errors import PlanValidationError, ReferencePathError

__all__ = [
    "REFERENCE_PROMPT",
    "CallRecord",
    "CallSpec",
    "Plan",
    "PlanRecord",
    "PlanValidationError",
    "ReferencePathError",
    "build_plan",
    "critical_path",
    "find_references",
    "resolve_path",
    "substitute",
]

REFERENCE_PROMPT = """\
You may call several tools in one message. They run in parallel unless one needs the \
result of another. To pass the result of an earlier call in the same message as an \
argument, write the argument value as a reference object instead of a literal:
  {"$ref": "<id of the earlier call>"}                      -> that call's whole result
  {"$ref": "<id of the earlier call>", "path": "field.sub"} -> one field of the result
Use list indexes in paths as numbers, e.g. "items.0.name". A call may only refer to \
calls in the same message, never to itself, and references must not form a cycle. \
Calls with no references between them start at once."""


# `$1` / `${1}`, not followed by `.digit` (so "$5.99" is a price, not a reference).
_COMPILER = re.compile(r"\$\{(\d+)\}|\$(\d+)(?![\d.]*\d)")
# `$var1$`, `$var1.field.sub$`, `$call_abc.x$`.
_NESTFUL = re.compile(r"\$([A-Za-z_][\w-]*)((?:\.[\w-]+)*)\$")


@dataclass(frozen=True)
class _Ref:
    key: str
    path: tuple[str, ...]
    start: int = 0
    end: int = 0
    loose: bool = False  # unbraced `$N`: a reference only if N names a call


def _is_structured(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and "$ref" in value
        and set(value) <= {"$ref", "path"}
        and isinstance(value["$ref"], str | int)
    )


def _split_path(path: Any) -> tuple[str, ...]:
    if path is None or path == "":
        return ()
    if isinstance(path, list | tuple):
        return tuple(str(p) for p in path)
    return tuple(p for p in str(path).split(".") if p)


def _string_refs(text: str, keys: Mapping[str, str] | None = None) -> list[_Ref]:
    refs: list[_Ref] = []
    taken: list[tuple[int, int]] = []
    for m in _NESTFUL.finditer(text):
        refs.append(_Ref(m.group(1), _split_path(m.group(2)), m.start(), m.end()))
        taken.append((m.start(), m.end()))
    for m in _COMPILER.finditer(text):
        if any(a <= m.start() < b for a, b in taken):
            continue
        if m.group(1):
            refs.append(_Ref(m.group(1), (), m.start(), m.end()))
        elif keys is None or m.group(2) in keys:
            refs.append(_Ref(m.group(2), (), m.start(), m.end(), loose=True))
    return sorted(refs, key=lambda r: r.start)


def _walk_refs(value: Any, keys: Mapping[str, str] | None) -> list[_Ref]:
    if _is_structured(value):
        return [_Ref(str(value["$ref"]), _split_path(value.get("path")))]
    if isinstance(value, str):
        return _string_refs(value, keys) if "$" in value else []
    if isinstance(value, Mapping):
        return [r for v in value.values() for r in _walk_refs(v, keys)]
    if isinstance(value, list | tuple):
        return [r for v in value for r in _walk_refs(v, keys)]
    return []


def find_references(
    args: Any, keys: Mapping[str, str] | None = None
) -> list[tuple[str, tuple[str, ...]]]:
    """Every reference in `args` (any nesting), as `(key, path)` in order of appearance.

    With `keys` (the plan's reference keys), an unbraced ``$N`` that names no call is
    text, not a reference (``"$100-$200"`` is a price range); ``${N}``, NESTFUL and
    structured references always count, so a missing one is reported.
    """
    return [(r.key, r.path) for r in _walk_refs(args, keys)]


def resolve_path(value: Any, path: Sequence[str], *, call_id: str = "?") -> Any:
    """Follow `path` (dict keys or list indexes) into `value`; a JSON string is parsed
    first. Raises `ReferencePathError` naming the missing step and the keys that exist."""
    cur = value
    for i, step in enumerate(path):
        if isinstance(cur, str):
            with contextlib.suppress(ValueError):
                cur = json.loads(cur)
        if isinstance(cur, Mapping) and step in cur:
            cur = cur[step]
        elif (
            isinstance(cur, list | tuple)
            and step.lstrip("-").isdigit()
            and -len(cur) <= int(step) < len(cur)
        ):
            cur = cur[int(step)]
        elif hasattr(cur, step) and not isinstance(cur, str | int | float | bool):
            cur = getattr(cur, step)
        else:
            have = list(cur)[:20] if isinstance(cur, Mapping) else type(cur).__name__
            raise ReferencePathError(
                f"reference to call {call_id!r}: path {'.'.join(path)!r} has no "
                f"{'.'.join(path[: i + 1])!r} (available: {have}); fix the path"
            )
    return cur


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def substitute(args: Any, results: Mapping[str, Any], key_to_id: Mapping[str, str]) -> Any:
    """`args` with every reference replaced by the referenced result (or a field of it).

    `results` maps call id → result value; `key_to_id` maps every accepted reference key
    (ids, positions, `varN`) to a call id. A whole-value reference keeps the value's type;
    an embedded one is replaced by its text.
    """
    if _is_structured(args):
        cid = key_to_id[str(args["$ref"])]
        return resolve_path(results[cid], _split_path(args.get("path")), call_id=cid)
    if isinstance(args, str):
        if "$" not in args:
            return args
        refs = _string_refs(args, key_to_id)
        if not refs:
            return args
        if len(refs) == 1 and refs[0].start == 0 and refs[0].end == len(args):
            r = refs[0]
            cid = key_to_id[r.key]
            return resolve_path(results[cid], r.path, call_id=cid)
        out, pos = [], 0
        for r in refs:
            cid = key_to_id[r.key]
            out.append(args[pos : r.start])
            out.append(_text(resolve_path(results[cid], r.path, call_id=cid)))
            pos = r.end
        out.append(args[pos:])
        return "".join(out)
    if isinstance(args, Mapping):
        return {k: substitute(v, results, key_to_id) for k, v in args.items()}
    if isinstance(args, list | tuple):
        return [substitute(v, results, key_to_id) for v in args]
    return args


@dataclass
class CallSpec:
    """One tool call of the plan: position, id, tool name, raw args, the ids of the calls
    it depends on, their positions (`dep_indexes`) and its level (0 = no dependencies)."""

    index: int
    id: str
    name: str
    args: dict[str, Any]
    deps: tuple[str, ...] = ()
    dep_indexes: tuple[int, ...] = ()
    level: int = 0


@dataclass
class Plan:
    """A validated DAG of tool calls: `calls` in message order, `order` a deterministic
    topological order (indexes; by level, deepest chains first), `key_to_id` the
    reference keys, `levels` the depth of each call (0 = no dependencies)."""

    calls: list[CallSpec]
    order: list[int]
    key_to_id: dict[str, str]
    levels: dict[str, int] = field(default_factory=dict)

    @property
    def by_id(self) -> dict[str, CallSpec]:
        return {c.id: c for c in self.calls}

    @property
    def referenced(self) -> frozenset[int]:
        """Positions of the calls whose result another call uses."""
        return frozenset(d for c in self.calls for d in c.dep_indexes)

    @property
    def depth(self) -> int:
        return 1 + max(self.levels.values(), default=-1)


class CallRecord(TypedDict):
    """One call in the recorded plan: status is ok, error, skipped or rejected; times are
    milliseconds from the plan's first start (None when it never ran)."""

    id: str
    name: str
    deps: list[str]
    level: int
    status: str
    start_ms: float | None
    end_ms: float | None
    attempts: int
    error: NotRequired[str]


class PlanRecord(TypedDict):
    """The plan of the last scheduled tool-call message, for versions and the monitor."""

    calls: list[CallRecord]
    critical_path: list[str]
    critical_path_ms: float
    makespan_ms: float
    depth: int
    max_concurrency: int
    peak_concurrency: int
    valid: bool


def _key_map(calls: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], set[str]]:
    key_to_id: dict[str, str] = {}
    dups: set[str] = set()
    for call in calls:
        cid = call["id"]
        if cid in key_to_id:
            dups.add(cid)
        key_to_id.setdefault(cid, cid)
    labelled = any(re.fullmatch(r"var\d+", c["id"]) for c in calls)
    for pos, call in enumerate(calls, start=1):
        key_to_id.setdefault(str(pos), call["id"])
        if not labelled:  # `varN` means the N-th call unless ids are NESTFUL labels
            key_to_id.setdefault(f"var{pos}", call["id"])
    return key_to_id, dups


def build_plan(
    calls: Sequence[Mapping[str, Any]], tool_names: Sequence[str] | set[str] | None = None
) -> Plan:
    """Validate `calls` (dicts with id, name, args) and return their `Plan`.

    Raises `PlanValidationError` listing every affected call: unknown tool (only when
    `tool_names` is given), reference to a missing call, self-reference, cycle, reference
    to an id that several calls share. Duplicate ids nobody refers to are allowed (the
    calls are independent, as `ToolNode` runs them). Pure and O(calls + references).
    """
    calls = [
        {"id": str(c.get("id") or f"call_{i}"), "name": c["name"], "args": c.get("args") or {}}
        for i, c in enumerate(calls, start=1)
    ]
    key_to_id, dups = _key_map(calls)
    first: dict[str, int] = {}
    for i, call in enumerate(calls):
        first.setdefault(call["id"], i)
    problems: dict[str, str] = {}
    known = set(tool_names) if tool_names is not None else None
    specs: list[CallSpec] = []
    for i, call in enumerate(calls):
        cid = call["id"]
        why: list[str] = []
        if known is not None and call["name"] not in known:
            why.append(f"unknown tool {call['name']!r} (known: {sorted(known)})")
        deps: list[str] = []
        for key, _path in find_references(call["args"], key_to_id):
            target = key_to_id.get(key)
            if target is None:
                why.append(f"refers to missing call {key!r}; refer to an id in this message")
            elif target == cid:
                why.append("refers to itself; a call cannot use its own result")
            elif target in dups:
                why.append(
                    f"refers to call id {target!r}, which several calls share; give every "
                    "call a unique id"
                )
            elif target not in deps:
                deps.append(target)
        if why:
            problems.setdefault(cid, "; ".join(why))
        idx = tuple(first[d] for d in deps)
        specs.append(CallSpec(i, cid, call["name"], dict(call["args"]), tuple(deps), idx))
    order, levels, cyclic = _toposort(specs)
    for cid in cyclic:
        if cid not in problems:
            problems[cid] = f"is part of a dependency cycle ({' → '.join(cyclic)}); break the cycle"
    if problems:
        raise PlanValidationError(problems)
    return Plan(specs, order, key_to_id, levels)


def _toposort(specs: list[CallSpec]) -> tuple[list[int], dict[str, int], list[str]]:
    """A deterministic topological order: by level, and within a level the deepest
    chains first.

    Kahn's algorithm twice: once by position, to find levels (set on each spec) and the
    calls left in cycles; then by (level, -height, position), where the height counts
    the calls on the longest chain from a call down. Every call that can start at once
    is issued before any call that must wait, and among them the one that starts the
    longest chain goes first. Returns the order, levels by id and cyclic ids.
    """
    n = len(specs)
    children: list[list[int]] = [[] for _ in specs]
    for s in specs:
        for d in s.dep_indexes:
            children[d].append(s.index)

    def kahn(key: Callable[[int], Any]) -> list[int]:
        indeg = [len(s.dep_indexes) for s in specs]
        ready = [(key(i), i) for i in range(n) if indeg[i] == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            _, i = heapq.heappop(ready)
            order.append(i)
            for ch in children[i]:
                indeg[ch] -= 1
                if indeg[ch] == 0:
                    heapq.heappush(ready, (key(ch), ch))
        return order

    by_position = kahn(lambda i: i)
    levels: dict[str, int] = {}
    for i in by_position:
        s = specs[i]
        s.level = 1 + max((specs[d].level for d in s.dep_indexes), default=-1)
        levels[s.id] = max(levels.get(s.id, 0), s.level)
    done = set(by_position)
    cyclic = [s.id for s in specs if s.index not in done]
    if cyclic:
        return by_position, levels, cyclic
    height = [1] * n
    for i in reversed(by_position):
        height[i] = 1 + max((height[c] for c in children[i]), default=0)
    return kahn(lambda i: (specs[i].level, -height[i], i)), levels, cyclic


def critical_path(
    deps: Mapping[str, Sequence[str]], weights: Mapping[str, float]
) -> tuple[list[str], float]:
    """The heaviest dependency chain of a DAG (`deps`: id → ids it waits for) and its
    total weight. Ties go to the earlier id in `deps` order."""
    best: dict[str, tuple[float, str | None]] = {}

    def visit(cid: str) -> float:
        if cid in best:
            return best[cid][0]
        prev, top = None, 0.0
        for d in deps.get(cid, ()):
            w = visit(d)
            if w > top:
                prev, top = d, w
        best[cid] = (top + float(weights.get(cid, 0.0)), prev)
        return best[cid][0]

    end, total = None, -1.0
    for cid in deps:
        w = visit(cid)
        if w > total:
            end, total = cid, w
    path: list[str] = []
    while end is not None:
        path.append(end)
        end = best[end][1]
    return path[::-1], max(total, 0.0)
