"""Tool calls and their results: which ids an AI message calls, and the prompt order
providers accept.

A tool result must sit right after the AI message that issued its call (OpenAI and
Anthropic reject anything else in between), and providers are sent
`invalid_tool_calls` as calls too. Both the window builder (`llmctx.nodes`) and the
versions API (which renders old windows) use these rules, so they live here.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

__all__ = ["calls_of", "invalid_call_results", "results_after_calls"]


def calls_of(message: BaseMessage) -> list[str]:
    """The tool-call ids of an AI message, valid then invalid (empty for other messages).

    Providers are sent `invalid_tool_calls` (arguments that did not parse) as tool
    calls too (langchain-openai does), so they pair with their error results exactly
    like valid calls: atomic with them, dangling without them. An invalid call
    without an id cannot be answered, and is not a call to pair.
    """
    if not isinstance(message, AIMessage):
        return []
    ids = [str(call.get("id")) for call in message.tool_calls]
    if message.invalid_tool_calls:
        ids.extend(str(call["id"]) for call in message.invalid_tool_calls if call.get("id"))
    return ids


def results_after_calls(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """`messages` with each tool result moved up to right after its call's AI message.

    OpenAI and Anthropic reject a prompt with anything but results between a call
    and its results, while a history may hold a result after another message
    (interleaved or asynchronous tools). Each result belongs to the nearest earlier
    AI message that issued its call id and has no result for it yet; the results of
    one AI message follow it in call order. A result without such a message keeps
    its place. Only the order changes: the same messages, the same tokens.

    Example: AI(calls a, b), Tool(b), Human, Tool(a) becomes AI, Tool(a), Tool(b), Human.
    """
    owner: dict[int, int] = {}  # result position -> its AI message's position
    answers: dict[int, str] = {}  # result position -> the call id it answers
    issued: dict[str, list[int]] = {}  # call id -> positions of AI messages issuing it
    answered: set[tuple[int, str]] = set()
    for k, message in enumerate(messages):
        if isinstance(message, ToolMessage):
            cid = message.tool_call_id
            for a in reversed(issued.get(cid, ())):
                if (a, cid) not in answered:
                    answered.add((a, cid))
                    owner[k], answers[k] = a, cid
                    break
        else:
            for cid in calls_of(message):
                issued.setdefault(cid, []).append(k)
    if not owner:
        return list(messages)
    results: dict[int, list[int]] = {}
    for k, a in owner.items():
        results.setdefault(a, []).append(k)
    out: list[BaseMessage] = []
    for k, message in enumerate(messages):
        if k in owner:
            continue
        out.append(message)
        if k in results:
            rank: dict[str, int] = {}
            for n, cid in enumerate(calls_of(message)):
                rank.setdefault(cid, n)
            out.extend(messages[j] for j in sorted(results[k], key=lambda j: rank[answers[j]]))
    return out


def invalid_call_results(messages: Sequence[BaseMessage]) -> list[ToolMessage]:
    """An error result for each malformed tool call in `messages` that has none yet.

    A model's `invalid_tool_calls` (arguments that did not parse) reach the provider
    as calls, so each needs a result before the next model call, or the request is
    rejected. The error tells the model to call again; the stable id
    (`llmctx-invalid-<call id>`) makes adding them idempotent.
    """
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    out: list[ToolMessage] = []
    for message in messages:
        if not isinstance(message, AIMessage):
            continue
        for call in message.invalid_tool_calls:
            cid = call.get("id")
            if not cid or cid in answered:
                continue
            answered.add(cid)
            name = call.get("name") or "unknown"
            out.append(
                ToolMessage(
                    content=(
                        f"Tool call {name} with id {cid} could not be executed - arguments "
                        f"were malformed or truncated ({call.get('error') or 'invalid JSON'}). "
                        "Call it again with valid arguments."
                    ),
                    name=name,
                    tool_call_id=cid,
                    status="error",
                    id=f"llmctx-invalid-{cid}",
                )
            )
    return out
