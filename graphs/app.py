"""The LangGraph server entry: `langgraph dev` serves the agent through `make_graph`.

`langgraph.json` (repository root) names `./graphs/app.py:make_graph`. The server calls
the factory with the run's config and attaches its own checkpointer and store, so the
graph built here has neither: every turn is checkpointed by the server, and the
deferred `remember` node writes to the server's store.

Everything else comes from llmctx's settings (`LLMCTX_*`, `.env`,
`.llm/config/settings.toml`): the chat model (`chat_model(settings)`: an
OpenAI-compatible endpoint, `LLMCTX_LLM__BASE_URL` / `LLMCTX_LLM__API_KEY`), the default
template (`LLMCTX_DEFAULT_TEMPLATE`) and the tokenizer. A run picks another template
with its context (`{"template": "business"}`). Memories belong to the authenticated
user when the server has auth (`langgraph_auth_user_id`), else to the run context's
`user_id`.

Example:
    $ LLMCTX_LLM__BASE_URL=http://127.0.0.1:11434/v1 langgraph dev
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph

from llmctx.graphs.agent import build_agent
from llmctx.nodes import switch_context_tool
from llmctx.runtime.settings import Settings

__all__ = ["build_app", "make_graph"]


def make_graph(config: RunnableConfig) -> CompiledStateGraph:
    """The graph factory `langgraph.json` names; the server calls it for each run.

    A `ConfigError` naming `LLMCTX_LLM__BASE_URL` / `LLMCTX_LLM__API_KEY` when no
    chat model is configured.
    """
    configurable = (config or {}).get("configurable") or {}
    user = configurable.get("langgraph_auth_user_id") or None
    return build_app(Settings.load(), user_id=user)


def build_app(
    settings: Settings | None = None,
    *,
    model: BaseChatModel | None = None,
    tools: Sequence[BaseTool | Callable[..., Any]] = (),
    user_id: str | None = None,
) -> CompiledStateGraph:
    """The served agent: no checkpointer or store of its own, memory written at run time.

    `model` replaces the configured chat model (for embedding the server graph in
    your own app); `tools` are added to llmctx's own `switch_context` tool, with which
    the model moves the thread to another domain template.
    """
    settings = settings if settings is not None else Settings.load()
    return build_agent(
        model,
        [switch_context_tool(), *tools],
        settings=settings,
        template=settings.default_template,
        user_id=user_id,
        remember_turns=True,  # the server passes its store at run time
        name="llmctx_agent",
    )
