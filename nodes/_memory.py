"""Shared plumbing of the memory nodes: namespaces, the retriever per store, rendering.

One `HybridRetriever` is kept per store object (its BM25 and vector indexes live in
memory and are expensive to rebuild), and one embedder per embeddings configuration
(a local model takes seconds to load).
"""

from __future__ import annotations

import re
import threading
from datetime import datetime
from typing import Any

from langchain_core.messages import BaseMessage, ToolMessage
from langgraph.store.base import BaseStore

from llmctx.runtime.embeddings import Embedder, make_embedder
from llmctx.runtime.errors import ConfigError
from llmctx.runtime.retrieval import HybridRetriever
from llmctx.runtime.transcripts import message_meta

MEMORY_ROOT = ("llmctx", "memories")
"""Every memory lives under `MEMORY_ROOT + (user, domain)`."""

DEFAULT_USER = "default"

_LOCK = threading.Lock()
_RETRIEVERS: dict[int, tuple[BaseStore, Any, HybridRetriever]] = {}
_EMBEDDERS: dict[str, Embedder | None] = {}


def memory_namespace(user_id: str | None, domain: str) -> tuple[str, ...]:
    """The namespace of one user's memories in one domain (a template's namespace).

    Users are isolated by namespace: a search under one user's prefix never sees
    another user's memories. Raises `ConfigError` for a user or domain a store
    namespace cannot hold (empty, or containing `.`).
    """
    for what, value in (("user_id", user_id or DEFAULT_USER), ("namespace", domain)):
        if not value or "." in value:
            raise ConfigError(
                f"{what} {value!r} cannot name a memory namespace: it must be non-empty "
                "and contain no '.' (use e.g. 'alice-example-com' for an email address)"
            )
    return (*MEMORY_ROOT, user_id or DEFAULT_USER, domain)


def embedder_for(settings: Any, override: Any = None) -> Embedder | None:
    """The run's embedder: `override` if given, else the settings', built once."""
    if override is not None:
        return Embedder.wrap(override)
    config = getattr(settings, "embeddings", None)
    if config is None:
        return None
    key = config.model_dump_json()
    with _LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = make_embedder(config)
        return _EMBEDDERS[key]


def retriever_for(store: BaseStore, embedder: Embedder | None) -> HybridRetriever:
    """The retriever of `store` (kept for the store's lifetime in this process)."""
    with _LOCK:
        entry = _RETRIEVERS.get(id(store))
        if entry is not None and entry[0] is store and entry[1] is embedder:
            return entry[2]
        retriever = HybridRetriever(store, embedder=embedder)
        _RETRIEVERS[id(store)] = (store, embedder, retriever)
        if len(_RETRIEVERS) > 64:
            _RETRIEVERS.pop(next(iter(_RETRIEVERS)))
        return retriever


def speaker_of(message: BaseMessage) -> str:
    if isinstance(message, ToolMessage):
        return f"tool {message.name}" if message.name else "tool"
    if message.name:
        return str(message.name)
    return {"human": "user", "ai": "assistant", "system": "system"}.get(message.type, message.type)


def message_text(message: BaseMessage) -> str:
    content = message.content
    text = content if isinstance(content, str) else message.text
    return " ".join(str(text).split())


def memory_content(value: dict[str, Any]) -> str:
    """How a memory reads in the window: its day (when known), then its text.

    The day matters: "when did she ...?" is only answerable if the turn's date comes
    with it. The clock time is left out (it is rarely asked, and costs tokens on every
    memory), and so is the kind of a conversation turn, whose text already starts with
    its speaker: `[8 May, 2023] Caroline: I went to ...`, `[summary from 8 May, 2023] ...`.
    """
    when = day_of(value.get("when"))
    kind = value.get("kind", "memory")
    if kind == "turn":
        label = f"[{when}]" if when else ""
    else:
        label = f"[{kind} from {when}]" if when else f"[{kind}]"
    text = str(value.get("text", ""))
    return f"{label} {text}" if label else text


_CLOCK_FIRST = re.compile(r"^\s*\d{1,2}[:.]\d{2}(?::\d{2})?\s*(?:[ap]\.?m\.?)?\s*(?:on\s+)?", re.I)
_CLOCK_LAST = re.compile(r"[\sT]+\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:[ap]\.?m\.?)?$", re.I)


def day_of(when: Any) -> str | None:
    """The day of a readable time, without its clock time.

    >>> day_of("1:56 pm on 8 May, 2023"), day_of("2024-03-01 14:05")
    ('8 May, 2023', '2024-03-01')
    """
    if not isinstance(when, str) or not when.strip():
        return None
    day = _CLOCK_LAST.sub("", _CLOCK_FIRST.sub("", when.strip())).strip(" ,")
    return day or when.strip()


def when_of(message: BaseMessage) -> str | None:
    """A readable date for a message: its transcript session time, else its metadata."""
    meta = message_meta(message)
    when = meta.get("session_time")
    if isinstance(when, str) and when:
        return when
    ts = (message.additional_kwargs or {}).get("ts") or meta.get("ts")
    if isinstance(ts, int | float):
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")
    return ts if isinstance(ts, str) else None
