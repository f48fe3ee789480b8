"""The job workflow graph on each checkpoint backend (SQLite, PostgreSQL): it waits where it should,
a second process (a new checkpointer on the same database) picks a pending handoff up where it was,
and every effect runs once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from agents.handoff import Concern
from agents.workflow import FlowState, JobFlows, Outcome, Run, checkpointer


class Port:
    """The machine side, counting each effect: the graph must not repeat one."""

    def __init__(self, readings: list[tuple[Run, float, Concern | None]], concern_at_start: Concern | None = None) -> None:
        self.readings = readings
        self.concern_at_start = concern_at_start
        self.calls: Counter[str] = Counter()
        self.finished: list[Outcome] = []

    def check_start(self, state: FlowState) -> Concern | None:
        self.calls["check_start"] += 1
        return self.concern_at_start

    def start(self, state: FlowState) -> dict[str, Any]:
        self.calls["start"] += 1
        return {}

    def read(self, state: FlowState) -> tuple[Run, float, Concern | None]:
        self.calls["read"] += 1
        return self.readings.pop(0)

    def safe_state(self, state: FlowState) -> None:
        self.calls["safe_state"] += 1

    def raise_handoff(self, state: FlowState, concern: Concern, handoff_id: str) -> dict[str, Any]:
        self.calls["raise_handoff"] += 1
        return {"handoff_id": handoff_id, "reason": concern.reason}

    def carry_on(self, state: FlowState) -> None:
        self.calls["carry_on"] += 1

    def finish(self, state: FlowState, outcome: Outcome) -> None:
        self.calls["finish"] += 1
        self.finished.append(outcome)


HOT = Concern(reason="anomaly.temperature", detail="nozzle at 280 °C", proposal="cool it")
STATE: FlowState = {"job_id": "j1", "machine_id": "m1", "contract": {}}


@pytest.fixture
def checkpoint_url(backend: str, ledger_url: str, tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'workflows.db'}" if backend == "sqlite" else ledger_url


def test_a_pending_handoff_survives_a_new_process_and_resumes_once(checkpoint_url: str) -> None:
    port = Port([("running", 0.25, None), ("running", 0.5, HOT)])
    with checkpointer(checkpoint_url) as saver:
        flows = JobFlows(saver)
        assert flows.start(port, STATE).waiting == "tick"
        assert flows.start(port, STATE).waiting == "tick"  # starting it again finds it where it is
        assert flows.resume(port, "m1/j1", {"tick": True}).values["progress"] == 0.25
        pending = flows.resume(port, "m1/j1", {"tick": True})
        assert pending.waiting == "operator" and pending.values["handoff"]["handoff_id"] == "j1~h1"
    assert port.calls == Counter(check_start=1, start=1, read=2, safe_state=1, raise_handoff=1)

    later = Port([("running", 0.75, None), ("done", 1.0, None)])  # the restarted process
    with checkpointer(checkpoint_url) as saver:
        flows = JobFlows(saver)
        status = flows.status("m1/j1")
        assert status is not None and status.waiting == "operator" and not status.ended
        assert status.values["handoff"]["reason"] == "anomaly.temperature"
        assert flows.resume(later, "m1/j1", {"decision": "continue"}).waiting == "tick"
        flows.resume(later, "m1/j1", {"tick": True})
        end = flows.resume(later, "m1/j1", {"tick": True})
        assert end.ended and end.outcome == "done"
    assert later.calls == Counter(carry_on=1, read=2, finish=1) and later.finished == ["done"]


@pytest.mark.parametrize(("decision", "outcome"), [("abort", "aborted"), ("done", "done"), ("escalate", "escalated")])
def test_a_job_the_charter_holds_waits_before_it_starts_and_ends_by_the_decision(decision: str, outcome: str) -> None:
    port = Port([], concern_at_start=Concern(reason="charter", detail="review", proposal="check it"))
    with checkpointer(None) as saver:
        flows = JobFlows(saver)
        assert flows.start(port, STATE).waiting == "operator"
        end = flows.resume(port, "m1/j1", {"decision": decision})
    assert end.ended and port.finished == [outcome] and port.calls["start"] == 0


def test_continue_before_the_start_starts_the_job_and_a_closed_job_ends_quietly() -> None:
    port = Port([], concern_at_start=Concern(reason="envelope", detail="big", proposal="watch it"))
    with checkpointer(None) as saver:
        flows = JobFlows(saver)
        flows.start(port, STATE)
        assert flows.resume(port, "m1/j1", {"decision": "continue"}).waiting == "tick"
        assert port.calls["start"] == 1
        end = flows.resume(port, "m1/j1", {"closed": "refunded"})
    assert end.outcome == "closed" and port.finished == ["closed"]


class Crash(Exception):
    """The process dies in the middle of a step."""


def test_a_step_cut_short_by_a_crash_is_taken_again_by_the_next_process(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'workflows.db'}"
    port = Port([("running", 0.5, HOT)])

    def dies(state: FlowState, concern: Concern, handoff_id: str) -> dict[str, Any]:
        port.calls["raise_handoff"] += 1
        raise Crash  # after its effect, before the step's end

    port.raise_handoff = dies  # type: ignore[method-assign]
    with checkpointer(url) as saver:
        flows = JobFlows(saver)
        flows.start(port, STATE)
        with pytest.raises(Crash):
            flows.resume(port, "m1/j1", {"tick": True})
    later = Port([])
    with checkpointer(url) as saver:
        flows = JobFlows(saver)
        status = flows.status("m1/j1")
        assert status is not None and status.waiting is None and not status.ended  # stopped between two steps
        pending = flows.proceed(later, "m1/j1")
        assert pending.waiting == "operator" and pending.values["handoff"]["handoff_id"] == "j1~h1"
    assert later.calls == Counter(safe_state=1, raise_handoff=1)  # the cut step again (its effects are idempotent), no more
