"""The template registry: packaged templates, user overrides, inheritance and caching.

Templates come from two layers:

- **packaged**: `llmctx/templates/builtin/*.yaml`, read with `importlib.resources`;
- **user**: `<workspace>/templates/*.yaml` (or `.yml`), which override packaged
  templates of the same name.

Rules (decided here, relied on elsewhere):

- **Names are file stems.** `web_development.yaml` is the template
  `web_development`. A `name:` field is optional; if present it must equal the stem.
  This lets `get()` find a template without reading every file.
- **`extends: parent`** deep-merges the file over its resolved parent (mappings merge
  key by key; lists and scalars replace, see `llmctx.templates.loader`). Chains of any
  depth work; cycles and unknown parents are `TemplateError`s pointing at the
  `extends:` line.
- **`extends:` of its own name** means the packaged template of that name. So a user
  `general.yaml` with `extends: general` tweaks the packaged general, and every other
  template extending `general` then gets the user's version.
- **Caching.** `get()` returns the same resolved object until a file it was built
  from changes (mtime, size or inode), or a user file appears or disappears for a name
  in its chain. A cache hit costs a few `stat` calls.

Example:
    >>> reg = TemplateRegistry()
    >>> reg.get("web_development").pruning.strategy
    'priority'
"""

from __future__ import annotations

import builtins
import os
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

from llmctx.runtime.errors import TemplateError, TemplateNotFoundError
from llmctx.templates.loader import (
    Marks,
    ParsedFile,
    merge,
    parse_template_text,
    validate_data,
)
from llmctx.templates.schema import NAME_PATTERN, Template

__all__ = ["TemplateInfo", "TemplateRegistry"]

Origin = Literal["packaged", "user"]
_SUFFIXES = (".yaml", ".yml")
_Signature = tuple[int, int, int] | None
_NAME_RE = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class TemplateInfo:
    """One row of `TemplateRegistry.list()`.

    `overrides` is true for a user template shadowing a packaged one. `error` holds
    the validation message when the template does not load (then `description` is
    empty), so one broken file does not hide the others.
    """

    name: str
    description: str
    source: Origin
    path: str
    extends: str | None
    overrides: bool = False
    error: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class _Source:
    """Where one template file lives."""

    name: str
    origin: Origin
    file: Traversable | Path
    label: str

    @property
    def key(self) -> tuple[Origin, str]:
        return (self.origin, self.name)


@dataclass(frozen=True)
class _Resolved:
    data: dict[str, object]
    marks: Marks
    chain: tuple[_Source, ...]


@dataclass(frozen=True)
class _Entry:
    template: Template
    watched: tuple[Path, ...]
    signature: tuple[_Signature, ...]


class TemplateRegistry:
    """Find, resolve, validate and cache templates.

    `user_dir` is the workspace's `templates/` folder (`None`: packaged templates
    only). It need not exist yet.
    """

    def __init__(self, user_dir: Path | str | None = None) -> None:
        self.user_dir = Path(user_dir) if user_dir is not None else None
        self._packaged = _packaged_sources()
        self._cache: dict[str, _Entry] = {}
        self._parsed: dict[str, tuple[_Signature, ParsedFile]] = {}

    # -- public API ---------------------------------------------------------------

    def names(self) -> list[str]:
        """Every template name, sorted (user and packaged, each once)."""
        return sorted(set(self._packaged) | set(self._user_sources()))

    def get(self, name: str) -> Template:
        """The resolved template `name`, from cache when no file behind it changed.

        Raises `TemplateNotFoundError` (listing the available names) or
        `TemplateError` (file:line: field: problem).
        """
        entry = self._cache.get(name)
        if entry is not None and _signature(entry.watched) == entry.signature:
            return entry.template
        source = self._find(name)
        resolved = self._resolve(source, ())
        template = validate_data(
            {**resolved.data, "name": name}, resolved.marks, source.label, self._top(source)
        )
        watched = self._watch(resolved.chain)
        signature = _signature(watched)
        if self._unchanged_since_parse(resolved.chain):  # else a file moved mid-read
            self._cache[name] = _Entry(template, watched, signature)
        return template

    def list(self) -> builtins.list[TemplateInfo]:
        """One `TemplateInfo` per name, sorted; broken templates carry their `error`."""
        return [self.info(name) for name in self.names()]

    def info(self, name: str) -> TemplateInfo:
        """The `TemplateInfo` of one template (raises `TemplateNotFoundError`).

        A template that does not load still gets an info, with the message in `error`.
        """
        if name not in self.names():
            raise TemplateNotFoundError(self._not_found(name))
        try:
            source = self._find(name)
        except TemplateError as exc:  # e.g. both name.yaml and name.yml exist
            path = str(self._user_candidates(name)[0])
            return TemplateInfo(name, "", "user", path, None, name in self._packaged, str(exc))
        overrides = source.origin == "user" and name in self._packaged
        extends: str | None = None
        try:
            extends = self._parse(source).extends
            template = self.get(name)
        except TemplateError as exc:
            return TemplateInfo(name, "", source.origin, source.label, extends, overrides, str(exc))
        return TemplateInfo(
            name,
            template.description,
            source.origin,
            source.label,
            extends,
            overrides,
            None,
            template.fingerprint,
        )

    def validate(self, path: Path | str) -> Template:
        """Load and validate any template file, resolving `extends:` in this registry.

        The template's name is the file's stem. Nothing is cached, so this always
        reads the file as it is now.
        """
        path = Path(path)
        if path.suffix not in _SUFFIXES:
            raise TemplateError(f"{path}: a template file must end in .yaml or .yml")
        if not path.is_file():
            raise TemplateError(f"{path}: no such template file")
        source = self._as_registered(path) or _Source(path.stem, "user", path, str(path))
        resolved = self._resolve(source, ())
        return validate_data(
            {**resolved.data, "name": path.stem},
            resolved.marks,
            source.label,
            self._top(source),
        )

    def clear_cache(self) -> None:
        """Forget every parsed and resolved template."""
        self._cache.clear()
        self._parsed.clear()

    # -- lookup -----------------------------------------------------------------

    def _user_sources(self) -> dict[str, Path]:
        """User template files by name (a name defined twice is reported by `_find`)."""
        if self.user_dir is None or not self.user_dir.is_dir():
            return {}
        return {
            path.stem: path
            for path in sorted(self.user_dir.iterdir())
            if path.suffix in _SUFFIXES and path.is_file()
        }

    def _user_source(self, name: str) -> _Source | None:
        if self.user_dir is None:
            return None
        hits = [p for p in self._user_candidates(name) if p.is_file()]
        if len(hits) > 1:
            raise TemplateError(
                f"{hits[1]}: template {name!r} is defined twice ({hits[0]} and {hits[1]}); "
                "delete one of them"
            )
        return _Source(name, "user", hits[0], str(hits[0])) if hits else None

    def _user_candidates(self, name: str) -> tuple[Path, ...]:
        if self.user_dir is None:
            return ()
        return tuple(self.user_dir / f"{name}{suffix}" for suffix in _SUFFIXES)

    def _find(self, name: str) -> _Source:
        if not _NAME_RE.fullmatch(name):
            # Also keeps names like "../x" from ever becoming a path.
            bad = self._user_sources().get(name)
            if bad is not None:
                raise TemplateError(
                    f"{bad}: {name!r} is not a valid template name (lowercase letters, "
                    "digits, '_' and '-', starting with a letter or digit); rename the file"
                )
            raise TemplateNotFoundError(self._not_found(name))
        source = self._user_source(name) or self._packaged.get(name)
        if source is None:
            raise TemplateNotFoundError(self._not_found(name))
        return source

    def _not_found(self, name: str) -> str:
        where = f" or add {self.user_dir / (name + '.yaml')}" if self.user_dir else ""
        return (
            f"no template named {name!r}; available: {', '.join(self.names())} "
            f"(pick one of those{where})"
        )

    def _as_registered(self, path: Path) -> _Source | None:
        """The registry's own source for `path`, so validate() and get() agree."""
        try:
            source = self._find(path.stem)
        except TemplateError:
            return None
        if isinstance(source.file, Path) and source.file.resolve() == path.resolve():
            return source
        return None

    # -- resolution ---------------------------------------------------------------

    def _parse(self, source: _Source) -> ParsedFile:
        """Parse one file, reusing the previous parse while the file is unchanged."""
        sig = _signature((source.file,))[0] if isinstance(source.file, Path) else None
        cached = self._parsed.get(source.label)
        if cached is not None and cached[0] == sig and sig is not None:
            return cached[1]
        try:
            text = source.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{source.label}: cannot read template file: {exc}") from None
        parsed = parse_template_text(text, source.label, source.name)
        self._parsed[source.label] = (sig, parsed)
        return parsed

    def _resolve(self, source: _Source, stack: tuple[tuple[str, str], ...]) -> _Resolved:
        """Merge `source` over its chain of parents, detecting cycles via `stack`."""
        chain_names = [n for _, n in stack]
        if source.key in stack:
            loop = " -> ".join([*chain_names, source.name])
            raise TemplateError(
                f"{source.label}: templates extend each other in a cycle ({loop}); "
                "remove one of the extends: lines"
            )
        parsed = self._parse(source)
        if parsed.extends is None:
            return _Resolved(parsed.data, parsed.marks, (source,))
        parent = self._parent(source, parsed)
        base = self._resolve(parent, (*stack, source.key))
        data, marks = merge(base.data, base.marks, parsed.data, parsed.marks)
        return _Resolved(data, marks, (source, *base.chain))

    def _parent(self, source: _Source, parsed: ParsedFile) -> _Source:
        name = parsed.extends
        assert name is not None
        where = f"{source.label}:{parsed.extends_line}: extends"
        if name == source.name:
            # `extends: <own name>` always means the packaged template of that name.
            packaged = self._packaged.get(name)
            if packaged is None or source.origin == "packaged":
                raise TemplateError(
                    f"{where}: {name!r} extends itself; `extends: <own name>` is only "
                    "allowed in a user template that overrides a packaged one"
                )
            return packaged
        try:
            return self._find(name)
        except TemplateNotFoundError:
            raise TemplateError(
                f"{where}: unknown parent template {name!r}; available: {', '.join(self.names())}"
            ) from None

    def _top(self, source: _Source) -> int:
        return self._parse(source).top_line

    def _unchanged_since_parse(self, chain: tuple[_Source, ...]) -> bool:
        for source in chain:
            if isinstance(source.file, Path):
                parsed = self._parsed.get(source.label)
                if parsed is None or parsed[0] != _signature((source.file,))[0]:
                    return False
        return True

    def _watch(self, chain: tuple[_Source, ...]) -> tuple[Path, ...]:
        """Files whose change (or appearance) must invalidate a cached template."""
        paths: builtins.list[Path] = []
        for source in chain:
            paths.extend(self._user_candidates(source.name))
            packaged = self._packaged.get(source.name)
            if packaged is not None and isinstance(packaged.file, Path):
                paths.append(packaged.file)
        return tuple(dict.fromkeys(paths))


def _packaged_sources() -> dict[str, _Source]:
    root = resources.files("llmctx.templates") / "builtin"
    found: dict[str, _Source] = {}
    for item in root.iterdir():
        if item.name.endswith(".yaml") and item.is_file():
            name = item.name.removesuffix(".yaml")
            file: Traversable | Path = Path(str(item)) if isinstance(item, Path) else item
            found[name] = _Source(name, "packaged", file, str(item))
    return found


def _signature(paths: tuple[Traversable | Path, ...]) -> tuple[_Signature, ...]:
    """(mtime_ns, size, inode) per path, or None when it does not exist."""
    sigs: list[_Signature] = []
    for path in paths:
        try:
            st = os.stat(path)  # type: ignore[arg-type]
        except (OSError, TypeError):
            sigs.append(None)
        else:
            sigs.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(sigs)
