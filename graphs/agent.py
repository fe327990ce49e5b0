"""The agent: the context pipeline, the model, the tool scheduler, in a loop.

    START → context → model ─(tool calls)→ tools → context → model → …
                          └─(an answer)──→ remember (deferred) → END

`context` (`context_node`) turns the append-only history into this step's window,
counting the bound tools' schemas in the budget; `model` calls the chat model with
`window_messages(state)` (never the raw history); `tools` is a `ToolScheduler` (the
calls of one AI message run as a durable DAG); `remember` writes the turn, answer
included, to the long-term store once the run is done. With a checkpointer every
pipeline run is a context version, so each model call has its own checkpointed frame.

The template is the graph's default (`template=`), any run's choice
(`context=ContextConfig(template="business")` or a dict), and may change between
runs of one thread: the next pipeline run rebuilds the frame for the new template.

Example:
    >>> with open_saver(".llm") as saver:
    ...     agent = build_agent(ChatOpenAI(model="gpt-4o-mini"), [search], checkpointer=saver)
    ...     agent.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "1"}})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore
from langgraph.types import RetryPolicy

from llmctx.graphs.context import _with_defaults, context_node
from llmctx.nodes import (
    ContextConfig,
    ContextState,
    SwitchPolicy,
    ToolScheduler,
    remember,
    window_messages,
)
from llmctx.runtime.errors import ConfigError
from llmctx.runtime.models import chat_model
from llmctx.runtime.settings import Settings
from llmctx.runtime.toolpairs import invalid_call_results

__all__ = ["AgentState", "apply_switch", "build_agent"]

AgentState = ContextState
"""The agent's state: `ContextState` as is (`messages`, the frame, `plan`, ...)."""

_NO_MODEL = (
    "the agent has no chat model: pass one (build_agent(model=...)), or configure an "
    "OpenAI-compatible endpoint with LLMCTX_LLM__BASE_URL (a local server) and/or "
    "LLMCTX_LLM__API_KEY (or base_url / api_key under [llm] in .llm/config/settings.toml)"
)


def build_agent(
    model: BaseChatModel | str | None = None,
    tools: Sequence[BaseTool | Callable[..., Any]] = (),
    *,
    template: Any = None,
    checkpointer: BaseCheckpointSaver | bool | None = None,
    store: BaseStore | None = None,
    budget: int | None = None,
    settings: Settings | None = None,
    workspace: Path | str | None = None,
    user_id: str | None = None,
    summarizer: Any = None,
    max_concurrency: int = 8,
    interrupt_before: Sequence[str] = (),
    tool_retry: RetryPolicy | Mapping[str, RetryPolicy] | None = None,
    tool_timeout: float | Mapping[str, float] | None = None,
    remember_turns: bool | None = None,
    switching: SwitchPolicy | Mapping[str, Any] | None = None,
    name: str = "llmctx_agent",
) -> CompiledStateGraph:
    """Build and compile the agent graph (see the module docstring for its shape).

    `model` is a LangChain chat model, a model string for langchain's
    `init_chat_model` (e.g. ``"openai:gpt-4o-mini"``; built offline, its credentials
    read from the provider's usual variables), or `None` for the model the settings
    configure (`chat_model(settings)`; a `ConfigError` when there is none). `tools`
    are LangChain tools or typed, documented functions; they are bound to the model,
    counted in every window's budget and run by the scheduler (`max_concurrency`,
    `tool_retry`, `tool_timeout`; `interrupt_before` names tools that wait for a
    human's approval, resumed with `Command(resume=True | {"action": ...})`).

    `template`, `budget`, `workspace`, `settings`, `summarizer` and `user_id` are
    the run defaults, as in `build_context_graph`; a run overrides them with
    `context=ContextConfig(...)` (not `tools`: the tools the model is sent are fixed
    here). The window is counted with the chat model's own tokenizer when the model
    names one (`model_name`), else with `settings.model`'s.

    `switching` turns on automatic template switches (`SwitchPolicy(auto=True)`);
    explicit ones (the `switch` state field, `switch_command`, the
    `switch_context_tool` among `tools`) always work.

    `remember_turns` adds the deferred `remember` node (default: when a `store` is
    given); pass `True` when the store arrives at run time (the LangGraph server).
    Leave `checkpointer` unset when the server or a parent graph provides one.
    """
    chat = _chat_model(model, settings)
    scheduler = ToolScheduler(
        tools,
        max_concurrency=max_concurrency,
        retry=tool_retry,
        timeout=tool_timeout,
        interrupt_before=interrupt_before,
    )
    # The scheduler's tool objects are what the model is sent and what the budget counts.
    bound_tools = list(scheduler.tools_by_name.values())
    defaults = ContextConfig(
        template=template,
        budget=budget,
        model=_tokenizer_model(chat),
        workspace=Path(workspace) if workspace is not None else None,
        tools=tuple(bound_tools),
        settings=settings,
        summarizer=summarizer,
        user_id=user_id,
    )
    pipeline = context_node(
        template=defaults.template,
        budget=defaults.budget,
        model=defaults.model,
        workspace=defaults.workspace,
        tools=defaults.tools,
        settings=defaults.settings,
        summarizer=defaults.summarizer,
        user_id=defaults.user_id,
        switching=dict(switching) if isinstance(switching, Mapping) else switching,
    )
    builder = StateGraph(AgentState, context_schema=ContextConfig)
    builder.add_node("context", _fixed_tools(pipeline))
    builder.add_node("model", _model_node(chat, bound_tools))
    builder.add_node("tools", scheduler)
    with_memory = remember_turns if remember_turns is not None else store is not None
    after_answer = "remember" if with_memory else END
    if with_memory:
        # Deferred: the answer is in the state (and streamed) before memory is written.
        builder.add_node("remember", _with_defaults(remember, defaults), defer=True)
        builder.add_edge("remember", END)
    builder.add_edge(START, "context")
    builder.add_edge("context", "model")
    builder.add_conditional_edges(
        "model", _router(after_answer), ["tools", "context", after_answer]
    )
    builder.add_edge("tools", "context")
    return builder.compile(checkpointer=checkpointer, store=store, name=name)


def apply_switch(
    agent: CompiledStateGraph, config: RunnableConfig, request: Mapping[str, Any]
) -> dict[str, Any]:
    """Switch a thread's template now, as its own version, without calling the model.

    Runs only the agent's `context` node with the `switch` request (a
    `SwitchRequest`: `template`, optional `strategy` and `reason`) and stops before
    the model, so the new frame (`last_op.op == "switch"`) is the head and the next
    message is answered under the new template. On a thread with no messages yet it
    just selects the template its first turn starts with. Returns the new frame.

    Example:
        >>> frame = apply_switch(agent, config, {"template": "business"})
        >>> frame["template"]
        'business'
    """
    agent.invoke({"switch": dict(request)}, config, interrupt_after=["context"])
    return dict(agent.get_state(config).values.get("context") or {})


def _router(after_answer: str) -> Callable[[AgentState], str]:
    """Route the model's message: tool calls go to the scheduler; malformed calls
    only (answered with error results) go back to the model; an answer ends the turn."""

    def route(state: AgentState) -> str:
        messages = state["messages"]
        last = messages[-1]
        if isinstance(last, AIMessage):
            return "tools" if last.tool_calls else after_answer
        ai = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        if ai is not None and ai.tool_calls:
            return "tools"
        return "context" if ai is not None and ai.invalid_tool_calls else after_answer

    route.__name__ = "route_model"
    return route


def _model_node(chat: BaseChatModel, tools: list[BaseTool]) -> Runnable:
    """The model step, sync and async: the bound model on this step's window."""
    bound: Runnable = chat.bind_tools(tools) if tools else chat

    def call_model(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        reply = bound.invoke(window_messages(state), config)
        return {"messages": [reply, *invalid_call_results([reply])]}

    async def acall_model(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        reply = await bound.ainvoke(window_messages(state), config)
        return {"messages": [reply, *invalid_call_results([reply])]}

    return RunnableLambda(call_model, acall_model, name="model")


def _fixed_tools(pipeline: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """The pipeline, refusing a run that names other tools than the model is sent."""

    def context(state: Any, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
        run = ContextConfig.coerce(runtime.context)
        if run is not None and run.tools:
            raise ConfigError(
                "the agent's tools are fixed when it is built (they are bound to the model "
                "and counted in the budget); pass them to build_agent(tools=...), not in "
                "the run context"
            )
        return pipeline(state, runtime)

    context.__doc__ = pipeline.__doc__
    return context


def _chat_model(model: BaseChatModel | str | None, settings: Settings | None) -> BaseChatModel:
    """The chat model argument as a `BaseChatModel`, or a `ConfigError` naming the fix."""
    if isinstance(model, BaseChatModel):
        return model
    if isinstance(model, str):
        from langchain.chat_models import init_chat_model

        try:
            return init_chat_model(model)
        except Exception as exc:  # missing package or credentials: say which model
            raise ConfigError(
                f"cannot build chat model {model!r} with init_chat_model ({exc}); install "
                "its provider package and set its credentials, or pass a chat model object"
            ) from None
    if model is not None:
        raise ConfigError(
            f"model must be a LangChain chat model, a model string or None, "
            f"got {type(model).__name__}"
        )
    settings = settings if settings is not None else Settings.load()
    configured = chat_model(settings)
    if configured is None:
        off = settings.llm.provider == "none"
        raise ConfigError(_NO_MODEL + ("; LLMCTX_LLM__PROVIDER=none turns it off" if off else ""))
    return configured


def _tokenizer_model(chat: BaseChatModel) -> str | None:
    """The model name the chat model reports, so the window is counted in its tokens."""
    for attr in ("model_name", "model"):
        value = getattr(chat, attr, None)
        if isinstance(value, str) and value:
            return value
    return None
