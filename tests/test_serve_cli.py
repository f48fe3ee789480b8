"""``tamc serve`` as a user runs it: it prints the cockpit's URL and working logins, serves the
cockpit and the schema, and Ctrl-C stops the server, the market and the broker it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.net import free_port


@pytest.mark.slow
def test_tamc_serve_prints_logins_that_work_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    tamc = Path(sys.executable).with_name("tamc")
    proc = subprocess.Popen([str(tamc), "serve", "--port", str(port), "--machines", "4", "--memory", "off", "--speed", "600",
                             "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(line.startswith("Ctrl-C") for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        text = "\n".join(lines)
        assert f"cockpit   http://127.0.0.1:{port}/" in text, text
        logins = dict(re.findall(r"login (\w+)\s+\w+\s+token (\S+)", text))
        assert set(logins) == {"stakeholder", "operator", "requester", "admin"}, text
        assert f"http://127.0.0.1:{port}/#token={logins['stakeholder']}" in text
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            assert "TAMC Cockpit" in c.get("/").text
            assert c.get("/openapi.json").json()["info"]["title"] == "TAMC"
            me = c.get("/v1/me", headers={"Authorization": f"Bearer {logins['stakeholder']}"}).json()
            assert me["name"] == "alice" and any("stakeholder" in r for r in me["roles"].values())
            olga = c.get("/v1/me", headers={"Authorization": f"Bearer {logins['operator']}"}).json()
            assert olga["name"] == "olga" and all(r == ["operator"] for r in olga["roles"].values())
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert out.strip().endswith("stopped") and time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
