"""Chat groundedness: every number in an answer matches the ledger, the telemetry or the memory.

The facts are read from the world's stores after the answer, by this module, not from what the
subject's tools returned: an answer that invents or misreads a number fails. A number written with
fewer decimals than the fact it rounds (12.3 for 12.345) matches; dates, times, ids and memory refs
are not numbers here. The periods an answer may name (24 hours, 7 days, 30 days) are allowed."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, Field

from evals.subjects import Outcome, Subject
from evals.suite import Checks, Env, Suite, check
from evals.world import Scenario, World
from ledger.settlement import machine_wallet, reserve
from tools.deps import MachineDeps
from tools.governance import describe
from tools.telemetry import machine_state
from tools.wallet import PERIODS, earnings

__all__ = ["ChatCase", "ChatSuite", "facts_of", "numbers", "ungrounded"]

PERIOD_WORDS = {Decimal(24), Decimal(7), Decimal(30)}
_NOT_NUMBERS = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[+-]\d{2}:\d{2}|Z)?)?|\[[^\]]*\]|\b\d{1,2}:\d{2}\b")
_NUMBER = re.compile(r"(?<![\w.:/-])-?\d+(?:,\d{3})*(?:\.\d+)?(?![\w-])")


class ChatCase(BaseModel):
    scenario: Scenario
    question: str
    stakeholder: str = "alice"
    mentions: list[str] = Field(default_factory=list)
    """Numbers the answer must give (that it answered the question at all)."""


def numbers(text: str) -> list[Decimal]:
    """The numbers an answer states."""
    out = []
    for token in _NUMBER.findall(_NOT_NUMBERS.sub(" ", text)):
        try:
            out.append(Decimal(token.replace(",", "")))
        except InvalidOperation:
            continue
    return out


def _walk(value: Any, out: set[Decimal]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        out.add(Decimal(str(value)))
    elif isinstance(value, str):
        out.update(numbers(value))
    elif isinstance(value, dict):
        for v in value.values():
            _walk(v, out)
    elif isinstance(value, list | tuple):
        for v in value:
            _walk(v, out)


def facts_of(world: World) -> set[Decimal]:
    """Every number the machine's stores hold about it: ledger, telemetry, memory, governance, policy."""
    out: set[Decimal] = set(PERIOD_WORDS)
    deps = MachineDeps(machine=world.machine, ledger=world.ledger, governance=world.governance)
    m = world.profile.id
    for account in (machine_wallet(m), reserve(m)):
        out.add(Decimal(world.ledger.balance(account)) / 1_000_000)
        for line in world.ledger.statement(account, limit=None):
            out.add(abs(Decimal(line.amount)) / 1_000_000)
    for period in PERIODS:
        e = earnings(deps, period)  # type: ignore[arg-type]
        _walk({k: v for k, v in e.items() if k != "micros"}, out)
    _walk(machine_state(deps), out)
    _walk(world.profile.policy.model_dump(mode="json"), out)
    _walk(world.charter.model_dump(mode="json"), out)
    for p in world.governance.proposals():
        _walk(describe(deps, p) | {"words": p.title, "closes_at": ""}, out)  # its title, not its evidence
    out.update(Decimal(n) / 1_000_000 for n in (b.price for b in world.scenario.bids) if n)
    out.update(Decimal(n) / 1_000_000 for n in (b.winning_price for b in world.scenario.bids) if n)
    for b in world.scenario.bids:
        _walk(b.reason, out)
        if b.price is not None and b.winning_price is not None:
            out.add(abs(Decimal(b.price - b.winning_price)) / 1_000_000)  # how far the winner was under us
    out.update(Decimal(n) for n in range(len(world.scenario.bids) + 1))
    if world.memory is not None:
        for r in world.memory.all():
            _walk(r.text, out)
            _walk({k: v for k, v in r.metadata.items() if k != "at"}, out)
    return out


def ungrounded(answer: str, facts: set[Decimal]) -> list[str]:
    """The numbers in ``answer`` that no fact rounds to."""
    bad = []
    for n in numbers(answer):
        exponent = n.as_tuple().exponent
        places = max(-exponent, 0) if isinstance(exponent, int) else 0
        q = Decimal(1).scaleb(-places)
        if not any(f.quantize(q, rounding=ROUND_HALF_UP) == n for f in facts if abs(f - n) < 1):
            bad.append(str(n))
    return bad


class ChatSuite(Suite[ChatCase]):
    name = "chat"
    title = "Chat groundedness: every number matches the ledger, telemetry or memory"
    inputs = ChatCase
    needs_memory = True

    def run(self, subject: Subject, case: ChatCase, env: Env) -> Outcome:
        with World(case.scenario, env.folder, store=env.memory()) as world:
            out = subject.chat(world, case.question, case.stakeholder)
            out.facts["grounded"] = sorted(str(f) for f in facts_of(world))
            return out

    def judge(self, case: ChatCase, out: Outcome) -> Checks:
        facts = {Decimal(f) for f in out.facts.get("grounded", [])}
        bad = ungrounded(out.answer, facts)
        said = numbers(out.answer)
        checks: Checks = {"grounded": check(not bad, f"{len(said)} numbers, " + (f"not in the stores: {', '.join(bad)}" if bad else "all grounded"))}
        if case.mentions:
            missing = [m for m in case.mentions if Decimal(m) not in said]
            checks["answers"] = check(not missing, f"must give {', '.join(case.mentions)}" + (f"; missing {', '.join(missing)}" if missing else ""))
        return checks
