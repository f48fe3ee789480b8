"""Chat with a machine: the caller's own history, and an answer streamed as it is written."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.sse import EventSourceResponse, ServerSentEvent

from agents.chat import ChatAnswer
from prompts import unfence
from server.context import REFUSALS, STREAM_REFUSALS, Ctx, OnMachine, Reader, ServerContext
from server.schemas import ChatLine, ChatRequest, Problem

__all__ = ["router"]

log = logging.getLogger("tamc.server")
router = APIRouter(responses=REFUSALS)


@router.get("/v1/machines/{machine_id}/chat", tags=["chat"])
def chat_history(ctx: Ctx, on: Reader) -> list[ChatLine]:
    """The caller's own conversation with the machine (nobody else's)."""
    name, _ = _speaker(ctx, on)
    return _lines(ctx.chats.load(on.machine_id, name))


@router.post("/v1/machines/{machine_id}/chat", tags=["chat"], response_class=EventSourceResponse, responses=STREAM_REFUSALS)
async def chat(ctx: Ctx, on: Reader, body: ChatRequest) -> AsyncIterator[ServerSentEvent]:
    """Ask the machine; the answer streams as ``delta`` events (text) and ends with one ``answer``
    event (the whole ``ChatAnswer``: mode, the tools it rests on, the memory it cites)."""
    name, vouched = _speaker(ctx, on)
    session = ctx.chat(on.machine_id)
    loop = asyncio.get_running_loop()
    parts: asyncio.Queue[str | ChatAnswer | Exception] = asyncio.Queue()

    def put(part: str | ChatAnswer | Exception) -> None:
        loop.call_soon_threadsafe(parts.put_nowait, part)

    def ask() -> None:
        try:
            answer = session.ask(name, body.message, vouched=vouched, on_text=lambda t: put(t))
        except Exception as exc:  # sent to the client as an error event
            put(exc)
        else:
            put(answer)

    worker = asyncio.create_task(asyncio.to_thread(ask))
    streamed = False
    while True:
        part = await parts.get()
        if isinstance(part, str):
            streamed = True
            yield ServerSentEvent(event="delta", data={"text": part})
        elif isinstance(part, ChatAnswer):
            if not streamed:
                yield ServerSentEvent(event="delta", data={"text": part.text})
            ctx.metrics.chats.labels(part.mode).inc()
            yield ServerSentEvent(event="answer", data=part.model_dump(mode="json"))
            break
        else:
            log.warning("machine=%s chat failed: %s", on.machine_id, part)
            yield ServerSentEvent(event="error", data=Problem(error=type(part).__name__, detail=str(part)).model_dump())
            break
    await worker


def _speaker(ctx: ServerContext, on: OnMachine) -> tuple[str, bool]:
    """Who speaks in the chat: the holder's name (as on the command line), or the principal's;
    and whether the server vouches for them (an operator or admin with no shares)."""
    held = ctx.access.holdings(on.principal.did, on.machine_id)
    account = next((a for a in held if a.startswith("holder:")), None)
    if account is not None:
        return account.removeprefix("holder:"), False
    return on.principal.name, True


def _lines(messages: list[Any]) -> list[ChatLine]:
    from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart

    out: list[ChatLine] = []
    for m in messages:
        if isinstance(m, ModelRequest):
            out += [ChatLine(role="you", text=unfence(str(p.content))) for p in m.parts if isinstance(p, UserPromptPart)]
        elif isinstance(m, ModelResponse):
            text = "".join(p.content for p in m.parts if isinstance(p, TextPart))
            if text:
                out.append(ChatLine(role="machine", text=text))
    return out
