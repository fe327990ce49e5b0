"""A loopback OpenAI-compatible chat endpoint for tests: scripted replies, recorded requests.

It speaks just enough of `POST /v1/chat/completions` (non-streaming) for `ChatOpenAI`,
so the real client path (settings → `chat_model` → HTTP) runs with no network. Each
request body is recorded; replies come from a script (text, or tool calls), and when
the script runs out the server echoes how many messages it was sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeOpenAI:
    """The server's script and what it received."""

    replies: list[Any] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(body)
        scripted = self.replies.pop(0) if self.replies else None
        if scripted is None:
            scripted = f"echo: {len(body.get('messages', []))} messages"
        message: dict[str, Any] = {"role": "assistant", "content": None}
        finish = "stop"
        if isinstance(scripted, str):
            message["content"] = scripted
        else:  # a list of (name, args) tool calls
            message["tool_calls"] = [
                {
                    "id": f"call_{len(self.requests)}_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
                for i, (name, args) in enumerate(scripted)
            ]
            finish = "tool_calls"
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "gpt-4o-mini"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


@contextmanager
def fake_openai(replies: list[Any] | None = None) -> Iterator[FakeOpenAI]:
    """Serve a `FakeOpenAI` on 127.0.0.1 (a free port) for the `with` block."""
    state = FakeOpenAI(replies=list(replies or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            data = json.dumps(state.reply(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
