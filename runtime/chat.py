"""`llmctx chat`: an interactive REPL over the agent graph, with the version commands
inside the conversation.

Every line you type is one turn of `llmctx.graphs.build_agent` on a thread of the
workspace's saver, so the chat is resumable (`--thread`) and every turn is a version.
Lines starting with `/` are commands instead:

    /switch NAME [STRATEGY]   switch the thread to another template (a version)
    /history [N]              the thread's last N versions (default 10)
    /diff [A [B]]             what changed between two versions (default head~1 head)
    /rollback VERSION         make an old frame the head again (history is kept)
    /budget                   how the current window spends its budget, tier by tier
    /memory [QUERY]           memories in the window, or search the user's memories
    /help, /quit

This module is a front door (like the CLI): it is the only place besides `cli` that
imports `llmctx.graphs`, and only when a session is built.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmctx.runtime.errors import ConfigError, LlmctxError
from llmctx.runtime.settings import Settings
from llmctx.runtime.views import budget_line, budget_table, clip, hits_table, versions_table

__all__ = ["HELP", "ChatSession", "no_model_message", "run_repl"]

HELP = """\
/switch NAME [STRATEGY]  switch the thread to template NAME (strategies: minimal, optimal,
                         aggressive, preserving)
/history [N]             the thread's last N versions (default 10)
/diff [A [B]]            compare two versions (default: head~1 head)
/rollback VERSION        make an old version's window the head again
/budget                  the current window's budget, tier by tier
/memory [QUERY]          memories in the window; with QUERY, search your memories
/help                    this list
/quit                    leave (end of input does too)
Anything else is a message to the model."""


def no_model_message() -> str:
    """The one line `llmctx chat` prints when no chat model is configured."""
    return (
        "no chat model is configured: set LLMCTX_LLM_BASE_URL to an OpenAI-compatible "
        "endpoint (and LLMCTX_LLM_API_KEY if it needs a key), or set them in "
        ".llm/config/settings.toml under [llm]"
    )


@dataclass
class ChatSession:
    """One chat thread: the agent graph, its saver and store, and the REPL commands.

    `agent` is a compiled `build_agent` graph whose checkpointer is `saver`; `store`
    is its long-term memory (or `None`). `send` runs one turn; `command` runs one
    `/command`. Both print to `console` and never raise an `LlmctxError` (they print
    it as one line, so a typo does not end the session).
    """

    agent: Any
    saver: Any
    thread_id: str
    settings: Settings
    console: Console
    store: Any = None
    user_id: str | None = None
    embedder: Any = None
    _commands: dict[str, Callable[[list[str]], None]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._commands = {
            "/switch": self._switch,
            "/history": self._history,
            "/diff": self._diff,
            "/rollback": self._rollback,
            "/budget": self._budget,
            "/memory": self._memory,
            "/help": lambda _args: self.console.print(HELP, markup=False),
        }

    @property
    def config(self) -> dict[str, Any]:
        """The RunnableConfig of this thread."""
        return {"configurable": {"thread_id": self.thread_id}}

    def values(self) -> dict[str, Any]:
        """The thread's current state (empty before the first turn)."""
        return dict(self.agent.get_state(self.config).values or {})

    def send(self, text: str) -> AIMessage | None:
        """Run one turn with the user's `text`; print and return the model's answer."""
        try:
            result = self.agent.invoke({"messages": [HumanMessage(content=text)]}, self.config)
        except LlmctxError as exc:
            self._error(str(exc))
            return None
        except Exception as exc:  # the endpoint is down, rejects the key, times out ...
            self._error(f"the model call failed: {type(exc).__name__}: {exc}")
            return None
        answer = _last_ai(result.get("messages", []))
        if answer is None:
            self._error("the turn ended without an answer from the model")
            return None
        self.console.print(Text(answer.text or str(answer.content)))
        frame = result.get("context") or {}
        op = (frame.get("last_op") or {}).get("op", "?")
        self.console.print(
            Text(
                f"[{frame.get('template', '?')} · window {frame.get('window_tokens', 0)}"
                f"/{frame.get('budget', 0)} tokens · {op}]",
                style="dim",
            )
        )
        return answer

    def command(self, line: str) -> bool:
        """Run one `/command` line; `False` when it asks to leave."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self._error(f"cannot parse {line!r}: {exc}")
            return True
        name, args = words[0].lower(), words[1:]
        if name in ("/quit", "/exit"):
            return False
        handler = self._commands.get(name)
        if handler is None:
            self._error(f"unknown command {name}; /help lists the commands")
            return True
        try:
            handler(args)
        except LlmctxError as exc:
            self._error(str(exc))
        return True

    # ----------------------------------------------------------------- commands

    def _switch(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            raise ConfigError("usage: /switch NAME [STRATEGY]")
        request: dict[str, Any] = {"template": args[0], "reason": "chat /switch"}
        if len(args) == 2:
            request["strategy"] = args[1]
        before = (self.values().get("context") or {}).get("template")
        frame = _apply_switch(self.agent, self.config, request)
        self.console.print(
            Text(
                f"switched from '{before or '?'}' to '{frame.get('template')}' "
                f"({(frame.get('last_op') or {}).get('reason', '')}); "
                f"window {frame.get('window_tokens', 0)}/{frame.get('budget', 0)} tokens"
            )
        )

    def _history(self, args: list[str]) -> None:
        from llmctx.runtime.versions import history

        limit = _count(args, default=10, usage="/history [N]")
        versions = history(self.saver, self.thread_id, limit=limit)
        if not versions:
            self.console.print("no versions yet: say something first")
            return
        self.console.print(versions_table(versions, self.thread_id))

    def _diff(self, args: list[str]) -> None:
        from llmctx.runtime.versions import diff, diff_renderable

        if len(args) > 2:
            raise ConfigError("usage: /diff [A [B]]  (versions: id, prefix, tag, head~N)")
        a = args[0] if args else "head~1"
        b = args[1] if len(args) > 1 else "head"
        self.console.print(diff_renderable(diff(self.saver, self.thread_id, a, b)))

    def _rollback(self, args: list[str]) -> None:
        from llmctx.runtime.versions import rollback

        if len(args) != 1:
            raise ConfigError("usage: /rollback VERSION  (id, prefix, tag or head~N)")
        new = rollback(self.agent, self.thread_id, args[0], as_node="context")
        self.console.print(
            Text(f"{new.reason}; new version {new.checkpoint_id} (window {new.window_tokens})")
        )

    def _budget(self, args: list[str]) -> None:
        if args:
            raise ConfigError("usage: /budget")
        frame = self.values().get("context")
        if not frame:
            self.console.print("no window yet: say something first")
            return
        self.console.print(Text(budget_line(frame)), soft_wrap=True)
        self.console.print(budget_table(frame))
        summaries = frame.get("summaries", [])
        memories = frame.get("memories", [])
        self.console.print(
            f"{len(summaries)} summary(ies), {len(memories)} memory(ies), "
            f"{len(frame.get('pruned', []))} message(s) pruned by the last operation",
            markup=False,
        )

    def _memory(self, args: list[str]) -> None:
        if not args:
            frame = self.values().get("context") or {}
            memories = frame.get("memories", [])
            if not memories:
                self.console.print("no memories in the current window")
                return
            table = Table(title="memories in the window", box=None, header_style="bold")
            for header in ("score", "tokens", "text"):
                table.add_column(header, no_wrap=True)
            room = max(20, self.console.width - 20)
            for memory in memories:
                table.add_row(
                    f"{memory.get('score', 0.0):.3f}",
                    str(memory["tokens"]),
                    Text(clip(" ".join(memory["text"].split()), room)),
                )
            self.console.print(table)
            return
        if self.store is None:
            raise ConfigError("long-term memory is off in this chat (--no-memory)")
        self._search(" ".join(args))

    def _search(self, query: str) -> None:
        from llmctx.nodes import DEFAULT_USER, MEMORY_ROOT
        from llmctx.runtime.retrieval import HybridRetriever

        user = self.user_id or DEFAULT_USER
        retriever = HybridRetriever(self.store, embedder=self.embedder)
        hits = retriever.search((*MEMORY_ROOT, user), query, k=5)
        if not hits:
            self.console.print(Text(f"no memories of user '{user}' match {query!r}"))
            return
        rows = [
            {
                "score": hit.score,
                "kind": hit.value.get("kind"),
                "when": hit.value.get("when") or "",
                "domain": hit.namespace[len(MEMORY_ROOT) + 1]
                if len(hit.namespace) > len(MEMORY_ROOT) + 1
                else None,
                "text": hit.text,
            }
            for hit in hits
        ]
        title = f"memories of user '{user}' for {query!r}"
        self.console.print(hits_table(rows, title, f"{len(rows)} hit(s)", self.console.width))

    def _error(self, message: str) -> None:
        self.console.print(Text(f"error: {message}", style="red"))


def run_repl(session: ChatSession, lines: Iterable[str] | None = None) -> int:
    """Read lines (default: stdin) until `/quit` or end of input; returns the exit code.

    On a terminal it prompts with `you> `; with piped input it reads silently, so a
    script's output holds only the answers and command results.
    """
    interactive = lines is None and sys.stdin.isatty()
    source = _prompted(session.console) if interactive else (lines or _stdin_lines(sys.stdin))
    for raw in source:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                break
        else:
            session.send(line)
    return 0


def _prompted(console: Console) -> Iterable[str]:
    while True:
        try:
            yield console.input("[bold]you>[/bold] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return


def _stdin_lines(stream: TextIO) -> Iterable[str]:
    yield from stream


def _apply_switch(agent: Any, config: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Switch the thread now: run only the context node with the request, so the switch
    is its own version and `/budget` shows the new template before the next message."""
    from llmctx.graphs import apply_switch

    return apply_switch(agent, config, request)


def _last_ai(messages: list[BaseMessage]) -> AIMessage | None:
    for message in reversed(messages):
        if isinstance(message, AIMessage):
            return message
    return None


def _count(args: list[str], *, default: int, usage: str) -> int:
    if not args:
        return default
    if len(args) > 1 or not args[0].isdigit() or int(args[0]) < 1:
        raise ConfigError(f"usage: {usage} (N a positive number)")
    return int(args[0])
