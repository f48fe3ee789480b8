"""The machine's LLM agent on the critical path, end to end: a CFP over the real broker, the agent's
model behind the real openai client over HTTP (a local stand-in), and the bid that reaches the
requester's topic. Whatever the model does — a good answer, a price out of policy, malformed JSON,
a 500, an answer slower than the deadline — a valid decision is published before the bid deadline,
and it says which path made it and why. These run on scaled real time (``live_city``): a model
answering against a deadline of real milliseconds; ``test_virtual_clock`` has the same race on
virtual time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from city import SPEED, SmallMarket, job, printer
from openai_standin import StandIn, call, fail, standin_server, turns
from pydantic_ai import models

from agents.llm import ModelConfig
from agents.machine_agent import MachineAgent
from agents.node import MachineNode
from hub import topics
from hub.envelope import Envelope
from hub.jobids import owned
from hub.messages import Bid, CallForProposals
from ledger import settlement

RESERVE = 80_000_000
WINDOW_MS = 1000
DESCRIBED = "Bracket for a bike rack, matte finish please."


@pytest.fixture
def city(live_city: SmallMarket) -> SmallMarket:
    return live_city


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with models.override_allow_model_requests(True), standin_server() as server:  # loopback only
        yield server


def llm_node(city: SmallMarket, standin: StandIn, machine_id: str = "prusa-llm", **options: object) -> MachineNode:
    agent = MachineAgent(ModelConfig(model="standin", base_url=standin.base_url))
    city.closers.append(agent.close)
    return city.machine(printer(machine_id, 2000), agent=agent, **options)  # type: ignore[arg-type]


def called(job_id: str) -> str:
    """The id ``offer`` posts ``job_id`` under: in its caller's namespace."""
    return owned(settlement.requester_account(f"caller-{job_id}"), job_id)


def offer(city: SmallMarket, job_id: str, *, window_ms: int = WINDOW_MS, region: str = "north", **changes: object) -> tuple[CallForProposals, list[tuple[float, Bid]]]:
    """Publish a CFP for a described (so never routine) print job; collect bids with their arrival times."""
    bids: list[tuple[float, Bid]] = []
    rx = city.hub(f"observer-{job_id}")
    requester, owner = city.caller(f"caller-{job_id}")
    spec = job(called(job_id), description=DESCRIBED, **changes)
    assert spec.id == owned(owner, job_id)
    rx.subscribe(topics.bids(spec.id), lambda t, e: bids.append((city.ms(), e.body.open(requester))))  # type: ignore[union-attr]
    time.sleep(0.15)
    now = city.ms()  # market ms: the windows are real ms at the market's pace
    cfp = CallForProposals(job=spec, reserve=RESERVE, bid_deadline=now + round(window_ms * SPEED), deadline_at=now + 8_000 * round(SPEED),
                           speed=SPEED)
    rx.send(topics.cfp(region, "printer_3d"), cfp, requester)
    return cfp, bids


def wait_for(bids: list[tuple[float, Bid]], until_ms: int) -> None:
    deadline = time.monotonic() + WINDOW_MS / 1000 + 0.5  # the window, in real time, and the way back
    while not bids and time.monotonic() < deadline:
        time.sleep(0.01)


def final(price: str, rationale: str = "fair price", eta: float = 2.0) -> dict[str, object]:
    return {"action": "bid", "price": price, "eta_h": eta, "rationale": rationale}


def the_bid(bids: list[tuple[float, Bid]], cfp: CallForProposals) -> Bid:
    wait_for(bids, cfp.bid_deadline)
    assert len(bids) == 1, f"expected one bid, got {len(bids)}"
    arrived, bid = bids[0]
    assert arrived <= cfp.bid_deadline, f"bid arrived {(arrived - cfp.bid_deadline) / SPEED:.1f} real ms after the deadline: {bid.reason}"
    return bid


def test_model_bid_is_one_structured_answer_published_as_llm(city: SmallMarket, standin: StandIn) -> None:
    node = llm_node(city, standin)
    standin.script = turns(call("final_result", final("31.00", "busy week, fair margin")))
    cfp, bids = offer(city, "llm-1")
    bid = the_bid(bids, cfp)
    assert (bid.path, bid.price) == ("llm", 31_000_000)
    assert "busy week" in bid.reason
    assert len(standin.requests) == 1  # one answer, no tool loop: the request carries the quote and the band
    sent = standin.requests[0]
    assert [t["function"]["name"] for t in sent["tools"]] == ["final_result"] and sent["tool_choice"] == "required"
    prompt = sent["messages"][-1]["content"]
    assert "Rule quote: bid " in prompt and "Band " in prompt and '<untrusted source="job from ' in prompt
    system = sent["messages"][0]["content"]
    assert node.profile.id not in system  # the system prompt is the same for every machine and call: a server caches it
    stats = node.stats
    assert stats.paths["llm"] == 1 and stats.model_calls == 1 and stats.input_tokens > 0 and stats.output_tokens > 0
    record = node.bid_history()[-1]
    assert (record.job_id, record.path, record.price) == (called("llm-1"), "llm", 31_000_000)
    assert record.model_calls == 1 and record.input_tokens > 0 and 0 < record.model_ms < WINDOW_MS


def test_price_under_the_floor_is_clamped_to_the_least_price(city: SmallMarket, standin: StandIn) -> None:
    node = llm_node(city, standin)
    standin.script = turns(call("final_result", final("0.50", "win at any cost")))
    cfp, bids = offer(city, "llm-2")
    bid = the_bid(bids, cfp)
    rules = node.decide(job("llm-2"), cfp.deadline_at)
    assert rules.cost is not None
    least = max(rules.cost.total, node.profile.policy.price_floor)
    assert bid.path == "llm-clamped"
    assert least <= bid.price < least + node.profile.policy.price_tick
    assert "raised to" in bid.reason


def test_price_over_the_reserve_is_lowered_to_it(city: SmallMarket, standin: StandIn) -> None:
    llm_node(city, standin)
    standin.script = turns(call("final_result", final("900.00")))
    cfp, bids = offer(city, "llm-3")
    bid = the_bid(bids, cfp)
    assert (bid.path, bid.price) == ("llm-clamped", RESERVE)


@pytest.mark.parametrize(
    ("case", "script", "error"),
    [
        ("malformed-json", turns(call("final_result", '{"action": "bid", "price": ')), "invalid output"),
        ("http-500", turns(fail(500)), "model error"),
        ("slower-than-deadline", turns(call("final_result", final("30.00"), delay_s=3.0)), "timeout"),
        ("refusal", turns(call("final_result", {"action": "maybe"})), "invalid output"),
    ],
)
def test_model_failures_fall_back_to_the_rules_before_the_deadline(city: SmallMarket, standin: StandIn, case: str, script: object, error: str) -> None:
    node = llm_node(city, standin, f"prusa-{case}")
    standin.script = script  # type: ignore[assignment]
    cfp, bids = offer(city, f"fb-{case}")
    bid = the_bid(bids, cfp)
    rules = node.decide(job(f"fb-{case}"), cfp.deadline_at)
    assert bid.path == "rules-fallback"
    assert bid.price == rules.price
    assert error in bid.reason
    assert node.stats.paths == {"rules-fallback": 1}
    record = node.bid_history()[-1]
    assert record.path == "rules-fallback" and error in record.reason and record.model_ms < WINDOW_MS
    if case == "http-500":
        assert len(standin.requests) >= 2, "a 500 is retried while the budget lasts"


def test_routine_jobs_skip_the_model(city: SmallMarket, standin: StandIn) -> None:
    node = llm_node(city, standin)
    standin.script = turns(fail(500))
    bids: list[Envelope] = []
    rx = city.hub("observer-routine")
    requester, owner = city.caller()
    rx.subscribe(topics.bids(owned(owner, "plain-1")), lambda t, e: bids.append(e))
    time.sleep(0.15)
    now = city.ms()
    cfp = CallForProposals(job=job(owned(owner, "plain-1")), reserve=RESERVE, bid_deadline=now + round(WINDOW_MS * SPEED),
                           deadline_at=now + 8_000 * round(SPEED), speed=SPEED)
    rx.send(topics.cfp("north", "printer_3d"), cfp, requester)
    deadline = time.monotonic() + 2
    while not bids and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [b.body.open(requester).path for b in bids] == ["rules-fast-path"]  # type: ignore[attr-defined]
    assert standin.requests == [] and node.stats.model_calls == 0
