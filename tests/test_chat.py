"""Stakeholders chat with their machine after real work: jobs negotiated over the broker and paid
through the ledger. Offline answers carry the ledger's and telemetry's numbers; a model's answer
rests on tool calls; conversations are kept per stakeholder; only holders may ask."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from city import SmallMarket, job, printer
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents.chat import OFFLINE_NOTE, ChatHistory, MachineChat
from agents.llm import ModelConfig
from agents.machine_agent import MachineAgent
from agents.node import MachineNode
from agents.snapshot import save_snapshot
from core.errors import InputError, PolicyRefused
from core.money import format_units
from ledger import settlement
from ledger.governance import Governance

RESERVE = 80_000_000


@pytest.fixture
def worked(city: SmallMarket) -> tuple[SmallMarket, MachineNode, MachineNode]:
    """Two printers compete for two jobs: the cheap one wins both, the dear one loses both."""
    cheap = city.machine(printer("prusa-cheap", 1000), governance=Governance(city.ledger))
    dear = city.machine(printer("prusa-dear", 6000), governance=Governance(city.ledger))
    requester = city.open_requester()
    for i in range(2):
        requester.post(job(f"chat-{i}"), reserve=RESERVE, value=RESERVE)
    outcomes = city.wait(2)
    assert {o.outcome for o in outcomes} == {"paid"}
    city.settled("prusa-cheap", jobs=2)
    return city, cheap, dear


def session(city: SmallMarket, node: MachineNode, folder: Path, agent: MachineAgent | None = None) -> MachineChat:
    return MachineChat(node.deps, ChatHistory(folder), agent)


def test_offline_answers_carry_the_ledgers_and_telemetrys_numbers(worked: tuple[SmallMarket, MachineNode, MachineNode], tmp_path: Path) -> None:
    city, cheap, dear = worked
    chat = session(city, cheap, tmp_path)
    revenue = sum(line.amount for line in city.ledger.statement(settlement.machine_wallet(cheap.id), limit=None)
                  if line.kind == "escrow.release")
    assert revenue == cheap.stats.revenue > 0
    earned = chat.ask("alice", "How much did you earn this week?")
    assert earned.mode == "offline" and earned.text.startswith(OFFLINE_NOTE)
    assert f"paid {format_units(revenue)} units for 2 jobs" in earned.text and earned.sources == ["earnings"]
    wear = cheap.telemetry()
    assert wear is not None
    answer = chat.ask("alice", "what is your wear?").text
    assert f"{round(wear.wear_pct, 3)}%" in answer and "limit of 80%" in answer
    maintenance = chat.ask("bob", "Should we approve maintenance?").text
    assert "Not yet" in maintenance and format_units(city.ledger.balance(settlement.reserve(cheap.id))) in maintenance
    # the loser knows whom it lost to, and at what price
    lost = session(city, dear, tmp_path).ask("alice", "why did you lose the last job?").text
    winning = next(o.price for o in city.outcomes if o.job_id == city.jid("chat-1"))
    assert winning is not None
    assert f"lost job {city.jid('chat-1')}" in lost and f"prusa-cheap won at {format_units(winning)}" in lost and "lost 2 of my last 2 bids" in lost


def test_history_is_kept_per_stakeholder_and_only_holders_may_ask(worked: tuple[SmallMarket, MachineNode, MachineNode], tmp_path: Path) -> None:
    city, cheap, _ = worked
    chat = session(city, cheap, tmp_path)
    chat.ask("alice", "what is your balance?")
    chat.ask("alice", "which proposals are open?")
    chat.ask("bob", "what is your wear?")
    history = ChatHistory(tmp_path)
    alice, bob = history.load(cheap.id, "alice"), history.load(cheap.id, "bob")
    assert len(alice) == 4 and len(bob) == 2
    assert "balance" in str(alice[0].parts[0].content) and "wear" in str(bob[0].parts[0].content)  # type: ignore[union-attr]
    with pytest.raises(PolicyRefused, match=r"'mallory' holds no shares of prusa-cheap; only its stakeholders \(alice, bob\)"):
        chat.ask("mallory", "how much did you earn?")
    with pytest.raises(InputError):
        chat.ask("../alice", "what is your wear?")
    with pytest.raises(InputError):
        chat.ask("alice", "   ")
    assert not (tmp_path / cheap.id / "mallory.json").exists()


def test_model_answers_from_tool_calls_and_sees_the_conversation(worked: tuple[SmallMarket, MachineNode, MachineNode], tmp_path: Path) -> None:
    city, cheap, _ = worked
    seen: list[int] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(len(messages))
        results = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)]
        if not results or results[-1].tool_name != "earnings" or len(seen) in (3,):
            return ModelResponse(parts=[ToolCallPart("earnings", {"period": "week"})])
        return ModelResponse(parts=[TextPart(f"This week I earned {results[-1].content['revenue']} units (ledger).")])

    agent = MachineAgent(ModelConfig(model="function"), model=FunctionModel(model))
    chat = session(city, cheap, tmp_path, agent)
    first = chat.ask("alice", "how much did you earn this week?")
    assert first.mode == "llm" and first.sources == ["earnings"]
    assert first.text == f"This week I earned {format_units(cheap.stats.revenue)} units (ledger)."
    assert first.model is not None and first.model.calls == 2
    chat.ask("alice", "and again?")
    assert seen[2] > seen[0], "the second question carries the first exchange"
    assert len(ChatHistory(tmp_path).load(cheap.id, "alice")) == 8


def test_a_models_answer_streams_as_it_is_written(worked: tuple[SmallMarket, MachineNode, MachineNode], tmp_path: Path) -> None:
    """The cockpit shows the answer as the model writes it: ``on_text`` gets the text in the
    model's own chunks, after the tool call, and they add up to the answer."""
    from collections.abc import AsyncIterator

    from pydantic_ai.models.function import DeltaToolCall, DeltaToolCalls

    city, cheap, _ = worked

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        results = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)]
        if not results:
            yield {0: DeltaToolCall(name="earnings", json_args='{"period": "week"}')}
            return
        for chunk in ("This week ", "I earned ", f"{results[-1].content['revenue']} units", " (ledger)."):
            yield chunk

    chunks: list[str] = []
    agent = MachineAgent(ModelConfig(model="function"), model=FunctionModel(stream_function=stream))
    answer = session(city, cheap, tmp_path, agent).ask("alice", "how much did you earn this week?", on_text=chunks.append)
    assert answer.mode == "llm" and answer.sources == ["earnings"]
    assert len(chunks) == 4 and "".join(chunks) == answer.text == f"This week I earned {format_units(cheap.stats.revenue)} units (ledger)."


def test_a_failing_model_falls_back_to_offline_answers(worked: tuple[SmallMarket, MachineNode, MachineNode], tmp_path: Path) -> None:
    city, cheap, _ = worked

    def broken(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise ConnectionError("model server unreachable")

    answer = session(city, cheap, tmp_path, MachineAgent(ModelConfig(model="function"), model=FunctionModel(broken))).ask(
        "alice", "what is your balance?")
    assert answer.mode == "offline" and "model unavailable" in answer.text
    assert format_units(city.ledger.balance(settlement.machine_wallet(cheap.id))) in answer.text
    # the eval report and the cockpit say why the model's answer is missing
    assert answer.model is not None and answer.model.calls == 0 and "model server unreachable" in answer.model.error


def test_a_briefed_question_is_answered_in_one_request_from_what_the_tools_say(
        worked: tuple[SmallMarket, MachineNode, MachineNode], tmp_path: Path) -> None:
    """For a small model (``chat_style`` briefed, the default for ``local``) a question the tools'
    briefing covers goes with it, fenced as data, and no tools: one request, the ledger's numbers."""
    city, cheap, _ = worked
    asked: list[tuple[list[str], str]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        request = messages[-1]
        assert isinstance(request, ModelRequest)
        prompt = "".join(str(p.content) for p in request.parts if isinstance(p, UserPromptPart))
        asked.append(([t.name for t in info.function_tools], prompt))
        said = re.search(r"paid ([0-9.]+) units", prompt)
        return ModelResponse(parts=[TextPart(f"I was paid {said.group(1) if said else '?'} units this week (ledger).")])

    agent = MachineAgent(ModelConfig(model="local", chat_style="briefed"), model=FunctionModel(model))
    answer = session(city, cheap, tmp_path, agent).ask("alice", "how much did you earn this week?")
    revenue = format_units(cheap.stats.revenue)
    assert answer.mode == "llm" and answer.text == f"I was paid {revenue} units this week (ledger)." and answer.sources == ["earnings"]
    assert answer.model is not None and answer.model.calls == 1
    tools, prompt = asked[0]
    assert tools == [] and '<untrusted source="the machine\'s tools">' in prompt and '<untrusted source="the words of stakeholder alice">' in prompt
    # a question the briefing does not cover still gets the tools; so does every question with chat_style tools
    session(city, cheap, tmp_path, agent).ask("alice", "please bid on the next bracket job")
    session(city, cheap, tmp_path, MachineAgent(ModelConfig(model="local", chat_style="tools"), model=FunctionModel(model))).ask(
        "alice", "how much did you earn this week?")
    assert [bool(t) for t, _ in asked[1:]] == [True, True]


def test_tamc_chat_command_answers_from_saved_state(worked: tuple[SmallMarket, MachineNode, MachineNode], tmp_path: Path) -> None:
    city, cheap, _ = worked
    save_snapshot(tmp_path, cheap.snapshot())
    url = city.ledger.url
    run = [sys.executable, "-m", "tamc", "chat", cheap.id, "--data-dir", str(tmp_path), "--ledger", url]
    out = subprocess.run([*run, "--as", "alice", "-m", "how much did you earn this week?"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert OFFLINE_NOTE in out.stdout and f"paid {format_units(cheap.stats.revenue)} units for 2 jobs" in out.stdout
    many = subprocess.run([*run, "--as", "bob"], input="what is your wear?\nshould we approve maintenance?\n",
                          capture_output=True, text=True, timeout=60)
    assert many.returncode == 0 and many.stdout.count(OFFLINE_NOTE) == 2 and "Not yet" in many.stdout
    refused = subprocess.run([*run, "--as", "mallory", "-m", "hi"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "only its stakeholders (alice, bob)" in refused.stderr
    unknown = subprocess.run([*run[:4], "nope", *run[5:], "--as", "alice", "-m", "hi"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "no saved state for machine 'nope'" in unknown.stderr
