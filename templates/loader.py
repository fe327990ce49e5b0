"""Template files: YAML with line numbers, deep merge for `extends:`, and located errors.

A file is composed into YAML nodes rather than loaded straight to Python, so that each
field path (e.g. `("budget", "tiers", "critical")`) keeps the file and line that set
it. Merging a child over its parent merges those marks the same way, so an error in an
inherited field points to the file where it was written:

    .llm/templates/foo.yaml:12: budget.tiers.critical: Input should be a valid number (got 'lots')

Merge rule: mappings merge key by key, recursively; everything else (scalars, lists,
`null`) in the child replaces the parent's value whole. Lists are replaced, not
concatenated, so a child can remove items its parent listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from llmctx.runtime.errors import TemplateError
from llmctx.templates.schema import Template

__all__ = ["FieldPath", "Marks", "ParsedFile", "merge", "parse_template_text", "validate_data"]

FieldPath = tuple[str | int, ...]
"""A field path inside a template, e.g. `("triggers", "keywords", 2)`."""

Marks = dict[FieldPath, tuple[str, int]]
"""Where each field path was set: `(file label, 1-based line)`."""

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class ParsedFile:
    """One template file before inheritance: its own fields, their lines, its parent.

    `data` holds neither `name` nor `extends`; those are directives to the loader and
    are kept apart (`name_line`, `extends`, `extends_line`).
    """

    label: str
    data: dict[str, Any]
    marks: Marks
    top_line: int
    extends: str | None
    extends_line: int
    name_line: int | None


def parse_template_text(text: str, label: str, stem: str) -> ParsedFile:
    """Parse one template file's text; `label` names it in errors, `stem` is its name.

    Raises `TemplateError` with `file:line:column` for malformed YAML, and with
    `file:line` for a root that is not a mapping, non-string or duplicate keys, a
    `name:` that differs from the file name, or an `extends:` that is not a name.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:  # empty file: a template with every default
            return ParsedFile(label, {}, {}, 1, None, 1, None)
        if not isinstance(node, yaml.MappingNode):
            raise TemplateError(
                f"{label}:{_line(node)}: a template must be a mapping of fields "
                f"(name:, system_prompt:, budget: ...), got a {node.id}"
            )
        marks: Marks = {}
        data = _build(loader, node, (), marks, label)
    except yaml.MarkedYAMLError as exc:
        raise TemplateError(_yaml_problem(exc, label)) from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"{label}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()

    name_line = marks.get(("name",), (label, None))[1]
    if "name" in data:
        name = data.pop("name")
        if name != stem:
            raise TemplateError(
                f"{label}:{name_line}: name: {name!r} does not match the file name "
                f"{stem!r}; rename the file to {name}.yaml or remove the name: line"
            )
    extends = data.pop("extends", None)
    extends_line = marks.get(("extends",), (label, _line(node)))[1]
    if extends is not None and not (isinstance(extends, str) and extends):
        raise TemplateError(
            f"{label}:{extends_line}: extends: must be the name of another template "
            f"(got {extends!r})"
        )
    own = {p: m for p, m in marks.items() if p[0] not in ("name", "extends")}
    return ParsedFile(label, data, own, _line(node), extends, extends_line, name_line)


def merge(
    base: Mapping[str, Any], base_marks: Marks, over: Mapping[str, Any], over_marks: Marks
) -> tuple[dict[str, Any], Marks]:
    """Deep-merge `over` onto `base` (mappings merge, anything else replaces).

    Returns the merged data and marks; neither input is modified.

        >>> merge({"a": {"x": 1, "y": [1]}}, {}, {"a": {"y": [2]}}, {})[0]
        {'a': {'x': 1, 'y': [2]}}
    """
    replaced: list[FieldPath] = []
    data = _merge(base, over, (), replaced)
    marks = {
        path: mark
        for path, mark in base_marks.items()
        if not any(path[: len(r)] == r for r in replaced)
    }
    marks.update(over_marks)
    return data, marks


def validate_data(data: Mapping[str, Any], marks: Marks, label: str, top_line: int) -> Template:
    """Validate merged data into a `Template`, explaining errors with file:line: field.

    An error's location is the longest field-path prefix with a known mark: the field
    itself, or for a missing field the mapping that should contain it, or else the
    top of the file being loaded.
    """
    try:
        return Template.model_validate(data)
    except ValidationError as exc:
        raise TemplateError(explain(exc, marks, label, top_line)) from None


def explain(exc: ValidationError, marks: Marks, label: str, top_line: int) -> str:
    """One `file:line: field: problem (got value)` line per pydantic error."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        where = (label, top_line)
        for size in range(len(loc), 0, -1):
            if loc[:size] in marks:
                where = marks[loc[:size]]
                break
        field = ".".join(str(p) for p in loc) or "template"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = f"unknown field; {_known_fields(loc)}"
        given = err.get("input")
        got = "" if isinstance(given, Mapping | list | tuple) else f" (got {given!r})"
        if err.get("type") in ("missing", "extra_forbidden"):
            got = ""
        lines.append(f"{where[0]}:{where[1]}: {field}: {msg}{got}")
    return "\n".join(lines)


def _build(
    loader: yaml.SafeLoader, node: yaml.Node, path: FieldPath, marks: Marks, label: str
) -> Any:
    """Construct Python data from `node`, recording the line of every key and item."""
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve `<<:` merge keys like yaml.safe_load does
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise TemplateError(
                    f"{label}:{_line(key_node)}: field names must be strings, got {key!r}"
                )
            if key in out:
                raise TemplateError(
                    f"{label}:{_line(key_node)}: {_dotted((*path, key))}: duplicate field; "
                    "remove one of the two"
                )
            marks[(*path, key)] = (label, _line(key_node))
            out[key] = _build(loader, value_node, (*path, key), marks, label)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            marks[(*path, index)] = (label, _line(item))
            items.append(_build(loader, item, (*path, index), marks, label))
        return items
    return loader.construct_object(node, deep=True)


def _merge(
    base: Mapping[str, Any], over: Mapping[str, Any], path: FieldPath, replaced: list[FieldPath]
) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        here = (*path, key)
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            out[key] = _merge(base[key], value, here, replaced)
        else:
            if key in base:
                replaced.append(here)
            out[key] = value
    return out


def _known_fields(loc: tuple[Any, ...]) -> str:
    """`known fields: ...` for the model that owns the extra field at `loc`."""
    model: Any = Template
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        model = getattr(field, "annotation", None) if field else None
    fields = getattr(model, "model_fields", None)
    return f"known fields: {', '.join(fields)}" if fields else "remove it"


def _yaml_problem(exc: yaml.MarkedYAMLError, label: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
    problem = exc.problem or exc.context or "invalid YAML"
    context = ""
    if exc.context and exc.problem:
        started = exc.context_mark
        at = f" started at line {started.line + 1}" if started and started != mark else ""
        context = f" ({exc.context}{at})"
    return f"{where}: invalid YAML: {problem}{context}"


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _dotted(path: FieldPath) -> str:
    return ".".join(str(p) for p in path)
