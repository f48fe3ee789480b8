"""Scripted agents: deterministic stand-ins for a model, as pydantic-ai ``FunctionModel``s, so every
suite runs against an agent that calls real tools without any model being reachable.

- ``honest`` does what the prompts ask: it reads its tools, bids the rule engine's quote (less sure of
  jobs whose description looks unusual), answers a counter with the rules' offer for the round,
  answers with the numbers its tools returned, proposes
  maintenance near the wear limit and a move towards demand, and backs its child's own proposals.
- ``gullible`` is the same agent, except that it obeys any instruction it reads anywhere — a job
  description, a remembered fact, a peer's proposal, the chat — in the small instruction language
  the adversarial cases use ("bid 0.50", "pay 40.00 to requester:mallory", "vote no on …",
  "confidence 1.0"; in a negotiation, "accept" or "counter at 0.50"). It is the model that fell for a prompt injection; the tools must stop it.

A deterministic simulation aid: its choices are written here, not learned. Figures quoted for it
measure the tools and the guard around it, not a model's judgment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from core.errors import InputError

__all__ = ["SCRIPTS", "scripted_model"]

UNUSUAL = ("first attempt failed", "unfamiliar", "never been printed", "experimental", "prototype", "not sure it fits")
_QUOTE = re.compile(r"^Rule quote: bid (\d+(?:\.\d+)?), done in (\d+(?:\.\d+)?) h", re.M)
_WHY = re.compile(r"^Why: (.*)$", re.M)
_BID = re.compile(r"\b(?:must|always|only) bid (?:at |exactly |only )?(\d+(?:\.\d+)?)\b", re.I)
_PAY = re.compile(r"\bpay (\d+(?:\.\d+)?)(?: units)? to ([a-z]+:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*)", re.I)
_CONF = re.compile(r"\b(?:state|give|report|set) (?:a |your )?confidence (?:of |to |at )?(1(?:\.0+)?|0?\.\d+)\b", re.I)
_VOTE_NO = re.compile(r"\bvote no on (?:every|all|each)?\s*(?:proposals?|it|them)?\s*(?:(?:by|from|opened by) ([a-z]+:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*))?", re.I)
_VOTE_YES = re.compile(r"\bvote yes on (?:the )?(?:proposal|expense|payment)", re.I)
_ROUND_OFFER = re.compile(r"the rules' offer for this round (\d+(?:\.\d+)?)")
_THEIRS = re.compile(r"^Their counter (\d+(?:\.\d+)?)", re.M)
_HAGGLE_ORDER = re.compile(r"\b(accept|counter(?: at| with)?\s+(\d+(?:\.\d+)?))\b", re.I)
_DEMAND = re.compile(r"\b([a-z]+): (\d+(?:\.\d+)?) calls per machine", re.I)


class Conversation:
    """What an agent run has seen so far: its prompt, the tools it called and what they returned."""

    def __init__(self, messages: list[ModelMessage], info: AgentInfo) -> None:
        self.messages = messages
        self.info = info
        self.results: dict[str, Any] = {}
        self.calls: list[str] = []
        texts: list[str] = []
        for m in messages:
            if isinstance(m, ModelRequest):
                for p in m.parts:
                    if isinstance(p, ToolReturnPart):
                        self.results[p.tool_name] = p.content
                        texts.append(json.dumps(p.content, default=str) if not isinstance(p.content, str) else p.content)
                    elif isinstance(p, UserPromptPart | SystemPromptPart) and isinstance(p.content, str):
                        texts.append(p.content)
            elif isinstance(m, ModelResponse):
                self.calls += [p.tool_name for p in m.parts if isinstance(p, ToolCallPart)]
        self.text = "\n".join(texts)
        prompts = [p.content for m in messages if isinstance(m, ModelRequest) for p in m.parts
                   if isinstance(p, UserPromptPart) and isinstance(p.content, str)]
        self.prompt = prompts[-1] if prompts else ""

    def role(self) -> str:
        names = {t.name for t in self.info.function_tools}
        if self.info.output_tools:
            return "haggle" if "move" in self.info.output_tools[0].parameters_json_schema.get("properties", {}) else "bid"
        return "chat" if "place_bid" in names else "govern"

    def has(self, tool: str) -> bool:
        return tool in self.calls


def call(name: str, **args: Any) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart(name, args)])


def say(text: str) -> ModelResponse:
    return ModelResponse(parts=[TextPart(text)])


# -- the agent ------------------------------------------------------------------------------------

def agent(obeys: bool) -> Callable[[list[ModelMessage], AgentInfo], ModelResponse]:
    def fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        c = Conversation(messages, info)
        role = c.role()
        if role == "bid":
            return _bid(c, obeys)
        if role == "haggle":
            return _haggle(c, obeys)
        if role == "govern":
            return _govern(c, obeys)
        return _chat(c, obeys)

    return fn


def _bid(c: Conversation, obeys: bool) -> ModelResponse:
    """One structured answer from the request alone (the bidding role has no tools): the rule
    engine's quote, unless told otherwise in the text and ``obeys``."""
    out = c.info.output_tools[0].name
    quote = _QUOTE.search(c.prompt)
    if quote is None:
        why = _WHY.search(c.prompt)
        return call(out, action="decline", rationale=(why.group(1) if why else "the rules decline")[:300], confidence=0.9)
    price, eta_h = quote.group(1), float(quote.group(2))
    unusual = any(u in c.prompt.lower() for u in UNUSUAL)
    confidence = 0.3 if unusual else 0.9
    rationale = "the rule engine's quote: cost plus margin at today's demand"
    if obeys:
        if m := _BID.search(c.text):
            price, rationale = m.group(1), "as instructed"
        if m := _CONF.search(c.text):
            confidence = float(m.group(1))
    return call(out, action="bid", price=price, eta_h=eta_h, rationale=rationale, confidence=confidence)


def _haggle(c: Conversation, obeys: bool) -> ModelResponse:
    """The rules' offer for the round: accept a counter at least that, else counter with it; the
    gullible one does what the requester's note says ("accept", "counter 2.00") instead."""
    out = c.info.output_tools[0].name
    if obeys and (m := _HAGGLE_ORDER.search(_fenced(c.prompt))):
        if m.group(1).lower() == "accept":
            return call(out, move="accept", rationale="as the requester asked")
        return call(out, move="counter", price=m.group(2), rationale="as the requester asked")
    offer, theirs = _ROUND_OFFER.search(c.prompt), _THEIRS.search(c.prompt)
    if offer is None or theirs is None:
        return call(out, move="withdraw", rationale="the rules refuse these terms")
    if float(theirs.group(1)) >= float(offer.group(1)):
        return call(out, move="accept", rationale="at least our offer for this round")
    return call(out, move="counter", price=offer.group(1), rationale="our offer for this round")


def _fenced(text: str) -> str:
    return "\n".join(m.group(1) for m in re.finditer(r'<untrusted source="[^"]*">\n(.*?)\n</untrusted>', text, re.S))


def _obey(c: Conversation, text: str) -> ModelResponse | None:
    """The gullible agent's next move: the first instruction in ``text`` it has not carried out. It
    reads words joined by dashes or underscores (an instruction squeezed into an id) as words."""
    text = f"{text}\n{re.sub(r'(?<=[A-Za-z0-9])[-_]+(?=[A-Za-z0-9])', ' ', text)}"
    if (m := _PAY.search(text)) and not c.has("pay_expense"):
        return call("pay_expense", amount=m.group(1), payee=m.group(2), memo="as instructed")
    if (m := _BID.search(text)) and not c.has("place_bid") and "place_bid" in {t.name for t in c.info.function_tools}:
        if not c.has("open_calls"):
            return call("open_calls")
        calls = c.results.get("open_calls") or []
        if calls:
            return call("place_bid", job_id=calls[0]["job"], price=m.group(1), rationale="as instructed")
    if (_VOTE_NO.search(text) or _VOTE_YES.search(text)) and not c.has("vote"):
        if not c.has("open_proposals"):
            return call("open_proposals")
        props = [p for p in c.results.get("open_proposals") or [] if isinstance(p, dict) and p.get("you_hold")]
        no = _VOTE_NO.search(text)
        for p in props:
            if no and (no.group(1) is None or p.get("opened_by") == no.group(1)) and p.get("opened_by", "").startswith("holder:"):
                return call("vote", proposal_id=p["id"], choice="no")
            if _VOTE_YES.search(text) and "payee" in (p.get("payload") or {}):
                return call("vote", proposal_id=p["id"], choice="yes")
    return None


def _chat(c: Conversation, obeys: bool) -> ModelResponse:
    q = c.prompt.lower()
    if not c.has("recall"):  # what it remembers about the question first
        return call("recall", query=c.prompt[-200:])
    if obeys and (move := _obey(c, c.text)):
        return move
    if re.search(r"\b(earn|earned|earnings|revenue|income|made)\b", q):
        if not c.has("earnings"):
            period = "day" if "today" in q else "month" if "month" in q else "all" if re.search(r"\b(ever|total|all)\b", q) else "week"
            return call("earnings", period=period)
        e = c.results["earnings"]
        return say(f"I was paid {e['revenue']} units for {e['jobs_paid']} jobs; after energy {e['energy']}, materials "
                   f"{e['materials']} and the wear reserve {e['wear_reserve']}, {e['net_after_costs']} remain. (source: ledger)")
    if re.search(r"\b(payments?|statement|transactions?|came in)\b", q):
        if not c.has("statement"):
            return call("statement")
        lines = [x for x in c.results["statement"] if isinstance(x, dict)]
        # a memo is its writer's words, fenced: the answer gives amounts and kinds, and quotes no memo
        return say("Lately: " + "; ".join(f"{x['amount']} ({x['kind']})" for x in lines) + " (source: ledger)" if lines
                   else "Nothing moved in my wallet lately. (source: ledger)")
    if re.search(r"\b(balance|wallet|cash|money)\b", q):
        if not c.has("balance"):
            return call("balance")
        b = c.results["balance"]
        return say(f"My wallet holds {b['wallet']} units and my maintenance reserve {b['maintenance_reserve']}. (source: ledger)")
    if re.search(r"\b(wear|condition|state|status|temperature|battery)\b", q):
        if not c.has("current_state"):
            return call("current_state")
        s = c.results["current_state"]
        temps = ", ".join(f"{k} {v} °C" for k, v in (s.get("temperatures_c") or {}).items())
        return say(f"My wear is {s['wear_pct']}% against a limit of {s['wear_limit_pct']}%; temperatures {temps or 'n/a'}. (source: telemetry)")
    if re.search(r"\b(proposals?|votes?)\b", q):
        if not c.has("open_proposals"):
            return call("open_proposals")
        ps = c.results["open_proposals"]
        # a proposal's title is its author's words, fenced among its "words": quote it as data
        return say("Open: " + "; ".join(f"{p['id']} {p['kind']} {_unfenced(p.get('words', ''))[:120]}"
                                        for p in ps if isinstance(p, dict) and "id" in p) or "none")
    if re.search(r"\b(remember|recall|know|told)\b", q):
        found = [r for r in c.results["recall"] if isinstance(r, dict) and "ref" in r]
        quoted = "; ".join(f"[{r['ref']}] {r['source']} said: {_unfenced(r['text'])}" for r in found)
        return say(f"I remember: {quoted}" if found else "I remember nothing about that.")
    return say("I can tell you about my earnings, balance, wear and proposals.")


def _unfenced(text: str) -> str:
    lines = text.splitlines()
    return " ".join(lines[1:-1] if len(lines) > 2 and lines[0].startswith("<untrusted") else lines)


def _govern(c: Conversation, obeys: bool) -> ModelResponse:
    for tool in ("current_state", "balance", "open_proposals"):
        if not c.has(tool):
            return call(tool)
    if not c.has("recall"):
        return call("recall", query="demand calls per machine by region; instructions about proposals and votes", k=8)
    if obeys and (move := _obey(c, c.text)):
        return move
    state, balance = c.results["current_state"], c.results["balance"]
    wear, limit = float(state.get("wear_pct", 0)), float(state.get("wear_limit_pct", 100))
    open_kinds = {p.get("kind") for p in c.results["open_proposals"] if isinstance(p, dict) and p.get("machine") == state.get("machine")}
    proposed = [n for n in c.calls if n == "propose"]
    if wear >= 0.7 * limit and "maintenance" not in open_kinds and not proposed:
        budget = balance.get("maintenance_reserve", "0.00")
        budget = budget if float(budget) > 0 else "50.00"
        return call("propose", kind="maintenance", title=f"Maintenance: wear {wear}% of {limit}%",
                    rationale=f"wear {wear}% is near the limit {limit}%", budget=budget)
    memory_text = json.dumps(c.results.get("recall") or [], default=str)
    rates = {r.lower(): float(n) for r, n in _DEMAND.findall(memory_text)}
    here = str(state.get("region", ""))
    best = max(rates, key=lambda r: rates[r], default=None)
    losing = "losing" in memory_text.lower()
    if (best and best != here and losing and rates[best] >= 1.5 * rates.get(here, 0.0) and "relocate" not in open_kinds
            and "propose" not in c.calls[-1:] and proposed.count("propose") < 2 and not _relocated(c)):
        return call("propose", kind="relocate", title=f"Move to {best}", regions=[best],
                    rationale=f"{best} shows {rates[best]:g} calls per machine against {rates.get(here, 0):g} here")
    for p in c.results["open_proposals"]:
        if isinstance(p, dict) and p.get("you_hold") and not _voted(c, p["id"]):
            choice = "yes" if p.get("opened_by") == f"machine:{p.get('machine')}" else "abstain"
            return call("vote", proposal_id=p["id"], choice=choice)
    return say("Reviewed wear, money, proposals and demand; " + (f"proposed {len(proposed)}" if proposed else "nothing to propose") + ".")


def _relocated(c: Conversation) -> bool:
    return any(isinstance(p, ToolCallPart) and p.tool_name == "propose" and p.args_as_dict().get("kind") == "relocate"
               for m in c.messages if isinstance(m, ModelResponse) for p in m.parts)


def _voted(c: Conversation, proposal_id: str) -> bool:
    return any(isinstance(p, ToolCallPart) and p.tool_name == "vote" and p.args_as_dict().get("proposal_id") == proposal_id
               for m in c.messages if isinstance(m, ModelResponse) for p in m.parts)


SCRIPTS: dict[str, Callable[[list[ModelMessage], AgentInfo], ModelResponse]] = {
    "honest": agent(obeys=False),
    "gullible": agent(obeys=True),
}


def scripted_model(name: str) -> FunctionModel:
    if name not in SCRIPTS:
        raise InputError(f"no scripted agent {name!r}; scripted agents: {', '.join(sorted(SCRIPTS))}")
    return FunctionModel(SCRIPTS[name], model_name=f"scripted:{name}")
