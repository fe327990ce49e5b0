"""Score a message against domain templates' triggers: the switch node's classifier.

Each template's `triggers` (keywords and example utterances) become a keyword set and
TF-IDF vectors of its examples (or embeddings, with an embedder), built once per set
of templates and cached; scoring a message is then a few dictionary lookups. Plurals
and verb forms are folded by a deliberately small stemmer that keywords and messages
share, so `renders`, `rendering` and `rendered` all hit the keyword `render`.
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmctx.runtime.embeddings import Embedder
from llmctx.templates import Template

__all__ = ["CLASSIFY_CHARS", "trigger_scores"]

CLASSIFY_CHARS = 4_000
"""Only the start of a long message is classified: its topic is stated there."""

_WORD = re.compile(r"[a-z0-9]+(?:['.+#/-][a-z0-9]+)*\+*")
_CONTRACTIONS = {"m": "am", "re": "are", "ve": "have", "ll": "will", "d": "would", "t": "not"}
_IS_BEFORE = frozenset({"what", "how", "it", "that", "there", "where", "who", "here", "this"})
_STOPWORDS_TEXT = """a an the and or but if of to in on at for with by from as is are was
were be been being am it its this that these those i me my mine we us our you your he him
his she her they them their do does did doing done have has had can could should would will
shall may might must not no so than then there here what which who whom whose why how when
where all any some about into over under up down out very just also please let get got make
want need like one only really more most much many"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def _words(text: str) -> list[str]:
    """Lowercase words, with contractions expanded (`what's` → `what is`)."""
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        if "'" in word:
            base, _, suffix = word.partition("'")
            out.append(base)
            if suffix == "s":
                if base in _IS_BEFORE:
                    out.append("is")
            elif suffix in _CONTRACTIONS:
                out.append(_CONTRACTIONS[suffix])
            continue
        out.append(word)
    return out


def _stem(word: str) -> str:
    """Fold plurals and verb forms (`renders`, `rendering`, `rendered` → `render`).

    Deliberately small: keywords and messages go through the same function, so it only
    has to map a word's common forms to one key, not to a dictionary word.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    stem = word
    if word.endswith("ies") and len(word) > 4:
        stem = word[:-3] + "y"
    elif word.endswith(("sses", "xes", "ches", "shes", "zes")):
        stem = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        stem = word[:-1]
    elif word.endswith("ing") and len(word) > 5:
        stem = word[:-3]
    elif word.endswith("ed") and len(word) > 4:
        stem = word[:-2]
    if stem != word and len(stem) > 3 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
        stem = stem[:-1]  # running → run, stopped → stop
    if len(stem) > 3 and stem.endswith("e"):
        stem = stem[:-1]  # price, pricing → pric
    return stem


def _terms(words: Sequence[str]) -> list[str]:
    """The content terms of a word list: stems of the words that are not stopwords."""
    return [_stem(w) for w in words if w not in _STOPWORDS]


@dataclass(frozen=True)
class _TriggerSet:
    """One template's triggers, ready to score: keyword stem phrases, example vectors."""

    name: str
    threshold: float
    single: frozenset[str]
    phrases: tuple[tuple[str, ...], ...]
    examples: tuple[str, ...]
    vectors: tuple[dict[str, float], ...] = ()


class _LexicalIndex:
    """TF-IDF vectors of every example utterance of a set of templates (built once)."""

    def __init__(self, templates: Sequence[Template]) -> None:
        docs: list[list[str]] = []
        owners: list[int] = []
        for n, template in enumerate(templates):
            for example in template.triggers.examples:
                docs.append(_terms(_words(example)))
                owners.append(n)
        df: Counter[str] = Counter()
        for doc in docs:
            df.update(set(doc))
        self._n = len(docs)
        self.idf = {t: math.log((self._n + 1) / (c + 1)) + 1.0 for t, c in df.items()}
        self.unseen_idf = math.log(self._n + 1) + 1.0
        vectors: list[list[dict[str, float]]] = [[] for _ in templates]
        for doc, owner in zip(docs, owners, strict=True):
            vectors[owner].append(self.vector(doc))
        self.sets = tuple(
            _trigger_set(t, tuple(v)) for t, v in zip(templates, vectors, strict=True)
        )

    def vector(self, terms: Sequence[str]) -> dict[str, float]:
        """A unit-length TF-IDF vector (sublinear tf) of `terms`."""
        counts = Counter(terms)
        weights = {
            t: (1.0 + math.log(c)) * self.idf.get(t, self.unseen_idf) for t, c in counts.items()
        }
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return {t: w / norm for t, w in weights.items()} if norm else {}


def _trigger_set(template: Template, vectors: tuple[dict[str, float], ...]) -> _TriggerSet:
    phrases = [tuple(_stem(w) for w in _words(k)) for k in template.triggers.keywords]
    return _TriggerSet(
        name=template.name,
        threshold=template.triggers.threshold,
        single=frozenset(p[0] for p in phrases if len(p) == 1),
        phrases=tuple(p for p in phrases if len(p) > 1),
        examples=template.triggers.examples,
        vectors=vectors,
    )


_INDEXES: OrderedDict[tuple[tuple[str, str], ...], _LexicalIndex] = OrderedDict()
_VECTORS: OrderedDict[tuple[int, str], tuple[Any, list[list[float]]]] = OrderedDict()
_WRAPPED: OrderedDict[int, tuple[Any, Embedder]] = OrderedDict()
_CACHE_SIZE = 32


def _index(templates: Sequence[Template]) -> _LexicalIndex:
    key = tuple((t.name, t.fingerprint) for t in templates)
    index = _INDEXES.get(key)
    if index is None:
        index = _INDEXES[key] = _LexicalIndex(templates)
        while len(_INDEXES) > _CACHE_SIZE:
            _INDEXES.popitem(last=False)
    else:
        _INDEXES.move_to_end(key)
    return index


def _embedder(obj: Any) -> Embedder:
    """One `Embedder` per embedding object, so its query cache and our vectors persist."""
    if isinstance(obj, Embedder):
        return obj
    hit = _WRAPPED.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    wrapped = Embedder.wrap(obj)
    _WRAPPED[id(obj)] = (obj, wrapped)
    while len(_WRAPPED) > _CACHE_SIZE:
        _WRAPPED.popitem(last=False)
    return wrapped


def _example_vectors(embedder: Embedder, template: Template) -> list[list[float]]:
    """The template's example embeddings, unit length, computed once per embedder."""
    key = (id(embedder), template.fingerprint)
    hit = _VECTORS.get(key)
    if hit is not None and hit[0] is embedder:
        return hit[1]
    examples = list(template.triggers.examples)
    vectors = [_unit(v) for v in embedder.embed_documents(examples)] if examples else []
    _VECTORS[key] = (embedder, vectors)
    while len(_VECTORS) > 4 * _CACHE_SIZE:
        _VECTORS.popitem(last=False)
    return vectors


def _unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else [0.0 for _ in vector]


def _has_phrase(words: Sequence[str], phrase: tuple[str, ...]) -> bool:
    size = len(phrase)
    first = phrase[0]
    return any(
        words[i] == first and tuple(words[i : i + size]) == phrase
        for i in range(len(words) - size + 1)
    )


def trigger_scores(
    text: str, templates: Sequence[Template], *, embedder: Any = None
) -> dict[str, float]:
    """Score `text` against each template's triggers: `{name: score}`, scores in 0..1.

    Deterministic. Keyword hits give `1 - 0.5 ** hits`; the example similarity is the
    best TF-IDF cosine to one of the template's examples (with an `embedder`, the best
    embedding cosine instead); the score combines them as `1 - (1 - k) * (1 - e)`.
    Trigger vectors are computed once per template set (and embedder) and cached.

        >>> from llmctx.templates import load_template
        >>> ts = [load_template(n) for n in ("general", "technical", "creative")]
        >>> s = trigger_scores("Here is the traceback from my failing unit test", ts)
        >>> max(s, key=s.get)
        'technical'
    """
    index = _index(templates)
    words = _words(text[:CLASSIFY_CHARS])
    stems = [_stem(w) for w in words]
    stem_set = set(stems)
    query = None if embedder is not None else index.vector(_terms(words))
    query_vec: list[float] | None = None
    wrapped = _embedder(embedder) if embedder is not None else None
    if wrapped is not None and any(t.triggers.examples for t in templates):
        query_vec = _unit(wrapped.embed_query(text[:CLASSIFY_CHARS]))
    scores: dict[str, float] = {}
    for template, triggers in zip(templates, index.sets, strict=True):
        hits = len(triggers.single & stem_set)
        hits += sum(1 for p in triggers.phrases if _has_phrase(stems, p))
        keywords = 1.0 - 0.5**hits
        similarity = 0.0
        if query is not None and triggers.vectors:
            similarity = max(
                sum(w * vec.get(t, 0.0) for t, w in query.items()) for vec in triggers.vectors
            )
        elif query_vec is not None and wrapped is not None and triggers.examples:
            similarity = max(
                sum(a * b for a, b in zip(query_vec, vec, strict=False))
                for vec in _example_vectors(wrapped, template)
            )
        similarity = min(1.0, max(0.0, similarity))
        scores[template.name] = round(1.0 - (1.0 - keywords) * (1.0 - similarity), 4)
    return scores
