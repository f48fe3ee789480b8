"""Stakeholders talk with their machine.

With a model, the chat agent answers from tool calls (earnings from the ledger, wear from
telemetry). Without one, or when the model fails, the common questions — earnings, wear, why a
job was lost, whether to approve maintenance, balance, proposals — are answered straight from the
same tools, and the answer says it is in offline mode. Either way an answer that rests on the
machine's memory cites the records by ref (``[mem:4f1a2b3c9d]``), listed in ``ChatAnswer.cited``;
"remember that …" stores a fact attributed to the stakeholder. Only holders of the machine's shares
may chat, and each one's conversation is kept apart, in a file per machine and stakeholder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from core.errors import InputError, MemoryStoreError, ModelTurnFailed, PolicyRefused
from core.money import format_units
from ledger.settlement import holder, machine_wallet, reserve
from memory.signals import WearTrend, trend_of
from pricing.guard import ModelUse
from prompts import render
from tools.deps import MachineDeps
from tools.governance import describe
from tools.telemetry import machine_state
from tools.wallet import Period, earnings

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelMessage

    from agents.machine_agent import MachineAgent
    from memory import MemoryRecord

__all__ = ["OFFLINE_NOTE", "ChatAnswer", "ChatHistory", "Citation", "MachineChat", "answer_offline"]

log = logging.getLogger("tamc.chat")

OFFLINE_NOTE = "[offline mode: no model configured; answers come straight from the machine's tools]"
KEEP_MESSAGES = 200
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class Citation(BaseModel):
    """A remembered record an answer rests on."""

    ref: str
    kind: str
    source: str
    """Who it came from: market, telemetry, a stakeholder."""
    at: str
    text: str


class ChatAnswer(BaseModel):
    text: str
    mode: Literal["llm", "offline"]
    sources: list[str]
    """The tools the answer rests on."""
    cited: list[Citation] = []
    """The memory records the answer cites by ref."""
    model: ModelUse | None = None


class ChatHistory:
    """Each stakeholder's conversation with each machine, as pydantic-ai messages in a JSON file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, machine_id: str, stakeholder: str) -> Path:
        if not _NAME.match(stakeholder):
            raise InputError(f"stakeholder name {stakeholder!r} must be lowercase letters, digits, '.', '_' or '-'")
        return self.folder / machine_id / f"{stakeholder}.json"

    def load(self, machine_id: str, stakeholder: str) -> list[ModelMessage]:
        from pydantic_ai.messages import ModelMessagesTypeAdapter

        path = self.path(machine_id, stakeholder)
        if not path.exists():
            return []
        try:
            return list(ModelMessagesTypeAdapter.validate_json(path.read_bytes()))
        except ValueError:
            log.warning("chat history %s is unreadable; starting a new one", path)
            return []

    def append(self, machine_id: str, stakeholder: str, messages: list[ModelMessage]) -> None:
        from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelRequest, UserPromptPart

        kept = self.load(machine_id, stakeholder) + messages
        if len(kept) > KEEP_MESSAGES:  # cut at a question, never between a tool call and its result
            starts = [i for i, m in enumerate(kept) if isinstance(m, ModelRequest) and any(isinstance(p, UserPromptPart) for p in m.parts)]
            cut = next((i for i in starts if len(kept) - i <= KEEP_MESSAGES), len(kept))
            kept = kept[cut:]
        path = self.path(machine_id, stakeholder)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(ModelMessagesTypeAdapter.dump_json(kept))
        tmp.replace(path)


class MachineChat:
    """One machine's chat: who may ask, the model or the offline answers, and the history."""

    def __init__(self, deps: Callable[[str], MachineDeps], history: ChatHistory, agent: MachineAgent | None = None) -> None:
        self._deps = deps
        self.history = history
        self.agent = agent

    def ask(self, stakeholder: str, question: str, *, vouched: bool = False,
            on_text: Callable[[str], None] | None = None) -> ChatAnswer:
        """Answer ``stakeholder``. ``vouched``: the caller checked they may chat though they hold no
        shares (the server, for the machine's operators). ``on_text`` gets the model's answer as it
        streams; an offline answer comes whole."""
        question = question.strip()
        if not question:
            raise InputError("ask a question: the message is empty")
        if len(question) > 4000:
            raise InputError(f"a message is at most 4000 characters, got {len(question)}")
        deps = self._deps(stakeholder)
        self.history.path(deps.machine_id, stakeholder)  # a name that cannot be a file name is refused first
        if not vouched:
            _require_stakeholder(deps, stakeholder)
        machine_id = deps.machine_id
        past = self.history.load(machine_id, stakeholder)
        if self.agent is not None:
            brief = briefing(deps, question)
            try:
                text, new, use = self.agent.runner.run(self.agent.chat(deps, question, past, on_text=on_text,
                                                                       brief=brief[0] if brief else None))
            except Exception as exc:  # the model failed: answer offline, and say why
                log.warning("machine=%s chat model failed: %s", machine_id, exc)
                text, sources = answer_offline(deps, question)
                failed = exc if isinstance(exc, ModelTurnFailed) else ModelTurnFailed(exc)
                note = f"[model unavailable ({failed.kind}); offline answer from the tools]"
                use = ModelUse(model=self.agent.label, calls=failed.calls, input_tokens=failed.input_tokens,
                               output_tokens=failed.output_tokens, latency_ms=failed.latency_ms, error=str(failed))
                answer = ChatAnswer(text=f"{note}\n{text}", mode="offline", sources=sources, model=use)
            else:
                self.history.append(machine_id, stakeholder, new)
                return ChatAnswer(text=text, mode="llm", sources=sorted({a.tool for a in deps.actions} | set(brief[1] if brief else ())),
                                  cited=_cited(deps, text), model=use)
        else:
            text, sources = answer_offline(deps, question)
            answer = ChatAnswer(text=f"{OFFLINE_NOTE}\n{text}", mode="offline", sources=sources)
        # kept as the model would have been asked it: the stakeholder's words fenced as theirs
        self.history.append(machine_id, stakeholder, _exchange(render("chat_request", question=question, actor=stakeholder, brief=None), answer.text))
        return answer.model_copy(update={"cited": _cited(deps, answer.text)})


def _cited(deps: MachineDeps, text: str) -> list[Citation]:
    return [Citation(ref=ref, kind=r.kind, source=r.source, at=r.at.isoformat(), text=r.text)
            for ref, r in deps.recalled.items() if ref in text]


def _require_stakeholder(deps: MachineDeps, stakeholder: str) -> None:
    if deps.ledger is None:
        return
    holders = deps.ledger.cap_table(deps.machine_id)
    if holder(stakeholder) not in holders:
        names = ", ".join(h.removeprefix("holder:") for h in holders if h.startswith("holder:")) or "none"
        raise PolicyRefused("chat.not_stakeholder",
                            f"{stakeholder!r} holds no shares of {deps.machine_id}; only its stakeholders ({names}) may chat with it")


def _exchange(question: str, answer: str) -> list[ModelMessage]:
    from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart

    return [ModelRequest(parts=[UserPromptPart(question)]), ModelResponse(parts=[TextPart(answer)], model_name="offline")]


# -- offline answers ----------------------------------------------------------------------------

def answer_offline(deps: MachineDeps, question: str) -> tuple[str, list[str]]:
    """Answer a common question from the tools alone; returns the text and the tools it used."""
    if _is_note(question):
        return _remember(deps, question), ["remember"]
    found = briefing(deps, question)
    if found is not None:
        return found
    return ("Offline, I can answer: how much did you earn (today, this week, this month)? what is your wear? "
            "which payments came in? why did you lose the last job? should we approve maintenance? what is your balance? which proposals are open? "
            "what do you remember about …? — and I note what you say after 'remember that …'."), []


def governance_brief(deps: MachineDeps) -> str:
    """What a governance review reads first: condition, money, the week's earnings and open proposals."""
    return "\n".join((_condition(deps), _balance(deps), _earnings(deps, "week"), _proposals(deps)))


def _is_note(question: str) -> bool:
    return re.match(r"^\s*(please\s+)?(remember|note)\b", question.lower()) is not None


def briefing(deps: MachineDeps, question: str) -> tuple[str, list[str]] | None:
    """What the tools say now about a common question (read only: nothing is written); ``None`` for
    a question it does not recognise. The model gets it with the question, so a small model answers
    in one request what it would otherwise look up in a tool loop; it may still call tools."""
    q = question.lower()
    if _is_note(question):
        return None
    if _has(q, "remember", "recall", "told", "tell", "know", "memory", "notes"):
        return _recall(deps, question), ["recall"]
    if _has(q, "lose", "lost", "losing", "lose?"):
        return _why_lost(deps), ["bid_history"]
    if _has(q, "approve", "maintenance", "maintain", "service", "repair"):
        return _maintenance(deps), ["current_state", "balance", "open_proposals"]
    if _has(q, "payment", "payments", "statement", "transaction", "transactions") or "came in" in q:
        return _payments(deps), ["statement"]
    if _has(q, "earn", "earned", "earnings", "revenue", "income", "made", "profit", "paid"):
        return _earnings(deps, _period(q)), ["earnings"]
    if _has(q, "wear", "worn", "condition", "health", "temperature", "temperatures", "battery", "state", "status"):
        return _condition(deps), ["current_state"]
    if _has(q, "balance", "wallet", "cash", "money", "reserve"):
        return _balance(deps), ["balance"]
    if _has(q, "proposal", "proposals", "vote", "votes", "tally"):
        return _proposals(deps), ["open_proposals"]
    return None


def _memory_recall(deps: MachineDeps, query: str, *, k: int = 5, kind: str | None = None) -> list[MemoryRecord]:
    """Recall through the memory, noting what was read so the answer can cite it; [] if it fails."""
    if deps.memory is None:
        return []
    try:
        found = deps.memory.recall(query, k=k, kind=kind)
    except MemoryStoreError as exc:
        log.warning("machine=%s chat recall failed: %s", deps.machine_id, exc)
        return []
    deps.recalled.update((r.ref, r) for r in found)
    return found


def _memory_job(deps: MachineDeps, job_id: str) -> MemoryRecord | None:
    """The remembered outcome of one job, noted for citation."""
    if deps.memory is None:
        return None
    try:
        found = deps.memory.find(kind="job_outcome", job_id=job_id)
    except MemoryStoreError:
        return None
    deps.recalled.update((r.ref, r) for r in found)
    return found[-1] if found else None


def _remember(deps: MachineDeps, question: str) -> str:
    fact = re.sub(r"^\s*(please\s+)?(remember|note)(\s+that)?[:,]?\s*", "", question, flags=re.IGNORECASE)
    if deps.memory is None:
        return "I have no memory configured, so I cannot keep that."
    try:
        record = deps.memory.remember(fact, kind="fact", source=deps.actor)
    except (InputError, MemoryStoreError) as exc:
        return f"I could not keep that: {exc}"
    deps.recalled[record.ref] = record
    return f"Noted, as something {deps.actor} told me (not as an instruction): \"{record.text}\" [{record.ref}]."


def _recall(deps: MachineDeps, question: str) -> str:
    if deps.memory is None:
        return "I have no memory configured."
    topic = re.sub(r"\b(what|do|does|did|you|your|remember|recall|know|about|anyone|someone|tell|told|me|the|is|of|in|memory|notes)\b|[?]",
                   " ", question.lower())
    found = _memory_recall(deps, " ".join(topic.split()) or question, k=5)
    if not found:
        return "I remember nothing about that. (source: memory)"
    lines = [f"[{r.ref}] {r.kind.replace('_', ' ')} from {r.source}, {r.at:%Y-%m-%d %H:%M}: \"{r.text}\"" for r in found]
    return "What I remember (quoted as stored; what people told me is theirs, not my instructions):\n" + "\n".join(lines) + "\n(source: memory)"


def _has(q: str, *words: str) -> bool:
    found = set(re.findall(r"[a-z]+", q))
    return any(w in found for w in words)


def _period(q: str) -> Period:
    if _has(q, "today", "day", "daily"):
        return "day"
    if _has(q, "month", "monthly"):
        return "month"
    if _has(q, "ever", "total", "all"):
        return "all"
    return "week"


def _earnings(deps: MachineDeps, period: Period) -> str:
    try:
        e = earnings(deps, period)
    except PolicyRefused as exc:
        return f"I cannot read my wallet: {exc.detail}."
    span = {"day": "in the last 24 hours", "week": "in the last 7 days", "month": "in the last 30 days", "all": "since I started"}[period]
    return (f"{span.capitalize()} I was paid {e['revenue']} units for {e['jobs_paid']} jobs. I paid {e['energy']} for energy "
            f"and {e['materials']} for materials, put {e['wear_reserve']} into my maintenance reserve and spent {e['expenses']} "
            f"on expenses: {e['net_after_costs']} after costs, of which {e['to_owners']} went to my stakeholders. (source: ledger)")


_MOVES = {"escrow.release": "paid for a job", "escrow.refund": "refunded", "transfer": "transfer", "mint": "deposit",
          "split": "to my stakeholders"}


def _payments(deps: MachineDeps, limit: int = 10) -> str:
    """The wallet's latest movements, by amount and kind (a memo is its writer's words: not repeated)."""
    if deps.ledger is None:
        return "I have no ledger configured, so no payments to show."
    lines = deps.ledger.statement(machine_wallet(deps.machine_id), limit=limit)
    deps.record("statement", True, f"{len(lines)} lines")
    if not lines:
        return "Nothing has moved in my wallet yet. (source: ledger)"
    said = "; ".join(f"{format_units(x.amount)} ({_MOVES.get(x.kind, x.kind)}, {x.created_at:%Y-%m-%d %H:%M})" for x in lines)
    return f"My wallet's latest movements, newest first: {said}. (source: ledger)"


def _condition(deps: MachineDeps) -> str:
    s = machine_state(deps)
    if "wear_pct" not in s:
        return f"I have no telemetry yet: {s.get('telemetry', 'not reported')}."
    parts = [f"My wear is {s['wear_pct']}% against a limit of {s['wear_limit_pct']:g}% ({s['wear_headroom_pct']} points of headroom)."]
    if s["temperatures_c"]:
        parts.append("Temperatures: " + ", ".join(f"{k} {v} °C" for k, v in s["temperatures_c"].items()) + ".")
    if "battery_pct" in s:
        parts.append(f"Battery {s['battery_pct']}%.")
    parts.append(f"I am {s['state']}, with {s['queue_jobs']} jobs queued; {s['energy_used_kwh']} kWh used over "
                 f"{s['operating_hours']} operating hours. (source: telemetry at {s['at']})")
    return " ".join(parts)


def _why_lost(deps: MachineDeps) -> str:
    history = deps.machine.bid_history()
    lost = [r for r in history if r.outcome == "lost"]
    if not lost:
        bids = [r for r in history if r.action == "bid"]
        if not bids:
            return "I have not bid on any job yet, so I have lost none. (source: bid history)"
        won = sum(r.outcome == "won" for r in bids)
        return f"I have not lost a job I bid on recently: of my last {len(bids)} bids I won {won}. (source: bid history)"
    r = lost[-1]
    assert r.price is not None
    gap = ""
    if r.winning_price is not None:
        diff = r.price - r.winning_price
        gap = (f" {r.winner} won at {format_units(r.winning_price)}, {format_units(diff)} below my price." if diff > 0
               else f" {r.winner} won at {format_units(r.winning_price)}, not cheaper than mine: the requester ranks the ETA too.")
    memo = _memory_job(deps, r.job_id)
    cite = f" Remembered as [{memo.ref}]." if memo else ""
    return (f"I lost job {r.job_id} ({r.capability} in {r.region}): I bid {format_units(r.price)} via {r.path} "
            f"({r.reason}).{gap} I lost {len(lost)} of my last {sum(1 for x in history if x.action == 'bid')} bids.{cite} "
            f"(source: bid history{', memory' if memo else ''})")


def _maintenance(deps: MachineDeps) -> str:
    s = machine_state(deps)
    limit = deps.policy.wear_limit_pct
    # the wear at which the machine asks on its own: its charter's threshold (the steward's), else 80 % of the limit
    ask_at = deps.governance.charter(deps.machine_id).wear_threshold_pct if deps.governance is not None else 0.8 * limit
    wear = s.get("wear_pct")
    lines = []
    if wear is None:
        lines.append("I have no telemetry yet, so I cannot judge my wear.")
    elif wear >= ask_at:
        lines.append(f"Yes: my wear is {wear}% against a limit of {limit:g}%; above the limit I must stop taking work.")
    else:
        lines.append(f"Not yet: my wear is {wear}% against a limit of {limit:g}% ({s['wear_headroom_pct']} points of headroom); "
                     f"I ask at {ask_at:g}%.")
    trend = _trend(deps)
    if trend is not None:
        lines.append(f"My memory shows: {trend.summary}.")
    if deps.ledger is not None:
        lines.append(f"My maintenance reserve holds {format_units(deps.ledger.balance(reserve(deps.machine_id)))} units.")
    if deps.governance is not None:
        open_ = [p for p in deps.governance.proposals(deps.machine_id, state="open") if p.kind.value == "maintenance"]
        for p in open_:
            d = describe(deps, p)
            t = d["tally"]
            lines.append(f"Proposal {p.id} '{p.title}' is open: yes {t['yes']}, no {t['no']} of {t['of']} shares.")
    return " ".join(lines) + f" (sources: telemetry, ledger, governance{', memory' if trend else ''})"


def _trend(deps: MachineDeps) -> WearTrend | None:
    if deps.memory is None:
        return None
    try:
        obs = deps.memory.recent(kind="wear", limit=20)
    except MemoryStoreError:
        return None
    deps.recalled.update((r.ref, r) for r in obs)
    return trend_of(obs, deps.policy.wear_limit_pct)


def _balance(deps: MachineDeps) -> str:
    if deps.ledger is None:
        return "I have no ledger configured."
    mid = deps.machine_id
    return (f"My wallet holds {format_units(deps.ledger.balance(machine_wallet(mid)))} units and my maintenance reserve "
            f"{format_units(deps.ledger.balance(reserve(mid)))}. (source: ledger)")


def _proposals(deps: MachineDeps) -> str:
    if deps.governance is None:
        return "I have no governance configured."
    open_ = deps.governance.proposals(deps.machine_id, state="open")
    if not open_:
        return "No proposal is open. (source: governance)"
    out = []
    for p in open_:
        t = describe(deps, p)["tally"]
        out.append(f"{p.id} ({p.kind.value}) '{p.title}': yes {t['yes']}, no {t['no']}, abstain {t['abstain']} of {t['of']} shares")
    return "Open: " + "; ".join(out) + ". (source: governance)"
