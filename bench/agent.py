"""What the LLM agent costs the bidding path, and how close to the deadline its fallback lands.

- guard: the rule engine's check of a model's proposal, per call;
- function-model: a whole pydantic-ai bidding run in process (one tool call, then the answer), so
  the framework's own overhead without any network;
- http-1turn / http-2turn: the same through the real openai client to a local OpenAI-compatible
  server (answer at once; a tool call first);
- fallback: a model slower than the budget: how long after the budget the decision is ready.

Prints one JSON object per figure and a summary as the last line.

    .venv/bin/python bench/agent.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def main() -> None:
    quick = "--quick" in sys.argv
    n = 50 if quick else 300
    from datetime import UTC, datetime

    from openai_standin import call, standin_server, turns
    from pydantic_ai import models
    from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from agents.llm import ModelConfig
    from agents.machine_agent import MachineAgent
    from agents.snapshot import MachineSnapshot, SnapshotMachine
    from hub.envelope import now_ms
    from machines import JobSpec, load_profiles
    from pricing.bids import OpenCall
    from pricing.guard import BidProposal, guard
    from pricing.rules import Decision, decide
    from tools import MachineDeps

    profile = load_profiles()["prusa-01"]
    job = JobSpec(id="b-1", kind="printer_3d", capability="print", region="north", deadline_h=8, material="PLA",
                  size_mm=(80, 60, 40), amount=40, description="bench")
    rules = decide(profile, job)
    answer = {"action": "bid", "price": "30.00", "eta_h": 2, "rationale": "bench"}

    class BenchMachine(SnapshotMachine):
        def open_call(self, job_id: str) -> OpenCall | None:
            return OpenCall(job=job, requester="did:bench", reserve=80_000_000, bid_deadline=now_ms() + 60_000,
                            deadline_at=now_ms() + 600_000, speed=3600)

        def rule_decision(self, c: OpenCall) -> Decision:
            return rules

    machine = BenchMachine(MachineSnapshot(profile=profile, at=datetime.now(UTC), telemetry=[], bids=[]))
    the_call = machine.open_call("b-1")
    assert the_call is not None
    results: dict[str, dict[str, float]] = {}

    t0 = time.perf_counter()
    proposal = BidProposal.model_validate(answer)
    for _ in range(n * 20):
        guard(rules, proposal, profile.policy, 80_000_000)
    results["guard"] = {"us_per_call": round((time.perf_counter() - t0) / (n * 20) * 1e6, 2)}

    def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if sum(isinstance(m, ModelResponse) for m in messages) == 0:
            return ModelResponse(parts=[ToolCallPart("evaluate_job", {"job_id": "b-1"})])
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, answer)])

    async def timed(agent: MachineAgent, budget: float, count: int) -> tuple[list[float], list[str]]:
        ms, paths = [], []
        for _ in range(count):
            deps = MachineDeps(machine=machine)
            start = time.perf_counter()
            got, use = await agent.propose_bid(deps, the_call, rules, budget)
            ms.append((time.perf_counter() - start) * 1000)
            paths.append("ok" if got is not None else use.error.split(":")[0])
        return ms, paths

    fn_agent = MachineAgent(ModelConfig(model="function"), model=FunctionModel(scripted))
    ms, _ = asyncio.run(timed(fn_agent, 5.0, n))
    results["function-model"] = {"p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99)}

    with models.override_allow_model_requests(True), standin_server() as server:
        for name, script in (("http-1turn", turns(call("final_result", answer))),
                             ("http-2turn", turns(call("evaluate_job", {"job_id": "b-1"}), call("final_result", answer)))):
            server.script = script
            agent = MachineAgent(ModelConfig(model="standin", base_url=server.base_url))

            async def run(agent: MachineAgent = agent) -> tuple[list[float], list[str]]:
                try:
                    return await timed(agent, 5.0, n)
                finally:
                    await agent.aclose()

            ms, paths = asyncio.run(run())
            results[name] = {"p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99), "ok": paths.count("ok")}
        budget = 0.2
        server.script = turns(call("final_result", answer, delay_s=1.0))
        slow = MachineAgent(ModelConfig(model="standin", base_url=server.base_url))

        async def run_slow() -> tuple[list[float], list[str]]:
            try:
                return await timed(slow, budget, 10 if quick else 30)
            finally:
                await slow.aclose()

        ms, paths = asyncio.run(run_slow())
        over = [m - budget * 1000 for m in ms]
        results["fallback"] = {"budget_ms": budget * 1000, "overshoot_p50_ms": pct(over, 0.5), "overshoot_max_ms": round(max(over), 3),
                               "timeouts": paths.count("timeout")}
    for name, figures in results.items():
        print(json.dumps({"bench": f"agent.{name}", **figures}))
    print(json.dumps({"bench": "agent", "n": n, "guard_us": results["guard"]["us_per_call"],
                      "function_model_p50_ms": results["function-model"]["p50_ms"],
                      "http_1turn_p50_ms": results["http-1turn"]["p50_ms"], "http_2turn_p50_ms": results["http-2turn"]["p50_ms"],
                      "http_2turn_p99_ms": results["http-2turn"]["p99_ms"],
                      "fallback_overshoot_max_ms": results["fallback"]["overshoot_max_ms"],
                      "note": "decision latency added by the model path; the node's timer publishes the rules' bid regardless"}))


if __name__ == "__main__":
    main()
