"""The contract book: the jobs a machine follows, its contracts, their states, and the scheduling rules.

A machine follows every job it bid on (it may lose and still be asked to take it over) until the
requester closes it; a job it won and accepted carries a ``Contract``. A contract's state moves only
along ``TRANSITIONS``; any other move is a bug and raises ``ContractStateError``, leaving it as it
was. The queue runs earliest deadline first, and a new job is slotted in by its deadline only if
every job already accepted still ends on time (``keeps_later``). Everything here runs on the node's
mailbox thread; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel

from core.errors import ContractStateError
from core.mailbox import Timer
from machines.driver import Telemetry
from machines.job import JobSpec
from machines.profile import MachineProfile
from machines.work import estimate
from pricing.bids import OpenCall
from pricing.rules import CostBreakdown, Decision, MachineStatus, Rule

__all__ = [
    "ACTIVE",
    "TRANSITIONS",
    "Contract",
    "ContractBook",
    "ContractState",
    "Costing",
    "Followed",
    "QueuedContract",
    "Terms",
    "Timers",
]


class ContractState(StrEnum):
    ACCEPTED = "accepted"
    """Accepted the award; waiting for the requester to fund the escrow."""
    FUNDED = "funded"
    """The escrow holds the price: queued, earliest deadline first."""
    RUNNING = "running"
    DONE = "done"
    """Finished and said ``done``; waiting to be paid."""
    PAID = "paid"
    FAILED = "failed"
    WITHDRAWN = "withdrawn"
    """Never funded, or the job went to another machine before it started."""
    CANCELLED = "cancelled"
    """The requester closed the job (paid, refunded, expired) while the machine held it."""


S = ContractState
TRANSITIONS: dict[ContractState, frozenset[ContractState]] = {
    S.ACCEPTED: frozenset({S.FUNDED, S.WITHDRAWN, S.CANCELLED}),
    S.FUNDED: frozenset({S.RUNNING, S.WITHDRAWN, S.CANCELLED}),
    S.RUNNING: frozenset({S.DONE, S.FAILED, S.CANCELLED}),
    S.DONE: frozenset({S.PAID}),
    S.PAID: frozenset(),
    S.FAILED: frozenset(),
    S.WITHDRAWN: frozenset(),
    S.CANCELLED: frozenset(),
}
"""Where each state may go. A workflow recovered after a restart starts its contract as ``running``."""
ACTIVE = frozenset({S.ACCEPTED, S.FUNDED, S.RUNNING})


@dataclass(frozen=True)
class Terms:
    """What the machine and the requester agreed: fixed once accepted."""

    job: JobSpec
    requester: str
    price: int
    speed: float
    deadline_at: int
    """Epoch milliseconds on the market's clock."""
    accept_by: int


@dataclass
class Costing:
    """The job's physics as measured when it starts: hours, what it costs, the wear it should take."""

    hours: float = 0.0
    cost: CostBreakdown | None = None
    wear_at_start: float = 0.0
    expected_wear: float = 0.0
    """Wear the job should cost; much more is a spike a person looks at."""


class Timers:
    """A contract's timers, cancelled together when it stops; a named slot holds one timer at a time
    (a long job on a real machine ticks for hours: one tick pending, not thousands)."""

    def __init__(self) -> None:
        self._all: list[Timer] = []
        self._slots: dict[str, Timer] = {}

    def add(self, timer: Timer) -> Timer:
        self._all.append(timer)
        return timer

    def slot(self, name: str, timer: Timer | None) -> None:
        """Put ``timer`` in slot ``name``, cancelling the one there (``None`` just cancels it)."""
        old = self._slots.pop(name, None)
        if old is not None and old is not timer:
            old.cancel()
        if timer is not None:
            self._slots[name] = timer

    def cancel(self) -> None:
        for t in self._all:
            t.cancel()
        self._all.clear()
        for t in self._slots.values():
            t.cancel()
        self._slots.clear()


@dataclass
class Contract:
    terms: Terms
    state: ContractState = ContractState.ACCEPTED
    costing: Costing = field(default_factory=Costing)
    timers: Timers = field(default_factory=Timers)

    @property
    def job(self) -> JobSpec:
        return self.terms.job

    def move(self, to: ContractState) -> None:
        """Change state along the transition table, or raise ``ContractStateError`` and change nothing."""
        if to not in TRANSITIONS[self.state]:
            raise ContractStateError(f"contract for job {self.terms.job.id}: {self.state.value} cannot become {to.value}")
        self.state = to

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


class QueuedContract(BaseModel):
    """A job the machine has accepted and not yet been paid for."""

    job_id: str
    capability: str
    description: str
    state: str
    price: int
    deadline_at: int
    """Epoch milliseconds on the market's clock."""


@dataclass
class Followed:
    """A job this machine bid on, followed on its award topic until the requester closes it (a
    machine that lost, or dropped out, may still be asked to take it over)."""

    call: OpenCall
    requester: str
    contract: Contract | None = None
    forget: Timer | None = None
    """Stops following the job if its requester never closes it (cancelled when it does)."""
    holder: str | None = None
    """The machine last awarded the job, and at what price (this one, or another it may offer to relieve)."""
    holder_price: int | None = None
    holder_finish: int | None = None
    """When the holder said it would be done, epoch ms."""
    offered_to: str | None = None
    """The holder this machine last offered to take the job from (one offer per holder)."""


class ContractBook:
    """The jobs followed and their contracts, the one running, and what runs next."""

    def __init__(self) -> None:
        self._jobs: dict[str, Followed] = {}
        self._running: Contract | None = None

    # -- following -----------------------------------------------------------------------------

    def follow(self, followed: Followed) -> Followed:
        self._jobs[followed.call.job.id] = followed
        return followed

    def followed(self, job_id: str) -> Followed | None:
        return self._jobs.get(job_id)

    def follows(self, job_id: str) -> bool:
        return job_id in self._jobs

    def contract(self, job_id: str) -> Contract | None:
        followed = self._jobs.get(job_id)
        return followed.contract if followed else None

    def drop(self, job_id: str) -> Followed | None:
        """Stop following a job; returns what was followed, if anything."""
        return self._jobs.pop(job_id, None)

    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def followed_jobs(self) -> list[Followed]:
        return list(self._jobs.values())

    def contracts(self) -> list[Contract]:
        return [f.contract for f in self._jobs.values() if f.contract is not None]

    # -- the one running -----------------------------------------------------------------------

    @property
    def running(self) -> Contract | None:
        return self._running

    def run(self, contract: Contract) -> None:
        """``contract`` has the machine now (starting, or charging to start)."""
        self._running = contract

    def release(self, contract: Contract | None = None) -> bool:
        """The machine is free again (of ``contract``, if given: another one running stays)."""
        if contract is not None and self._running is not contract:
            return False
        self._running = None
        return True

    # -- scheduling ----------------------------------------------------------------------------

    def next_ready(self) -> Contract | None:
        """The funded contract to run next: earliest deadline first."""
        ready = [c for c in self.contracts() if c.state is ContractState.FUNDED]
        return min(ready, key=lambda c: c.terms.deadline_at) if ready else None

    def active_count(self) -> int:
        return sum(1 for c in self.contracts() if c.active)

    def queue(self) -> list[QueuedContract]:
        """The jobs in hand, in the order they will run."""
        live = [c for c in self.contracts() if c.active or c.state is ContractState.DONE]
        return [QueuedContract(job_id=c.job.id, capability=c.job.capability, description=c.job.description, state=c.state.value,
                               price=c.terms.price, deadline_at=c.terms.deadline_at)
                for c in sorted(live, key=lambda c: (c.state is not ContractState.RUNNING, c.terms.deadline_at))]

    def status(self, profile: MachineProfile, reading: Telemetry | None, deadline_at: int | None = None) -> MachineStatus:
        """Wear, battery and position now, and the work that would run before a new job due at
        ``deadline_at``: the job in hand plus queued jobs due no later (the queue runs earliest
        deadline first)."""
        active = [c for c in self.contracts() if c.active]
        running = self._running
        ahead = [c for c in active if c is not running and (deadline_at is None or c.terms.deadline_at <= deadline_at)]
        hours = 0.0
        position = battery = None
        wear = 0.0
        if reading is not None:
            position, battery, wear = reading.position, reading.battery_pct, reading.wear_pct
            if running is not None:
                done = reading.progress if reading.job_id == running.job.id else 0.0
                hours += running.costing.hours * (1 - done)
        if running is not None and running.job.dropoff is not None:
            position = running.job.dropoff
        vehicle = profile.vehicle
        counted = {id(c) for c in ahead} | {id(running)}
        later = sum(c.costing.hours or estimate(profile, c.job).total_hours for c in active if id(c) not in counted)
        for c in sorted(ahead, key=lambda c: c.terms.deadline_at):  # a vehicle drives from dropoff to pickup, using charge
            work = estimate(profile, c.job, position=position)
            hours += work.total_hours
            if vehicle is not None and battery is not None:
                battery = max(battery - 100 * work.total_km * vehicle.energy_kwh_per_km / vehicle.battery_kwh, 0.0)
                position = c.job.dropoff
        return MachineStatus(wear_pct=wear, queue_len=len(active), queue_hours=hours, planned_hours=hours + later, position=position,
                             battery_pct=battery)

    def keeps_later(self, profile: MachineProfile, job: JobSpec, deadline_at: int, decision: Decision, now_ms: int) -> Decision:
        """``decision`` on a new job due at ``deadline_at``, declined if slotting it in by its deadline
        would make a job already accepted (and due later) late."""
        if decision.action != "bid" or decision.eta_h is None:
            return decision
        finish = decision.eta_h
        later = sorted((c for c in self.contracts()
                        if c.state in (ContractState.ACCEPTED, ContractState.FUNDED) and c.terms.deadline_at > deadline_at),
                       key=lambda c: c.terms.deadline_at)
        position = job.dropoff
        for c in later:
            finish += estimate(profile, c.job, position=position).total_hours
            position = c.job.dropoff or position
            if finish > (c.terms.deadline_at - now_ms) / 3_600_000:
                rule = Rule(code="decline.deadline", detail=f"would make accepted job {c.job.id} late")
                return Decision(action="decline", eta_h=decision.eta_h, rules=(rule,), reason=f"decline: {rule.detail}")
        return decision
