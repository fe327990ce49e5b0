"""Read conversation transcripts into LangChain messages, grouped into turns.

`llmctx replay` feeds a recorded conversation through the context graph one turn at a
time. This module turns a file into that input. Two formats are understood, and
`load_transcript` tells them apart by extension and content:

**JSONL**, one message object per line (blank lines are skipped)::

    {"role": "system", "content": "You are a support engineer."}
    {"role": "user", "content": "Why does /login return 500?"}
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
        "function": {"name": "read_file", "arguments": "{\\"path\\": \\"app.py\\"}"}}]}
    {"role": "tool", "tool_call_id": "call_1", "content": "from flask import Flask ..."}

Fields are `role` (system, user, assistant, tool; `human` and `ai` are aliases),
`content` (a string or a list of content parts), and optionally `name`, `tool_calls`
(OpenAI's `{id, type, function: {name, arguments}}` or LangChain's `{id, name, args}`),
`tool_call_id`, `id` and `metadata`. Tool results must follow the assistant message that
made the calls, before any other message, as the chat APIs require. Errors name
`file:line` and the field, e.g.
`chats/a.jsonl:7: field 'role': unknown role 'bot' (expected one of system, user, assistant, tool)`.

**LoCoMo JSON** (a list of samples with `conversation` and `qa`); `conversation=` picks
the sample. `speaker_a` becomes `HumanMessage` and `speaker_b` `AIMessage`, both with a
sanitized `name`. Image turns get ` [shares an image: <blip_caption>]` appended to the text.

**Ids** are stable, so replaying a file twice yields the same ids: an explicit JSONL
`id`, else `<file stem>:<message index>` (`demo:0007`); for LoCoMo
`<sample_id>:<dia_id>` (`conv-26:D3:7`).

**Turns.** A turn is what one graph invocation receives: a human message and everything
up to the next human message (AI replies, tool calls, tool results). System messages at
the start of the file are not a turn; they are `Transcript.system`, to be pinned. If the
file opens with non-system messages before any human message, they form turn 0, whose
`human` is None.

**Provenance** (JSONL line and `metadata`; LoCoMo `dia_id`, session, date and speaker)
lives in `message.response_metadata["llmctx"]`. Not in `additional_kwargs`: several
OpenAI-compatible integrations copy those into the request body, while no integration
sends `response_metadata`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from llmctx.runtime.errors import TranscriptError

__all__ = [
    "META_KEY",
    "QAItem",
    "Transcript",
    "TranscriptFormat",
    "Turn",
    "demo_transcript_path",
    "load_transcript",
    "message_meta",
    "transcript_info",
    "write_jsonl",
]

TranscriptFormat = Literal["jsonl", "locomo"]

META_KEY = "llmctx"
"""Key under `response_metadata` that holds a message's transcript provenance."""

_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
}
_EXPECTED_ROLES = "system, user, assistant, tool"
_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id", "id", "metadata")
_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DIA_RE = re.compile(r"D\d+:\d+")
_SESSION_RE = re.compile(r"session_(\d+)")


@dataclass(frozen=True)
class Turn:
    """One graph invocation's worth of messages: a human message and what follows it."""

    index: int
    messages: tuple[BaseMessage, ...]

    @property
    def human(self) -> HumanMessage | None:
        """The message that opens the turn; None only for a leading turn 0 without one."""
        first = self.messages[0]
        return first if isinstance(first, HumanMessage) else None

    @property
    def ids(self) -> tuple[str, ...]:
        """The message ids of this turn, in order."""
        return tuple(str(m.id) for m in self.messages)


@dataclass(frozen=True)
class QAItem:
    """A LoCoMo question with its gold answer and evidence turns (`dia_id`s like `D3:7`)."""

    question: str
    answer: str | None
    category: int
    evidence: tuple[str, ...]
    adversarial_answer: str | None = None


@dataclass(frozen=True)
class Transcript:
    """A parsed conversation.

    `messages` holds every message in file order; `system` the leading system messages
    (to pin) and `turns` the rest, so `system + all turn messages == messages`.
    """

    name: str
    source: str
    format: TranscriptFormat
    messages: tuple[BaseMessage, ...]
    system: tuple[SystemMessage, ...]
    turns: tuple[Turn, ...]
    qa: tuple[QAItem, ...] = ()
    conversation: int = 0
    conversations: int = 1
    _by_dia: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def message_id_for(self, dia_id: str) -> str | None:
        """The message id of a LoCoMo `dia_id`, or None if the conversation lacks it."""
        return self._by_dia.get(dia_id)

    def evidence_ids(self, item: QAItem) -> tuple[str, ...]:
        """Message ids of a QA item's evidence turns that exist in this conversation."""
        found = (self._by_dia.get(d) for d in item.evidence)
        return tuple(i for i in found if i is not None)


def message_meta(message: BaseMessage) -> dict[str, Any]:
    """The transcript provenance of a message (`{}` if it did not come from a transcript)."""
    meta = message.response_metadata.get(META_KEY)
    return meta if isinstance(meta, dict) else {}


def demo_transcript_path() -> Path:
    """Path of the packaged demo conversation (a Flask debugging session, then a launch
    email), for `llmctx replay` without arguments, examples and tests."""
    resource = files("llmctx.runtime").joinpath("data", "demo.jsonl")
    path = Path(str(resource))
    if not path.is_file():
        raise TranscriptError(
            f"the packaged demo transcript is missing at {path}; reinstall llmctx"
        )
    return path


def load_transcript(path: Path | str, *, conversation: int | None = None) -> Transcript:
    """Read a JSONL or LoCoMo transcript, detecting the format.

    `conversation` selects the sample of a LoCoMo file (default 0); a JSONL file holds
    one conversation, so only None or 0 are accepted for it.

    >>> t = load_transcript(demo_transcript_path())
    >>> len(t.system), t.turns[0].human is not None, t.messages[1].id
    (1, True, 'demo:0001')
    """
    display = str(path)
    text = _read(Path(path), display)
    fmt, data = _detect(Path(path), text, display)
    if fmt == "jsonl":
        if conversation not in (None, 0):
            raise TranscriptError(
                f"{display}: a JSONL transcript holds one conversation; "
                f"conversation {conversation} does not exist (use 0 or omit it)"
            )
        return _load_jsonl(text, display, Path(path).stem)
    samples = _locomo_samples(data, display)
    index = 0 if conversation is None else conversation
    if not 0 <= index < len(samples):
        raise TranscriptError(
            f"{display}: conversation {index} is out of range; the file holds "
            f"{len(samples)} conversation(s), valid: 0-{len(samples) - 1}"
        )
    return _load_locomo(samples, index, display, Path(path).stem)


def transcript_info(path: Path | str) -> dict[str, Any]:
    """Summarize a transcript file: format and, per conversation, messages and turns.

    Returns `{"path", "format", "conversations", "messages", "turns", "tool_calls",
    "per_conversation": [{"index", "name", "messages", "turns", "tool_calls"}, ...]}`,
    where the top-level counts are those of conversation 0.
    """
    display = str(path)
    text = _read(Path(path), display)
    fmt, data = _detect(Path(path), text, display)
    if fmt == "jsonl":
        loaded = [_load_jsonl(text, display, Path(path).stem)]
    else:
        samples = _locomo_samples(data, display)
        loaded = [_load_locomo(samples, i, display, Path(path).stem) for i in range(len(samples))]
    per = [
        {
            "index": i,
            "name": t.name,
            "messages": len(t.messages),
            "turns": len(t.turns),
            "tool_calls": sum(len(getattr(m, "tool_calls", ())) for m in t.messages),
        }
        for i, t in enumerate(loaded)
    ]
    first = per[0]
    return {
        "path": display,
        "format": fmt,
        "conversations": len(per),
        "messages": first["messages"],
        "turns": first["turns"],
        "tool_calls": first["tool_calls"],
        "per_conversation": per,
    }


def write_jsonl(messages: Iterable[BaseMessage], path: Path | str) -> None:
    """Write messages as a JSONL transcript that `load_transcript` reads back unchanged.

    Tool calls are written in OpenAI's shape; ids and `metadata` are kept.
    """
    lines = [json.dumps(_message_to_line(m), ensure_ascii=False) for m in messages]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# -- reading and detection ---------------------------------------------------------


def _read(path: Path, display: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TranscriptError(f"{display}: no such transcript file") from None
    except IsADirectoryError:
        raise TranscriptError(f"{display}: is a directory, expected a transcript file") from None
    except UnicodeDecodeError as exc:
        raise TranscriptError(
            f"{display}: not UTF-8 text (byte {exc.start}); save the transcript as UTF-8"
        ) from None
    except OSError as exc:
        raise TranscriptError(f"{display}: cannot be read: {exc.strerror}") from None


def _detect(path: Path, text: str, display: str) -> tuple[TranscriptFormat, Any]:
    """JSONL by `.jsonl` extension, else by content: a whole-file JSON value with
    `conversation` objects is LoCoMo; one JSON object per line is JSONL."""
    if path.suffix.lower() == ".jsonl":
        return "jsonl", None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        first = next((line for line in text.split("\n") if line.strip()), "")
        try:
            first_obj = json.loads(first)
        except json.JSONDecodeError:
            first_obj = None
        if isinstance(first_obj, dict):
            return "jsonl", None
        raise TranscriptError(
            f"{display}: not a transcript; expected JSONL (one {{role, content}} object "
            "per line) or LoCoMo JSON (a list of samples with 'conversation')"
        ) from None
    if _looks_like_locomo(data):
        return "locomo", data
    if isinstance(data, dict) and "role" in data:
        return "jsonl", None
    raise TranscriptError(
        f"{display}: not a transcript; the JSON is neither LoCoMo (a list of samples with "
        "'conversation') nor a JSONL message line"
    )


def _looks_like_locomo(data: Any) -> bool:
    samples = data if isinstance(data, list) else [data]
    return bool(samples) and all(
        isinstance(s, dict) and isinstance(s.get("conversation"), dict) for s in samples
    )


def _group_turns(
    messages: Sequence[BaseMessage],
) -> tuple[tuple[SystemMessage, ...], tuple[Turn, ...]]:
    """Split off the leading system messages, then open a turn at every human message."""
    start = 0
    while start < len(messages) and isinstance(messages[start], SystemMessage):
        start += 1
    groups: list[list[BaseMessage]] = []
    for message in messages[start:]:
        if isinstance(message, HumanMessage) or not groups:
            groups.append([])
        groups[-1].append(message)
    system = tuple(m for m in messages[:start] if isinstance(m, SystemMessage))
    return system, tuple(Turn(i, tuple(g)) for i, g in enumerate(groups))


# -- JSONL -------------------------------------------------------------------------


class _LineError(Exception):
    """A problem with one field of the current line; becomes a TranscriptError."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


def _fail(display: str, line: int, field: str | None, problem: str) -> TranscriptError:
    where = f"field '{field}': " if field else ""
    return TranscriptError(f"{display}:{line}: {where}{problem}")


def _kind(value: Any) -> str:
    """JSON type name of a value, for error messages."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


@dataclass
class _JsonlState:
    """What the reader remembers across lines to validate ids and tool pairing."""

    ids: dict[str, int] = field(default_factory=dict)
    calls: dict[str, tuple[int, str]] = field(default_factory=dict)  # id -> (line, tool)
    answered: dict[str, int] = field(default_factory=dict)  # call id -> result line
    pending: list[str] = field(default_factory=list)  # calls awaiting a result, in order


def _load_jsonl(text: str, display: str, stem: str) -> Transcript:
    state = _JsonlState()
    messages: list[BaseMessage] = []
    for line_no, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _fail(
                display, line_no, None, f"malformed JSON: {exc.msg} (column {exc.colno})"
            ) from None
        try:
            messages.append(_parse_line(obj, line_no, len(messages), stem, state))
        except _LineError as exc:
            raise _fail(display, line_no, exc.field, exc.problem) from None
    if state.pending:
        call_id = state.pending[0]
        line_no, _ = state.calls[call_id]
        raise _fail(
            display,
            line_no,
            "tool_calls",
            f"tool call '{call_id}' has no result; add a tool message with "
            f'"tool_call_id": "{call_id}" after line {line_no}',
        )
    if not messages:
        raise TranscriptError(f"{display}: the transcript has no messages")
    system, turns = _group_turns(messages)
    return Transcript(
        name=stem,
        source=display,
        format="jsonl",
        messages=tuple(messages),
        system=system,
        turns=turns,
    )


def _parse_line(obj: Any, line_no: int, index: int, stem: str, state: _JsonlState) -> BaseMessage:
    if not isinstance(obj, dict):
        raise _LineError(
            None, f'expected a JSON object like {{"role": ..., "content": ...}}, got {_kind(obj)}'
        )
    unknown = [k for k in obj if k not in _FIELDS]
    if unknown:
        raise _LineError(
            unknown[0],
            f"unknown field (expected {', '.join(_FIELDS)}; put extra data under 'metadata')",
        )
    raw_role = obj.get("role")
    if raw_role is None:
        raise _LineError("role", f"missing (expected one of {_EXPECTED_ROLES})")
    role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        raise _LineError("role", f"unknown role {raw_role!r} (expected one of {_EXPECTED_ROLES})")
    if state.pending and role != "tool":
        call_id = state.pending[0]
        raise _LineError(
            "role",
            f"expected a tool message answering tool call '{call_id}' "
            f"(line {state.calls[call_id][0]}) before this {role} message",
        )

    msg_id = _parse_id(obj, index, stem, line_no, state)
    name = _parse_name(obj.get("name"), role)
    tool_calls = _parse_tool_calls(obj.get("tool_calls"), role, line_no, state)
    content = _parse_content(obj.get("content", _MISSING), role, bool(tool_calls))
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _LineError("metadata", f"expected an object, got {_kind(metadata)}")
    if "tool_call_id" in obj and role != "tool":
        raise _LineError("tool_call_id", "only tool messages have a tool_call_id")

    meta: dict[str, Any] = {"line": line_no}
    if metadata:
        meta["metadata"] = metadata
    common: dict[str, Any] = {"id": msg_id, "response_metadata": {META_KEY: meta}}
    if name is not None:
        common["name"] = name
    if role == "system":
        return SystemMessage(content=content, **common)
    if role == "user":
        return HumanMessage(content=content, **common)
    if role == "assistant":
        state.pending = [c["id"] for c in tool_calls]
        return AIMessage(content=content, tool_calls=tool_calls, **common)
    call_id = _parse_tool_call_id(obj.get("tool_call_id"), line_no, state)
    common.setdefault("name", state.calls[call_id][1])
    return ToolMessage(content=content, tool_call_id=call_id, **common)


_MISSING = object()


def _parse_id(obj: dict[str, Any], index: int, stem: str, line_no: int, state: _JsonlState) -> str:
    raw = obj.get("id")
    if raw is not None and (not isinstance(raw, str) or not raw):
        raise _LineError("id", f"expected a non-empty string, got {_kind(raw)}")
    msg_id = raw if raw is not None else f"{stem}:{index:04d}"
    if msg_id in state.ids:
        raise _LineError(
            "id", f"duplicate message id '{msg_id}' (already used on line {state.ids[msg_id]})"
        )
    state.ids[msg_id] = line_no
    return msg_id


def _parse_name(raw: Any, role: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _LineError("name", f"expected a string, got {_kind(raw)}")
    # Chat APIs reject other participant names; a tool message's name is the tool's.
    if role != "tool" and not _NAME_RE.match(raw):
        raise _LineError(
            "name", f"invalid name {raw!r} (use 1-64 letters, digits, '_' or '-', no spaces)"
        )
    return raw


def _parse_content(raw: Any, role: str, has_tool_calls: bool) -> str | list[str | dict]:
    if raw is _MISSING or raw is None:
        if role == "assistant" and has_tool_calls:
            return ""  # OpenAI sends null content next to tool calls
        state = "missing" if raw is _MISSING else "null"
        raise _LineError("content", f"{state} (expected a string or a list of content parts)")
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise _LineError(
            "content", f"expected a string or a list of content parts, got {_kind(raw)}"
        )
    for i, part in enumerate(raw):
        if isinstance(part, str):
            continue
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _LineError(
                f"content[{i}]",
                f"expected a string or a content part object with a 'type', got {_kind(part)}",
            )
    return raw


def _parse_tool_calls(
    raw: Any, role: str, line_no: int, state: _JsonlState
) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if role != "assistant":
        raise _LineError("tool_calls", "only assistant messages can make tool calls")
    if not isinstance(raw, list):
        raise _LineError("tool_calls", f"expected a list of tool calls, got {_kind(raw)}")
    calls = [_parse_tool_call(tc, f"tool_calls[{i}]") for i, tc in enumerate(raw)]
    for i, call in enumerate(calls):
        if call["id"] in state.calls:
            first = state.calls[call["id"]][0]
            raise _LineError(
                f"tool_calls[{i}].id",
                f"duplicate tool call id '{call['id']}' (first used on line {first})",
            )
        state.calls[call["id"]] = (line_no, call["name"])
    return calls


def _parse_tool_call(raw: Any, where: str) -> dict[str, Any]:
    """Accept OpenAI's `{id, type, function: {name, arguments}}` or LangChain's
    `{id, name, args}` and return LangChain's `ToolCall` dict."""
    if not isinstance(raw, dict):
        raise _LineError(where, f"expected a tool call object, got {_kind(raw)}")
    call_id = raw.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise _LineError(f"{where}.id", f"expected a non-empty string, got {_kind(call_id)}")
    if "function" in raw:
        if raw.get("type", "function") != "function":
            raise _LineError(f"{where}.type", f"expected 'function', got {raw['type']!r}")
        fn = raw["function"]
        if not isinstance(fn, dict):
            raise _LineError(f"{where}.function", f"expected an object, got {_kind(fn)}")
        name, args = fn.get("name"), fn.get("arguments", "{}")
        name_field, args_field = f"{where}.function.name", f"{where}.function.arguments"
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise _LineError(
                    args_field, f"not valid JSON: {exc.msg} (position {exc.pos})"
                ) from None
    else:
        if raw.get("type", "tool_call") != "tool_call":
            raise _LineError(f"{where}.type", f"expected 'tool_call', got {raw['type']!r}")
        name, args = raw.get("name"), raw.get("args", {})
        name_field, args_field = f"{where}.name", f"{where}.args"
    if not isinstance(name, str) or not name:
        raise _LineError(name_field, f"expected the tool name as a string, got {_kind(name)}")
    if not isinstance(args, dict):
        raise _LineError(args_field, f"expected a JSON object of arguments, got {_kind(args)}")
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def _parse_tool_call_id(raw: Any, line_no: int, state: _JsonlState) -> str:
    if not isinstance(raw, str) or not raw:
        problem = "missing" if raw is None else f"expected a string, got {_kind(raw)}"
        raise _LineError("tool_call_id", f"{problem} (a tool message answers a tool call)")
    if raw in state.answered:
        raise _LineError(
            "tool_call_id",
            f"tool call '{raw}' already has a result on line {state.answered[raw]}",
        )
    if raw not in state.calls:
        raise _LineError("tool_call_id", f"no earlier assistant tool call has id '{raw}'")
    if raw not in state.pending:
        raise _LineError(
            "tool_call_id",
            f"tool call '{raw}' (line {state.calls[raw][0]}) is not awaiting a result; "
            "tool results must directly follow the assistant message that made the call",
        )
    state.pending.remove(raw)
    state.answered[raw] = line_no
    return raw


def _message_to_line(message: BaseMessage) -> dict[str, Any]:
    role = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}.get(
        message.type
    )
    if role is None:
        raise TranscriptError(
            f"message {message.id!r}: type '{message.type}' cannot be written to JSONL"
        )
    line: dict[str, Any] = {"role": role, "content": message.content}
    if message.name:
        line["name"] = message.name
    if isinstance(message, AIMessage) and message.tool_calls:
        line["tool_calls"] = [
            {
                "id": tc["id"],
                "type": "function",
                "function": {"name": tc["name"], "arguments": json.dumps(tc["args"])},
            }
            for tc in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        line["tool_call_id"] = message.tool_call_id
    if message.id:
        line["id"] = message.id
    if metadata := message_meta(message).get("metadata"):
        line["metadata"] = metadata
    return line


# -- LoCoMo ------------------------------------------------------------------------


def _locomo_samples(data: Any, display: str) -> list[dict[str, Any]]:
    samples = data if isinstance(data, list) else [data]
    if not samples:
        raise TranscriptError(f"{display}: the LoCoMo file holds no conversations")
    return samples


def _speaker_name(raw: str, fallback: str) -> str:
    """A name OpenAI accepts (`^[a-zA-Z0-9_-]{1,64}$`): runs of other characters become `_`."""
    cleaned = re.sub(r"[^a-zA-Z0-9_-]+", "_", raw).strip("_")[:64]
    return cleaned or fallback


def _load_locomo(samples: list[dict[str, Any]], index: int, display: str, stem: str) -> Transcript:
    sample = samples[index]
    sample_id = sample.get("sample_id")
    name = sample_id if isinstance(sample_id, str) and sample_id else f"{stem}-{index}"

    def fail(where: str, problem: str) -> TranscriptError:
        return TranscriptError(
            f"{display}: conversation {index} ({name}): field '{where}': {problem}"
        )

    conv = sample["conversation"]
    speakers: dict[str, tuple[type[BaseMessage], str]] = {}
    for key, cls in (("speaker_a", HumanMessage), ("speaker_b", AIMessage)):
        speaker = conv.get(key)
        if not isinstance(speaker, str) or not speaker:
            raise fail(f"conversation.{key}", f"expected the speaker's name, got {_kind(speaker)}")
        speakers[speaker] = (cls, _speaker_name(speaker, key))

    # Sessions in numeric order: session_10 comes after session_9, not after session_1.
    numbered = sorted(
        (int(m.group(1)), key)
        for key in conv
        if (m := _SESSION_RE.fullmatch(key)) and isinstance(conv[key], list)
    )
    messages: list[BaseMessage] = []
    by_dia: dict[str, str] = {}
    for session, key in numbered:
        when = conv.get(f"{key}_date_time")
        for i, item in enumerate(conv[key]):
            where = f"conversation.{key}[{i}]"
            if not isinstance(item, dict):
                raise fail(where, f"expected a turn object, got {_kind(item)}")
            speaker, dia_id, text = item.get("speaker"), item.get("dia_id"), item.get("text")
            if speaker not in speakers:
                known = " or ".join(repr(s) for s in speakers)
                raise fail(f"{where}.speaker", f"unknown speaker {speaker!r} (expected {known})")
            if not isinstance(dia_id, str) or not dia_id:
                raise fail(f"{where}.dia_id", f"expected an id like 'D1:3', got {_kind(dia_id)}")
            if dia_id in by_dia:
                raise fail(f"{where}.dia_id", f"duplicate dia_id '{dia_id}'")
            if not isinstance(text, str):
                raise fail(f"{where}.text", f"expected a string, got {_kind(text)}")
            caption = item.get("blip_caption")
            content = f"{text} [shares an image: {caption}]" if caption else text
            cls, speaker_name = speakers[speaker]
            msg_id = f"{name}:{dia_id}"
            meta = {
                "dia_id": dia_id,
                "session": session,
                "session_time": when if isinstance(when, str) else None,
                "speaker": speaker,
            }
            messages.append(
                cls(
                    content=content,
                    name=speaker_name,
                    id=msg_id,
                    response_metadata={META_KEY: meta},
                )
            )
            by_dia[dia_id] = msg_id
    if not messages:
        raise fail("conversation", "no sessions with turns (expected 'session_1': [...])")
    system, turns = _group_turns(messages)
    return Transcript(
        name=name,
        source=display,
        format="locomo",
        messages=tuple(messages),
        system=system,
        turns=turns,
        qa=_parse_qa(sample.get("qa") or [], fail),
        conversation=index,
        conversations=len(samples),
        _by_dia=by_dia,
    )


def _parse_qa(raw: Any, fail: Callable[[str, str], TranscriptError]) -> tuple[QAItem, ...]:
    if not isinstance(raw, list):
        raise fail("qa", f"expected a list of questions, got {_kind(raw)}")
    items = []
    for i, qa in enumerate(raw):
        if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
            raise fail(f"qa[{i}].question", "expected a question string")
        evidence = qa.get("evidence") or []
        if not isinstance(evidence, list):
            evidence = [evidence]
        # A few ids are malformed ("D8:6; D9:17", "D"): keep every D<n>:<m> found.
        ids = tuple(m for e in evidence if isinstance(e, str) for m in _DIA_RE.findall(e))
        answer, adversarial = qa.get("answer"), qa.get("adversarial_answer")
        category = qa.get("category", 0)
        if not isinstance(category, int) or isinstance(category, bool):
            raise fail(f"qa[{i}].category", f"expected a number 1-5, got {_kind(category)}")
        items.append(
            QAItem(
                question=qa["question"],
                answer=None if answer is None else str(answer),
                category=category,
                evidence=ids,
                adversarial_answer=None if adversarial is None else str(adversarial),
            )
        )
    return tuple(items)
