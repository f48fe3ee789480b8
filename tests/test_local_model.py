"""The local model: pinned weights checked before use, clear errors naming the fix, and a real
model (the 0.5B, one thread) deciding bids through the same agent code, the openai client and the
guard. CI installs the weights (``make test`` runs ``make model``); elsewhere the real-model tests
skip when they are not installed."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic_ai import Agent, models
from pydantic_ai.usage import UsageLimits

from agents.habits import SmallModelHabits
from agents.llm import ModelConfig, build_model
from agents.local_model import WEIGHTS, LocalServer, models_folder, start_server, verified
from core.errors import ModelWeightsMismatch, ModelWeightsMissing
from evals.runner import run_evals


def test_a_missing_model_file_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(ModelWeightsMissing, match=re.escape("tamc model assemble --size 0.5b")):
        verified("0.5b", tmp_path)
    with pytest.raises(ModelWeightsMissing, match=re.escape("sizes are 0.5b, 1.5b")):
        verified("7b", tmp_path)


def test_a_file_that_is_not_the_pinned_one_is_refused_and_rebuilt_on_request(tmp_path: Path) -> None:
    (tmp_path / WEIGHTS["0.5b"].file).write_bytes(b"GGUF" + b"\0" * 1024)
    with pytest.raises(ModelWeightsMismatch, match=re.escape("run tamc model assemble --size 0.5b to rebuild it")):
        verified("0.5b", tmp_path)
    out = subprocess.run([sys.executable, "-m", "tamc", "model", "serve", "--dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "ModelWeightsMismatch" in out.stderr and "tamc model assemble" in out.stderr


def _installed() -> bool:
    try:
        verified("0.5b")
    except ModelWeightsMissing:
        if os.environ.get("CI"):
            raise  # CI must run the real model: make test installs it (make model)
        return False
    return True


@pytest.fixture(scope="module")
def local() -> Iterator[LocalServer]:
    if not _installed():
        pytest.skip(f"the 0.5b model is not assembled in {models_folder()} (make model)")
    server = start_server("0.5b", threads=1)
    try:
        with models.override_allow_model_requests(True):  # loopback only: the model runs on this machine
            yield server
    finally:
        server.close()


@pytest.mark.slow
def test_the_real_model_calls_a_tool_through_the_adapted_template(local: LocalServer) -> None:
    """The adapted chat template makes llama.cpp return the small model's call as ``tool_calls``
    (with the model's own template it came back as text), so pydantic-ai runs the tool."""
    model = build_model(ModelConfig(model="local", base_url=local.base_url))
    assert model is not None
    asked: list[str] = []
    agent: Agent[None, str] = Agent(model, instructions="You are a 3D printer's agent. Use the tools to answer; answer briefly.",
                                    capabilities=[SmallModelHabits()])

    @agent.tool_plain
    def earnings(period: str) -> str:
        """What the machine earned in a period: 'day', 'week' or 'month'."""
        asked.append(period)
        return f"412.50 units this {period}"

    async def ask() -> str:
        try:
            result = await agent.run("How much did you earn this week?", model_settings={"temperature": 0.0},
                                     usage_limits=UsageLimits(request_limit=6))
            return result.output
        finally:
            await model.client.close()  # type: ignore[attr-defined]

    answer = asyncio.run(ask())
    assert asked and asked[0] in ("week", "this week"), f"the model's tool call did not reach the tool: {answer!r}"
    # once it repeats the call, agents.habits withdraws the tools and the run ends within its limit; the
    # 0.5B may then write the call out as text instead of the answer (the chat role's next habit to cope with)
    assert "412" in answer or '"name": "earnings"' in answer


@pytest.mark.slow
def test_the_real_model_prices_every_bid_that_reaches_it(local: LocalServer) -> None:
    """The 0.5B prices the bidding suite's calls through the agent, the openai client and the guard.
    Its speed is ``bench/local_model.py``'s to measure (a 20 s budget is a figure, not a test, on a
    shared machine): here the budget is generous and every call must get the model's own answer."""
    report = run_evals(["bidding"], ["local"], base_url=local.base_url, bid_budget_s=300.0)
    runs = [r for r in report.subjects[1].runs if r.path != "rules-fast-path"]
    assert len(runs) == 8, [(r.case, r.path) for r in runs]  # the eight calls the rules would bid on (refusals skip it)
    assert not [r for r in runs if r.error], [(r.case, r.path, r.model_calls, r.error) for r in runs]
    assert all(r.model_calls for r in runs), [(r.case, r.path, r.model_calls, r.decision) for r in runs]
    priced = [r for r in runs if r.path in ("llm", "llm-clamped")]
    assert len(priced) >= 6, [(r.case, r.path, r.decision) for r in runs]  # a small model may omit the price: the rules answer
    assert all(r.checks["within_policy"].ok for r in report.subjects[1].runs if "within_policy" in r.checks)
    assert all(r.input_tokens < 1_200 for r in runs)  # one request of a short prompt, not a tool loop


@pytest.mark.slow
def test_the_real_model_answers_the_chat_suite_from_the_briefing(local: LocalServer) -> None:
    """The 0.5B answers stakeholders' questions in one request each, from what the tools say
    (``chat_style`` briefed): every answer is the model's, none falls back, and the suite's checks
    (every number from the ledger, telemetry or memory) mostly pass."""
    report = run_evals(["chat"], ["local"], base_url=local.base_url)
    runs = report.subjects[1].runs
    assert len(runs) == 8 and all(r.path == "llm" and not r.error for r in runs), [(r.case, r.path, r.error) for r in runs]
    assert all(1 <= r.model_calls <= 3 and r.input_tokens < 2_500 for r in runs), [(r.case, r.model_calls, r.input_tokens) for r in runs]
    assert sum(r.passed for r in runs) >= 6, [(r.case, r.decision, {k: c.reason for k, c in r.checks.items() if not c.ok}) for r in runs]
