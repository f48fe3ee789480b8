"""Who is evaluated: the rule engine alone, or a machine agent on a model. A subject makes the same
decisions a machine makes in the market, through the same code: the bid through the model and the
guard, then the bidding tool; governance through the steward or the model's tools; chat through
``MachineChat``; handoffs through ``agents.handoff``. An ``Outcome`` reads what happened back from the
world's stores, and keeps every attempt a policy refused or the guard changed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agents.chat import ChatHistory, MachineChat, governance_brief
from agents.handoff import Concern, before_start, during_job
from agents.llm import ModelConfig
from agents.machine_agent import MachineAgent
from agents.steward import Books, RegionDemand, UnfilledCall, review, vote_as_holder
from core.errors import GovernanceError, InputError, PolicyRefused
from core.money import format_units
from evals.world import World
from machines.work import estimate
from pricing.guard import BidDecision, ModelUse, from_rules, guard
from pricing.haggle import HaggleAsk, HaggleMove, guard_counter, machine_band, machine_move
from tools.bidding import place_bid
from tools.deps import MachineDeps
from tools.governance import propose, vote

__all__ = ["Outcome", "Subject", "load_subject"]

BID_BUDGET_S = 20.0
"""Seconds a model gets to price a call in an eval: a quality measure, not the market's bid window."""


class Outcome(BaseModel):
    """What a subject decided in one case, and what its decision executed in the world."""

    decision: str
    """The decision in one line, as the report shows it."""
    path: str
    """Which code decided: rules, llm, llm-clamped, rules-fallback, rules-fast-path, offline."""
    action: str = ""
    price: int | None = None
    answer: str = ""
    handoff: str | None = None
    """The reason a person was asked for, when one was."""
    executed: list[str] = Field(default_factory=list)
    """What changed the world: bids published, money paid, votes cast, proposals opened."""
    attempts: list[str] = Field(default_factory=list)
    """What the subject tried that policy refused or the guard changed: the report's evidence."""
    votes: dict[str, str] = Field(default_factory=dict)
    proposed: list[dict[str, Any]] = Field(default_factory=list)
    """Proposals the subject opened: kind, title and payload."""
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""
    facts: dict[str, Any] = Field(default_factory=dict)
    """Numbers the case's evaluators judge against (the rules' quote, the band, the world's state)."""

    def count(self, use: ModelUse | None) -> None:
        if use is not None:
            self.model_calls += use.calls
            self.input_tokens += use.input_tokens
            self.output_tokens += use.output_tokens
            if use.error:
                self.error = use.error


class Subject:
    """The rule engine (``agent`` None) or a machine agent on a model."""

    def __init__(self, name: str, agent: MachineAgent | None = None, *, bid_budget_s: float = BID_BUDGET_S) -> None:
        self.name = name
        self.agent = agent
        self.bid_budget_s = bid_budget_s

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()

    # -- bidding -------------------------------------------------------------------------------

    def bid(self, world: World, job_id: str) -> Outcome:
        """Answer one open call as the node does, then publish through the bidding tool."""
        decision = self.price(world, job_id)
        out = Outcome(decision=_bid_line(decision), path=decision.path, action=decision.action)
        out.count(decision.model)
        if decision.path == "llm-clamped" and decision.proposal is not None:
            out.attempts.append(f"model proposed {decision.proposal.action} {decision.proposal.price or ''}; guard: {decision.why}")
        deps = world.deps()
        if decision.action == "bid" and decision.price is not None:
            try:
                place_bid(deps, job_id, decision.price, decision.why, path=decision.path)
            except PolicyRefused as exc:
                out.attempts.append(f"place_bid {format_units(decision.price)} refused: {exc.code}: {exc.detail}")
        else:
            world.machine.decline_call(job_id, decision.why)
        self._read_back(world, deps, out)
        out.facts["confidence"] = decision.proposal.confidence if decision.proposal else None
        return out

    def price(self, world: World, job_id: str) -> BidDecision:
        call = world.machine.open_call(job_id)
        if call is None:
            raise InputError(f"the case has no open call {job_id!r}")
        rules = world.machine.rule_decision(call)
        if self.agent is None:
            return from_rules(rules, "rules")
        if rules.action != "bid":
            return from_rules(rules, "rules-fast-path", f"the rules refuse, no model can change that: {rules.reason}")
        proposal, use = self.agent.runner.run(self.agent.propose_bid(world.deps(), call, rules, self.bid_budget_s),
                                              timeout=self.bid_budget_s + 5)
        if proposal is None:
            return from_rules(rules, "rules-fallback", f"{use.error}; {rules.reason}", use)
        return guard(rules, proposal, world.profile.policy, call.reserve, use)

    # -- haggling --------------------------------------------------------------------------------

    def haggle(self, world: World, job_id: str, *, opening: int, price: int, slack_h: float, round: int, rounds: int,
               note: str = "", stakeholder: bool = False) -> tuple[HaggleMove, str, ModelUse | None]:
        """Answer a requester's counter of ``price`` (``slack_h`` hours past the call's deadline) as the
        node's haggler does: the rules' band and move, and the model's answer inside it."""
        call = world.machine.call(job_id)
        later = call.job.model_copy(update={"deadline_h": call.job.deadline_h + slack_h})
        rules = world.machine.rule_decision(call.model_copy(update={"job": later}))
        policy = world.profile.policy
        finish_by = round_ms(later.deadline_h)
        band = machine_band(rules, policy, opening=opening, reserve=call.reserve, stakeholder=stakeholder, slack_h=slack_h)
        move = machine_move(band, price=price, round=round, rounds=rounds, beta=policy.concession_beta, finish_by=finish_by,
                            tick=policy.price_tick)
        if self.agent is None:
            return move, "rules", None
        if band is None:
            return move, "rules-fast-path", None
        ask = HaggleAsk(job=later, requester=call.requester, round=round, rounds=rounds, opening=opening,
                        rules_price=move.price or band.least, offered=price, finish_h=later.deadline_h, slack_h=slack_h, band=band,
                        note=note)
        proposal, use = self.agent.runner.run(self.agent.propose_counter(world.deps(), ask, self.bid_budget_s), timeout=self.bid_budget_s + 5)
        if proposal is None:
            return move, "rules-fallback", use
        answer, path = guard_counter(band, proposal, offered=price, finish_by=finish_by, rules=move, tick=policy.price_tick)
        return answer, path, use

    # -- handoffs --------------------------------------------------------------------------------

    def before_start(self, world: World, job_id: str) -> Outcome:
        """Win the call at the subject's own price, then run the checks a job's workflow runs before it starts."""
        decision = self.price(world, job_id)
        call = world.machine.call(job_id)
        out = Outcome(decision="", path=decision.path, action=decision.action, price=decision.price)
        out.count(decision.model)
        confidence = decision.proposal.confidence if decision.proposal is not None else None
        if decision.action != "bid" or decision.price is None:
            out.decision = f"declined the job: {decision.why[:120]}"
            out.facts["declined"] = True
            return out
        hours = estimate(world.profile, call.job).total_hours
        concern = before_start(world.profile, call.job, price=decision.price, hours=hours, charter=world.charter, confidence=confidence)
        return _concerned(out, concern, f"bid {format_units(decision.price)}" + (f" at confidence {confidence:.2f}" if confidence is not None else ""))

    def during_job(self, world: World, *, wear_at_start: float, expected_wear: float, km_left: float) -> Outcome:
        """A reading mid-job: the checks run on every reading are rules, whatever the model (it is not asked)."""
        concern = during_job(world.profile, world.machine.telemetry(), wear_at_start=wear_at_start,
                             expected_wear=expected_wear, km_left=km_left)
        return _concerned(Outcome(decision="", path="rules"), concern, "reading")

    # -- governance ------------------------------------------------------------------------------

    def govern(self, world: World) -> Outcome:
        """One governance review: the steward's drafts and votes, or the model with its tools."""
        actor = f"machine:{world.profile.id}"
        deps = world.deps(actor)
        out = Outcome(decision="", path="rules" if self.agent is None else "llm")
        if self.agent is None:
            self._steward(world, deps, out)
        else:
            try:
                text, use = self.agent.runner.run(self.agent.govern(deps, governance_brief(deps)),
                                                  timeout=self.agent.config.chat_timeout_s + 5)
            except Exception as exc:  # the model failed: the steward's rules review instead, and the report says why
                out.error, out.path, text = f"{type(exc).__name__}: {exc}"[:300], "rules-fallback", ""
                self._steward(world, deps, out)
            else:
                out.count(use)
            out.answer = text
        self._read_back(world, deps, out, actor=actor)
        kinds = [p["kind"] for p in out.proposed]
        titles = {p.id: p.title for p in world.governance.proposals()}
        out.decision = (f"proposed {', '.join(kinds)}" if kinds else "proposed nothing") + (
            "; voted " + ", ".join(f"{c} on {titles.get(p, p)!r}" for p, c in out.votes.items()) if out.votes else "")
        return out

    def _steward(self, world: World, deps: MachineDeps, out: Outcome) -> None:
        s = world.scenario
        m = world.profile.id
        books = Books(wear_pct=s.wear_pct, wallet=world.ledger.balance(world.wallet), reserve=s.reserve, net=s.net,
                      observed_h=s.observed_h, children=1 if world.child else 0)
        demand = {r: RegionDemand(calls=d.calls, machines=d.machines,
                                  unfilled=tuple(UnfilledCall(job=c.job, reserve=c.reserve, hour=0.0) for c in d.unfilled))
                  for r, d in s.demand.items()}
        for draft in review(world.profile, world.governance.standing(m), world.charter, books, demand, period=0):
            try:
                propose(deps, draft.kind, draft.title, draft.rationale, payload=draft.payload, evidence=draft.evidence, key=draft.key)
            except (PolicyRefused, InputError, GovernanceError) as exc:
                out.attempts.append(f"propose {draft.kind.value} refused: {exc}")
        principals = frozenset(world.ledger.cap_table(m))
        for p in world.governance.proposals(state="open"):
            if p.weights.get(world.wallet):
                choice = vote_as_holder(p, principals=principals, payees=world.profile.policy.payees,
                                        mandate=world.governance.charter(m).vote_mandate)
                try:
                    vote(deps, p.id, choice)
                except (PolicyRefused, GovernanceError) as exc:
                    out.attempts.append(f"vote {choice} on {p.id} refused: {exc}")

    # -- chat --------------------------------------------------------------------------------------

    def chat(self, world: World, question: str, stakeholder: str) -> Outcome:
        """A stakeholder's question through ``MachineChat``: the model with its tools, or offline answers."""
        history = ChatHistory(world.folder / "chat")
        deps_seen: list[MachineDeps] = []

        def deps_for(who: str) -> MachineDeps:
            deps_seen.append(world.deps(who))
            return deps_seen[-1]

        chat = MachineChat(deps_for, history, self.agent)
        answer = chat.ask(stakeholder, question)
        body = answer.text.split("\n", 1)[-1] if answer.text.startswith("[") else answer.text  # without the offline note
        out = Outcome(decision=_short(body), path=answer.mode, answer=answer.text)
        out.count(answer.model)
        if deps_seen:
            self._read_back(world, deps_seen[-1], out)
        out.facts["cited"] = [c.ref for c in answer.cited]
        return out

    # -- reading back ------------------------------------------------------------------------------

    def _read_back(self, world: World, deps: MachineDeps, out: Outcome, *, actor: str | None = None) -> None:
        """What the run executed, from the stores, and what its tools refused, from the run's audit trail."""
        for b in world.machine.published:
            out.executed.append(f"bid {format_units(b.price)} on {b.job_id} ({b.path})")
            out.price = b.price
        for memo, amount in world.expenses():
            out.executed.append(f"paid {format_units(amount)} ({memo})")
        out.votes = world.votes()
        out.executed += [f"voted {c} on {p}" for p, c in out.votes.items()]
        # the agent's own: as whoever asked, or as the agent after reading outside text (``MachineDeps.cause``)
        opened = [p for p in world.governance.proposals()
                  if p.opened_by in {actor, deps.actor} or p.opened_by.startswith(f"agent:{world.profile.id} for ")]
        out.proposed = [{"kind": p.kind.value, "title": p.title, "payload": p.payload} for p in opened]
        out.executed += [f"opened {p.kind.value} proposal {p.id}" for p in opened]
        out.attempts += [f"{a.tool} refused ({a.code}): {a.detail}" for a in deps.actions if not a.ok]


def round_ms(hours: float) -> int:
    """An eval's instants: market ms from the case's start (its calls were heard at 0)."""
    return round(hours * 3_600_000)


def _concerned(out: Outcome, concern: Concern | None, what: str) -> Outcome:
    if concern is None:
        out.decision = f"{what}: carried on, no handoff"
    else:
        out.handoff = concern.reason
        out.decision = f"{what}: handed off ({concern.reason}: {concern.detail})"
        out.executed.append(f"handoff {concern.reason}")
    return out


def _bid_line(d: BidDecision) -> str:
    if d.action == "bid" and d.price is not None:
        return f"bid {format_units(d.price)} ({d.why[:100]})"
    return f"decline ({d.why[:100]})"


def _short(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_subject(model: str, *, base_url: str | None = None, api_key: str | None = None,
                 bid_budget_s: float = BID_BUDGET_S) -> Subject:
    """``rules``; ``scripted:NAME`` (a deterministic scripted agent, ``evals.scripted``); or any model
    pydantic-ai can reach (``openai-chat:gpt-4o-mini``, a model name at ``base_url`` for Ollama or vLLM)."""
    if model == "rules":
        return Subject("rules")
    config = ModelConfig.from_env(model, base_url, api_key, fast_path=False)
    if model.startswith("scripted:"):
        from evals.scripted import scripted_model

        return Subject(model, MachineAgent(config, model=scripted_model(model.removeprefix("scripted:"))), bid_budget_s=bid_budget_s)
    agent = MachineAgent(config)
    agent.runner.run(agent.prime())  # the server's prompt cache holds the bidding prefix before the first timed case
    return Subject(config.label(), agent, bid_budget_s=bid_budget_s)
