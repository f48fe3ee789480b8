"""The local model: pinned weights checked before use, clear errors naming the fix, and a real
model (the 0.5B, one thread) deciding bids through the same agent code, the openai client and the
guard. CI installs the weights (``make test`` runs ``make model``); elsewhere the real-model tests
skip when they are not installed."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic_ai import Agent, models
from pydantic_ai.exceptions import UsageLimitExceeded
from pydantic_ai.usage import UsageLimits

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
    agent: Agent[None, str] = Agent(model, instructions="You are a 3D printer's agent. Use the tools to answer; answer briefly.")

    @agent.tool_plain
    def earnings(period: str) -> str:
        """What the machine earned in a period: 'day', 'week' or 'month'."""
        asked.append(period)
        return f"412.50 units this {period}"

    async def ask() -> str:
        try:
            result = await agent.run("How much did you earn this week?", model_settings={"temperature": 0.0},
                                     usage_limits=UsageLimits(request_limit=3))
            return result.output
        except UsageLimitExceeded:  # the 0.5B may call the tool again instead of answering: the chat role's cap is next
            return ""
        finally:
            await model.client.close()  # type: ignore[attr-defined]

    answer = asyncio.run(ask())
    assert asked and asked[0] in ("week", "this week"), f"the model's tool call did not reach the tool: {answer!r}"
    assert not answer or "412" in answer


@pytest.mark.slow
def test_the_real_model_prices_the_bidding_suite_within_its_budget(local: LocalServer) -> None:
    """The 0.5B on one thread prices the bids that reach it within the 20 s budget; the guard holds
    every answer inside policy, and the rules answer for any it misses."""
    report = run_evals(["bidding"], ["local"], base_url=local.base_url)
    runs = [r for r in report.subjects[1].runs if r.model_calls]
    assert len(runs) == 8  # the eight calls the rules would bid on reach the model (the refusals skip it)
    answered = [r for r in runs if r.path in ("llm", "llm-clamped")]
    assert len(answered) >= 6, [(r.case, r.path, r.error) for r in runs]  # the target is 90 %; CI's runner may be busy
    assert statistics.median(r.latency_ms for r in answered) < 20_000
    assert all(r.checks["within_policy"].ok for r in report.subjects[1].runs if "within_policy" in r.checks)
