"""Jobs posted through the server, paid from the caller's requester wallet, and followed live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.sse import EventSourceResponse

from core.errors import Forbidden, InputError, UnknownJob
from server.context import REFUSALS, STREAM_REFUSALS, Caller, Ctx, stream
from server.desk import JobPost, JobStatus
from server.feed import LiveEvent

__all__ = ["router"]

router = APIRouter(responses=REFUSALS)


@router.post("/v1/jobs", tags=["jobs"], status_code=202)
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


@router.get("/v1/jobs", tags=["jobs"])
def my_jobs(ctx: Ctx, caller: Caller) -> list[JobStatus]:
    return [ctx.desk.status(j) for j in ctx.desk.jobs(caller.did)]


@router.get("/v1/jobs/{job_id}", tags=["jobs"])
def job(ctx: Ctx, job_id: Annotated[str, Depends(_own_job)]) -> JobStatus:
    return ctx.desk.status(job_id)


@router.get("/v1/jobs/{job_id}/stream", tags=["live"], response_class=EventSourceResponse, responses=STREAM_REFUSALS)
async def job_stream(ctx: Ctx, job_id: Annotated[str, Depends(_own_job)]) -> AsyncIterator[LiveEvent]:
    """The job's events as they happen (accepted, started, progress, done, paid…)."""
    async for event in stream(ctx, lambda e: e.job_id == job_id):
        yield event


def _own_job(ctx: Ctx, caller: Caller, job_id: str) -> str:
    """The job's id, if the caller posted it (or is an admin). A dependency, so that a stream is
    refused before it starts."""
    owner = ctx.desk.owner(job_id)
    if owner is None:
        raise UnknownJob(f"no job {job_id!r} was posted through this server")
    if owner != caller.did and not ctx.access.is_admin(caller.did):
        raise Forbidden(f"job {job_id} is not {caller.name}'s")
    return job_id
