"""Topic names, in one place. Every topic starts with ``tamc/v3/``; ids become single topic levels,
with each ``.`` written ``~`` (v3): brokers that map topic levels onto dotted subjects (NATS, whose
2.9 release refuses a dot in a topic) carry them, and ids never hold ``~``, so two ids never share a
topic."""

from __future__ import annotations

from core.errors import InputError
from machines.job import MAINTENANCE, JobSpec

__all__ = [
    "ALL_HANDOFFS",
    "ALL_PRESENCE",
    "PREFIX",
    "award",
    "bids",
    "call",
    "cfp",
    "control",
    "control_result",
    "events",
    "governance",
    "handoff",
    "level",
    "offers",
    "presence",
    "service",
    "telemetry",
]

PREFIX = "tamc/v3"
ALL_PRESENCE = f"{PREFIX}/machines/+/presence"
ALL_HANDOFFS = f"{PREFIX}/machines/+/handoff"


def level(value: str, what: str = "id") -> str:
    """``value`` as one topic level: ``.`` written ``~``."""
    if not value or any(c in value for c in "/+#~\0"):
        raise InputError(f"{what} {value!r} cannot be an MQTT topic level: it must be non-empty, without / + # ~ or NUL")
    return value.replace(".", "~")


def cfp(region: str, kind: str) -> str:
    return f"{PREFIX}/market/{level(region, 'region')}/{level(kind, 'kind')}/cfp"


def service(region: str) -> str:
    """Calls for service work (a machine's maintenance) in a region: technicians listen here, not
    to every machine kind's calls."""
    return f"{PREFIX}/market/{level(region, 'region')}/service/cfp"


def call(job: JobSpec) -> str:
    """Where a call for ``job`` is published: its kind's topic, or the service topic for maintenance."""
    return service(job.region) if job.capability == MAINTENANCE else cfp(job.region, job.kind.value)


def bids(job_id: str) -> str:
    return f"{PREFIX}/jobs/{level(job_id, 'job id')}/bids"


def award(job_id: str) -> str:
    """Awards and the final ``closed`` notice: every bidder listens here until the job closes."""
    return f"{PREFIX}/jobs/{level(job_id, 'job id')}/award"


def offers(job_id: str) -> str:
    """Machines offering to take over a job another machine holds and has not started."""
    return f"{PREFIX}/jobs/{level(job_id, 'job id')}/offers"


def events(job_id: str) -> str:
    return f"{PREFIX}/jobs/{level(job_id, 'job id')}/events"


def telemetry(machine_id: str) -> str:
    return f"{PREFIX}/machines/{level(machine_id, 'machine id')}/telemetry"


def presence(machine_id: str) -> str:
    return f"{PREFIX}/machines/{level(machine_id, 'machine id')}/presence"


def control(machine_id: str) -> str:
    """Operators' commands to the machine."""
    return f"{PREFIX}/machines/{level(machine_id, 'machine id')}/control"


def control_result(machine_id: str) -> str:
    """The machine's answer to each command."""
    return f"{PREFIX}/machines/{level(machine_id, 'machine id')}/control/result"


def handoff(machine_id: str) -> str:
    """The machine's handoff (retained): pending, taken, or closed."""
    return f"{PREFIX}/machines/{level(machine_id, 'machine id')}/handoff"


def governance(machine_id: str) -> str:
    """Notices that a proposal of the machine was decided or executed."""
    return f"{PREFIX}/machines/{level(machine_id, 'machine id')}/governance"
