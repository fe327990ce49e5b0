"""Model factories: the chat model the settings configure, if any.

With `llm.provider = "auto"` an OpenAI-compatible `ChatOpenAI` is built when an API
key or base URL is set; otherwise there is no LLM and callers fall back to their
offline path (the extractive summarizer). Models are built once per configuration
and shared, since a client holds a connection pool.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from langchain_core.language_models import BaseChatModel

from llmctx.runtime.errors import ConfigError

__all__ = ["chat_model"]


def chat_model(settings: Any) -> BaseChatModel | None:
    """The configured chat model, or `None` when no LLM is configured.

    The model name is `settings.model`; the key stays a `SecretStr` all the way into
    the client and is never logged.
    """
    llm = settings.llm
    if not llm.configured:
        return None
    key = llm.api_key.get_secret_value() if llm.api_key is not None else None
    return _openai(settings.model, llm.base_url, key, llm.temperature, llm.timeout_s)


@lru_cache(maxsize=8)
def _openai(
    model: str, base_url: str | None, api_key: str | None, temperature: float, timeout: float
) -> BaseChatModel:
    try:
        from langchain_openai import ChatOpenAI
    except ImportError as exc:  # a broken install: it is a declared dependency
        raise ConfigError(
            f"llm is configured but langchain-openai cannot be imported ({exc}); "
            "reinstall llmctx, or set LLMCTX_LLM__PROVIDER=none for offline summaries"
        ) from exc
    options: dict[str, Any] = {"model": model, "temperature": temperature, "timeout": timeout}
    if base_url:
        options["base_url"] = base_url
    # ChatOpenAI insists on a key even for keyless local servers.
    options["api_key"] = api_key or "not-needed"
    return ChatOpenAI(**options)
