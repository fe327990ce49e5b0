"""llmctx as langchain 1.x agent middleware: the context pipeline inside `create_agent`.

`ContextMiddleware` gives a `create_agent` agent the same context operations as the
llmctx graphs, without rewriting the agent:

    >>> agent = create_agent(
    ...     model, tools,
    ...     middleware=[ContextMiddleware(template="technical", budget=8_000)],
    ...     checkpointer=saver,
    ... )

**Hooks.** `before_model` runs the pipeline (retrieve when the agent has a `store`,
then budget → prune → summarize) on the history and stores the frame in the
`context` channel, so every turn's frame is checkpointed and `llmctx.runtime.versions`
(`history`, `diff`, `rollback`) works on the agent's threads. `wrap_model_call` then
replaces the request's messages with the window (`window_messages`): the model never
sees the raw history, and `state["messages"]` is never rewritten. `after_agent`
writes the new turns to long-term memory when the agent has a store.

**Exactly what is sent is counted.** The budget covers the system prompt, the tool
schemas bound to the model (`request.tools`, plus the structured-output tools
`create_agent` adds), every message with its framing and the reply priming, counted
with the model's tokenizer. `before_model` cannot see the request, so it assembles
for the system prompt, tools and tokenizer of this middleware's previous request
(or the `tools` hint on the first one); `wrap_model_call` checks them against the
real request and re-assembles when they differ (another middleware chose other
tools, a dynamic prompt changed the system prompt), returning that frame with the
response. It then counts the final request once more and refuses to send one over
the budget (`BudgetError`). Put this middleware **last** in `middleware=[...]`: it is
then the innermost `wrap_model_call`, and sees the tools and prompt other middleware
chose. (Edits an outer `wrap_model_call` makes to `request.messages` are replaced by
the window; middleware that must change what the model sees should change the state
in `before_model`. Do not combine it with `SummarizationMiddleware`, which deletes
the history this middleware keeps.)

**The system prompt** is one system message. `system_prompt="agent"` (the default)
sends `create_agent`'s `system_prompt` when it has one and the template's otherwise;
`"template"` always sends the template's; `"both"` sends the agent's followed by the
template's. Whichever is chosen takes the template prompt's place in the window, so
it is counted, versioned and diffed like it. Summaries and retrieved memories (system
text in the window) are appended to it, so providers that accept a single leading
system message (Anthropic, Gemini) take the request; `merge_system=False` sends them
as separate system messages instead.

**Template switches** work as in the graph pipeline (`llmctx.nodes.switch`): an
explicit request in the `switch` channel (`agent.invoke({"messages": [...], "switch":
{"template": "business"}}, config)`, `agent.update_state`, or the model calling
`switch_context_tool()` given in the agent's tools, whose `Command` the agent's tool
node applies), the run's `ContextConfig.template` (this run only), or the classifier
with `switching=SwitchPolicy(auto=True)`. The next assembly switches: the outgoing
frame is kept in `preserved` (switching back restores it), the strategy decides what
the new template starts from, the version's `last_op.op` is `switch` and the
`switches` channel logs it. The new template's deps keep this middleware's own: its
system-prompt policy, and the request's tools and tokenizer. The middleware's
`template` is the agent's default (what a new thread starts with), like
`build_context_graph(template=...)`.

**Tool pairs stay atomic.** The window never holds a `ToolMessage` without its call,
nor a call without all of its results; a last check on the assembled request also
covers `invalid_tool_calls` (whose error results `create_agent` adds at call time).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
    OmitFromInput,
    PrivateStateAttr,
)
from langchain.agents.structured_output import (
    AutoStrategy,
    OutputToolBinding,
    ProviderStrategy,
    ToolStrategy,
)
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langgraph.runtime import Runtime
from langgraph.types import Command

from llmctx.nodes import (
    ContextConfig,
    Frame,
    NodeDeps,
    SwitchLog,
    SwitchPlan,
    SwitchPolicy,
    SwitchRequest,
    compress_frame,
    finish_switch,
    merge_preserved,
    plan_switch,
    remember_messages,
    resolve_deps,
    retrieve_memories,
    window_messages,
)
from llmctx.runtime.errors import BudgetError, ConfigError, TemplateNotFoundError
from llmctx.runtime.settings import Settings
from llmctx.runtime.toolpairs import calls_of, invalid_call_results
from llmctx.templates import Template

__all__ = ["ContextAgentState", "ContextMiddleware", "SystemPromptPolicy"]

logger = logging.getLogger(__name__)

SystemPromptPolicy = Literal["agent", "template", "both"]
"""Which system prompt the model gets: the agent's, the template's, or both."""

_POLICIES = ("agent", "template", "both")
_SYSTEM_ID = "llmctx:system"
_CACHE_LIMIT = 64


class ContextAgentState(AgentState[Any]):
    """The agent state with the llmctx channels `create_agent` merges into its own.

    `context` is the frame (`llmctx.nodes.Frame`), checkpointed every turn and
    returned with the agent's output; `remembered` is the long-term memory write
    mark; `context_key` names what the frame was assembled for (tokenizer, template
    with the sent system prompt, budget, tool-schema tokens), so that the model call
    can tell whether the frame fits its request.

    The switch channels are `ContextState`'s: `preserved` holds the frames of the
    thread's other templates (merged by `merge_preserved`, restored on switching
    back), `switch` a pending `SwitchRequest` (input it to switch; the next assembly
    reads it and sets it back to `None`) and `switches` the thread's `SwitchLog`.
    """

    context: NotRequired[Annotated[Frame, OmitFromInput]]
    # The reducer must come last: LangGraph reads the last annotation as the reducer.
    preserved: NotRequired[Annotated[dict[str, Frame], OmitFromInput, merge_preserved]]
    switch: NotRequired[SwitchRequest | None]
    switches: NotRequired[Annotated[SwitchLog, OmitFromInput]]
    remembered: NotRequired[Annotated[dict[str, Any], PrivateStateAttr]]
    context_key: NotRequired[Annotated[str, PrivateStateAttr]]


@dataclass(frozen=True)
class _Seen:
    """What a model request carried, as far as the window depends on it."""

    system: SystemMessage | None
    tools: tuple[Any, ...]
    model: str | None


@dataclass(frozen=True)
class _Plan:
    """The resolved dependencies for one request, and the key of their frame.

    `config` is the run's merged `ContextConfig` (with the request's tools and
    model) and `system` the agent's system message, which the switch stage needs to
    resolve another template's deps the same way.
    """

    deps: NodeDeps
    key: str
    config: ContextConfig
    system: SystemMessage | None


class ContextMiddleware(AgentMiddleware[ContextAgentState, Any, Any]):
    """The llmctx context pipeline as `create_agent` middleware.

    `template` (a name or `Template`), `budget` (the whole request: system prompt,
    tool schemas and messages), `model` (the tokenizer's model name; unset, the agent
    model's `model_name`, else `Settings.model`), `workspace`, `settings`,
    `summarizer` (a chat model or `llmctx.runtime.Summarizer`), `user_id` (whose
    long-term memories are read and written) and `embedder` mean what they mean for
    `build_context_graph`. A run may override them with `context=ContextConfig(...)`
    when the agent's `context_schema` is `ContextConfig`; with another context schema
    a `user_id` attribute or key of the run context selects the user.

    `tools` is an optional hint: the tools the agent binds, so that the first turn
    is assembled for them (later turns learn them from the requests). The tools
    actually sent are always the ones counted.

    `template` is the template a new thread starts with; the thread then keeps its own,
    changed by switches (see the module docstring). `switching` (a `SwitchPolicy` or a
    dict of its fields) turns on automatic switches and sets the default strategy,
    like `context_node(switching=...)`.

    `system_prompt` chooses the system prompt (see `SystemPromptPolicy`), and
    `merge_system` whether summaries and memories join it in one system message.
    `remember` writes new turns to the agent's store after each run (default: when
    the agent has a store).

    Example:
        >>> agent = create_agent(
        ...     "openai:gpt-4o-mini",
        ...     tools=[search],
        ...     system_prompt="You answer questions about our codebase.",
        ...     middleware=[ContextMiddleware(template="technical", budget=8_000)],
        ...     checkpointer=InMemorySaver(),
        ... )
        >>> out = agent.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "1"}})
        >>> out["context"]["window_tokens"] <= 8_000
        True
    """

    state_schema = ContextAgentState

    def __init__(
        self,
        *,
        template: str | Template | None = None,
        budget: int | None = None,
        model: str | None = None,
        workspace: Path | str | None = None,
        tools: Sequence[Any] = (),
        settings: Settings | None = None,
        summarizer: Any = None,
        user_id: str | None = None,
        embedder: Any = None,
        system_prompt: SystemPromptPolicy = "agent",
        merge_system: bool = True,
        remember: bool | None = None,
        switching: SwitchPolicy | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if system_prompt not in _POLICIES:
            raise ConfigError(
                f"system_prompt must be one of {', '.join(_POLICIES)}, got {system_prompt!r}"
            )
        if budget is not None and budget <= 0:
            raise ConfigError(f"the budget must be positive, got {budget}; pass budget=8000")
        # The middleware's template is the thread's default, as in `build_context_graph`:
        # a run's own `ContextConfig.template` and the thread's template beat it.
        self.defaults = ContextConfig(
            default_template=template,
            budget=budget,
            model=model,
            workspace=Path(workspace) if workspace is not None else None,
            settings=settings,
            summarizer=summarizer,
            user_id=user_id,
            embedder=embedder,
            switching=SwitchPolicy.coerce(switching) if switching is not None else None,
        )
        self.system_prompt: SystemPromptPolicy = system_prompt
        self.merge_system = merge_system
        self.remember = remember
        self._lock = threading.Lock()
        self._tools: dict[tuple[int, ...], tuple[Any, ...]] = {}
        self._templates: dict[tuple[str, str], Template] = {}
        self._seen = _Seen(system=None, tools=self._stable_tools(tools), model=None)

    # -- hooks -----------------------------------------------------------------

    def before_model(
        self, state: ContextAgentState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Assemble this turn's window (switching templates first when asked to) and
        store the frame (a new context version)."""
        seen = self._seen
        config = self._run_config(runtime, seen)
        patches = invalid_call_results(state["messages"])
        if patches:  # answered in the history, so the pipeline can pair them
            state = {**state, "messages": [*state["messages"], *patches]}
        try:
            update, _ = self._assemble(state, runtime, config, seen.system)
        except BudgetError:
            # Assembled for the previous request's prompt and tools, which may not be
            # this one's; the model call re-assembles for its own (a pending switch
            # included), and raises if that does not fit either.
            return {"messages": patches} if patches else None
        if patches:
            update["messages"] = patches
        return update

    async def abefore_model(
        self, state: ContextAgentState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `before_model`: the pipeline runs in a worker thread (it may summarize
        with a model and read a store through their sync APIs)."""
        return await asyncio.to_thread(self.before_model, state, runtime)

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
        """Call the model with the window instead of the history, within the budget."""
        plan, seen = self._request_plan(request)
        update = None
        if self._stale(request.state, plan):
            update, plan = self._reassemble(request, plan)
        sent = self._window_request(request, plan, update)
        self._learn(seen)
        return _respond(handler(sent), update)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
        """Async `wrap_model_call`; a re-assembly runs in a worker thread."""
        plan, seen = self._request_plan(request)
        update = None
        if self._stale(request.state, plan):
            update, plan = await asyncio.to_thread(self._reassemble, request, plan)
        sent = self._window_request(request, plan, update)
        self._learn(seen)
        return _respond(await handler(sent), update)

    def after_agent(self, state: ContextAgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Write the run's new messages (and new summaries) to long-term memory."""
        store = getattr(runtime, "store", None)
        if store is None or self.remember is False:
            return None
        seen = self._seen
        # The frame's template (after any switch) names the memory namespaces.
        plan = self._plan(self._run_config(runtime, seen), seen.system, _frame_template(state))
        info = getattr(runtime, "execution_info", None)
        mark = remember_messages(
            state["messages"],
            plan.deps,
            state.get("context") or {},
            store,
            state.get("remembered") or {},
            user_id=self._user_id(runtime, plan.config),
            thread=getattr(info, "thread_id", None),
        )
        return {"remembered": mark}

    async def aafter_agent(
        self, state: ContextAgentState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `after_agent`: the store writes run in a worker thread."""
        return await asyncio.to_thread(self.after_agent, state, runtime)

    # -- planning --------------------------------------------------------------

    def _config(self, runtime: Runtime[Any] | None) -> ContextConfig:
        """The run's `ContextConfig` (when the run context is one) over the defaults."""
        context = getattr(runtime, "context", None)
        if isinstance(context, ContextConfig):
            return context.over(self.defaults)
        return self.defaults

    def _run_config(self, runtime: Runtime[Any] | None, seen: _Seen) -> ContextConfig:
        """The run's config for a request that carries `seen` (its tools and model)."""
        config = self._config(runtime)
        return replace(config, tools=seen.tools, model=config.model or seen.model)

    def _plan(
        self, config: ContextConfig, system: SystemMessage | None, template: str | None = None
    ) -> _Plan:
        """Resolve the pipeline's dependencies for `template` (unset: the run's or the
        default one; the switch stage decides which runs when assembling)."""
        try:
            deps = resolve_deps(config, template=template)
        except TemplateNotFoundError:
            if template is None:
                raise
            # A one-off `Template` of an earlier run: the key will not match, and the
            # re-assembly's switch stage picks the template that runs now.
            deps = resolve_deps(config)
        return self._dressed(deps, config, system)

    def _dressed(
        self, deps: NodeDeps, config: ContextConfig, system: SystemMessage | None
    ) -> _Plan:
        """`deps` with the system prompt this middleware's policy sends, and their key."""
        text = self._prompt_text(deps.template, system)
        if text != deps.template.system_prompt:
            deps = replace(deps, template=self._with_prompt(deps.template, text))
        counter = deps.counter
        raw = "|".join(
            (
                deps.template.fingerprint,
                str(deps.budget),
                str(deps.tools_tokens),
                counter.model,
                counter.encoding_name,
            )
        )
        key = hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()
        return _Plan(deps=deps, key=key, config=config, system=system)

    def _request_plan(self, request: ModelRequest[Any]) -> tuple[_Plan, _Seen]:
        """The plan for the request, with the template of the stored frame."""
        seen = _Seen(
            system=request.system_message,
            tools=self._stable_tools(_sent_tools(request)),
            model=_model_name(request.model),
        )
        config = self._run_config(request.runtime, seen)
        return self._plan(config, seen.system, _frame_template(request.state)), seen

    def _learn(self, seen: _Seen) -> None:
        """Remember the request, so the next `before_model` assembles for it."""
        self._seen = seen

    def _prompt_text(self, template: Template, system: SystemMessage | None) -> str:
        """The system prompt text the policy sends, given the agent's system message."""
        agent = str(system.text).strip() if system is not None else ""
        own = template.system_prompt.strip()
        if self.system_prompt == "template" or not agent:
            return own
        if self.system_prompt == "both":
            return f"{agent}\n\n{own}"
        return agent

    def _with_prompt(self, template: Template, text: str) -> Template:
        """`template` with `text` as its system prompt (cached: the copy's fingerprint
        is what keys the frame)."""
        key = (template.fingerprint, text)
        with self._lock:
            hit = self._templates.get(key)
            if hit is None:
                if len(self._templates) >= _CACHE_LIMIT:
                    self._templates.clear()
                hit = self._templates[key] = template.model_copy(update={"system_prompt": text})
            return hit

    def _stable_tools(self, tools: Sequence[Any]) -> tuple[Any, ...]:
        """The same tuple object for the same tools, so their token count is cached."""
        ident = tuple(id(t) for t in tools)
        with self._lock:
            hit = self._tools.get(ident)
            if hit is None or any(a is not b for a, b in zip(hit, tools, strict=True)):
                if len(self._tools) >= _CACHE_LIMIT:
                    self._tools.clear()
                hit = self._tools[ident] = tuple(tools)
            return hit

    def _user_id(self, runtime: Runtime[Any] | None, config: ContextConfig) -> str | None:
        if config.user_id:
            return config.user_id
        context = getattr(runtime, "context", None)
        if isinstance(context, dict):
            value = context.get("user_id")
        else:
            value = getattr(context, "user_id", None)
        return value if isinstance(value, str) and value else None

    # -- assembling ------------------------------------------------------------

    def _assemble(
        self,
        state: Any,
        runtime: Runtime[Any] | None,
        config: ContextConfig,
        system: SystemMessage | None,
    ) -> tuple[dict[str, Any], _Plan]:
        """`llmctx.nodes.compress` with this request's deps: the switch stage, then
        retrieve → budget → prune → summarize. Returns the state update (`context`,
        `context_key`, and on a switch `preserved`, `switches` and the consumed
        `switch`) and the plan of the template that ran."""
        switching = plan_switch(state, config)
        plan = self._dressed(switching.deps, config, system)
        switching = _with_deps(switching, plan.deps, state)
        if switching.exact:  # switched back with nothing new: the preserved frame, exactly
            update = finish_switch(switching.start, switching)
        else:
            messages = state["messages"]
            deps = plan.deps
            previous = switching.start
            store = getattr(runtime, "store", None)
            if store is not None and deps.template.retrieval.enabled:
                memories = retrieve_memories(
                    messages, deps, previous, store, user_id=self._user_id(runtime, config)
                )
                if switching.carried:  # `preserving`: the old domain's memories stay too
                    ids = {m["id"] for m in memories}
                    memories = [*memories, *(m for m in switching.carried if m["id"] not in ids)]
                previous = {**previous, "memories": memories}
            info = getattr(runtime, "execution_info", None)
            version = getattr(info, "checkpoint_id", None) or None
            frame = compress_frame(messages, deps, previous, version=version)
            update = finish_switch(frame, switching)
        update["context_key"] = plan.key
        return update, plan

    def _stale(self, state: Any, plan: _Plan) -> bool:
        """Whether the stored frame does not fit this request or this history, or a
        switch is pending."""
        frame = state.get("context")
        if not frame or state.get("switch") is not None or state.get("context_key") != plan.key:
            return True
        messages = state["messages"]
        tail = str(messages[-1].id) if messages else ""
        return frame.get("history_messages") != len(messages) or frame.get("history_tail") != tail

    def _reassemble(self, request: ModelRequest[Any], plan: _Plan) -> tuple[dict[str, Any], _Plan]:
        return self._assemble(request.state, request.runtime, plan.config, plan.system)

    # -- the request -----------------------------------------------------------

    def _window_request(
        self, request: ModelRequest[Any], plan: _Plan, update: dict[str, Any] | None
    ) -> ModelRequest[Any]:
        """The request with the window as its system message and messages, checked
        against the budget with the exact count of what will be sent."""
        state = request.state
        frame = update["context"] if update else state["context"]
        window = window_messages({"messages": state["messages"], "context": frame})
        deps = plan.deps
        for allow_patches in (True, False):
            paired = _pair_up(window, request.messages, allow_patches)
            for merge in (self.merge_system, False) if self.merge_system else (False,):
                system, messages = self._split_system(paired, request.system_message, merge)
                sent = [system, *messages] if system is not None else messages
                total = deps.tools_tokens + deps.counter.count_messages(sent)
                if total <= deps.budget:
                    return request.override(system_message=system, messages=messages)
        raise BudgetError(
            f"the request to the model would take {total} tokens, over the budget of "
            f"{deps.budget} (tool schemas: {deps.tools_tokens}); raise the budget or send "
            "fewer tools"
        )

    def _split_system(
        self, window: list[BaseMessage], agent: SystemMessage | None, merge: bool
    ) -> tuple[SystemMessage | None, list[BaseMessage]]:
        """The leading system text of the window as the request's system message."""
        lead = 0
        while lead < len(window) and isinstance(window[lead], SystemMessage):
            lead += 1
        if not lead:
            return None, window
        head = [m for m in window[:lead] if isinstance(m, SystemMessage)]
        rest = list(window[lead:])
        first = head[0]
        if (
            merge
            and agent is not None
            and not isinstance(agent.content, str)
            and first.id == _SYSTEM_ID
            and self.system_prompt == "agent"
            and first.content == str(agent.text).strip()
        ):
            # The agent's own message keeps its content blocks (e.g. cache control).
            first = agent.model_copy(update={"id": _SYSTEM_ID})
        if not merge:
            return first, [*head[1:], *rest]
        texts = [str(m.text) for m in head[1:]]
        if not texts:
            return first, rest
        content: Any
        if isinstance(first.content, str):
            content = "\n\n".join([first.content, *texts])
        else:
            content = [*first.content, *({"type": "text", "text": t} for t in texts)]
        return SystemMessage(content=content, id=_SYSTEM_ID), rest


def _frame_template(state: Any) -> str | None:
    """The template of the stored frame (the thread's active one), if any."""
    frame = state.get("context") or {}
    name = frame.get("template")
    return name if isinstance(name, str) and name else None


def _with_deps(switching: SwitchPlan, deps: NodeDeps, state: Any) -> SwitchPlan:
    """The switch plan with the middleware's deps (its system prompt in the template).

    `plan_switch` prepared the start frame for the registry's template; the two differ
    only in the system prompt, so the pins it matched hold for `deps.template` too,
    and a restored frame is exact only when it was built with this very prompt.
    """
    base = switching.deps.template.fingerprint
    mine = deps.template.fingerprint
    if not switching.switched or base == mine:
        return replace(switching, deps=deps)
    start = switching.start
    if start.get("template_hash") == base:
        start = {**start, "template_hash": mine}
    exact = switching.exact
    if exact:
        kept = (state.get("preserved") or {}).get(deps.template.name) or {}
        exact = kept.get("template_hash") == mine
    return replace(switching, deps=deps, start=start, exact=exact)


def _sent_tools(request: ModelRequest[Any]) -> list[Any]:
    """The tools `create_agent` binds for `request`: its tools plus the
    structured-output tools of a tool strategy (a provider strategy's schema is
    counted like a tool schema: it is sent as JSON schema too)."""
    tools = list(request.tools)
    fmt = request.response_format
    specs: list[Any] = []
    if isinstance(fmt, ToolStrategy):
        specs = list(fmt.schema_specs)
    elif isinstance(fmt, ProviderStrategy):
        specs = [fmt.schema_spec]
    elif isinstance(fmt, AutoStrategy):
        specs = list(ToolStrategy(fmt.schema).schema_specs)
    elif fmt is not None:
        specs = list(ToolStrategy(fmt).schema_specs)
    tools.extend(OutputToolBinding.from_schema_spec(spec).tool for spec in specs)
    return tools


def _model_name(model: Any) -> str | None:
    """The chat model's model name (`ChatOpenAI.model_name`, `.model`), if it has one."""
    for attr in ("model_name", "model"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def _pair_up(
    window: list[BaseMessage], pool: Sequence[BaseMessage], allow_patches: bool
) -> list[BaseMessage]:
    """The window as providers accept it: each call's results right after it.

    The pipeline keeps tool units whole; this last pass over the request also
    (1) moves results that sat behind another message up to their call (OpenAI and
    Anthropic reject anything between a call and its results), (2) covers
    `invalid_tool_calls`, whose error results `create_agent` adds to the request
    (`pool`) at call time: with `allow_patches` they are inserted after their call,
    else the call's message is left out with its results, and (3) leaves out any
    result whose call is not in the window. Results match calls by position, so a
    reused call id answers the nearest call before it.
    """
    waiting: dict[str, list[int]] = {}
    for i, message in enumerate(window):
        if isinstance(message, ToolMessage):
            waiting.setdefault(message.tool_call_id, []).append(i)
    shown = {id(m) for m in window}
    spare = {m.tool_call_id: m for m in pool if isinstance(m, ToolMessage) and id(m) not in shown}
    answer: dict[int, list[BaseMessage]] = {}
    claimed: set[int] = set()
    for i, message in enumerate(window):
        ids = calls_of(message)
        if not ids:
            continue
        found: list[BaseMessage] = []
        took: list[int] = []
        for cid in ids:
            j = next((j for j in waiting.get(cid, []) if j > i and j not in claimed), None)
            if j is not None:
                claimed.add(j)
                took.append(j)
                found.append(window[j])
            elif allow_patches and cid in spare:
                found.append(spare[cid])
            else:
                claimed.difference_update(took)  # incomplete: its results go too
                break
        else:
            answer[i] = found
    out: list[BaseMessage] = []
    dropped: list[str] = []
    for i, message in enumerate(window):
        if isinstance(message, ToolMessage):
            if i not in claimed:
                dropped.append(str(message.id))
        elif calls_of(message) and i not in answer:
            dropped.append(str(message.id))
        else:
            out.append(message)
            out.extend(answer.get(i, ()))
    if dropped:
        logger.info("left out %d message(s) with unpaired tool calls: %s", len(dropped), dropped)
    return out


def _respond(
    response: ModelResponse[Any] | AIMessage, update: dict[str, Any] | None
) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
    """The handler's response, carrying the re-assembled frame when there is one."""
    if update is None:
        return response
    if isinstance(response, AIMessage):
        response = ModelResponse(result=[response])
    return ExtendedModelResponse(model_response=response, command=Command(update=update))
