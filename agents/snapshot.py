"""A machine's state saved to disk: the profile, recent telemetry and bid history, so its
stakeholders can ask about it (``tamc chat``) after the market that ran it has stopped.

``SnapshotMachine`` serves a snapshot to the tools as a ``MachinePort``: it reads, and it refuses
to bid (a stopped machine hears no calls)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from core.datadir import DataDir
from core.errors import InputError, PolicyRefused, UnknownMachine
from machines.driver import Telemetry
from machines.profile import MachineProfile
from pricing.bids import BidRecord, OpenCall
from pricing.rules import Decision, MachineStatus, MarketContext, Rule

__all__ = ["MachineSnapshot", "SnapshotMachine", "load_snapshot", "save_snapshot", "snapshot_path"]


class MachineSnapshot(BaseModel):
    profile: MachineProfile
    at: datetime
    telemetry: list[Telemetry]
    """Oldest first; the last one is the state when saved."""
    bids: list[BidRecord]
    queue_len: int = 0


def snapshot_path(data_dir: Path, machine_id: str) -> Path:
    return DataDir(data_dir).machines / f"{machine_id}.json"


def save_snapshot(data_dir: Path, snapshot: MachineSnapshot) -> Path:
    """Write atomically (a reader never sees half a file)."""
    path = snapshot_path(data_dir, snapshot.profile.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(snapshot.model_dump_json(), "utf-8")
    os.replace(tmp, path)
    return path


def load_snapshot(data_dir: Path, machine_id: str) -> MachineSnapshot:
    path = snapshot_path(data_dir, machine_id)
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.exists() else []
        hint = f"known here: {', '.join(known)}" if known else "run 'tamc demo' (or 'tamc agent') with this --data-dir first"
        raise UnknownMachine(f"no saved state for machine {machine_id!r} in {path.parent}; {hint}")
    try:
        return MachineSnapshot.model_validate_json(path.read_text("utf-8"))
    except (ValidationError, ValueError, OSError) as exc:
        raise InputError(f"{path} is not a readable machine snapshot: {str(exc).splitlines()[0]}") from None


class SnapshotMachine:
    """A saved machine, as tools see it."""

    def __init__(self, snapshot: MachineSnapshot) -> None:
        self.snapshot = snapshot
        self.profile: MachineProfile = snapshot.profile
        self.market = MarketContext()
        self.held_by: str | None = None
        """A stopped machine is held by nobody."""

    def telemetry(self) -> Telemetry | None:
        return self.snapshot.telemetry[-1] if self.snapshot.telemetry else None

    def telemetry_history(self) -> list[Telemetry]:
        return list(self.snapshot.telemetry)

    def machine_status(self) -> MachineStatus:
        t = self.telemetry()
        return MachineStatus(wear_pct=t.wear_pct if t else 0.0, queue_len=self.snapshot.queue_len,
                             battery_pct=t.battery_pct if t else None, position=t.position if t else None)

    def open_call(self, job_id: str) -> OpenCall | None:
        return None

    def open_calls(self) -> list[OpenCall]:
        return []

    def rule_decision(self, call: OpenCall) -> Decision:
        rule = Rule(code="decline.offline", detail="the machine is not in a market now")
        return Decision(action="decline", rules=(rule,), reason=f"decline: {rule.detail}")

    def bid_history(self) -> list[BidRecord]:
        return list(self.snapshot.bids)

    def submit_bid(self, job_id: str, price: int, eta_h: float, reason: str, path: str) -> None:
        raise PolicyRefused("bid.offline", "the machine is not in a market now")

    def decline_call(self, job_id: str, reason: str) -> None:
        raise PolicyRefused("bid.offline", "the machine is not in a market now")
