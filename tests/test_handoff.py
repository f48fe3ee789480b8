"""Operator takeover on the real broker and ledger: a machine hands an edge case to a person and back.

An anomaly injected into a simulated printer mid-job makes its workflow stop the printer safely and
raise a handoff; an operator takes over, sends commands over the control topic, hands back; the job
finishes and is paid once. Non-operators are refused, and the agent acts on nothing while a person
holds the machine.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from city import BUDGET, SmallMarket, job, printer

from agents.requester import Requester
from core.errors import PolicyRefused
from hub import topics
from hub.messages import ControlCommand, ControlResult, Handoff
from hub.transport import Hub
from ledger import Charter, Identity
from ledger.operations import Operations, Role
from machines.driver import MachineState
from tools.wallet import pay_expense

pytestmark = pytest.mark.slow


class Console:
    """An operator's side of the control topic: signed commands out, results and handoffs in."""

    def __init__(self, hub: Hub, identity: Identity, machine_id: str,
                 run: Callable[[float, Callable[[], bool]], None] | None = None) -> None:
        self.hub, self.identity, self.machine_id = hub, identity, machine_id
        self.run = run
        """How to let market time pass until something is true (a virtual city's ``run``); None: real time."""
        self.results: dict[str, ControlResult] = {}
        self.handoffs: list[Handoff] = []
        self._got = threading.Condition()
        hub.subscribe(topics.control_result(machine_id), self._on)
        hub.subscribe(topics.handoff(machine_id), self._on)

    def _on(self, topic: str, env: Any) -> None:
        with self._got:
            if isinstance(env.body, ControlResult):
                self.results[env.body.command_id] = env.body
            elif isinstance(env.body, Handoff):
                self.handoffs.append(env.body)
            self._got.notify_all()

    def send(self, command: str, *, operator: str | None = None, command_id: str | None = None, **fields: Any) -> ControlResult:
        cid = command_id or uuid.uuid4().hex
        body = ControlCommand(command_id=cid, machine_id=self.machine_id, operator=operator or self.identity.did,
                              command=command, **fields)  # type: ignore[arg-type]
        with self._got:
            self.results.pop(cid, None)
        self.hub.send(topics.control(self.machine_id), body, self.identity)
        if self.run is not None:  # a virtual city hands the command out only while its time runs
            self.run(3600, lambda: cid in self.results)
        with self._got:
            # a node in its own process may be slow on a busy machine: the wait ends when the answer comes
            assert self._got.wait_for(lambda: cid in self.results, timeout=20), f"no answer to {command}"
            return self.results[cid]

    def wait_handoff(self, state: str, timeout: float = 10.0) -> Handoff:
        if self.run is not None:
            self.run(72 * 3600, lambda: any(h.state == state for h in self.handoffs))
        with self._got:
            assert self._got.wait_for(lambda: any(h.state == state for h in self.handoffs), timeout=timeout), \
                f"no {state} handoff; saw {[h.state for h in self.handoffs]}"
            return next(h for h in reversed(self.handoffs) if h.state == state)


def operator(city: SmallMarket, machine_id: str) -> tuple[Identity, Console]:
    identity = Identity.generate()
    Operations(city.ledger.engine).grant(identity.did, Role.OPERATOR, machine_id)
    return identity, Console(city.hub(f"console-{identity.did[-6:]}", role="operator"), identity, machine_id, run=city.run)


def test_anomaly_hands_off_operator_takes_over_commands_hands_back_paid_once(city: SmallMarket) -> None:
    node = city.machine(printer("prusa-h", 2000), faults={city.jid("j-hot"): (0.25, "thermal_runaway")},
                        charter=Charter(handoff_wait_h=1000))
    op, console = operator(city, "prusa-h")
    requester: Requester = city.open_requester()
    requester.post(job("j-hot", deadline_h=40), reserve=50_000_000, value=60_000_000)

    raised = console.wait_handoff("pending")
    assert raised.job_id == city.jid("j-hot") and raised.reason == "anomaly.temperature", raised
    assert "nozzle" in raised.detail and raised.proposal
    assert raised.context["reading"]["temperatures_c"]["nozzle"] > 270
    assert node.telemetry().state is MachineState.PAUSED  # the safe state, before anyone came
    assert ("prusa-h", "handoff") in city.kinds(city.jid("j-hot"))

    took = console.send("takeover", handoff_id=raised.handoff_id)
    assert took.ok, took.result
    taken_at = city.clock.time()
    assert node.held_by == op.did
    assert console.wait_handoff("taken").operator == op.did
    assert not console.send("move_to", point={"x_km": 1, "y_km": 1}).ok  # a printer does not travel: refused, audited
    assert console.send("set", name="nozzle", value=215).ok
    assert not console.send("set", name="nozzle", value=999).ok
    assert console.send("resume").ok
    assert node.telemetry().state is MachineState.WORKING
    assert console.send("pause").ok
    city.run(3 * 3600)  # the agent would tick, bid or step the job here if it were still acting
    agent_after = [a for a in node.actions if a[0] > taken_at and a[1] == "agent"]
    assert agent_after == [], f"the agent acted on a machine under human control: {agent_after}"

    back = console.send("handback", decision="continue")
    assert back.ok, back.result
    assert node.held_by is None
    [outcome] = city.wait(1, timeout=20)
    assert outcome.outcome == "paid" and outcome.machine_id == "prusa-h", outcome
    city.settled("prusa-h")
    assert [j for j, _ in node.stats.settled] == [city.jid("j-hot")]  # paid once, settled once
    assert city.ledger.balance(city.wallet) == BUDGET - outcome.price
    assert city.ledger.escrow(city.jid("j-hot")).state.value == "released"
    assert [k for m, k in city.kinds(city.jid("j-hot")) if k in ("done", "paid")] == ["done", "paid"]

    audit = Operations(city.ledger.engine).audit_log("prusa-h")
    assert [(r.command, r.ok) for r in reversed(audit)] == [
        ("takeover", True), ("move_to", False), ("set", True), ("set", False), ("resume", True), ("pause", True), ("handback", True)]
    assert all(r.operator == op.did for r in audit)
    assert "does not travel" in audit[-2].result
    assert console.wait_handoff("closed").decision == "continue"


def test_nobody_but_an_operator_holding_the_machine_commands_it_and_the_agent_stands_by(city: SmallMarket) -> None:
    node = city.machine(printer("prusa-c", 2000))
    op, console = operator(city, "prusa-c")
    other, other_console = operator(city, "prusa-c")
    stranger = Identity.generate()
    stranger_console = Console(city.hub("stranger", role="operator"), stranger, "prusa-c", run=city.run)
    requester = city.open_requester()

    refused = stranger_console.send("takeover")
    assert not refused.ok and "not an operator" in refused.result
    relayed = stranger_console.send("takeover", operator=op.did)  # signed by someone who is not a console
    assert not relayed.ok and "neither the operator nor a console" in relayed.result
    assert not console.send("pause").ok  # not taken over yet
    assert node.held_by is None

    assert console.send("takeover").ok  # unasked, with the machine idle
    with pytest.raises(PolicyRefused, match=r"policy\.operator"):  # no tool changes the machine, whoever asks
        pay_expense(node.deps(), 1_000_000, "supplier:maintenance", "parts")
    with pytest.raises(PolicyRefused, match=r"policy\.operator"):
        node.deps("alice").hands_off()
    assert not other_console.send("takeover").ok  # held by someone else
    assert not other_console.send("pause").ok
    taken_at = city.clock.time()
    requester.post(job("j-while-held"), reserve=50_000_000, value=60_000_000)
    [first] = city.wait(1, timeout=10)
    assert first.outcome == "expired" and first.bids == 0  # the agent did not bid while a person held the machine
    assert [a for a in node.actions if a[0] > taken_at and a[1] == "agent"] == []

    assert console.send("handback").ok
    requester.post(job("j-after"), reserve=50_000_000, value=60_000_000)
    outcomes = city.wait(2, timeout=20)
    assert outcomes[1].outcome == "paid" and outcomes[1].machine_id == "prusa-c"
    audit = Operations(city.ledger.engine).audit_log("prusa-c")
    assert {r.operator for r in audit if not r.ok} >= {stranger.did, other.did}


def test_a_redelivered_command_is_carried_out_once(city: SmallMarket) -> None:
    city.machine(printer("prusa-r", 2000))
    _, console = operator(city, "prusa-r")
    cid = uuid.uuid4().hex
    first = console.send("takeover", command_id=cid)
    again = console.send("takeover", command_id=cid)
    assert first.ok and again.ok and again.result == first.result
    assert [r.command for r in Operations(city.ledger.engine).audit_log("prusa-r")] == ["takeover"]


def test_no_operator_in_time_escalates_and_the_runner_up_finishes_the_job(city: SmallMarket) -> None:
    hot = city.machine(printer("prusa-e1", 1000), faults={city.jid("j-esc"): (0.25, "wear_spike")}, charter=Charter(handoff_wait_h=0.5))
    city.machine(printer("prusa-e2", 3000))
    requester = city.open_requester()
    requester.post(job("j-esc", deadline_h=40), reserve=50_000_000, value=60_000_000)
    [outcome] = city.wait(1, timeout=25)
    assert outcome.outcome == "paid" and outcome.machine_id == "prusa-e2" and outcome.takeovers == 1, outcome
    kinds = city.kinds(city.jid("j-esc"))
    assert ("prusa-e1", "handoff") in kinds and ("prusa-e1", "failed") in kinds
    assert city.ledger.balance(city.wallet) == BUDGET - outcome.price  # the escrow moved once, to the runner-up
    [record] = [h for h in Operations(city.ledger.engine).open_handoffs("prusa-e1")] or [None]
    assert record is None  # closed with the escalation
    assert hot.held_by is None


def test_the_machine_remembers_each_command_and_who_sent_it(city: SmallMarket, tmp_path: Any) -> None:
    from memory import MemoryConfig, MemoryStore

    store = MemoryStore(MemoryConfig(path=tmp_path / "memory"))
    city.closers.append(store.close)
    node = city.machine(printer("prusa-m", 2000), memory=store.machine("prusa-m"))
    op, console = operator(city, "prusa-m")
    assert console.send("takeover", note="checking the belts").ok
    assert not console.send("move_to", point={"x_km": 1, "y_km": 1}).ok
    assert console.send("handback").ok
    assert node.memory is not None
    store.flush()
    remembered = node.memory.recall("operator commands", kind="operator", k=10)
    texts = sorted(r.text for r in remembered)
    assert len(texts) == 3 and all(op.did in t for t in texts), texts
    assert any("move_to" in t and "refused" in t for t in texts)
