"""The HTTP API and the cockpit, over a running city (``market.city.LiveCity``).

Every refusal is a ``Problem`` with a 4xx status: 401 without a valid token, 403 without the role
on that machine, 400 for bad input, 404 for what does not exist, 409 when the ledger or the
proposal's state says no. Handlers that touch the ledger are plain functions (FastAPI runs them on
its thread pool, so the event loop never waits on SQL); the streams are async generators fed by the
hub (``server.feed``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.chat import ChatAnswer, ChatHistory, MachineChat
from agents.node import QueuedContract
from core.errors import (
    CommandRejected,
    DriverError,
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
    UnknownMachine,
    UnknownProposal,
    VoteRefused,
)
from hub import topics
from hub.messages import GovernanceNotice
from ledger import machine_wallet, reserve
from ledger.holders import ProposalRow, cast_vote, list_proposals, open_proposal, resolve, shares
from ledger.operations import CommandRecord, HandoffRecord
from market.regions import Region
from server.access import Access, Principal, Role
from server.console import Console, ControlReply, ControlRequest
from server.desk import JobDesk, JobPost, JobStatus
from server.feed import Feed, LiveEvent
from server.metrics import Metrics
from server.schemas import (
    ChallengeRequest,
    ChallengeResponse,
    ChatLine,
    ChatRequest,
    EarningsPoint,
    Health,
    MachineDetail,
    MachineSummary,
    Me,
    PrincipalCreate,
    Problem,
    ProposalCreate,
    Shares,
    Statement,
    StatementLineOut,
    TokenResponse,
    VoteRequest,
    VoteResult,
)

if TYPE_CHECKING:
    from agents.node import MachineNode
    from market.city import LiveCity

__all__ = ["ServerContext", "create_app"]

log = logging.getLogger("tamc.server")

_REFUSED = {
    400: "Bad input; the detail says what to fix",
    401: "No valid bearer token",
    403: "The principal lacks the role this needs on that machine",
    404: "No such machine, proposal or job",
    409: "The ledger or the proposal's state refuses it (not enough money, voting closed)",
}
CONTROL_REFUSALS: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "Not an operator of the machine, or the machine is held by someone else (take over first)"},
    409: {"model": Problem, "description": "The machine cannot do that now (its state), or not at all"},
    502: {"model": Problem, "description": "The real machine's server failed"},
    504: {"model": Problem, "description": "The machine did not answer in time (offline?)"},
}
REFUSALS: dict[int | str, dict[str, Any]] = {code: {"model": Problem, "description": text} for code, text in _REFUSED.items()}
STREAM_REFUSALS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for code, text in _REFUSED.items()
}
"""A stream's refusals are JSON, not events: they come before the stream starts."""
READERS = (Role.STAKEHOLDER, Role.OPERATOR)
_Limit = Query(ge=1, le=1000)


@dataclass
class ServerContext:
    city: LiveCity
    access: Access
    feed: Feed
    desk: JobDesk
    chats: ChatHistory
    metrics: Metrics
    console: Console

    def node(self, machine_id: str) -> MachineNode:
        node = self.city.node(machine_id)
        if node is None:
            raise UnknownMachine(f"no machine {machine_id!r} in this city (GET /v1/machines lists them)")
        return node

    def chat(self, machine_id: str) -> MachineChat:
        return MachineChat(self.node(machine_id).deps, self.chats, self.city.agent)


def create_app(city: LiveCity, *, access: Access | None = None, web_dir: Path | None = None) -> FastAPI:
    feed = Feed(city.broker_url, clock=city.clock)
    access = access or Access(city.ledger)
    relay = city.keys.get_or_create("server-console")  # relays the commands of operators it authenticated
    access.grant(relay.did, Role.CONSOLE)
    ctx = ServerContext(city=city, access=access, feed=feed, desk=JobDesk(city, feed),
                        chats=ChatHistory(city.config.data_dir / "chat"), metrics=Metrics(city, feed),
                        console=Console(feed, relay, city.ledger))

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
    app.include_router(_api())
    from server.cockpit import mount_cockpit

    mount_cockpit(app, web_dir)
    return app


# -- errors and timing -------------------------------------------------------------------------

class UnknownJob(InputError):
    """No job of that id was posted through this server."""


STATUS: list[tuple[type[TamcError], int]] = [
    (UnknownJob, 404), (NotAuthenticated, 401), (Forbidden, 403), (VoteRefused, 403), (PolicyRefused, 403), (UnknownMachine, 404),
    (NotInControl, 403), (UnknownHandoff, 404), (CommandRejected, 409), (MachineSilent, 504), (DriverError, 502),
    (UnknownProposal, 404), (UnknownAccount, 404), (InputError, 400), (GovernanceError, 409), (LedgerError, 409), (TamcError, 400),
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


# -- who is asking -----------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A token from POST /v1/auth/token (or printed by `tamc serve`)")


def _ctx(request: Request) -> ServerContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


Ctx = Annotated[ServerContext, Depends(_ctx)]


def _principal(ctx: Ctx, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    if cred is None:
        raise NotAuthenticated("send 'Authorization: Bearer <token>' (log in at POST /v1/auth/challenge, then /v1/auth/token)")
    return ctx.access.authenticate(cred.credentials)


Caller = Annotated[Principal, Depends(_principal)]


@dataclass
class OnMachine:
    """A caller allowed on a machine, with their roles there."""

    principal: Principal
    machine_id: str
    roles: set[Role]


def _on_machine(*allowed: Role) -> Callable[..., OnMachine]:
    def check(ctx: Ctx, caller: Caller, machine_id: str) -> OnMachine:
        ctx.node(machine_id)
        return OnMachine(caller, machine_id, ctx.access.require(caller, machine_id, *allowed))

    return check


Reader = Annotated[OnMachine, Depends(_on_machine(*READERS))]
Holder = Annotated[OnMachine, Depends(_on_machine(Role.STAKEHOLDER))]
Operator = Annotated[OnMachine, Depends(_on_machine(Role.OPERATOR))]


def _speaker(ctx: ServerContext, on: OnMachine) -> tuple[str, bool]:
    """Who speaks in the chat: the holder's name (as on the command line), or the principal's;
    and whether the server vouches for them (an operator or admin with no shares)."""
    held = ctx.access.holdings(on.principal.did, on.machine_id)
    account = next((a for a in held if a.startswith("holder:")), None)
    if account is not None:
        return account.removeprefix("holder:"), False
    return on.principal.name, True


def _holder(ctx: ServerContext, principal: Principal, machine_id: str) -> str:
    held = ctx.access.holdings(principal.did, machine_id)
    if not held:
        raise Forbidden(f"{principal.name} holds no shares of {machine_id}: only its stakeholders propose and vote")
    return max(held, key=lambda a: held[a])


# -- the API -----------------------------------------------------------------------------------

def _api() -> APIRouter:
    api = APIRouter(responses=REFUSALS)

    @api.get("/health", tags=["service"])
    def health(ctx: Ctx) -> Health:
        online = sum(1 for p in list(ctx.feed.presence.values()) if p.state == "online")
        hub = ctx.feed.hub.connected
        return Health(status="ok" if hub else "degraded", hub=hub, machines=len(ctx.city.nodes), online=online,
                      sim_hours=round(ctx.city.hours(), 4),
                      model=ctx.city.config.model.label() if ctx.city.agent is not None else "rules")

    @api.get("/metrics", tags=["service"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"}})
    def metrics(ctx: Ctx) -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # auth
    @api.post("/v1/auth/challenge", tags=["auth"])
    def challenge(ctx: Ctx, body: ChallengeRequest) -> ChallengeResponse:
        """A nonce to sign with the principal's key: sign the ``sign`` document (``ledger.sign_document``
        with ``signer_field="did"``) and send it to ``/v1/auth/token``."""
        nonce = ctx.access.challenge(body.did)
        return ChallengeResponse(nonce=nonce, sign={"type": "tamc-login", "nonce": nonce, "did": body.did})

    @api.post("/v1/auth/token", tags=["auth"])
    def token(ctx: Ctx, signed: dict[str, str]) -> TokenResponse:
        value, expires = ctx.access.login(signed)
        principal = ctx.access.authenticate(value)
        return TokenResponse(token=value, expires_at=expires, did=principal.did, name=principal.name)

    @api.get("/v1/me", tags=["auth"])
    def me(ctx: Ctx, caller: Caller) -> Me:
        roles = _fleet_roles(ctx, caller)
        wallet = ctx.access.requester_wallet(caller.did)
        return Me(did=caller.did, name=caller.name, admin=ctx.access.is_admin(caller.did),
                  roles={m: r for m, r in roles.items() if r}, requester_wallet=wallet,
                  balance=ctx.city.ledger.balance(wallet) if wallet else None)

    # machines
    @api.get("/v1/machines", tags=["machines"])
    def machines(ctx: Ctx, caller: Caller) -> list[MachineSummary]:
        """The fleet: every machine in the city, with the caller's roles on each."""
        roles = _fleet_roles(ctx, caller)
        return [_summary(ctx, n, roles[n.id]) for n in _machines(ctx)]

    @api.get("/v1/regions", tags=["machines"])
    def regions(ctx: Ctx, caller: Caller) -> list[Region]:
        """The city's regions (rectangles of its grid, in km), for the fleet map."""
        return list(ctx.city.regions)

    @api.get("/v1/machines/{machine_id}", tags=["machines"])
    def machine(ctx: Ctx, on: Reader) -> MachineDetail:
        node = ctx.node(on.machine_id)
        summary = _summary(ctx, node, sorted(on.roles))
        return MachineDetail(**summary.model_dump(), profile=node.profile.model_dump(mode="json"),
                             telemetry=ctx.feed.telemetry.get(node.id) or node.telemetry(),
                             wallet=_balance(ctx, machine_wallet(node.id)), reserve=_balance(ctx, reserve(node.id)),
                             queue=node.job_queue())

    @api.get("/v1/machines/{machine_id}/jobs", tags=["machines"])
    def machine_jobs(ctx: Ctx, on: Reader) -> list[QueuedContract]:
        """The job queue: accepted jobs not yet paid, the running one first."""
        return ctx.node(on.machine_id).job_queue()

    @api.get("/v1/machines/{machine_id}/statement", tags=["money"])
    def statement(ctx: Ctx, on: Reader, limit: Annotated[int, _Limit] = 200) -> Statement:
        """The machine wallet's ledger lines, newest first, and its earnings over time."""
        account = machine_wallet(on.machine_id)
        lines = ctx.city.ledger.statement(account, limit=None)
        series: list[EarningsPoint] = []
        revenue = net = 0
        for line in sorted(lines, key=lambda x: x.created_at):
            net += line.amount
            if line.kind == "escrow.release" and line.amount > 0:
                revenue += line.amount
            series.append(EarningsPoint(at=line.created_at, revenue=revenue, net=net))
        newest = sorted(lines, key=lambda x: x.created_at, reverse=True)[:limit]
        return Statement(machine=on.machine_id, account=account, balance=_balance(ctx, account),
                         lines=[StatementLineOut(**x.model_dump(include=set(StatementLineOut.model_fields))) for x in newest],
                         earnings=series[-500:])

    @api.get("/v1/machines/{machine_id}/shares", tags=["governance"])
    def machine_shares(ctx: Ctx, on: Reader) -> Shares:
        data = shares(ctx.city.ledger, ctx.city.governance, on.machine_id)
        return Shares(**data, yours=ctx.access.holdings(on.principal.did, on.machine_id))

    # live streams
    @api.get("/v1/stream", tags=["live"], response_class=EventSourceResponse, responses=STREAM_REFUSALS)
    async def fleet_stream(ctx: Ctx, caller: Caller) -> AsyncIterator[LiveEvent]:
        """Telemetry and presence of every machine, for the fleet map; and handoffs on the machines the
        caller operates, for the console's queue."""
        operated = {m for m, roles in (await asyncio.to_thread(_fleet_roles, ctx, caller)).items()
                    if {Role.OPERATOR, Role.ADMIN} & set(roles)}

        def accept(e: LiveEvent) -> bool:
            return e.type in ("telemetry", "presence") or (e.type == "handoff" and e.machine_id in operated)

        async for event in _stream(ctx, accept):
            yield event

    @api.get("/v1/machines/{machine_id}/stream", tags=["live"], response_class=EventSourceResponse, responses=STREAM_REFUSALS)
    async def machine_stream(ctx: Ctx, on: Reader) -> AsyncIterator[LiveEvent]:
        """Everything about one machine as it happens: telemetry, presence, its job events, votes and
        decisions on its proposals. The last telemetry comes first."""
        last = ctx.feed.telemetry.get(on.machine_id)
        if last is not None:
            yield LiveEvent(type="telemetry", machine_id=on.machine_id, data=last.model_dump(mode="json"))
        async for event in _stream(ctx, lambda e: e.machine_id == on.machine_id):
            yield event

    # operator console
    @api.get("/v1/handoffs", tags=["console"])
    def handoffs(ctx: Ctx, caller: Caller) -> list[HandoffRecord]:
        """Open handoffs (pending, or taken by an operator) on the machines the caller operates, oldest first."""
        roles = _fleet_roles(ctx, caller)
        ops = ctx.access.operations
        return [h for h in ops.open_handoffs() if {Role.OPERATOR, Role.ADMIN} & set(roles.get(h.machine_id, []))]

    @api.post("/v1/machines/{machine_id}/control", tags=["console"], responses=CONTROL_REFUSALS)
    def control(ctx: Ctx, on: Operator, body: ControlRequest) -> ControlReply:
        """Send a command to the machine as its operator, and get its answer: ``takeover`` first (the
        agent stops acting on the machine at once), then ``pause``, ``resume``, ``cancel``, ``set``,
        ``move_to``; ``handback`` with a decision returns the machine to its agent. Each command is
        audited by the machine."""
        reply = ctx.console.send(on.principal.did, on.machine_id, body)
        ctx.metrics.commands.labels(body.command).inc()
        return reply

    @api.get("/v1/machines/{machine_id}/control/audit", tags=["console"])
    def control_audit(ctx: Ctx, on: Reader, limit: Annotated[int, _Limit] = 200) -> list[CommandRecord]:
        """Every command sent to the machine, newest first: who, when, what, and what came of it."""
        return ctx.access.operations.audit_log(on.machine_id, limit=limit)

    # chat
    @api.get("/v1/machines/{machine_id}/chat", tags=["chat"])
    def chat_history(ctx: Ctx, on: Reader) -> list[ChatLine]:
        """The caller's own conversation with the machine (nobody else's)."""
        name, _ = _speaker(ctx, on)
        return _lines(ctx.chats.load(on.machine_id, name))

    @api.post("/v1/machines/{machine_id}/chat", tags=["chat"], response_class=EventSourceResponse, responses=STREAM_REFUSALS)
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

    # governance
    @api.get("/v1/machines/{machine_id}/proposals", tags=["governance"])
    def proposals(ctx: Ctx, on: Reader, state: Literal["open", "passed", "rejected", "executed", "failed"] | None = None
                  ) -> list[ProposalRow]:
        return list_proposals(ctx.city.governance, on.machine_id, state)

    @api.post("/v1/machines/{machine_id}/proposals", tags=["governance"], status_code=201)
    def propose(ctx: Ctx, on: Holder, body: ProposalCreate) -> ProposalRow:
        """Open a proposal as a holder of the machine's shares; its payload comes from the fields
        that apply to its kind (as ``tamc propose`` takes them)."""
        account = _holder(ctx, on.principal, on.machine_id)
        fields = body.model_dump(exclude={"kind", "title", "rationale"})
        p = open_proposal(ctx.city.ledger, ctx.city.governance, None, on.machine_id, body.kind, account,
                          title=body.title, fields=fields, rationale=body.rationale)
        row = _row(ctx, p.id)
        ctx.feed.emit(LiveEvent(type="proposal", machine_id=on.machine_id, data=row.model_dump(mode="json")))
        return row

    @api.get("/v1/proposals/{proposal_id}", tags=["governance"])
    def proposal(ctx: Ctx, caller: Caller, proposal_id: str) -> ProposalRow:
        p = resolve(ctx.city.governance, proposal_id)
        ctx.access.require(caller, p.machine_id, *READERS)
        return _row(ctx, p.id)

    @api.post("/v1/proposals/{proposal_id}/votes", tags=["governance"])
    def vote(ctx: Ctx, caller: Caller, proposal_id: str, body: VoteRequest) -> VoteResult:
        """Vote with the caller's shares: send a ballot signed with the holder's own key, or let the
        server sign with the key it keeps for the holder. A vote that settles the proposal executes it."""
        gov = ctx.city.governance
        p = resolve(gov, proposal_id)
        ctx.access.require(caller, p.machine_id, Role.STAKEHOLDER)
        account = _holder(ctx, caller, p.machine_id)
        if body.ballot is not None:
            ballot = body.ballot
            if ballot.proposal_id != p.id or ballot.choice != body.choice:
                raise InputError("the signed ballot names another proposal or choice than the request")
            if ballot.voter != caller.did:
                raise VoteRefused(f"the ballot is signed by {ballot.voter}, not by the caller's key {caller.did}")
            gov.vote(ballot.model_dump())
            p = gov.close(p.id)
            said = f"{ballot.holder} voted {body.choice}"
            if p.state == "passed":
                gov.execute(p.id, actor=ballot.holder)
                said += "; passed and executed"
        else:
            p, said = cast_vote(ctx.city.ledger, gov, ctx.city.keys, p.id, body.choice, account)
        ctx.metrics.votes.labels(body.choice).inc()
        p = gov.get(p.id)
        if p.state == "executed":
            ctx.feed.hub.send(topics.governance(p.machine_id), GovernanceNotice(
                machine_id=p.machine_id, proposal_id=p.id, kind=p.kind.value, state="executed"), ctx.city.keys.get_or_create("governance"))
        row = _row(ctx, p.id)
        ctx.feed.emit(LiveEvent(type="proposal", machine_id=p.machine_id, data=row.model_dump(mode="json")))
        return VoteResult(proposal=row, said=said)

    # jobs
    @api.post("/v1/jobs", tags=["jobs"], status_code=202)
    def post_job(ctx: Ctx, caller: Caller, body: JobPost) -> JobStatus:
        """Put a job out to tender, paid from the caller's requester wallet: it goes to the market as a
        call for proposals like any other. Follow it at ``/v1/jobs/{job_id}``."""
        wallet = ctx.access.requester_wallet(caller.did)
        if wallet is None:
            raise Forbidden(f"{caller.name} has no requester wallet: an admin opens one (POST /v1/admin/principals)")
        if ctx.city.ledger.balance(wallet) < body.reserve:
            raise InputError(f"the reserve {body.reserve} is more than the wallet {wallet} holds ({ctx.city.ledger.balance(wallet)})")
        status = ctx.desk.post(caller, wallet, body)
        ctx.metrics.jobs_posted.inc()
        return status

    @api.get("/v1/jobs", tags=["jobs"])
    def my_jobs(ctx: Ctx, caller: Caller) -> list[JobStatus]:
        return [ctx.desk.status(j) for j in ctx.desk.jobs(caller.did)]

    @api.get("/v1/jobs/{job_id}", tags=["jobs"])
    def job(ctx: Ctx, job_id: Annotated[str, Depends(_own_job)]) -> JobStatus:
        return ctx.desk.status(job_id)

    @api.get("/v1/jobs/{job_id}/stream", tags=["live"], response_class=EventSourceResponse, responses=STREAM_REFUSALS)
    async def job_stream(ctx: Ctx, job_id: Annotated[str, Depends(_own_job)]) -> AsyncIterator[LiveEvent]:
        """The job's events as they happen (accepted, started, progress, done, paid…)."""
        async for event in _stream(ctx, lambda e: e.job_id == job_id):
            yield event

    # admin
    @api.post("/v1/admin/principals", tags=["admin"], status_code=201)
    def add_principal(ctx: Ctx, caller: Caller, body: PrincipalCreate) -> Me:
        """Register a key, grant it roles, open its requester wallet (admins only)."""
        if not ctx.access.is_admin(caller.did):
            raise Forbidden(f"{caller.name} is not an admin")
        from ledger import settlement

        principal = ctx.access.register(body.did, body.name)
        for machine_id in body.operator_of:
            if machine_id != "*":
                ctx.node(machine_id)
            ctx.access.grant(principal.did, Role.OPERATOR, machine_id)
        if body.admin:
            ctx.access.grant(principal.did, Role.ADMIN)
        if body.requester_budget and ctx.access.requester_wallet(principal.did) is None:
            settlement.open_requester(ctx.city.ledger, principal.name, principal.did, body.requester_budget)
        return me(ctx, principal)

    return api


def _machines(ctx: ServerContext) -> list[MachineNode]:
    seen: dict[str, MachineNode] = {}
    for node in list(ctx.city.nodes):
        seen[node.id] = node  # a machine re-made under the same id: the latest
    return list(seen.values())


def _fleet_roles(ctx: ServerContext, caller: Principal) -> dict[str, list[Role]]:
    """The caller's roles on every machine, reading its accounts and grants once."""
    owned, granted = ctx.access.accounts(caller.did), ctx.access.granted(caller.did)
    return {n.id: sorted(ctx.access.roles(caller.did, n.id, owned=owned, granted=granted)) for n in _machines(ctx)}


def _summary(ctx: ServerContext, node: MachineNode, roles: list[Role]) -> MachineSummary:
    t = ctx.feed.telemetry.get(node.id)
    presence = ctx.feed.presence.get(node.id)
    p = node.profile
    return MachineSummary(id=node.id, name=p.name, kind=p.kind.value, region=p.region, status=node.standing,
                          online=presence is not None and presence.state == "online", state=t.state.value if t else None,
                          wear_pct=round(t.wear_pct, 3) if t else None, progress=round(t.progress, 4) if t else None,
                          position=t.position if t else None, roles=roles)


def _balance(ctx: ServerContext, account: str) -> int:
    try:
        return ctx.city.ledger.balance(account)
    except UnknownAccount:
        return 0


def _row(ctx: ServerContext, proposal_id: str) -> ProposalRow:
    p = ctx.city.governance.get(proposal_id)
    return next(r for r in list_proposals(ctx.city.governance, p.machine_id, None) if r.id == proposal_id)


def _own_job(ctx: Ctx, caller: Caller, job_id: str) -> str:
    """The job's id, if the caller posted it (or is an admin). A dependency, so that a stream is
    refused before it starts."""
    owner = ctx.desk.owner(job_id)
    if owner is None:
        raise UnknownJob(f"no job {job_id!r} was posted through this server")
    if owner != caller.did and not ctx.access.is_admin(caller.did):
        raise Forbidden(f"job {job_id} is not {caller.name}'s")
    return job_id


def _lines(messages: list[Any]) -> list[ChatLine]:
    from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart

    out: list[ChatLine] = []
    for m in messages:
        if isinstance(m, ModelRequest):
            out += [ChatLine(role="you", text=str(p.content)) for p in m.parts if isinstance(p, UserPromptPart)]
        elif isinstance(m, ModelResponse):
            text = "".join(p.content for p in m.parts if isinstance(p, TextPart))
            if text:
                out.append(ChatLine(role="machine", text=text))
    return out


async def _stream(ctx: ServerContext, accept: Callable[[LiveEvent], bool]) -> AsyncIterator[LiveEvent]:
    sub = ctx.feed.subscribe(accept)
    try:
        while True:
            yield await sub.queue.get()
    finally:
        sub.close()

