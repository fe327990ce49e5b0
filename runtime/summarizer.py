"""Summarizers for the `summarize` node: a chat model with `max_tokens` enforced, or an
extractive algorithm when no model is configured.

Both take the renderings of the messages to compress, in order (`"Caroline: I went to
the support group yesterday."`, possibly earlier summaries when summarizing
hierarchically), and return a `SummaryResult` whose `tokens` is exact and never above
`max_tokens`: the budget is a hard limit, so the node's fallback chain can rely on it.

**Extractive algorithm** (`ExtractiveSummarizer`), O(n²) in the sentences of a chunk:

1. *Segmentation.* Each text is split into lines; a line's leading `Speaker:` is kept
   aside as its speaker, and the rest is split into sentences at `.`/`!`/`?`/`…`
   followed by a space (common abbreviations and initials excepted) and after the CJK
   full stop, exclamation and question marks (U+3002, U+FF01, U+FF1F). Exact repeats
   (after normalization) are dropped.
2. *Vectors.* Terms are lowercase words with a light suffix stemmer, English stopwords
   and dialogue fillers removed, and character bigrams for CJK runs. A sentence is a
   sublinear TF-IDF vector (IDF over the chunk's sentences), L2-normalized.
3. *Centrality.* Continuous LexRank: PageRank by power iteration over the
   cosine-similarity graph. A sentence central to the chunk shares terms with many
   others. The damping is low (0.3, close to degree centrality), which measured better
   than the classic 0.85 on short dialogues.
4. *Weights.* Centrality is scaled by an information factor (sentences of fewer than
   `min_terms` content terms, such as "Hi." or "OK, thanks.", weigh less), by a small
   boost (`entity_boost` per kind, at most three) for sentences carrying numbers, names
   or code identifiers, which the domain prompts ask to preserve, and by a lead prior
   `1 + lead_bias / (1 + k)` for the k-th line (openings state the topic; the prior is
   2x on the first line, 1.2x by the fifth). Damping, `lead_bias`, `redundancy` and
   `min_terms` were chosen on DialogSum dev (tests/benchmarks/summaries.py), where each
   is worth under a ROUGE point.
5. *Selection.* Maximal marginal relevance: repeatedly take the sentence maximizing
   `mmr_lambda * weight - (1 - mmr_lambda) * max_similarity_to_selected` among those
   that still fit the budget; a sentence at least `redundancy` similar to one already
   chosen is never taken.
6. *Output.* The chosen sentences in their original order, grouped under their
   speaker, one line per source line. The exact count of that text is checked, and
   the last-chosen sentence dropped until it fits. If no sentence fits at all, the
   best one is truncated by tokens and ends with `" …"`.

The output is deterministic: same input, same summary (ties go to the earlier sentence).
"""

from __future__ import annotations

import asyncio
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langgraph.errors import GraphBubbleUp

from llmctx.runtime.errors import ConfigError, LlmctxError, SummarizerError
from llmctx.runtime.tokens import TokenCounter

__all__ = [
    "TRUNCATION_MARKER",
    "ChatModelSummarizer",
    "ExtractiveSummarizer",
    "Summarizer",
    "SummarizerError",
    "SummaryResult",
    "make_summarizer",
    "split_sentences",
    "truncate_to_tokens",
]

TRUNCATION_MARKER = " …"
"""Appended to text cut to fit a token budget."""


@dataclass(frozen=True, slots=True)
class SummaryResult:
    """One summary: its text, its exact tokens, the tokens sent to make it, and how.

    `input_tokens` is, for a chat model, the exact count of the prompt messages sent;
    for the extractive summarizer, the tokens of the input texts. `method` is
    `"extractive"` or `"model:<name>"`.
    """

    text: str
    tokens: int
    input_tokens: int
    method: str


@runtime_checkable
class Summarizer(Protocol):
    """Anything that turns message renderings into a summary of at most `max_tokens`.

    Subclass it explicitly to inherit the default `asummarize`, which runs `summarize`
    in a worker thread.
    """

    def summarize(self, texts: Sequence[str], *, prompt: str, max_tokens: int) -> SummaryResult:
        """Summarize `texts` (in order) following `prompt`, in at most `max_tokens`."""
        ...

    async def asummarize(
        self, texts: Sequence[str], *, prompt: str, max_tokens: int
    ) -> SummaryResult:
        """Async `summarize`, with the same contract."""
        return await asyncio.to_thread(self.summarize, texts, prompt=prompt, max_tokens=max_tokens)


def make_summarizer(model: BaseChatModel | Summarizer | None, counter: TokenCounter) -> Summarizer:
    """The summarizer for a configuration: extractive without a model, else the model's.

    A `Summarizer` is returned as is, so callers can plug in their own.
    """
    if model is None:
        return ExtractiveSummarizer(counter)
    if isinstance(model, BaseChatModel):
        return ChatModelSummarizer(model, counter)
    if isinstance(model, Summarizer):
        return model
    raise ConfigError(
        f"cannot summarize with a {type(model).__name__}: pass a LangChain BaseChatModel, "
        "an object with summarize()/asummarize() (a Summarizer), or None for the "
        "extractive summarizer"
    )


def _check_budget(max_tokens: int) -> None:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise SummarizerError(
            f"max_tokens must be a non-negative integer, got {max_tokens!r}; pass the tokens "
            "the summary may use"
        )


# -- truncation ----------------------------------------------------------------


def truncate_to_tokens(
    text: str, max_tokens: int, counter: TokenCounter, *, marker: str = TRUNCATION_MARKER
) -> str:
    """`text` if it fits in `max_tokens`, else its longest prefix that fits with `marker`.

    The result's exact count never exceeds `max_tokens`. The cut falls on a word
    boundary when one is near; if even the marker does not fit, the prefix goes without
    it. Costs O(log n) counts of at most a few times `max_tokens` tokens.
    """
    _check_budget(max_tokens)
    if max_tokens == 0 or not text:
        return ""
    if counter.count_text(text) <= max_tokens:
        return text
    suffix = marker if counter.count_text(marker) < max_tokens else ""

    def render(length: int) -> str:
        head = text[:length].rstrip()
        return head + suffix if head else suffix.strip()

    def fits(length: int) -> bool:
        return counter.count_text(render(length)) <= max_tokens

    # A token covers at least one character, and rarely more than 16: search a prefix
    # window that surely overflows, so huge texts cost O(max_tokens), not O(len).
    hi = min(len(text), 16 * max_tokens + 16)
    while hi < len(text) and fits(hi):
        hi = min(len(text), hi * 2)
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    # Prefer a word boundary within the last fifth of the cut.
    space = text.rfind(" ", 0, lo)
    if lo < len(text) and not text[lo].isspace() and space > 0.8 * lo and fits(space):
        lo = space
    result = render(lo)
    return result if counter.count_text(result) <= max_tokens else ""


# -- segmentation ----------------------------------------------------------------

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
# A sentence ends at western terminal punctuation followed by whitespace, or right
# after CJK terminal punctuation; closing quotes and brackets stay with the sentence.
_CJK_ENDS = "\u3002\uff01\uff1f"
# Closing quotes and brackets, western and CJK.
_CLOSERS = "\"')\\]\u00bb\u201d\u2019\u300d\u300f\uff09"
_END_RE = re.compile(f"[.!?\u2026]+[{_CLOSERS}]*(?=\\s)|[{_CJK_ENDS}]+[{_CLOSERS}]*")
_ABBREVIATION_WORDS = (
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m no fig approx dept inc ltd co "
    "corp jan feb mar apr jun jul aug sep sept oct nov dec mt"
)
_ABBREVIATIONS = frozenset(_ABBREVIATION_WORDS.split())
# A leading "Speaker:" (one to five words, or a "#Person1#"-style tag), then a space.
_SPEAKER_RE = re.compile(r"^\s*([^\s:][^:\n]{0,48}?):[ \t]+(?=\S)")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: line breaks always split; so do `.`/`!`/`?`/`…` before a
    space (except after a common abbreviation or an initial) and CJK terminal marks."""
    out: list[str] = []
    for line in text.splitlines():
        out.extend(_split_line(line))
    return out


def _split_line(line: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for m in _END_RE.finditer(line):
        if m.group(0)[0] == "." and _is_abbreviation(line, m.start()):
            continue
        piece = line[start : m.end()].strip()
        if piece:
            sentences.append(piece)
        start = m.end()
    rest = line[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _is_abbreviation(line: str, dot: int) -> bool:
    word_start = dot
    while word_start > 0 and not line[word_start - 1].isspace():
        word_start -= 1
    word = line[word_start:dot].lower().lstrip("(\"'\u201c\u2018")
    if word in _ABBREVIATIONS:
        return True
    # An initial ("J. R. R. Tolkien"), but not a sentence ending in "I." or "A.".
    return len(word) == 1 and word.isalpha() and line[word_start].isupper() and word not in "ia"


def _split_speaker(line: str) -> tuple[str, str]:
    m = _SPEAKER_RE.match(line)
    if not m:
        return "", line.strip()
    speaker = m.group(1).strip()
    if len(speaker.split()) > 5 or speaker.endswith((".", "!", "?")):
        return "", line.strip()
    return speaker, line[m.end() :].strip()


# -- terms -----------------------------------------------------------------------

_STOPWORD_WORDS = (
    "a about above after again against all am an and any are aren as at be because "
    "been before being below between both but by can cannot could couldn did didn do "
    "does doesn doing don down during each few for from further had hadn has hasn "
    "have haven having he her here hers herself him himself his how i if in into is "
    "isn it its itself just let me more most my myself no nor not of off on once only "
    "or other ought our ours ourselves out over own same shan she should shouldn so "
    "some such than that the their theirs them themselves then there these they this "
    "those through to too under until up very was wasn we were weren what when where "
    "which while who whom why will with won would wouldn you your yours yourself "
    "yourselves s t d ll m re ve also yes yeah yep oh ok okay well hi hello hey uh um "
    "er ah hmm right sure really please thanks thank get got go going gonna know "
    "think like one would could say said tell see"
)
_STOPWORDS = frozenset(_STOPWORD_WORDS.split())
_WORD_RE = re.compile(f"[{_CJK}]+|[^\\W_{_CJK}]+(?:['\u2019][^\\W_{_CJK}]+)*")
_IDENTIFIER_RE = re.compile(
    r"\b(?:[a-z]+[A-Z]\w*|[A-Za-z]+_\w+|\w+\.\w+\(|[\w-]+/[\w./-]+|[A-Z]{2,}\d*|[A-Z]+-\d+)"
)
_DIGIT_RE = re.compile(r"\d")
_NAME_RE = re.compile(r"(?<=[\s,;(])[A-Z][a-z]+")


def _stem(word: str) -> str:
    """A light English suffix stripper: enough to match plurals and verb forms."""
    if len(word) <= 3 or not word.isascii():
        return word
    for suffix, repl in (("'s", ""), ("ies", "y"), ("sses", "ss"), ("ing", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + repl
    if word.endswith("ed") and len(word) > 4:
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _terms(sentence: str) -> list[str]:
    terms: list[str] = []
    for word in _WORD_RE.findall(unicodedata.normalize("NFKC", sentence).lower()):
        if _CJK_RE.match(word):
            terms.extend(word[i : i + 2] for i in range(max(1, len(word) - 1)))
        elif word.isdigit():
            if len(word) > 1:  # "2024", "15"; a lone digit is too common to tell apart
                terms.append(word)
        elif word not in _STOPWORDS:
            stem = _stem(word.replace("\u2019", "'"))
            if stem not in _STOPWORDS:
                terms.append(stem)
    return terms


def _entity_kinds(sentence: str) -> int:
    """How many of numbers, capitalized names and code identifiers a sentence carries."""
    return (
        bool(_DIGIT_RE.search(sentence))
        + bool(_NAME_RE.search(sentence))
        + bool(_IDENTIFIER_RE.search(sentence))
    )


# -- the extractive summarizer -------------------------------------------------------


@dataclass(slots=True)
class _Sentence:
    line: int  # index of the source line, over all texts
    speaker: str
    text: str
    terms: list[str]
    cost: int  # tokens of " " + text, the cost of adding it to an open line


class ExtractiveSummarizer(Summarizer):
    """Sentence centrality (LexRank over TF-IDF) with MMR selection, within the budget.

    `prompt` is not used. `mmr_lambda` trades weight against novelty (1.0: pure
    centrality); `redundancy` is the cosine similarity at or above which a sentence
    counts as a repeat of one already chosen; `damping` is LexRank's; `min_terms`,
    `entity_boost` and `lead_bias` shape the weights (see the module docstring).
    """

    method = "extractive"

    def __init__(
        self,
        counter: TokenCounter,
        *,
        mmr_lambda: float = 0.7,
        redundancy: float = 0.5,
        damping: float = 0.3,
        min_terms: int = 3,
        entity_boost: float = 0.1,
        lead_bias: float = 1.0,
    ) -> None:
        if not 0.0 <= mmr_lambda <= 1.0:
            raise ConfigError(f"mmr_lambda must be within [0, 1], got {mmr_lambda}")
        if not 0.0 < redundancy <= 1.0:
            raise ConfigError(f"redundancy must be within (0, 1], got {redundancy}")
        if not 0.0 <= damping < 1.0:
            raise ConfigError(f"damping must be within [0, 1), got {damping}")
        self.counter = counter
        self.mmr_lambda = mmr_lambda
        self.redundancy = redundancy
        self.damping = damping
        self.min_terms = max(1, min_terms)
        self.entity_boost = entity_boost
        self.lead_bias = lead_bias

    def __repr__(self) -> str:
        return f"ExtractiveSummarizer(mmr_lambda={self.mmr_lambda}, counter={self.counter!r})"

    def summarize(self, texts: Sequence[str], *, prompt: str, max_tokens: int) -> SummaryResult:
        """Pick the most central, least redundant sentences of `texts` within `max_tokens`."""
        _check_budget(max_tokens)
        input_tokens = sum(self.counter.count_text(t) for t in texts if t)
        text = self._summary_text(texts, max_tokens)
        return SummaryResult(text, self.counter.count_text(text), input_tokens, self.method)

    def _summary_text(self, texts: Sequence[str], max_tokens: int) -> str:
        if max_tokens == 0:
            return ""
        sentences = self._sentences(texts)
        if not sentences:
            return ""
        sim = _similarities(sentences)
        weights = self._weights(sentences, sim)
        chosen = self._select(sentences, sim, weights, max_tokens)
        while chosen:
            text = _render([sentences[i] for i in sorted(chosen)])
            if self.counter.count_text(text) <= max_tokens:
                return text
            chosen.pop()  # the estimate was off by a boundary token: drop the last pick
        best = max(range(len(sentences)), key=lambda i: (weights[i], -i))
        return truncate_to_tokens(_render([sentences[best]]), max_tokens, self.counter)

    def _sentences(self, texts: Sequence[str]) -> list[_Sentence]:
        out: list[_Sentence] = []
        seen: set[str] = set()
        line_no = 0
        for text in texts:
            for line in (text or "").splitlines():
                speaker, body = _split_speaker(line)
                for sentence in _split_line(body):
                    key = " ".join(_WORD_RE.findall(sentence.lower())) or sentence
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(_Sentence(line_no, speaker, sentence, _terms(sentence), 0))
                line_no += 1
        for sentence in out:
            sentence.cost = self.counter.count_text(" " + sentence.text)
        return out

    def _weights(self, sentences: list[_Sentence], sim: np.ndarray) -> np.ndarray:
        centrality = _lexrank(sim, self.damping)
        info = np.array([min(1.0, len(s.terms) / self.min_terms) for s in sentences])
        boost = np.array([1.0 + self.entity_boost * _entity_kinds(s.text) for s in sentences])
        rank = {line: k for k, line in enumerate(sorted({s.line for s in sentences}))}
        lead = np.array([1.0 + self.lead_bias / (1 + rank[s.line]) for s in sentences])
        weights = centrality * (0.1 + 0.9 * info) * boost * lead
        top = float(weights.max())
        return weights / top if top > 0 else weights

    def _select(
        self, sentences: list[_Sentence], sim: np.ndarray, weights: np.ndarray, budget: int
    ) -> list[int]:
        """Greedy MMR within the budget; returns indices in the order they were chosen."""
        speaker_cost = {
            s.speaker: self.counter.count_text(s.speaker + ":") if s.speaker else 0
            for s in sentences
        }
        line = np.array([s.line for s in sentences])
        cost_open = np.array([s.cost for s in sentences])  # joining a line already shown
        cost_new = cost_open + 1 + np.array([speaker_cost[s.speaker] for s in sentences])
        line_open = np.zeros(int(line.max()) + 1, dtype=bool)
        relevance = self.mmr_lambda * weights
        novelty_weight = 1.0 - self.mmr_lambda
        max_sim = np.zeros(len(sentences))
        available = np.ones(len(sentences), dtype=bool)
        chosen: list[int] = []
        used = -1  # the first line needs no newline before it
        while True:
            cost = np.where(line_open[line], cost_open, cost_new)
            candidates = available & (cost <= budget - used)
            if not candidates.any():
                return chosen
            score = np.where(candidates, relevance - novelty_weight * max_sim, -np.inf)
            best = int(np.argmax(score))  # the first of equal scores: deterministic
            used += int(cost[best])
            line_open[line[best]] = True
            chosen.append(best)
            available[best] = False
            max_sim = np.maximum(max_sim, sim[best])
            available &= max_sim < self.redundancy


_EINSUM_MAX_WORK = 20_000_000  # multiply-adds; about 10 ms of einsum


def _similarities(sentences: list[_Sentence]) -> np.ndarray:
    """Cosine similarities of the sentences' sublinear TF-IDF vectors (IDF over them)."""
    vocab: dict[str, int] = {}
    counts = [Counter(s.terms) for s in sentences]
    for c in counts:
        for term in c:
            vocab.setdefault(term, len(vocab))
    n = len(sentences)
    matrix = np.zeros((n, max(1, len(vocab))))
    for row, c in enumerate(counts):
        for term, k in c.items():
            matrix[row, vocab[term]] = 1.0 + math.log(k)
    df = (matrix > 0).sum(axis=0)
    matrix *= np.log((n + 1) / (df + 1)) + 1.0
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    if n * n * matrix.shape[1] <= _EINSUM_MAX_WORK:
        # A BLAS call wakes its thread pool, which costs milliseconds when the summarizer
        # runs now and then inside a graph: a chunk's small matrix is faster with einsum.
        sim = np.einsum("ik,jk->ij", matrix, matrix)
    else:
        sim = matrix @ matrix.T
    np.clip(sim, 0.0, 1.0, out=sim)
    return sim


def _lexrank(sim: np.ndarray, damping: float, *, tol: float = 1e-9, iters: int = 200) -> np.ndarray:
    """Stationary distribution of the damped random walk over the similarity graph."""
    n = sim.shape[0]
    graph = sim.copy()
    np.fill_diagonal(graph, 0.0)
    rows = graph.sum(axis=1, keepdims=True)
    # A sentence similar to nothing else jumps uniformly (a dangling node).
    transition = np.where(rows > 0, graph / np.where(rows > 0, rows, 1.0), 1.0 / n)
    rank = np.full(n, 1.0 / n)
    for _ in range(iters):
        nxt = (1.0 - damping) / n + damping * (transition.T @ rank)
        if np.abs(nxt - rank).sum() < tol:
            return nxt
        rank = nxt
    return rank


def _render(sentences: list[_Sentence]) -> str:
    """Sentences in order, one line per source line, each line under its speaker."""
    lines: list[str] = []
    current = -1
    for s in sentences:
        if s.line != current:
            lines.append(f"{s.speaker}: {s.text}" if s.speaker else s.text)
            current = s.line
        else:
            joiner = "" if _CJK_RE.match(lines[-1][-1:]) or lines[-1][-1:] in _CJK_ENDS else " "
            lines[-1] += joiner + s.text
    return "\n".join(lines)


# -- the chat-model summarizer ----------------------------------------------------------


class ChatModelSummarizer(Summarizer):
    """Summarizes with a chat model: `[SystemMessage(prompt), HumanMessage(texts)]`.

    `max_tokens` is bound on the call (`model.bind(max_tokens=...)`, dropped for a model
    that rejects it) and enforced in every case: the reply is cut to `max_tokens` exact
    tokens with `" …"`. Any model failure becomes a `SummarizerError`.
    """

    def __init__(self, model: BaseChatModel, counter: TokenCounter) -> None:
        self.model = model
        self.counter = counter
        name = (
            getattr(model, "model_name", None)
            or getattr(model, "model", None)
            or getattr(model, "_llm_type", None)
            or type(model).__name__
        )
        self.method = f"model:{name}"

    def __repr__(self) -> str:
        return f"ChatModelSummarizer({self.method!r}, counter={self.counter!r})"

    @staticmethod
    def messages(texts: Sequence[str], prompt: str) -> list[BaseMessage]:
        """The prompt sent for `texts`: the domain prompt, then the texts one per line."""
        return [SystemMessage(prompt), HumanMessage("\n".join(t for t in texts if t))]

    def summarize(self, texts: Sequence[str], *, prompt: str, max_tokens: int) -> SummaryResult:
        """Ask the model for a summary of `texts`; cut it to `max_tokens` if it overflows."""
        _check_budget(max_tokens)
        if max_tokens == 0 or not any(t.strip() for t in texts):
            return SummaryResult("", 0, 0, self.method)
        messages = self.messages(texts, prompt)
        try:
            try:
                reply = self.model.bind(max_tokens=max_tokens).invoke(messages)
            except TypeError as exc:
                if "max_tokens" not in str(exc):
                    raise
                reply = self.model.invoke(messages)
        except (LlmctxError, GraphBubbleUp):  # ours, or a graph interrupt: not a failure
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        return self._result(reply, messages, max_tokens)

    async def asummarize(
        self, texts: Sequence[str], *, prompt: str, max_tokens: int
    ) -> SummaryResult:
        """Async `summarize`, through the model's own `ainvoke`."""
        _check_budget(max_tokens)
        if max_tokens == 0 or not any(t.strip() for t in texts):
            return SummaryResult("", 0, 0, self.method)
        messages = self.messages(texts, prompt)
        try:
            try:
                reply = await self.model.bind(max_tokens=max_tokens).ainvoke(messages)
            except TypeError as exc:
                if "max_tokens" not in str(exc):
                    raise
                reply = await self.model.ainvoke(messages)
        except (LlmctxError, GraphBubbleUp):  # ours, or a graph interrupt: not a failure
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        return self._result(reply, messages, max_tokens)

    def _error(self, exc: Exception) -> SummarizerError:
        return SummarizerError(
            f"summarizer model {self.method.removeprefix('model:')!r} failed: "
            f"{type(exc).__name__}: {exc}; check the llm settings (model, base URL, API key) "
            "or unset the model to use the extractive summarizer"
        )

    def _result(self, reply: Any, messages: list[BaseMessage], max_tokens: int) -> SummaryResult:
        text = reply.text if isinstance(reply, BaseMessage) else str(reply)
        text = truncate_to_tokens(text.strip(), max_tokens, self.counter)
        return SummaryResult(
            text,
            self.counter.count_text(text),
            self.counter.count_messages(messages),
            self.method,
        )
