"""The typed bodies of hub envelopes: one pydantic model per message ``type``.

Times that two processes must agree on (bid deadline, accept-by, job deadline) are wall-clock
milliseconds since the Unix epoch; simulated hours are derived from them with the market's
``speed`` carried in the call for proposals, so a node in its own process follows the market's clock.
"""

from __future__ import annotations

import base64
from typing import ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from core.errors import BadSignature, EnvelopeRejected
from core.money import Micros
from ledger.identity import Identity, canonical_json, seal_to
from machines.driver import Telemetry
from machines.job import JobSpec
from machines.profile import Point
from pricing.haggle import HaggleRules, Move

__all__ = [
    "BODY_TYPES",
    "Bid",
    "Body",
    "CallForProposals",
    "ControlCommand",
    "ControlResult",
    "EventKind",
    "GovernanceNotice",
    "Haggle",
    "HaggleTerms",
    "Handoff",
    "JobClosed",
    "JobEvent",
    "Offer",
    "Presence",
    "Release",
    "SealedBid",
    "TelemetryReport",
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    TYPE: ClassVar[str]


class CallForProposals(Body):
    """A requester asks every machine of ``job.kind`` serving ``job.region`` for a price."""

    TYPE: ClassVar[str] = "cfp"
    job: JobSpec
    reserve: Micros
    """The most the requester will pay; bids above it are ignored."""
    bid_deadline: int
    """Bids received after this instant (epoch ms) are not considered."""
    deadline_at: int
    """The job must be finished by this instant (epoch ms)."""
    speed: float = Field(default=1.0, gt=0)
    """Simulated seconds per real second of the market that posted the job (1 = real time)."""
    haggle: HaggleRules | None = None
    """If set, the requester may counter the bids (``Haggle``) before it awards; None: one sealed round."""


class Bid(BaseModel):
    """A machine's price for a job, as the job's requester reads it once it has opened the
    ``SealedBid`` it came in: on the wire nobody else can read it, and it never says the machine's cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    job_id: str
    machine_id: str
    price: Micros
    eta_h: float = Field(ge=0)
    """Simulated hours from now until the job would be finished."""
    path: Literal["rules", "llm", "llm-clamped", "rules-fallback", "rules-fast-path"] = "rules"
    """Which path made the decision (see ``pricing.guard.DecisionPath``): the rule engine alone, or
    the model checked by the rules."""
    reason: str = Field(default="", max_length=500)


_T = TypeVar("_T", bound=BaseModel)

SEALED_MAX = 4096
"""The longest ``SealedBid.sealed`` (base64url): a bid's terms with a 500-character reason fit in a third of it."""


class SealedBid(Body):
    """A bid on the wire: its terms (``Bid``) sealed to the did of the requester that posted the
    call (``ledger.identity.seal_to``), so only that requester reads the price; the envelope's
    signature covers the ciphertext, and the terms name the job and machine again, so a sealed bid
    copied into another machine's envelope does not open as that machine's."""

    TYPE: ClassVar[str] = "bid"
    job_id: str
    machine_id: str
    sealed: str = Field(min_length=1, max_length=SEALED_MAX)

    @classmethod
    def of(cls, bid: Bid, requester: str) -> SealedBid:
        """Seal ``bid`` to the requester's did."""
        return cls(job_id=bid.job_id, machine_id=bid.machine_id, sealed=_seal(bid, requester))

    def open(self, identity: Identity) -> Bid:
        """The terms, if this bid was sealed to ``identity`` for this job by this machine; else
        ``EnvelopeRejected("unsealable")``."""
        bid = _open(self.sealed, identity, Bid, f"bid of {self.machine_id} on {self.job_id}")
        _same(self.job_id, self.machine_id, bid.job_id, bid.machine_id)
        return bid


def _seal(terms: BaseModel, to: str) -> str:
    box = seal_to(to, canonical_json(terms.model_dump(mode="json")))
    return base64.urlsafe_b64encode(box).rstrip(b"=").decode()


def _open(sealed: str, identity: Identity, model: type[_T], what: str) -> _T:
    try:
        plain = identity.unseal(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
        return model.model_validate_json(plain)
    except (BadSignature, ValueError) as exc:
        raise EnvelopeRejected("unsealable", f"{what}: {exc}") from None


def _same(job_id: str, machine_id: str, sealed_job: str, sealed_machine: str) -> None:
    if (sealed_job, sealed_machine) != (job_id, machine_id):
        raise EnvelopeRejected("unsealable", f"the sealed terms name {sealed_machine} on {sealed_job}, not {machine_id} on {job_id}")


class HaggleTerms(BaseModel):
    """What one side of a negotiation says in a round, as the other side reads it once opened."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    job_id: str
    machine_id: str
    round: int = Field(ge=1, le=10)
    move: Move
    price: Micros | None = None
    """For counter and accept: the price proposed, or the one accepted."""
    finish_by: int | None = None
    """Epoch ms: the deadline proposed (it may differ from the call's) or accepted."""
    note: str = Field(default="", max_length=280)
    """Free text for the other side. Untrusted: a receiver never takes an instruction from it."""


class Haggle(Body):
    """A negotiation message, sealed to the other side like a bid. The requester's counters go on
    the job's ``award`` topic (its bidders listen there), the machine's answers on ``bids`` (the
    requester listens there): no new topic, no new grant. ``round`` and ``move`` are repeated inside
    the sealed terms, so a sealed box copied into another envelope does not open as that one."""

    TYPE: ClassVar[str] = "haggle"
    job_id: str
    machine_id: str
    """The machine negotiating (the sender, or the one countered)."""
    round: int = Field(ge=1, le=10)
    sealed: str = Field(min_length=1, max_length=SEALED_MAX)

    @classmethod
    def of(cls, terms: HaggleTerms, to: str) -> Haggle:
        """Seal ``terms`` to the other side's did."""
        return cls(job_id=terms.job_id, machine_id=terms.machine_id, round=terms.round, sealed=_seal(terms, to))

    def open(self, identity: Identity) -> HaggleTerms:
        terms = _open(self.sealed, identity, HaggleTerms, f"haggle with {self.machine_id} on {self.job_id}")
        _same(self.job_id, self.machine_id, terms.job_id, terms.machine_id)
        if terms.round != self.round:
            raise EnvelopeRejected("unsealable", f"the sealed terms are of round {terms.round}, not {self.round}")
        return terms


class Award(Body):
    TYPE: ClassVar[str] = "award"
    job_id: str
    machine_id: str
    price: Micros
    accept_by: int
    """The winner must accept before this instant (epoch ms) or the runner-up is asked."""
    attempt: int = Field(ge=1)
    takeover: bool = False
    """True when another machine dropped out of the job (or released it) and this one is asked to finish it."""
    finish_at: int | None = None
    """When the winner said it would be done (epoch ms, from its bid or offer): a machine that would
    finish sooner may offer to take the job over until it starts."""
    deadline_at: int | None = None
    """The deadline agreed in a negotiation (epoch ms), where it is not the call's."""


class Offer(Body):
    """A machine offers to take over a job another machine holds and has not started: it would
    finish it ``eta_h`` hours from now, at the price already in escrow (the requester pays once, what
    it agreed). The requester decides; it moves the job only if it will be done sooner."""

    TYPE: ClassVar[str] = "offer"
    job_id: str
    machine_id: str
    holder: str
    """The machine the offerer saw awarded the job (the offer is void once someone else holds it)."""
    eta_h: float = Field(ge=0)
    reason: str = Field(default="", max_length=500)


class Release(Body):
    """The requester asks the machine holding a job to give it up before it starts, so that
    ``to_machine`` can take it over. The holder answers ``released`` (it no longer holds the job) or
    ``kept`` (it has started, or is charging to start): until then nobody else is awarded the job."""

    TYPE: ClassVar[str] = "release"
    job_id: str
    machine_id: str
    """The holder asked to give the job up."""
    to_machine: str
    move: int = Field(ge=1)
    """The requester's count of moves proposed for this job: an answer names the move it answers."""


class JobClosed(Body):
    """The requester's last word on a job; every bidder may forget it after this."""

    TYPE: ClassVar[str] = "closed"
    job_id: str
    outcome: Literal["paid", "refunded", "expired"]
    machine_id: str | None = None
    price: Micros | None = None
    posting: str | None = None


EventKind = Literal["accepted", "declined", "funded", "started", "progress", "handoff", "resumed", "done", "failed",
                    "aborted", "paid", "released", "kept"]


class JobEvent(Body):
    """A step of a contracted job: machines send accepted…aborted, the requester funded and paid.

    ``handoff``: the machine stopped in a safe state and waits for a person (the requester keeps the
    contract even if the machine drops offline meanwhile); ``resumed``: the person handed back and the
    machine goes on; ``aborted``: the person stopped the job for good, the requester refunds it;
    ``failed``: the machine cannot finish, the runner-up is asked to take the job over; ``released`` and
    ``kept``: the holder's answer to a ``release``."""

    TYPE: ClassVar[str] = "event"
    job_id: str
    machine_id: str
    kind: EventKind
    progress: float = Field(default=0.0, ge=0, le=1)
    detail: str = ""
    posting: str | None = None
    """Ledger posting id for funded and paid."""
    move: int | None = Field(default=None, ge=1)
    """For released and kept: the ``release`` answered."""


class Presence(Body):
    """Retained on ``machines/{id}/presence``; the broker publishes the offline one as the last will."""

    TYPE: ClassVar[str] = "presence"
    machine_id: str
    state: Literal["online", "offline"]
    session: str
    """Random per connection: an offline notice only counts for the session it names."""
    kind: str
    region: str
    territory: tuple[str, ...]


class GovernanceNotice(Body):
    """On ``machines/{id}/governance``: a proposal of the machine was decided or executed. Receivers
    read what changed from the ledger, which is the authority; the notice only says when to look."""

    TYPE: ClassVar[str] = "governance"
    machine_id: str
    proposal_id: str
    kind: str
    state: str


class Handoff(Body):
    """Retained on ``machines/{id}/handoff``: the machine's handoff now (pending, taken or closed)."""

    TYPE: ClassVar[str] = "handoff"
    handoff_id: str
    machine_id: str
    job_id: str | None = None
    state: Literal["pending", "taken", "closed"]
    reason: str
    detail: str
    proposal: str
    """What the agent proposes the operator do."""
    context: dict[str, object] = Field(default_factory=dict)
    """What the agent saw: the reading, the job, the numbers that tripped the check."""
    raised_at: int
    """Epoch ms."""
    wait_until: int
    """Epoch ms after which, with no operator in control, the machine escalates."""
    operator: str | None = None
    decision: str | None = None


Command = Literal["takeover", "pause", "resume", "cancel", "set", "move_to", "handback"]
Decision = Literal["continue", "abort", "done"]


class ControlCommand(Body):
    """On ``machines/{id}/control``: an operator's command, signed by the operator or by a console
    (a server granted ``console``) that authenticated ``operator``. ``command_id`` makes it happen once."""

    TYPE: ClassVar[str] = "control"
    command_id: str = Field(min_length=8, max_length=64)
    machine_id: str
    operator: str
    """The did of the person commanding."""
    command: Command
    handoff_id: str | None = None
    """For takeover (None takes over unasked: the machine raises an ``operator`` handoff) and handback."""
    name: str | None = None
    """For set: the parameter (``nozzle``, ``bed``…)."""
    value: float | None = None
    point: Point | None = None
    """For move_to."""
    decision: Decision | None = None
    """For handback: continue the job, abort it (the requester refunds), or done (the operator finished it)."""
    note: str = Field(default="", max_length=500)


class ControlResult(Body):
    """On ``machines/{id}/control/result``: what came of a command (the audit record, as sent)."""

    TYPE: ClassVar[str] = "control-result"
    command_id: str
    machine_id: str
    operator: str
    command: str
    ok: bool
    result: str
    error: str | None = None
    """Why it was refused, as the error's type: NotInControl, CommandRejected, UnknownHandoff, DriverError."""
    handoff_id: str | None = None


class TelemetryReport(Body):
    TYPE: ClassVar[str] = "telemetry"
    telemetry: Telemetry


BODY_TYPES: dict[str, type[Body]] = {
    t.TYPE: t for t in (CallForProposals, SealedBid, Haggle, Award, Offer, Release, JobClosed, JobEvent, Presence, TelemetryReport, GovernanceNotice,
                        Handoff, ControlCommand, ControlResult)
}
