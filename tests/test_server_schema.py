"""Schemathesis against the served OpenAPI schema, over real HTTP: every documented operation is
fuzzed (examples, coverage, fuzzing and stateful phases) as a stakeholder and as an admin, with all
checks — no server error, responses that conform to the schema, no auth bypass (``ignored_auth``:
a request that succeeds with the token must fail without it). The streams are left out of the
broad run (schemathesis reads each one until it ends) and tested in test_server_api.py. Each run's
report (the number of cases generated among its figures) is kept as ``artifacts/schemathesis-*.json``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.runner import Served

CONFIG = Path(__file__).parent / "schemathesis.toml"
ARTIFACTS = Path(os.environ.get("TAMC_ARTIFACTS", Path(__file__).parent.parent / "artifacts"))


@pytest.mark.slow
@pytest.mark.parametrize("who", ["alice", "admin"])
def test_schemathesis_finds_no_server_error_no_auth_bypass_and_no_schema_violation(served: Served, who: str, tmp_path: Path) -> None:
    report, events = tmp_path / "report.json", tmp_path / "events.ndjson"
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(cli), "--config-file", str(CONFIG), "run", f"{served.url}/openapi.json", "--checks", "all",
         "-H", f"Authorization: Bearer {served.login(who).token}", "--exclude-path-regex", "/stream$",
         "--max-examples", "25", "--seed", "7", "--workers", "1", "--no-color", "--request-timeout", "20",
         "--report", "json,ndjson", "--report-json-path", str(report), "--report-ndjson-path", str(events)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    summary = run.stdout[run.stdout.rfind("SUMMARY"):] if "SUMMARY" in run.stdout else run.stdout[-4000:]
    print(summary)  # the number of generated cases is in it: pytest -s shows it
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-2000:]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(report, ARTIFACTS / f"schemathesis-{who}.json")  # the run's figures: cases generated, checks, warnings
    cases = json.loads(report.read_text())["test_cases"]
    assert cases["generated"] > 500 and cases["with_failures"] == 0, cases
    log = events.read_text()
    for check in ("not_a_server_error", "response_schema_conformance", "ignored_auth"):
        assert f'"{check}"' in log, f"the {check} check did not run"
