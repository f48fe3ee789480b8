"""Jobs posted through the server: each requester principal gets a requester agent on the hub that
tenders its jobs like any other (call for proposals, bids, award, escrow from the principal's own
wallet), and the server remembers whose job is whose.

The requester agent signs the calls with a key the server keeps for that principal
(``requester-{name}`` in the server's keystore): the principal authenticated to the server, the
server speaks for it on the hub. Money only ever leaves the principal's ``requester:`` wallet.
"""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, ValidationError

from agents.requester import Requester
from core.errors import InputError
from hub.transport import Hub
from ledger import settlement
from machines.job import JobSpec
from machines.profile import Kind, Point
from server.access import Principal
from server.feed import Feed

if TYPE_CHECKING:
    from market.city import City

__all__ = ["JobDesk", "JobPost", "JobStatus", "JobStep"]


class JobPost(BaseModel):
    """A job to put out to tender. Money in micro-units (1 unit = 1,000,000)."""

    kind: Kind
    capability: str = Field(min_length=1, max_length=60)
    region: str = Field(min_length=1, max_length=60, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    deadline_h: float = Field(gt=0, le=24 * 30)
    reserve: int = Field(gt=0, le=10**15)
    """The most the requester will pay, held in escrow from its wallet once a machine accepts."""
    description: str = Field(default="", max_length=2000)
    material: str | None = Field(default=None, max_length=60)
    size_mm: tuple[float, float, float] | None = None
    amount: float | None = Field(default=None, gt=0, le=1e6)
    pickup: Point | None = None
    dropoff: Point | None = None
    payload_kg: float = Field(default=0.0, ge=0, le=1e5)
    passengers: int = Field(default=0, ge=0, le=100)


class JobStep(BaseModel):
    machine_id: str
    kind: str
    progress: float
    detail: str = ""


class JobStatus(BaseModel):
    job_id: str
    state: Literal["bidding", "in progress", "paid", "refunded", "expired"]
    machine_id: str | None = None
    price: int | None = None
    reason: str = ""
    steps: list[JobStep] = []


class JobDesk:
    def __init__(self, city: City, feed: Feed) -> None:
        self.city = city
        self.feed = feed
        self._requesters: dict[str, Requester] = {}
        self._owner: dict[str, str] = {}
        """job id -> the did of the principal that posted it."""
        self._lock = threading.Lock()
        self._hubs: list[Hub] = []

    def post(self, principal: Principal, wallet: str, post: JobPost) -> JobStatus:
        requester = self._requester(principal, wallet)
        job_id = requester.job_id(f"api-{uuid.uuid4().hex[:10]}")  # in the namespace of the wallet it pays from
        fields = post.model_dump(exclude={"reserve"}, exclude_none=True)
        try:
            job = JobSpec(id=job_id, max_price=post.reserve, **fields)
        except ValidationError as exc:
            raise InputError(f"not a job the market can take: {_first_error(exc)}") from None
        with self._lock:
            self._owner[job_id] = principal.did
        requester.post(job, reserve=post.reserve, value=post.reserve)
        return JobStatus(job_id=job_id, state="bidding")

    def owner(self, job_id: str) -> str | None:
        with self._lock:
            return self._owner.get(job_id)

    def jobs(self, did: str) -> list[str]:
        with self._lock:
            return [j for j, owner in self._owner.items() if owner == did]

    def status(self, job_id: str) -> JobStatus:
        steps = [JobStep(machine_id=e.machine_id, kind=e.kind, progress=e.progress, detail=e.detail)
                 for _, e in list(self.feed.job_events.get(job_id, ()))]
        with self._lock:
            outcome = next((r.outcomes[job_id] for r in self._requesters.values() if job_id in r.outcomes), None)
        if outcome is not None:
            return JobStatus(job_id=job_id, state=outcome.outcome, machine_id=outcome.machine_id, price=outcome.price,
                             reason=outcome.reason, steps=steps)
        machine = steps[-1].machine_id if steps else None
        return JobStatus(job_id=job_id, state="in progress" if steps else "bidding", machine_id=machine, steps=steps)

    def close(self) -> None:
        with self._lock:
            requesters, hubs = list(self._requesters.values()), list(self._hubs)
        for r in requesters:
            r.stop()
        for hub in hubs:
            hub.close()

    def _requester(self, principal: Principal, wallet: str) -> Requester:
        with self._lock:
            found = self._requesters.get(principal.did)
            if found is not None:
                return found
            identity = self.city.keys.get_or_create(f"requester-{principal.name}")
            name = f"api-requester-{principal.name}"
            hub = Hub(self.city.admit(name, "requester"), name=name, clock=self.city.clock).connect()
            self._hubs.append(hub)
            # the server posts for the principal with a key of its own: its job ids are in the namespace of an
            # account that key owns (the money still comes from the principal's wallet)
            owner = settlement.open_requester(self.city.ledger, f"{principal.name}-via-server", identity.did, 0)
            requester = Requester(identity, hub, self.city.ledger, wallet, config=self.city.requester_config,
                                  on_outcome=self.city.outcomes.append, owner=owner).start()
            self._requesters[principal.did] = requester
            return requester


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    where = ".".join(str(x) for x in e.get("loc", ())) or "job"
    return f"{where}: {e.get('msg', 'invalid')}"
