"""The context pipeline as a compiled LangGraph subgraph.

Add it as one node of your own `StateGraph` (its state must include `messages` and
`context`), or run it alone with a checkpointer so that every turn is a version.

Example:
    >>> graph = build_context_graph(template="technical", budget=8_000)
    >>> out = graph.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "t"}})
    >>> out["context"]["window_tokens"] <= 8_000
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore
from typing_extensions import TypedDict

from llmctx.nodes import (
    ContextConfig,
    ContextState,
    Frame,
    SwitchLog,
    SwitchPolicy,
    SwitchRequest,
    compress,
    remember,
    with_active_template,
)
from llmctx.runtime.settings import Settings

__all__ = ["build_context_graph", "context_node"]

Node = Callable[[ContextState, Runtime[ContextConfig]], dict[str, Any]]


class ContextUpdate(TypedDict, total=False):
    """What the pipeline hands back: the frame channels, never `messages`.

    The pipeline only reads the history; returning it would make a parent graph
    merge (and its checkpointer write) the whole message list again every turn.
    `switch` comes back `None` once a request was read, which clears the parent's.
    """

    context: Frame
    preserved: dict[str, Frame]
    remembered: dict[str, Any]
    switch: SwitchRequest | None
    switches: SwitchLog


class _EmbeddedState(TypedDict):
    """`ContextState` for a pipeline embedded as a subgraph (no checkpointer).

    `preserved` has no reducer here, so the node's update (set-aside frames, and
    `None` for the restored or evicted ones) is what the subgraph returns, and the
    parent's `merge_preserved` applies it, deletions included. With the reducer the
    subgraph would return the merged dict, in which deleted names are simply absent,
    and the parent would keep them.
    """

    messages: Annotated[list[AnyMessage], add_messages]
    context: NotRequired[Frame]
    preserved: NotRequired[dict[str, Frame]]
    remembered: NotRequired[dict[str, Any]]
    plan: NotRequired[dict[str, Any]]
    switch: NotRequired[SwitchRequest | None]
    switches: NotRequired[SwitchLog]


def build_context_graph(
    *,
    template: Any = None,
    checkpointer: BaseCheckpointSaver | bool | None = None,
    store: BaseStore | None = None,
    budget: int | None = None,
    model: str | None = None,
    workspace: Path | str | None = None,
    tools: Sequence[Any] = (),
    settings: Settings | None = None,
    summarizer: Any = None,
    user_id: str | None = None,
    remember_turns: bool | None = None,
    name: str = "llmctx_context",
    switching: SwitchPolicy | dict[str, Any] | None = None,
) -> CompiledStateGraph:
    """Build and compile the context pipeline: switch → budget → retrieve → prune →
    summarize → assemble.

    The pipeline is one node, `context` (`llmctx.nodes.compress`): it applies a
    pending template switch (the `switch` state field, a `Command`, the
    `switch_context` tool, the run's template, or the classifier when `switching`
    is `SwitchPolicy(auto=True)`), assembles the tiered window, applies the
    template's pruning policy, and compacts old turns when the template's trigger
    fires (`summarizer`: a LangChain chat model or a `Summarizer`; unset, the
    configured LLM or else the extractive summarizer). With a checkpointer each turn
    is one version, whose `last_op` names the strongest operation that ran
    (`switch`, `assemble`, `prune` or `summarize`).

    `template` is the template a new thread starts with; the thread then keeps its
    own (changed by explicit and automatic switches), and a run's
    `ContextConfig.template` applies to that run only (see `llmctx.nodes.switch`).

    With a `store` (e.g. `llmctx.runtime.ChromaStore`), the pipeline first retrieves
    the user's memories (`user_id`) into the supporting tier, and a deferred
    `remember` node writes each turn to the store afterwards (`remember_turns=False`
    to leave writing to your own graph, e.g. after the model has answered).

    The factory's `template`, `budget`, `model`, `workspace`, `tools` and `settings`
    are the graph's defaults; a run overrides any of them with
    `context=ContextConfig(...)`. Without `settings`, `Settings.load()` is read once
    per process.
    Its output is `ContextUpdate` (the frame channels only). When it is embedded as a
    node of a parent graph, leave `checkpointer` unset: the
    pipeline then runs inside one step of the parent (whose checkpoint records the
    new frame) instead of writing checkpoints of its own, which would only duplicate
    the state in the parent's saver.
    """
    defaults = _defaults(
        template, budget, model, workspace, tools, settings, summarizer, user_id, switching
    )
    # Embedded (no checkpointer of its own), `preserved` must pass deletions through.
    schema = ContextState if checkpointer is not None else _EmbeddedState
    builder = StateGraph(schema, context_schema=ContextConfig, output_schema=ContextUpdate)
    builder.add_node("context", _with_defaults(compress, defaults, follow_frame=False))
    builder.add_edge(START, "context")
    if remember_turns if remember_turns is not None else store is not None:
        # Deferred: it runs once everything else in the run is done.
        builder.add_node("remember", _with_defaults(remember, defaults), defer=True)
        builder.add_edge("context", "remember")
        builder.add_edge("remember", END)
    else:
        builder.add_edge("context", END)
    return builder.compile(
        checkpointer=False if checkpointer is None else checkpointer, store=store, name=name
    )


def context_node(
    *,
    template: Any = None,
    budget: int | None = None,
    model: str | None = None,
    workspace: Path | str | None = None,
    tools: Sequence[Any] = (),
    settings: Settings | None = None,
    summarizer: Any = None,
    user_id: str | None = None,
    switching: SwitchPolicy | dict[str, Any] | None = None,
) -> Node:
    """The context pipeline as one plain node for your own `StateGraph`.

    Same pipeline and defaults as `build_context_graph`, without the subgraph around
    it: the parent passes its state straight in, so the history is not merged into
    a second message channel on every turn. Prefer it when embedding; use
    `build_context_graph` to run the pipeline on its own (replay, versions). Give
    the parent's state the `ContextState` channels (`preserved`, `switch`,
    `switches`) for template switches.

    Example:
        >>> builder.add_node("context", context_node(template="technical", budget=8_000))
    """
    defaults = _defaults(
        template, budget, model, workspace, tools, settings, summarizer, user_id, switching
    )
    return _with_defaults(compress, defaults, follow_frame=False)


def _defaults(
    template: Any,
    budget: int | None,
    model: str | None,
    workspace: Path | str | None,
    tools: Sequence[Any],
    settings: Settings | None,
    summarizer: Any,
    user_id: str | None,
    switching: SwitchPolicy | dict[str, Any] | None = None,
) -> ContextConfig:
    """The factory arguments as the run defaults every node falls back to.

    The factory's template is the graph's *default* (`default_template`): a run's
    own `template` overrides it for that run, and the thread's template beats it.
    """
    return ContextConfig(
        default_template=template,
        budget=budget,
        model=model,
        workspace=Path(workspace) if workspace is not None else None,
        tools=tuple(tools),
        settings=settings,
        summarizer=summarizer,
        user_id=user_id,
        switching=SwitchPolicy.coerce(switching) if switching is not None else None,
    )


def _with_defaults(node: Node, defaults: ContextConfig, *, follow_frame: bool = True) -> Node:
    """Wrap a node so that the run's context falls back to the factory's defaults.

    A `template` in `defaults` is taken as the graph's default template (so that a
    run's own template stays distinguishable from it). With `follow_frame` (nodes
    that run after the pipeline, e.g. `remember`) the node uses the template of the
    frame the pipeline chose (`with_active_template`); the pipeline itself decides
    it, so it takes `follow_frame=False`.
    """
    if defaults.template is not None:
        defaults = replace(
            defaults,
            template=None,
            default_template=(
                defaults.default_template
                if defaults.default_template is not None
                else defaults.template
            ),
        )
    inner = with_active_template(node) if follow_frame else node

    # `state` is deliberately not typed as ContextState: LangGraph would read the
    # annotation as the node's input schema and clash with a parent graph whose
    # channels differ (e.g. `messages` as a DeltaChannel).
    def run(state: Any, runtime: Runtime[ContextConfig]) -> dict[str, Any]:
        context = ContextConfig.coerce(runtime.context)
        merged = context.over(defaults) if context is not None else defaults
        return inner(state, runtime.override(context=merged))

    run.__name__ = getattr(node, "__name__", "node")
    run.__doc__ = node.__doc__
    return run
