"""A job as a machine sees it: the physical work asked for, its region, deadline and reserve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import InvalidJobSpec
from core.ids import Name
from core.money import Money
from machines.profile import Kind, Point

__all__ = ["MAINTENANCE", "JobSpec", "describe_errors", "load_job", "parse_job"]

MAINTENANCE = "maintenance"
"""The capability of service jobs: a machine hiring its own maintenance out."""


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Name
    """Letters, digits and ``: . _ -`` (``core.ids``): it reaches models unfenced, so it cannot carry a sentence."""
    kind: Kind
    capability: Name
    region: Name
    deadline_h: float = Field(gt=0)
    """Hours from the offer within which the work must be finished."""
    max_price: Money | None = None
    """The requester's reserve: the most it will pay."""
    description: str = Field(default="", max_length=2000)
    """Free text from the requester. Untrusted: shown to models fenced, as data, never as instructions."""

    # fabrication
    material: Name | None = None
    size_mm: tuple[float, float, float] | None = None
    amount: float | None = Field(default=None, gt=0)
    """Work in the material's unit: grams printed, cm³ milled, metres cut."""

    # service: work done on a machine (by a technician, or another machine)
    service_of: Name | None = None
    """The machine to service, for a ``maintenance`` job; ``amount`` is then the wear (%) to restore."""

    # transport
    pickup: Point | None = None
    dropoff: Point | None = None
    payload_kg: float = Field(default=0.0, ge=0)
    passengers: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _fields_match_kind(self) -> Self:
        if self.capability == MAINTENANCE:
            if not self.service_of or self.amount is None:
                raise ValueError("a maintenance job needs 'service_of' (the machine) and 'amount' (the wear % to restore)")
            return self
        if self.kind.is_vehicle:
            if self.pickup is None or self.dropoff is None:
                raise ValueError(f"a {self.kind.value} job needs 'pickup' and 'dropoff' points")
        elif self.material is None or self.size_mm is None or self.amount is None:
            raise ValueError(f"a {self.kind.value} job needs 'material', 'size_mm' and 'amount'")
        return self


def load_job(path: str | Path) -> JobSpec:
    """Read a job from a JSON file, or raise ``InvalidJobSpec`` saying what to fix."""
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise InvalidJobSpec(f"job file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidJobSpec(f"cannot read job file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidJobSpec(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    return parse_job(data, source=str(path))


def parse_job(data: object, *, source: str = "job") -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidJobSpec(f"{source}: {describe_errors(exc)}") from None


def describe_errors(exc: ValidationError) -> str:
    """pydantic's errors as one line a person can act on: 'field: problem; field: problem'."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
