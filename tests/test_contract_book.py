"""The contract book without a broker: every state transition allowed and refused, and the scheduling
rules (earliest deadline first, what fits before a new job, what a new job would make late)."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import product

import pytest

from agents.node.book import ACTIVE, TRANSITIONS, Contract, ContractBook, ContractState, Followed, Terms
from core.errors import ContractStateError
from machines.driver import MachineState, Telemetry
from machines.job import JobSpec
from machines.loader import find_profile
from pricing.bids import OpenCall
from pricing.rules import Decision

S = ContractState
ALLOWED = {
    (S.ACCEPTED, S.FUNDED), (S.ACCEPTED, S.WITHDRAWN), (S.ACCEPTED, S.CANCELLED),
    (S.FUNDED, S.RUNNING), (S.FUNDED, S.WITHDRAWN), (S.FUNDED, S.CANCELLED),
    (S.RUNNING, S.DONE), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED),
    (S.DONE, S.PAID),
}
"""Written out by hand: the table in the code must say exactly this."""
HOUR_MS = 3_600_000
PRINTER = find_profile("prusa-01")


def job(job_id: str, hours_of_print: float = 40) -> JobSpec:
    return JobSpec(id=job_id, kind="printer_3d", capability="print", region="north", deadline_h=100, material="PLA",
                   size_mm=(80, 60, 40), amount=hours_of_print)


def contract(job_id: str = "j", *, deadline_at: int = 10 * HOUR_MS, state: ContractState = S.ACCEPTED) -> Contract:
    terms = Terms(job=job(job_id), requester="did:key:requester", price=5_000_000, speed=1.0, deadline_at=deadline_at, accept_by=0)
    return Contract(terms, state=state)


def followed(c: Contract) -> Followed:
    call = OpenCall(job=c.job, requester=c.terms.requester, reserve=c.terms.price, bid_deadline=0, deadline_at=c.terms.deadline_at)
    return Followed(call, c.terms.requester, c)


def test_the_transition_table_is_the_one_written_down() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED
    assert set(TRANSITIONS) == set(ContractState)
    assert {S.ACCEPTED, S.FUNDED, S.RUNNING} == ACTIVE


@pytest.mark.parametrize(("start", "to"), sorted(product(ContractState, ContractState)))
def test_each_transition_is_allowed_or_refused_by_the_table(start: ContractState, to: ContractState) -> None:
    c = contract(state=start)
    if (start, to) in ALLOWED:
        c.move(to)
        assert c.state is to
    else:
        with pytest.raises(ContractStateError, match=f"{start.value} cannot become {to.value}"):
            c.move(to)
        assert c.state is start  # a refused move changes nothing


def test_a_contract_runs_its_whole_life_and_ends_paid() -> None:
    c = contract()
    for state in (S.FUNDED, S.RUNNING, S.DONE, S.PAID):
        c.move(state)
    assert c.state is S.PAID and not c.active


def test_timers_are_cancelled_together_and_a_slot_keeps_one() -> None:
    from core.mailbox import Timer

    c = contract()
    fund, first_tick, second_tick = Timer(), Timer(), Timer()
    c.timers.add(fund)
    c.timers.slot("tick", first_tick)
    c.timers.slot("tick", second_tick)
    assert first_tick.cancelled and not second_tick.cancelled  # one tick pending at a time
    c.timers.cancel()
    assert fund.cancelled and second_tick.cancelled


def test_the_next_job_is_the_funded_one_due_first() -> None:
    book = ContractBook()
    late, soon, unfunded = (contract("late", deadline_at=9 * HOUR_MS, state=S.FUNDED),
                            contract("soon", deadline_at=3 * HOUR_MS, state=S.FUNDED),
                            contract("unfunded", deadline_at=1 * HOUR_MS))
    for c in (late, soon, unfunded):
        book.follow(followed(c))
    assert book.next_ready() is soon
    book.run(soon)
    soon.move(S.RUNNING)
    assert book.next_ready() is late
    assert [q.job_id for q in book.queue()] == ["soon", "unfunded", "late"]  # the running one first, then by deadline
    assert book.active_count() == 3
    assert not book.release(late) and book.running is soon  # another contract does not free the machine
    assert book.release(soon) and book.running is None


def test_status_counts_the_work_ahead_of_a_new_job_by_its_deadline() -> None:
    book = ContractBook()
    early, later = contract("early", deadline_at=2 * HOUR_MS, state=S.FUNDED), contract("later", deadline_at=20 * HOUR_MS, state=S.FUNDED)
    for c in (early, later):
        book.follow(followed(c))
    reading = Telemetry(machine_id=PRINTER.id, at=datetime.now(UTC), state=MachineState.IDLE, wear_pct=12.0, temperatures_c={},
                        energy_used_kwh=0.0, operating_hours=0.0)
    before_early = book.status(PRINTER, reading, deadline_at=1 * HOUR_MS)
    between = book.status(PRINTER, reading, deadline_at=5 * HOUR_MS)
    after_both = book.status(PRINTER, reading, deadline_at=30 * HOUR_MS)
    assert before_early.queue_hours == 0 < between.queue_hours < after_both.queue_hours
    assert after_both.queue_len == 2 and after_both.wear_pct == 12.0


def test_a_new_job_that_would_make_an_accepted_one_late_is_declined() -> None:
    book = ContractBook()
    tight = contract("tight", deadline_at=2 * HOUR_MS, state=S.FUNDED)
    book.follow(followed(tight))
    bid = Decision(action="bid", eta_h=1.9, price=1_000_000, rules=(), reason="bid")
    declined = book.keeps_later(PRINTER, job("new"), 1 * HOUR_MS, bid, now_ms=0)
    assert declined.action == "decline" and declined.rules[0].code == "decline.deadline"
    assert "tight" in declined.reason
    roomy = book.keeps_later(PRINTER, job("new"), 1 * HOUR_MS, bid.model_copy(update={"eta_h": 0.01}), now_ms=-1000 * HOUR_MS)
    assert roomy is not None and roomy.action == "bid"  # with time to spare, the bid stands unchanged
