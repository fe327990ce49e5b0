"""Shared pieces of the `compress` and `locomo` benchmarks.

- an exact cl100k `TokenCounter` and `Settings` that never touch the caller's `.llm/`;
- a tiny synthetic LoCoMo-format file for `--smoke` (generated, never copied from the
  data set), and a loader for every conversation of a LoCoMo file;
- `RecordingSummaryModel`, a langchain-core fake chat model that records the prompts it
  is sent and answers with a deterministic extract of them;
- answer normalization for answer containment, strict (the answer string) and by
  tokens (the fraction of the answer's content tokens);
- embedders for the memory benchmarks: the local MiniLM (offline), a shared vector
  cache over it, and a hashing stand-in for smoke runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
import time
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from llmctx.runtime.embeddings import Embedder, make_embedder
from llmctx.runtime.errors import ConfigError
from llmctx.runtime.settings import Settings
from llmctx.runtime.tokens import OFFLINE_ENCODING, TokenCounter
from llmctx.runtime.transcripts import (
    Transcript,
    load_transcript,
    message_meta,
    transcript_info,
)

BENCH_MODEL = "gpt-4"
"""A cl100k model: the data README's budgets are in cl100k tokens."""


def bench_encoding() -> str:
    """The encoding to count with: `LLMCTX_TOKENIZER` if set, else the offline cl100k."""
    return os.environ.get("LLMCTX_TOKENIZER") or OFFLINE_ENCODING


def bench_counter() -> TokenCounter:
    """An exact cl100k counter (fails loudly rather than approximating)."""
    counter = TokenCounter(BENCH_MODEL, encoding=bench_encoding())
    if not counter.exact:
        raise SystemExit(f"benchmark needs an exact tokenizer: {counter.fallback_reason}")
    return counter


def bench_settings(workspace: Path) -> Settings:
    """Settings for a benchmark run: cl100k, no LLM, a private workspace."""
    return Settings.load(
        workspace=workspace, model=BENCH_MODEL, tokenizer=bench_encoding(), llm={"provider": "none"}
    )


def load_conversations(path: Path | str) -> list[Transcript]:
    """Every conversation of a transcript file (a LoCoMo file holds several)."""
    count = int(transcript_info(path)["conversations"])
    return [load_transcript(path, conversation=i) for i in range(count)]


# -- synthetic LoCoMo ----------------------------------------------------------------

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid"]
_PLACES = ["Lisbon", "Kyoto", "Denver", "Oslo", "Nairobi", "Quito", "Hanoi", "Tallinn"]
_THINGS = ["pottery", "violin", "marathon", "garden", "novel", "bakery", "telescope", "kayak"]
_FILLER_TEXT = (
    "honestly it was a long week but the weekend felt great and I keep thinking about "
    "what we talked about last time so tell me more about your plans and how things are"
)
_FILLER = tuple(_FILLER_TEXT.split())


def write_synthetic_locomo(
    path: Path, *, conversations: int = 2, sessions: int = 3, turns: int = 14, seed: int = 5
) -> Path:
    """Write a small LoCoMo-format file with facts, questions and evidence ids.

    Every session's even turns state a fact (`<name> went to <place> for <thing>`);
    questions ask about facts, and their evidence points at those turns. One question
    has a malformed evidence string (`"D1:2; D2:4"`), one points at no turn (`"D99:1"`).
    """
    rng = random.Random(seed)
    samples = []
    for c in range(conversations):
        a, b = rng.sample(_NAMES, 2)
        conv: dict[str, Any] = {"speaker_a": a, "speaker_b": b}
        facts: list[tuple[str, str, str, str]] = []  # (dia_id, who, place, thing)
        for s in range(1, sessions + 1):
            conv[f"session_{s}_date_time"] = f"1:{s:02d} pm on {s} May, 2023"
            session = []
            for t in range(1, turns + 1):
                who = a if t % 2 == 1 else b
                dia = f"D{s}:{t}"
                filler = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(8, 30)))
                if t % 3 == 0:
                    place, thing = rng.choice(_PLACES), rng.choice(_THINGS)
                    text = f"Guess what, I went to {place} for the {thing} workshop! {filler}."
                    facts.append((dia, who, place, thing))
                else:
                    text = f"{filler.capitalize()}."
                turn = {"speaker": who, "dia_id": dia, "text": text}
                if t == 4:
                    turn["blip_caption"] = "a photo of a dog on a beach"
                session.append(turn)
            conv[f"session_{s}"] = session
        qa: list[dict[str, Any]] = []
        for i, (dia, who, place, thing) in enumerate(facts):
            category = 1 + i % 5
            item: dict[str, Any] = {
                "question": f"Where did {who} go for the {thing} workshop?",
                "evidence": [dia],
                "category": category,
            }
            if category == 5:
                item["adversarial_answer"] = "Paris"
            else:
                item["answer"] = place
            qa.append(item)
        qa.append(
            {
                "question": f"What did {a} do in the first two sessions?",
                "answer": "workshops",
                "evidence": ["D1:3; D2:6"],
                "category": 1,
            }
        )
        qa.append(
            {
                "question": "What happened later?",
                "answer": "x",
                "evidence": ["D99:1"],
                "category": 4,
            }
        )
        samples.append({"sample_id": f"syn-{c}", "conversation": conv, "qa": qa})
    path.write_text(json.dumps(samples, indent=1), encoding="utf-8")
    return path


# -- a fake summarizer model -----------------------------------------------------------


class RecordingSummaryModel(BaseChatModel):
    """A fake chat model for summaries: records every prompt, replies with an extract.

    The reply takes the first `words_per_line` words of each input line (the last
    message's text, i.e. the renderings to summarize), up to `max_words` words, or
    `max_tokens * 3 // 4` words when the caller binds `max_tokens`. Deterministic.
    """

    words_per_line: int = 8
    max_words: int = 200
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    max_tokens_seen: list[int | None] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "recording-summary-fake"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(list(messages))
        max_tokens = kwargs.get("max_tokens")
        self.max_tokens_seen.append(max_tokens)
        limit = self.max_words if max_tokens is None else max(1, int(max_tokens) * 3 // 4)
        words: list[str] = []
        source = messages[-1].text if messages else ""
        for line in source.splitlines():
            words.extend(line.split()[: self.words_per_line])
            if len(words) >= limit:
                break
        text = " ".join(words[:limit])
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


# -- answers ---------------------------------------------------------------------------

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}\u2018\u2019\u201c\u201d]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: str) -> str:
    """SQuAD-style normalization: lowercase, no punctuation or articles, single spaces."""
    text = _PUNCT.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def contains_answer(context: str, answer: str | None) -> bool:
    """Whether the normalized answer occurs in the normalized context (on word bounds)."""
    if answer is None:
        return False
    needle = normalize_text(answer)
    if not needle:
        return False
    return f" {needle} " in f" {context} "


def message_texts(messages: Sequence[BaseMessage]) -> str:
    """The normalized text of a prompt, for answer containment."""
    return normalize_text("\n".join(m.text for m in messages))


def dated_texts(messages: Sequence[BaseMessage]) -> str:
    """The normalized text of a whole conversation with each session's date before it.

    The context a model given the full conversation would read (LoCoMo's full-context
    setting): answers to "when" questions are dates, which the turns' texts rarely say.
    """
    lines: list[str] = []
    last: str | None = None
    for m in messages:
        when = message_meta(m).get("session_time")
        if isinstance(when, str) and when != last:
            lines.append(when)
            last = when
        lines.append(m.text)
    return normalize_text("\n".join(lines))


_FUNCTION_TEXT = (
    "a an the and or but nor of in on at to for from by with about as into than then is "
    "are was were be been being am do does did has have had it its this that these those "
    "he she they them his her hers him their theirs i me my we us our you your not no so "
    "if there here which who whom what"
)
_FUNCTION_WORDS = frozenset(_FUNCTION_TEXT.split())
_DIGIT_LETTER = re.compile(r"(?<=\d)(?=[^\W\d_])|(?<=[^\W\d_])(?=\d)")


def token_set(normalized: str) -> set[str]:
    """The tokens of a `normalize_text` result, digits split from letters ("24june")."""
    return set(_DIGIT_LETTER.sub(" ", normalized).split())


def answer_tokens(answer: str | None) -> set[str]:
    """The content tokens of a gold answer: SQuAD-normalized, digits split from letters,
    function words left out (all of its tokens if it has nothing else)."""
    if answer is None:
        return set()
    tokens = token_set(normalize_text(str(answer)))
    content = {t for t in tokens if t not in _FUNCTION_WORDS}
    return content or tokens


def token_containment(context_tokens: set[str], answer: str | None) -> float | None:
    """The fraction of the answer's content tokens present in the context (None: no
    tokens). SQuAD's token recall against the whole context: partial credit for an
    answer the context states in other words or pieces ("The week before 2 April 2023"
    against a turn dated "8 April, 2023" saying "last week")."""
    tokens = answer_tokens(answer)
    if not tokens:
        return None
    return len(tokens & context_tokens) / len(tokens)


# -- embedders -------------------------------------------------------------------------

_HASH_TOKEN = re.compile(r"[a-z0-9]+")


def hashing_embedder(dims: int = 64) -> Embedder:
    """A deterministic stand-in embedder: feature hashing of lowercased word tokens.

    For smoke runs: it exercises the dense and hybrid code paths in milliseconds,
    without loading a model. Its numbers say nothing about a real embedder.
    """

    def embed(texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vector = [0.0] * dims
            for token in _HASH_TOKEN.findall(text.lower()):
                digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
                slot = int.from_bytes(digest[:4], "little") % dims
                vector[slot] += 1.0 if digest[4] & 1 else -1.0
            out.append(vector)
        return out

    return Embedder(embed, name=f"hashing-stand-in:{dims}", dims=dims)


def set_torch_threads(threads: int | None) -> int | None:
    """Set torch's intra-op threads (when torch is installed); returns the count in use."""
    if find_spec("torch") is None:
        return None
    import torch

    if threads:
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def local_embedder() -> tuple[Embedder | None, str | None]:
    """The local all-MiniLM-L6-v2 embedder, loaded offline, or (None, why not)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        return make_embedder("sentence-transformers"), None
    except ConfigError as exc:
        return None, str(exc)


class VectorCache:
    """Embeds each distinct text once per process, through another embedder.

    Several retrievers, a benchmark peer and several budgets then share one embedding
    of each text (the vectors are the wrapped embedder's own). `seconds` and
    `embedded` count the real embedding work.
    """

    def __init__(self, base: Embedder, batch: int = 256) -> None:
        self.base = base
        self.batch = batch
        self.vectors: dict[str, list[float]] = {}
        self.seconds = 0.0
        self.embedded = 0
        self.embedder = Embedder(self.embed, name=f"{base.name} (cached)", dims=base.dims)

    def embed(self, texts: list[str]) -> list[list[float]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        for start in range(0, len(missing), self.batch):
            chunk = missing[start : start + self.batch]
            began = time.perf_counter()
            vectors = self.base.embed_documents(chunk)
            self.seconds += time.perf_counter() - began
            self.embedded += len(chunk)
            self.vectors.update(zip(chunk, vectors, strict=True))
        return [self.vectors[t] for t in texts]
