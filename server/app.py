"""The HTTP API and the cockpit, over a running city (``market.city.City``).

Every refusal is a ``Problem`` with a 4xx status: 401 without a valid token, 403 without the role
on that machine, 400 for bad input, 404 for what does not exist, 409 when the ledger or the
proposal's state says no. Handlers that touch the ledger are plain functions (FastAPI runs them on
its thread pool, so the event loop never waits on SQL); the streams are async generators fed by the
hub (``server.feed``). The routes live in ``server/routes``, one module per concern (service, auth,
machines, live, console, chat, governance, jobs); what they share — the context, who is asking, the
refusals — in ``server.context``; this module only wires them, the error mapping and the timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.chat import ChatHistory
from core.datadir import DataDir
from core.errors import (
    CommandRejected,
    DriverError,
    EscrowNotFound,
    Forbidden,
    GovernanceError,
    InputError,
    LedgerError,
    MachineSilent,
    NotAuthenticated,
    NotInControl,
    PolicyRefused,
    TamcError,
    UnknownAccount,
    UnknownHandoff,
    UnknownJob,
    UnknownMachine,
    UnknownProposal,
    VoteRefused,
)
from server.access import Access, Role
from server.console import Console
from server.context import ServerContext
from server.desk import JobDesk
from server.escrows import Escrows
from server.feed import Feed
from server.metrics import Metrics
from server.routes import ROUTERS
from server.schemas import Problem

if TYPE_CHECKING:
    from market.city import City

__all__ = ["STATUS", "create_app"]


def create_app(city: City, *, access: Access | None = None, web_dir: Path | None = None) -> FastAPI:
    feed = Feed(city.admit("server", "console"), clock=city.clock)
    access = access or Access(city.ledger)
    relay = city.keys.get_or_create("server-console")  # relays the commands of operators it authenticated
    access.grant(relay.did, Role.CONSOLE)
    ctx = ServerContext(city=city, access=access, feed=feed, desk=JobDesk(city, feed),
                        chats=ChatHistory(DataDir(city.config.data_dir).chats), metrics=Metrics(city, feed),
                        console=Console(feed, relay, city.ledger),
                        escrows=Escrows(city.ledger, lambda job: list(feed.job_events.get(job, ()))))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(feed.start, asyncio.get_running_loop())
        try:
            yield
        finally:
            ctx.desk.close()
            feed.close()

    app = FastAPI(title="TAMC", version="1", lifespan=lifespan,
                  summary="The Autonomous Machine Cloud: see, chat with and govern machines that work for money.",
                  description="Money is integer micro-units (1 unit = 1,000,000). Log in with a did:key "
                              "(POST /v1/auth/challenge, sign, POST /v1/auth/token) and send the token as a bearer.")
    app.state.ctx = ctx
    _errors(app, ctx)
    _timing(app, ctx)
    for router in ROUTERS:
        app.include_router(router)
    from server.cockpit import mount_cockpit

    mount_cockpit(app, web_dir)
    return app


# -- errors and timing -------------------------------------------------------------------------

STATUS: list[tuple[type[TamcError], int]] = [
    (UnknownJob, 404), (NotAuthenticated, 401), (Forbidden, 403), (VoteRefused, 403), (PolicyRefused, 403), (UnknownMachine, 404),
    (NotInControl, 403), (UnknownHandoff, 404), (CommandRejected, 409), (MachineSilent, 504), (DriverError, 502),
    (UnknownProposal, 404), (UnknownAccount, 404), (EscrowNotFound, 404), (InputError, 400), (GovernanceError, 409), (LedgerError, 409), (TamcError, 400),
]
"""The first match wins: a proposal that exists but cannot do that (closed, execution failed) is 409."""


def _errors(app: FastAPI, ctx: ServerContext) -> None:
    async def refuse(request: Request, exc: Exception) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        ctx.metrics.refusals.labels(type(exc).__name__).inc()
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(Problem(error=type(exc).__name__, detail=str(exc)).model_dump(), status_code=status, headers=headers)

    async def http_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method the path answers, not only those of the first route found
            allowed = {m for r in request.app.routes if isinstance(r, APIRoute) and r.path_regex.match(request.url.path)
                       for m in (r.methods or ())}
            headers["Allow"] = ", ".join(sorted(allowed))
        name = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return JSONResponse(Problem(error=name, detail=str(exc.detail)).model_dump(), status_code=exc.status_code, headers=headers)

    app.add_exception_handler(TamcError, refuse)
    app.add_exception_handler(StarletteHTTPException, http_problem)


def _timing(app: FastAPI, ctx: ServerContext) -> None:
    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        ctx.metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        ctx.metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response
