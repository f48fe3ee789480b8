"""Operator takeover on a real mosquitto: how fast a machine hands off, how fast an operator takes
control, and whether the agent acts after that (the target: never).

R rounds. Each: a printer wins a job whose nozzle runs away a fifth of the way in; its workflow
pauses it and raises a handoff; an operator (a signed client on the control topic) takes over,
sets the nozzle back, resumes, hands back; the job is paid. Measured per round: fault injected →
handoff seen by the operator; takeover command → its answer; takeover → the agent's last action
(negative: the agent's last action came before the takeover); actions by the agent while the
operator held the machine; handback → paid. Also the cost of one workflow step (a checkpointed
langgraph resume) on SQLite. Prints one JSON object as the last line.

    .venv/bin/python bench/handoff.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds

    from agents.node import MachineNode
    from agents.requester import JobOutcome, Requester, RequesterConfig
    from agents.workflow import JobFlows, checkpointer
    from core.clock import ScaledClock
    from hub import topics
    from hub.broker import start_broker
    from hub.messages import ControlCommand, ControlResult, Handoff
    from hub.transport import Hub
    from ledger import Charter, Identity, Ledger, settlement
    from ledger.operations import Operations, Role
    from machines import JobSpec, load_profiles
    from machines.driver import SimDriver
    from machines.faults import FaultyDriver

    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    ledger = Ledger(f"sqlite:///{folder}/ledger.db")
    speed = 3600.0  # a 2 h print takes 2 s
    rows: list[dict[str, float]] = []
    with start_broker("mosquitto") as broker, checkpointer(f"sqlite:///{folder}/workflows.db") as saver:
        flows = JobFlows(saver)
        identity = Identity.generate()
        settlement.register_machine(ledger, "prusa-b", identity.did, {"owner": 1})
        profile = load_profiles()["prusa-01"].model_copy(update={"id": "prusa-b"})
        clock = ScaledClock(speed)

        def wall(market_s: float) -> float:
            """The wall time (epoch s) at which the market's clock read ``market_s``."""
            return time.time() - (clock.time() - market_s) / speed

        faults = FaultyDriver(SimDriver(profile, clock))
        node = MachineNode(profile, identity, Hub(broker.admit("prusa-b", "machine"), name="prusa-b", clock=clock), ledger=ledger, clock=clock,
                           driver=faults, flows=flows, charter=Charter(handoff_wait_h=1000)).start()
        op = Identity.generate()
        Operations(ledger.engine).grant(op.did, Role.OPERATOR, "prusa-b")
        hub = Hub(broker.admit("operator", "operator"), name="operator", clock=clock).connect()
        got = threading.Condition()
        answers: dict[str, tuple[float, ControlResult]] = {}
        raised: list[tuple[float, Handoff]] = []

        def on(topic: str, env: Any) -> None:
            with got:
                if isinstance(env.body, ControlResult):
                    answers[env.body.command_id] = (time.perf_counter(), env.body)
                elif isinstance(env.body, Handoff) and env.body.state == "pending":
                    raised.append((time.perf_counter(), env.body))
                got.notify_all()

        hub.subscribe(topics.control_result("prusa-b"), on)
        hub.subscribe(topics.handoff("prusa-b"), on)

        def send(command: str, **fields: Any) -> tuple[float, float, ControlResult]:
            cid = uuid.uuid4().hex
            sent = time.perf_counter()
            hub.send(topics.control("prusa-b"), ControlCommand(
                command_id=cid, machine_id="prusa-b", operator=op.did, command=command, **fields), op)  # type: ignore[arg-type]
            with got:
                got.wait_for(lambda: cid in answers, timeout=10)
                at, result = answers[cid]
            return sent, at, result

        outcomes: list[JobOutcome] = []
        rid = Identity.generate()
        wallet = settlement.open_requester(ledger, "bench", rid.did, 10**12)
        requester_hub = Hub(broker.admit("requester", "requester"), name="requester", clock=clock).connect()
        requester = Requester(rid, requester_hub, ledger, wallet, on_outcome=outcomes.append,
                              config=RequesterConfig(bid_window_s=0.2 * speed, accept_window_s=0.3 * speed)).start()
        time.sleep(0.3)
        for r in range(rounds):
            job_id = requester.job_id(f"hot-{r}")  # in the requester's namespace: the fault is planned on the id it posts
            faults.plan(job_id, 0.2, "thermal_runaway")
            before = len(raised)
            requester.post(JobSpec(id=job_id, kind="printer_3d", capability="print", region="north", deadline_h=200,
                                   material="PLA", size_mm=(80, 60, 40), amount=40), reserve=50_000_000, value=60_000_000)
            with got:
                got.wait_for(lambda b=before: len(raised) > b, timeout=20)  # type: ignore[misc]
                seen_at, handoff = raised[-1]
            injected = wall(handoff.raised_at / 1000)  # wall time the workflow raised it
            sent, answered, took = send("takeover", handoff_id=handoff.handoff_id)
            taken_wall = time.time() - (time.perf_counter() - answered)
            send("set", name="nozzle", value=215)
            time.sleep(0.2)
            agent = [(wall(a[0]), *a[1:]) for a in node.actions if a[1] == "agent"]  # market times, as wall times
            last_agent = max((a[0] for a in agent if a[0] <= taken_wall + 5), default=0.0)
            during = [a for a in agent if a[0] > taken_wall]
            back_at = time.perf_counter()
            send("handback", decision="continue")
            deadline = time.monotonic() + 30
            while len(outcomes) <= r and time.monotonic() < deadline:
                time.sleep(0.005)
            rows.append({
                "handoff_seen_ms": (seen_at - (time.perf_counter() - (time.time() - injected))) * 1000,
                "takeover_answer_ms": (answered - sent) * 1000,
                "takeover_to_last_agent_action_ms": (last_agent - taken_wall) * 1000,
                "agent_actions_while_held": len(during),
                "handback_to_paid_ms": (time.perf_counter() - back_at) * 1000 if len(outcomes) > r else float("nan"),
                "paid": float(len(outcomes) > r and outcomes[r].outcome == "paid" and took.ok),
            })
        requester.stop()
        requester_hub.close()
        node.stop()
        node.hub.close()
        hub.close()

        class Port:  # a do-nothing port: the cost of the graph and its checkpoint alone
            def check_start(self, state: Any) -> None: return None
            def start(self, state: Any) -> dict[str, Any]: return {}
            def read(self, state: Any) -> tuple[str, float, None]: return "running", 0.5, None
            def safe_state(self, state: Any) -> None: ...
            def raise_handoff(self, state: Any, concern: Any, handoff_id: str) -> dict[str, Any]: return {}
            def carry_on(self, state: Any) -> None: ...
            def finish(self, state: Any, outcome: Any) -> None: ...

        port = Port()
        flows.start(port, {"job_id": "step-bench", "machine_id": "bench", "contract": {}})  # type: ignore[arg-type]
        steps = []
        for _ in range(200):
            t = time.perf_counter()
            flows.resume(port, "bench/step-bench", {"tick": True})  # type: ignore[arg-type]
            steps.append((time.perf_counter() - t) * 1000)

    def p50(key: str) -> float:
        return round(statistics.median(row[key] for row in rows), 2)

    print(json.dumps({
        "bench": "handoff", "rounds": rounds, "paid": int(sum(r["paid"] for r in rows)),
        "handoff_raised_to_seen_ms_p50": p50("handoff_seen_ms"),
        "takeover_answer_ms_p50": p50("takeover_answer_ms"),
        "takeover_to_last_agent_action_ms_max": round(max(r["takeover_to_last_agent_action_ms"] for r in rows), 2),
        "agent_actions_while_held": int(sum(r["agent_actions_while_held"] for r in rows)),
        "handback_to_paid_ms_p50": p50("handback_to_paid_ms"),
        "workflow_step_ms_p50": round(statistics.median(steps), 2),
        "workflow_step_ms_p99": round(sorted(steps)[int(len(steps) * 0.99) - 1], 2),
    }))


if __name__ == "__main__":
    main()
