# ruff: noqa: RUF001  (CJK punctuation is the point of several inputs)
"""Summarizers: the extractive algorithm's budget, determinism, centrality and MMR; the
chat-model summarizer's prompt, `max_tokens` enforcement and error wrapping."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from llmctx.runtime.errors import ConfigError, LlmctxError
from llmctx.runtime.summarizer import (
    TRUNCATION_MARKER,
    ChatModelSummarizer,
    ExtractiveSummarizer,
    Summarizer,
    SummarizerError,
    SummaryResult,
    make_summarizer,
    split_sentences,
    truncate_to_tokens,
)
from llmctx.runtime.tokens import OFFLINE_ENCODING, TokenCounter
from tests._fakes import CallRecorder

COUNTER = TokenCounter("gpt-4", encoding=OFFLINE_ENCODING)
EXTRACTIVE = ExtractiveSummarizer(COUNTER)
PROMPT = "Summarize the conversation. Keep names, numbers, dates and identifiers."

DIALOGUE = [
    "Caroline: I went to the LGBTQ support group yesterday. It was really powerful.",
    "Melanie: That sounds great! What happened at the support group?",
    "Caroline: People shared stories about coming out. The support group made me feel accepted.",
    "Melanie: I'm so glad. Are you going to the support group again next week?",
    "Caroline: Yes, every Tuesday at 7 pm. I also want to study counseling in 2024.",
    "Melanie: Counseling would suit you. By the way, I painted a sunset last weekend.",
]

_WORDS = st.sampled_from(
    [
        "budget",
        "token",
        "Caroline",
        "deploy",
        "v2.3.1",
        "user_id",
        "getValue()",
        "2024-05-01",
        "naïve",
        "Straße",
        "東京",
        "会議",
        "데이터",
        "🙂",
        "the",
        "a",
        "résumé",
        "",
    ]
)
_ENDS = st.sampled_from([".", "!", "?", "。", "！", "？", "…", "", ".\n", " "])
_SENTENCE = st.builds(
    lambda words, end: " ".join(words) + end, st.lists(_WORDS, min_size=0, max_size=12), _ENDS
)
_TEXT = st.builds(
    lambda speaker, sentences: speaker + " ".join(sentences),
    st.sampled_from(["", "Caroline: ", "#Person1#: ", "Bob: ", "system: "]),
    st.lists(_SENTENCE, min_size=0, max_size=5),
)


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text))


# -- segmentation and truncation ------------------------------------------------------


def test_split_sentences_handles_abbreviations_initials_and_cjk() -> None:
    text = (
        'Mr. Smith met Dr. Jones at 3.30 p.m. today. He said "yes." Then J. R. R. left!\n'
        "今日は晴れです。明日は雨でしょう！本当？ Done"
    )
    assert split_sentences(text) == [
        "Mr. Smith met Dr. Jones at 3.30 p.m. today.",
        'He said "yes."',
        "Then J. R. R. left!",
        "今日は晴れです。",
        "明日は雨でしょう！",
        "本当？",
        "Done",
    ]
    assert split_sentences("") == []
    assert split_sentences("  \n\n ") == []


@settings(max_examples=300, deadline=None)
@given(text=st.text(min_size=0, max_size=400), max_tokens=st.integers(0, 60))
def test_truncate_to_tokens_fits_exactly_and_keeps_a_prefix(text: str, max_tokens: int) -> None:
    out = truncate_to_tokens(text, max_tokens, COUNTER)
    assert COUNTER.count_text(out) <= max_tokens
    if COUNTER.count_text(text) <= max_tokens:
        assert out == text
    else:
        body = out.removesuffix(TRUNCATION_MARKER)
        assert text.startswith(body.rstrip()) or body in ("…", "")


def test_truncate_to_tokens_cuts_huge_text_with_marker_on_a_word_boundary() -> None:
    text = "alpha beta gamma delta " * 20_000
    out = truncate_to_tokens(text, 50, COUNTER)
    assert out.endswith(" …")
    assert COUNTER.count_text(out) in (49, 50)
    assert out.removesuffix(" …").split()[-1] in {"alpha", "beta", "gamma", "delta"}


# -- the extractive summarizer --------------------------------------------------------


def test_extractive_is_a_summarizer_and_reports_exact_counts() -> None:
    result = EXTRACTIVE.summarize(DIALOGUE, prompt=PROMPT, max_tokens=40)
    assert isinstance(EXTRACTIVE, Summarizer)
    assert isinstance(result, SummaryResult)
    assert result.method == "extractive"
    assert result.tokens == COUNTER.count_text(result.text) <= 40
    assert result.input_tokens == sum(COUNTER.count_text(t) for t in DIALOGUE)
    assert result.text  # a real dialogue never summarizes to nothing at 40 tokens
    with pytest.raises(AttributeError):
        result.text = "changed"  # type: ignore[misc]


def test_extractive_keeps_speakers_and_original_order() -> None:
    result = EXTRACTIVE.summarize(DIALOGUE, prompt=PROMPT, max_tokens=60)
    lines = result.text.splitlines()
    assert len(lines) >= 2
    positions = []
    for line in lines:
        speaker, _, body = line.partition(": ")
        assert speaker in {"Caroline", "Melanie"}
        first = split_sentences(body)[0]
        source = next(i for i, t in enumerate(DIALOGUE) if first in t)
        assert DIALOGUE[source].startswith(speaker + ": ")
        positions.append(source)
    assert positions == sorted(positions)


def test_extractive_is_deterministic() -> None:
    runs = {
        ExtractiveSummarizer(COUNTER).summarize(DIALOGUE, prompt=PROMPT, max_tokens=b).text
        for b in (45,)
        for _ in range(5)
    }
    assert len(runs) == 1


def test_extractive_picks_the_central_sentence() -> None:
    # The last sentence shares a term with every other one; the others share nothing
    # with each other. With no lead prior, centrality alone must pick it.
    texts = [
        "Apples grow in the orchard.",
        "Bananas ripen on the windowsill.",
        "Cherries stain the tablecloth.",
        "Dates come from palm trees.",
        "Apples, bananas, cherries and dates fill the fruit basket.",
    ]
    summarizer = ExtractiveSummarizer(COUNTER, lead_bias=0.0, entity_boost=0.0)
    budget = COUNTER.count_text(texts[-1])
    assert summarizer.summarize(texts, prompt="", max_tokens=budget).text == texts[-1]


def test_mmr_avoids_duplicate_sentences() -> None:
    texts = [
        "The payment service crashed at noon because the database pool was exhausted.",
        "The payment service crashed at noon because the database pool was exhausted!",
        "Indeed the payment service crashed at noon because the database pool was exhausted.",
        "The payment service crashed at noon, since the database pool was exhausted.",
        "We raised the pool size to 50 and added an alert on connection waits.",
    ]
    result = EXTRACTIVE.summarize(texts, prompt="", max_tokens=200)
    chosen = split_sentences(result.text)
    assert sum("crashed" in s for s in chosen) == 1
    assert texts[-1] in chosen


def test_mmr_penalty_alone_prefers_novelty_at_a_tight_budget() -> None:
    # No redundancy cut-off: only the MMR term keeps the second pick from being a repeat.
    texts = [
        "The payment service crashed at noon because the database pool was exhausted.",
        "Indeed the payment service crashed at noon because the database pool was exhausted.",
        "The payment service crashed at noon, since the database pool was exhausted.",
        "We raised the pool size to 50 and added an alert on connection waits.",
    ]

    def pick(mmr_lambda: float) -> list[str]:
        summarizer = ExtractiveSummarizer(
            COUNTER, mmr_lambda=mmr_lambda, redundancy=1.0, lead_bias=0.0
        )
        return split_sentences(summarizer.summarize(texts, prompt="", max_tokens=35).text)

    assert sum("crashed" in s for s in pick(1.0)) == 2  # pure centrality repeats itself
    assert pick(0.7) == [texts[0], texts[-1]]


def test_redundancy_one_allows_near_duplicates_but_exact_repeats_never_return() -> None:
    texts = ["The cache hit rate is 93 percent.", "The cache hit rate is 93 percent today."] * 3
    loose = ExtractiveSummarizer(COUNTER, redundancy=1.0).summarize(
        texts, prompt="", max_tokens=200
    )
    assert split_sentences(loose.text) == texts[:2]


def test_empty_and_blank_inputs_give_an_empty_summary() -> None:
    for texts in ([], [""], ["   ", "\n\n"]):
        result = EXTRACTIVE.summarize(texts, prompt=PROMPT, max_tokens=50)
        assert result == SummaryResult(
            "", 0, sum(COUNTER.count_text(t) for t in texts), "extractive"
        )
    assert EXTRACTIVE.summarize(DIALOGUE, prompt=PROMPT, max_tokens=0).text == ""


def test_a_huge_single_sentence_is_truncated_with_the_marker() -> None:
    huge = "Caroline: " + "the deployment pipeline keeps retrying the flaky step " * 2_000
    result = EXTRACTIVE.summarize([huge], prompt=PROMPT, max_tokens=30)
    assert result.text.startswith("Caroline: the deployment pipeline")
    assert result.text.endswith(" …")
    assert result.tokens <= 30
    assert result.tokens >= 28


def test_cjk_dialogue_is_summarized_within_budget() -> None:
    texts = [
        "Alice: 我们明天在北京开会。会议在上午十点开始！请准时到达。",
        "Bob: 好的，我会准时到。会议室在哪里？",
        "Alice: 会议室在三楼。会议大约两个小时。",
    ]
    result = EXTRACTIVE.summarize(texts, prompt=PROMPT, max_tokens=40)
    assert 0 < result.tokens <= 40
    assert all(line.startswith(("Alice: ", "Bob: ")) for line in result.text.splitlines())


def test_invalid_budget_and_parameters_are_llmctx_errors() -> None:
    with pytest.raises(SummarizerError, match="max_tokens"):
        EXTRACTIVE.summarize(DIALOGUE, prompt=PROMPT, max_tokens=-1)
    with pytest.raises(ConfigError, match="mmr_lambda"):
        ExtractiveSummarizer(COUNTER, mmr_lambda=1.5)
    assert issubclass(SummarizerError, LlmctxError)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(_TEXT, min_size=0, max_size=25), max_tokens=st.integers(0, 120))
def test_extractive_budget_holds_exactly_for_any_input(texts: list[str], max_tokens: int) -> None:
    result = EXTRACTIVE.summarize(texts, prompt=PROMPT, max_tokens=max_tokens)
    assert result.tokens == COUNTER.count_text(result.text) <= max_tokens
    # A sentence cut to fit ends with the marker (or, at one token, has no room for it)
    # and its last word may be partial; any other summary is made of the input's words.
    if max_tokens > 1 and not result.text.endswith("…"):
        assert _words(result.text) <= _words("\n".join(texts))
    if max_tokens >= 4 and any(t.strip() for t in texts):
        assert result.text
    again = ExtractiveSummarizer(COUNTER).summarize(texts, prompt=PROMPT, max_tokens=max_tokens)
    assert again == result


def test_async_extractive_matches_sync() -> None:
    sync = EXTRACTIVE.summarize(DIALOGUE, prompt=PROMPT, max_tokens=40)
    assert asyncio.run(EXTRACTIVE.asummarize(DIALOGUE, prompt=PROMPT, max_tokens=40)) == sync


def test_a_hierarchical_input_of_earlier_summaries_still_fits() -> None:
    first = EXTRACTIVE.summarize(DIALOGUE[:3], prompt=PROMPT, max_tokens=40).text
    second = EXTRACTIVE.summarize(DIALOGUE[3:], prompt=PROMPT, max_tokens=40).text
    top = EXTRACTIVE.summarize([first, second], prompt=PROMPT, max_tokens=30)
    assert 0 < top.tokens <= 30
    assert _words(top.text) <= _words(first + "\n" + second)


# -- the chat-model summarizer ----------------------------------------------------------


def _fake(replies: list[str], recorder: CallRecorder) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter(replies), callbacks=[recorder])


def test_chat_summarizer_sends_prompt_and_texts_and_binds_max_tokens() -> None:
    recorder = CallRecorder()
    summarizer = ChatModelSummarizer(_fake(["Caroline joined a support group."], recorder), COUNTER)
    result = summarizer.summarize(DIALOGUE, prompt=PROMPT, max_tokens=64)
    assert result.text == "Caroline joined a support group."
    assert result.tokens == COUNTER.count_text(result.text)
    assert result.method == "model:generic-fake-chat-model"
    ((sent, params),) = recorder.calls
    assert sent == [SystemMessage(PROMPT), HumanMessage("\n".join(DIALOGUE))]
    assert params["max_tokens"] == 64
    assert result.input_tokens == COUNTER.count_messages(sent)


def test_chat_summarizer_truncates_a_reply_longer_than_max_tokens() -> None:
    long_reply = "Caroline talked about the support group and her plans. " * 40
    summarizer = ChatModelSummarizer(_fake([long_reply], CallRecorder()), COUNTER)
    result = summarizer.summarize(DIALOGUE, prompt=PROMPT, max_tokens=25)
    assert result.tokens <= 25
    assert result.text.endswith(" …")
    assert long_reply.startswith(result.text.removesuffix(" …"))


def test_chat_summarizer_async_uses_the_model_and_enforces_the_budget() -> None:
    recorder = CallRecorder()
    summarizer = ChatModelSummarizer(_fake(["word " * 300], recorder), COUNTER)
    result = asyncio.run(summarizer.asummarize(DIALOGUE, prompt=PROMPT, max_tokens=10))
    assert result.tokens <= 10
    assert recorder.calls[0][1]["max_tokens"] == 10


def test_chat_summarizer_skips_the_call_for_nothing_to_summarize() -> None:
    recorder = CallRecorder()
    summarizer = ChatModelSummarizer(_fake(["unused"], recorder), COUNTER)
    assert summarizer.summarize([], prompt=PROMPT, max_tokens=30).text == ""
    assert summarizer.summarize(DIALOGUE, prompt=PROMPT, max_tokens=0).tokens == 0
    assert recorder.calls == []


class _FailingModel(BaseChatModel):
    """A chat model whose provider is down."""

    @property
    def _llm_type(self) -> str:
        return "failing"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise ConnectionError("connection refused by 127.0.0.1:9")


_SEEN_KWARGS: list[dict[str, Any]] = []


class _NoMaxTokensModel(BaseChatModel):
    """A chat model whose client rejects a `max_tokens` argument."""

    @property
    def _llm_type(self) -> str:
        return "no-max-tokens"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        _SEEN_KWARGS.append(dict(kwargs))
        if "max_tokens" in kwargs:
            raise TypeError("create() got an unexpected keyword argument 'max_tokens'")
        reply = AIMessage("a short summary of the whole talk")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def test_chat_model_failures_become_summarizer_errors() -> None:
    summarizer = ChatModelSummarizer(_FailingModel(), COUNTER)
    with pytest.raises(SummarizerError, match=r"'failing' failed: ConnectionError") as info:
        summarizer.summarize(DIALOGUE, prompt=PROMPT, max_tokens=30)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert "extractive" in str(info.value)
    with pytest.raises(SummarizerError):
        asyncio.run(summarizer.asummarize(DIALOGUE, prompt=PROMPT, max_tokens=30))


def test_a_model_rejecting_max_tokens_is_called_without_it_and_still_capped() -> None:
    _SEEN_KWARGS.clear()
    summarizer = ChatModelSummarizer(_NoMaxTokensModel(), COUNTER)
    result = summarizer.summarize(DIALOGUE, prompt=PROMPT, max_tokens=4)
    assert [("max_tokens" in kw) for kw in _SEEN_KWARGS] == [True, False]
    assert result.tokens <= 4
    assert result.text == "a short summary …"


# -- make_summarizer -----------------------------------------------------------------


class _Custom(Summarizer):
    def summarize(self, texts: Any, *, prompt: str, max_tokens: int) -> SummaryResult:
        return SummaryResult("custom", 1, 0, "custom")


def _replies() -> Iterator[str]:
    yield "ok"


def test_make_summarizer_picks_by_configuration() -> None:
    assert isinstance(make_summarizer(None, COUNTER), ExtractiveSummarizer)
    model = GenericFakeChatModel(messages=_replies())
    chat = make_summarizer(model, COUNTER)
    assert isinstance(chat, ChatModelSummarizer) and chat.model is model
    custom = _Custom()
    assert make_summarizer(custom, COUNTER) is custom
    assert asyncio.run(custom.asummarize(["x"], prompt="", max_tokens=5)).text == "custom"
    with pytest.raises(ConfigError, match="BaseChatModel"):
        make_summarizer("gpt-4o-mini", COUNTER)  # type: ignore[arg-type]
