"""A market of LLM agents: the demo's city with every machine asking a model (the local
OpenAI-compatible stand-in, over HTTP) before it bids. The model undercuts the rule engine's
quote; the rules clamp what falls under cost; the summary counts calls, tokens and latency."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import broker_args, on_broker
from openai_standin import StandIn, Step, call, standin_server
from pydantic_ai import models

from agents.llm import ModelConfig
from hub.broker import RunningBroker
from ledger import Ledger
from market.city import simulate
from market.config import MarketConfig


def undercut(request: dict[str, Any]) -> Step:
    """Bid 10% under the rule engine's quote given in the prompt."""
    prompt = next(m["content"] for m in request["messages"] if m["role"] == "user")
    quoted = re.search(r"quote: bid (\d+\.\d+)", prompt)
    if quoted is None:
        return call("final_result", {"action": "decline", "rationale": "no quote"})
    price = f"{float(quoted.group(1)) * 0.9:.2f}"
    return call("final_result", {"action": "bid", "price": price, "eta_h": 1.0, "rationale": "undercut the quote by 10%"})


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with models.override_allow_model_requests(True), standin_server() as server:
        server.script = undercut
        yield server


def test_market_of_llm_agents(standin: StandIn, tmp_path: Path, broker: RunningBroker) -> None:
    model = ModelConfig(model="standin", base_url=standin.base_url, fast_path=False)
    # virtual time: a model's real latency is charged at 1800x; a bid window of 4 real seconds at that pace, so a
    # stand-in slowed by a busy machine still answers in it (a longer window costs no wall time: the clock waits)
    report = simulate(MarketConfig(seed=3, hours=2, machines=4, speed=1800, bid_window_s=4 * 1800, accept_window_s=0.2 * 1800,
                                     data_dir=tmp_path, model=model, **on_broker(broker)))
    assert report.clock == "virtual" and not report.deterministic  # a model's latency is real
    assert report.model is not None
    m = report.model
    assert m.asked > 0 and m.calls == m.asked == len(standin.requests) and not m.errors
    assert m.input_tokens > 0 and m.output_tokens == 12 * m.calls and m.latency_ms_p50 is not None
    assert report.decisions.get("llm", 0) + report.decisions.get("llm-clamped", 0) == m.asked
    assert report.paid > 0 and report.unfinished == 0 and report.double_awards == 0
    ledger = Ledger(report.ledger_url)
    try:
        assert ledger.audit() == []
    finally:
        ledger.close()
    assert sorted(p.stem for p in (tmp_path / "machines").glob("*.json")) == sorted(x.machine_id for x in report.machines)


def test_tamc_demo_with_a_model(standin: StandIn, tmp_path: Path, broker: RunningBroker) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tamc", "demo", "--model", "standin", "--base-url", standin.base_url, "--no-fast-path",
         "--hours", "1", "--machines", "4", "--speed", "600", "--bid-window", "2400", *broker_args(broker),
         "--data-dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["model"]["model"] == f"standin at {standin.base_url}" and summary["model"]["calls"] == len(standin.requests) > 0
    assert "bids by standin at" in out.stderr and "model standin" in out.stderr and "fallbacks" in out.stderr
