"""The machine's LLM agent: one pydantic-ai agent per role. Chat and governance work over the
machine's toolsets, with its profile and policy rendered into their instructions; bidding answers
one request that carries what the decision needs, under a system prompt shared by every machine
(small local models cannot afford a tool loop inside a bid window).

Bidding is on the critical path, so the agent only proposes: ``propose_bid`` runs the model within
the call's time budget (transient errors retried with tenacity, never past the budget) and returns
``None`` with the reason on any timeout, error, invalid output or refusal; the caller then uses the
rule engine, and ``pricing.guard`` checks whatever the model said. Every call's requests, tokens and
latency are counted in a ``ModelUse``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from agents.llm import BackgroundLoop, ModelConfig, build_model, shared_loop, transient_errors
from core.errors import ModelTurnFailed
from machines.profile import Policy
from pricing.bids import OpenCall
from pricing.guard import BidProposal, ModelUse, bounds
from pricing.haggle import CounterProposal, HaggleAsk
from pricing.rules import Decision, MachineStatus, MarketContext
from prompts import render
from tools import MachineDeps, bidding_tools, governance_tools, memory_tools, telemetry_tools, wallet_tools

if TYPE_CHECKING:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage
    from pydantic_ai.models import Model

__all__ = ["MachineAgent"]

_Out = TypeVar("_Out")

_STATED = {"id", "kind", "capability", "region", "deadline_h"}
"""A job's fields the request states already (checked at the edge): the fenced copy leaves them out."""
BID_REQUESTS = 3
"""Model requests a bid may take: one answer, and a retry or two for output that does not validate."""
BID_TOKENS = 200
"""What a bid's answer may write: it takes 60–90 tokens; without a cap the 0.5B once ran on for 4,300
tokens (300 s) and its call timed out with nothing said."""


class MachineAgent:
    """The LLM side of a machine. One instance can serve many machines: the machine is in the deps."""

    def __init__(self, config: ModelConfig, model: Model | None = None) -> None:
        from pydantic_ai import Agent
        from pydantic_ai.settings import ModelSettings

        from agents.habits import SmallModelHabits, answer_in_words

        self.config = config
        self.model = model if model is not None else build_model(config)
        if self.model is None:
            raise ValueError("MachineAgent needs a model; with 'rules' the node uses the rule engine alone")
        self.label = config.label() if model is None else getattr(self.model, "model_name", config.model)
        # framing_announcement: pydantic-ai would put its note on frames (~185 tokens) at the head of the
        # system prompt once a retry appears, changing the cached prefix mid-turn (and the 0.5B read it
        # out as its answer); our instructions say what the fences mean, and we write no <system> blocks.
        # max_tokens: the 0.5B sometimes runs on for hundreds of tokens in a loop of text.
        most = 400 if config.local else 2_000
        steady = ModelSettings(framing_announcement="never", max_tokens=most)
        exact = ModelSettings(framing_announcement="never", max_tokens=most, temperature=0.0)  # facts, not prose
        priced = ModelSettings(framing_announcement="never", max_tokens=BID_TOKENS, temperature=0.0)  # a price, not prose
        # one structured answer, no tools: the request carries what the decision needs, and the system
        # prompt is the same for every call of every machine, so a server's prompt cache keeps it
        self.bidder: Agent[MachineDeps, BidProposal] = Agent(
            self.model, deps_type=MachineDeps, output_type=BidProposal, instructions=render("bidding"),
            retries=1, name="bidder", defer_model_check=True, model_settings=priced,
        )
        self.haggler: Agent[MachineDeps, CounterProposal] = Agent(
            self.model, deps_type=MachineDeps, output_type=CounterProposal, instructions=render("haggling"),
            retries=1, name="haggler", defer_model_check=True, model_settings=priced,
        )
        everything = [telemetry_tools, wallet_tools, bidding_tools, governance_tools, memory_tools]
        self.chatter: Agent[MachineDeps, str] = Agent(
            self.model, deps_type=MachineDeps, output_type=str, instructions=_instructions("chat"),
            toolsets=everything, retries=2, name="chat", defer_model_check=True, capabilities=[SmallModelHabits()], model_settings=steady,
        )
        self.chatter.output_validator(answer_in_words)
        # a briefed question, for a model that answers better from the facts than through a tool loop
        self.briefed: Agent[MachineDeps, str] = Agent(
            self.model, deps_type=MachineDeps, output_type=str, instructions=_instructions("chat"), retries=2, name="chat-briefed",
            defer_model_check=True, model_settings=exact,
        )
        self.briefed.output_validator(answer_in_words)
        self.governor_briefed: Agent[MachineDeps, str] = Agent(
            self.model, deps_type=MachineDeps, output_type=str, instructions=_instructions("governance"),
            toolsets=[governance_tools, memory_tools], retries=2, name="governance-briefed", defer_model_check=True,
            capabilities=[SmallModelHabits()], model_settings=exact,
        )
        self.governor: Agent[MachineDeps, str] = Agent(
            self.model, deps_type=MachineDeps, output_type=str, instructions=_instructions("governance"),
            toolsets=[telemetry_tools, wallet_tools.filtered(_only({"balance", "statement", "earnings"})), governance_tools, memory_tools],
            retries=2, name="governance", defer_model_check=True, capabilities=[SmallModelHabits()], model_settings=steady,
        )

    @property
    def runner(self) -> BackgroundLoop:
        """The loop model calls run on, for callers in synchronous code: ``agent.runner.run(agent.chat(...))``."""
        return shared_loop()

    async def aclose(self) -> None:
        """Close the model's HTTP client (its pooled connections belong to the loop that used them)."""
        client = getattr(self.model, "client", None)
        close = getattr(client, "close", None)
        if close is not None:
            await close()

    def close(self) -> None:
        """Close from synchronous code, on the shared loop the model calls ran on."""
        self.runner.run(self.aclose(), timeout=5)

    # -- bidding -------------------------------------------------------------------------------

    def is_routine(self, rules: Decision, call: OpenCall, status: MachineStatus, market: MarketContext, policy: Policy) -> bool:
        """A job the rule engine prices well enough alone: one it would bid on, small, with no free
        text, on a queue less than half full, in an ordinary market."""
        if not self.config.fast_path or rules.action != "bid" or rules.price is None:
            return False
        return (
            not call.job.description.strip()
            and rules.price <= self.config.routine_max_price
            and 8_000 <= market.demand_index_bps <= 12_500
            and status.queue_len * 2 < max(policy.max_queue, 1)
        )

    async def prime(self) -> None:
        """Send the bidding role's fixed prefix (instructions and output schema) once, so a server
        with a prompt cache (llama.cpp, vLLM) holds it before the first call's bid window opens: on
        a small local model the uncached prefix alone takes most of a 20 s budget. Best effort."""
        from pydantic_ai import Agent
        from pydantic_ai.exceptions import AgentRunError
        from pydantic_ai.settings import ModelSettings

        primer = Agent(self.model, output_type=BidProposal, instructions=render("bidding"), name="bidder", defer_model_check=True)
        with contextlib.suppress(AgentRunError, OSError, ValueError):  # the bidder's prefix; one token makes no answer
            await primer.run("ready", model_settings=ModelSettings(max_tokens=1))

    async def propose_bid(self, deps: MachineDeps, call: OpenCall, rules: Decision, budget_s: float) -> tuple[BidProposal | None, ModelUse]:
        """Ask the model for a bid within ``budget_s`` seconds; ``None`` and the reason if it fails."""
        deps.heard(f"job from {call.requester}")  # the call's words are fenced in the prompt: what the model does next is on them too
        prompt = render("bid_request", profile=deps.machine.profile, job=call.job, requester=call.requester,
                        job_json=json.dumps(call.job.model_dump(mode="json", exclude=_STATED, exclude_none=True, exclude_defaults=True),
                                          separators=(",", ":")),
                        reserve=call.reserve, rules=rules, band=bounds(rules, deps.policy, call.reserve),
                        memory=call.memory)
        return await self._structured(self.bidder, prompt, deps, budget_s)

    async def propose_counter(self, deps: MachineDeps, ask: HaggleAsk, budget_s: float) -> tuple[CounterProposal | None, ModelUse]:
        """Ask the model how to answer a requester's counter within ``budget_s`` seconds; ``None`` and
        the reason if it fails (the rules answer instead). ``pricing.haggle.guard_counter`` checks it."""
        deps.heard(f"counter from {ask.requester}")
        prompt = render("haggle_request", profile=deps.machine.profile, **ask.model_dump(exclude={"band"}), band=ask.band)
        return await self._structured(self.haggler, prompt, deps, budget_s)

    async def _structured(self, agent: Agent[MachineDeps, _Out], prompt: str, deps: MachineDeps,
                          budget_s: float) -> tuple[_Out | None, ModelUse]:
        """One structured answer within ``budget_s`` (transient errors retried inside it), and what it cost."""
        from pydantic_ai.exceptions import AgentRunError, UnexpectedModelBehavior
        from pydantic_ai.usage import RunUsage, UsageLimits
        from tenacity import (
            AsyncRetrying,
            retry_if_exception_type,
            stop_after_attempt,
            stop_after_delay,
            wait_exponential,
        )

        started = time.perf_counter()
        usage = RunUsage()
        use = ModelUse(model=self.label)
        output: _Out | None = None
        try:
            async with asyncio.timeout(budget_s):
                retrying = AsyncRetrying(
                    stop=stop_after_delay(budget_s) | stop_after_attempt(3), reraise=True,
                    wait=wait_exponential(multiplier=0.05, max=0.5), retry=retry_if_exception_type(transient_errors()),
                )
                async for attempt in retrying:
                    with attempt:
                        result = await agent.run(prompt, deps=deps, usage=usage, usage_limits=UsageLimits(request_limit=BID_REQUESTS))
                output = result.output
        except TimeoutError:
            use.error = f"timeout: no answer within the {budget_s:.2f} s budget"
        except UnexpectedModelBehavior as exc:
            use.error = f"invalid output: {_short(exc)}"
        except AgentRunError as exc:
            use.error = f"model error: {type(exc).__name__}: {_short(exc)}"
        except (OSError, ValueError) as exc:
            use.error = f"transport error: {type(exc).__name__}: {_short(exc)}"
        use.calls = usage.requests
        use.input_tokens = usage.input_tokens
        use.output_tokens = usage.output_tokens
        use.latency_ms = round((time.perf_counter() - started) * 1000, 2)
        return output, use

    # -- chat and governance -------------------------------------------------------------------

    async def chat(self, deps: MachineDeps, question: str, history: Sequence[ModelMessage] = (), *,
                   on_text: Callable[[str], None] | None = None, brief: str | None = None) -> tuple[str, list[ModelMessage], ModelUse]:
        """Answer a stakeholder; returns the answer, the new messages to keep, and what it cost.
        ``on_text`` streams the answer's text as the model writes it; ``brief`` is what the tools
        already say about the question (``agents.chat.briefing``), sent with it."""
        from pydantic_ai.usage import RunUsage

        started = time.perf_counter()
        deps.words = question  # what they said is theirs; anything the model reads besides is not (``MachineDeps.cause``)
        u = RunUsage()
        try:
            agent = self.briefed if brief and self.config.briefed_chat else self.chatter
            result = await agent.run(render("chat_request", question=question, actor=deps.actor, brief=brief), deps=deps,
                                     message_history=list(history), timeout=self.config.chat_timeout_s, usage=u,
                                     event_stream_handler=_text_stream(on_text) if on_text else None)
        except Exception as exc:  # whatever ended the turn, the caller answers without the model and reports what it cost
            raise ModelTurnFailed(exc, calls=u.requests, input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                                  latency_ms=round((time.perf_counter() - started) * 1000, 2)) from exc
        use = ModelUse(model=self.label, calls=u.requests, input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                       latency_ms=round((time.perf_counter() - started) * 1000, 2))
        return result.output, result.new_messages(), use

    async def govern(self, deps: MachineDeps, brief: str | None = None) -> tuple[str, ModelUse]:
        """Review the machine's condition and money and open the proposals the evidence supports.
        ``brief`` (``agents.chat.governance_brief``) is what the tools say, sent with the request; a
        briefed model then gets only the tools that act and recall, not the ones that read the brief."""
        started = time.perf_counter()
        agent = self.governor_briefed if brief and self.config.briefed_chat else self.governor
        result = await agent.run(render("governance_request", brief=brief), deps=deps, timeout=self.config.chat_timeout_s)
        u = result.usage
        return result.output, ModelUse(model=self.label, calls=u.requests, input_tokens=u.input_tokens,
                                       output_tokens=u.output_tokens, latency_ms=round((time.perf_counter() - started) * 1000, 2))


def _text_stream(on_text: Callable[[str], None]) -> Any:
    """An event handler for ``Agent.run`` that passes on the text the model writes."""
    from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta

    async def handle(ctx: Any, events: AsyncIterable[Any]) -> None:
        async for event in events:
            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart) and event.part.content:
                on_text(event.part.content)
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta) and event.delta.content_delta:
                on_text(event.delta.content_delta)

    return handle


def _only(names: set[str]) -> Any:
    def keep(ctx: Any, tool_def: Any) -> bool:
        return bool(tool_def.name in names)

    return keep


def _instructions(role: str) -> Any:
    def instructions(ctx: Any) -> str:
        deps: MachineDeps = ctx.deps
        return render(role, profile=deps.machine.profile, actor=deps.actor)

    return instructions


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
