"""A local OpenAI-compatible chat-completions server for tests: the real openai client talks to it
over HTTP, and a script says what each turn of a conversation answers (a tool call, text,
malformed JSON, an HTTP error, or a slow answer)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.net import free_port


@dataclass
class Step:
    """One answer. ``tool`` + ``args`` (a dict, or a raw string for malformed JSON), or ``text``,
    or ``status`` for an HTTP error; ``delay_s`` before answering."""

    tool: str | None = None
    args: dict[str, Any] | str | None = None
    text: str | None = None
    status: int = 200
    delay_s: float = 0.0


def call(tool: str, args: dict[str, Any] | str, delay_s: float = 0.0) -> Step:
    return Step(tool=tool, args=args, delay_s=delay_s)


def say(text: str, delay_s: float = 0.0) -> Step:
    return Step(text=text, delay_s=delay_s)


def fail(status: int = 500) -> Step:
    return Step(status=status)


Script = Callable[[dict[str, Any]], Step]


def turns(*steps: Step) -> Script:
    """The n-th model turn of a conversation answers with ``steps[n]`` (the last one repeats)."""

    def script(request: dict[str, Any]) -> Step:
        n = sum(1 for m in request["messages"] if m["role"] == "assistant")
        return steps[min(n, len(steps) - 1)]

    return script


@dataclass
class StandIn:
    base_url: str
    script: Script = field(default=lambda request: say("ok"))
    requests: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, request: dict[str, Any], step: Step) -> JSONResponse:
        if step.status != 200:
            return JSONResponse({"error": {"message": "stand-in failure", "type": "server_error"}}, status_code=step.status)
        message: dict[str, Any] = {"role": "assistant", "content": step.text}
        finish = "stop"
        if step.tool is not None:
            args = step.args if isinstance(step.args, str) else json.dumps(step.args or {})
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{len(self.requests)}", "type": "function", "function": {"name": step.tool, "arguments": args}}]}
            finish = "tool_calls"
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in request["messages"]) // 4 + 1
        return JSONResponse({
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model", "standin"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 12, "total_tokens": prompt_tokens + 12},
        })


@contextmanager
def standin_server() -> Iterator[StandIn]:
    port = free_port()
    app = FastAPI()
    standin = StandIn(base_url=f"http://127.0.0.1:{port}/v1")

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        standin.requests.append(body)
        step = standin.script(body)
        if step.delay_s:
            await asyncio.sleep(step.delay_s)
        return standin.answer(body, step)

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield standin
    finally:
        server.should_exit = True
        thread.join(5)
