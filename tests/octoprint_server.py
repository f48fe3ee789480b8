"""A real OctoPrint for tests, with its bundled virtual printer, in a fresh basedir on a free port.

OctoPrint lives in its own environment (its dependencies stay out of the project's venv): the
binary is ``$TAMC_OCTOPRINT`` or ``<repo>/.venv-octoprint/bin/octoprint``. Without it the tests
that need it are skipped, with the command that installs it; in CI they fail instead.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.net import free_port

REPO = Path(__file__).resolve().parent.parent
OCTOPRINT_VERSION = "1.11.8"
INSTALL = (f"python3 -m venv .venv-octoprint && .venv-octoprint/bin/pip install --quiet octoprint=={OCTOPRINT_VERSION}"
           " (or set TAMC_OCTOPRINT to an octoprint binary)")
USER = "tamc"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# JSON is YAML: no YAML writer needed. Plugins that phone home or nag are off; the virtual printer
# is on, without its simulated serial errors (resends would make timings flaky).
CONFIG = {
    "server": {"firstRun": False, "onlineCheck": {"enabled": False}, "pluginBlacklist": {"enabled": False}},
    "plugins": {
        "_disabled": ["tracking", "announcements", "softwareupdate", "pluginmanager", "discovery", "errortracking",
                      "achievements", "backup", "firmware_check", "pi_support"],
        "virtual_printer": {"enabled": True, "simulated_errors": []},
    },
    "serial": {"autoconnect": False},
}


@dataclass(frozen=True)
class OctoPrintServer:
    url: str
    """``http://127.0.0.1:PORT``"""
    api_key: str
    process: subprocess.Popen[bytes]
    basedir: Path
    log: Path
    """OctoPrint's stdout and stderr."""


def find_octoprint() -> Path | None:
    """The octoprint binary to run, or None when it is not installed."""
    named = os.environ.get("TAMC_OCTOPRINT")
    path = Path(named) if named else REPO / ".venv-octoprint" / "bin" / "octoprint"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def run_octoprint(base: Path, *, binary: Path | None = None) -> Iterator[OctoPrintServer]:
    """Start OctoPrint with its basedir under ``base`` (an empty folder) and stop it on exit."""
    exe = binary or find_octoprint()
    if exe is None:
        raise FileNotFoundError(f"OctoPrint is not installed: {INSTALL}")
    basedir = base / "octoprint"
    (basedir / "data" / "appkeys").mkdir(parents=True)
    (basedir / "config.yaml").write_text(json.dumps(CONFIG, indent=2))
    log = basedir / "stdout.log"
    with log.open("ab") as out:
        added = subprocess.run([str(exe), "--basedir", str(basedir), "user", "add", "--password", secrets.token_hex(12),
                                "--admin", USER], stdout=out, stderr=subprocess.STDOUT, timeout=60, check=False)
    if added.returncode != 0:
        raise RuntimeError(f"`octoprint user add` failed ({added.returncode}):\n{_tail(log)}")
    api_key = secrets.token_hex(16)
    (basedir / "data" / "appkeys" / "keys.yaml").write_text(json.dumps({USER: [{"app_id": "tamc", "api_key": api_key}]}))

    port = free_port()
    cmd = [str(exe), "serve", "--basedir", str(basedir), "--host", "127.0.0.1", "--port", str(port)]
    if os.geteuid() == 0:
        cmd.append("--iknowwhatimdoing")  # OctoPrint refuses to serve as root without it
    out = log.open("ab")
    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = OctoPrintServer(f"http://127.0.0.1:{port}", api_key, process, basedir, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(process)
        out.close()


def _wait_ready(server: OctoPrintServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"OctoPrint exited with {server.process.returncode} while starting:\n{_tail(server.log)}")
        try:
            r = httpx.get(f"{server.url}/api/version", headers={"X-Api-Key": server.api_key}, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"OctoPrint at {server.url} did not answer /api/version in {START_TIMEOUT_S:g} s "
                       f"({last}):\n{_tail(server.log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def octoprint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OctoPrintServer]:
    """One OctoPrint for the session, its virtual printer not yet connected."""
    if find_octoprint() is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the OctoPrint tests: {INSTALL}")
        pytest.skip(f"OctoPrint is not installed: {INSTALL}")
    with run_octoprint(tmp_path_factory.mktemp("octoprint")) as server:
        yield server
