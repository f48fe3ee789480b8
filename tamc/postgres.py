"""A private PostgreSQL server the fault campaign can kill: its own cluster in a temporary folder, on
a free loopback port, started from the machine's PostgreSQL binaries.

The system's PostgreSQL is shared (other tests, other sessions); killing it would be a fault
inflicted on them. This one belongs to the campaign alone. ``kill`` is SIGKILL to the postmaster and
every backend at once (what a power cut leaves), so ``restart`` runs crash recovery from the
write-ahead log, as after a real crash. As root (PostgreSQL refuses to run as
root) the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from core.errors import InputError
from core.net import free_port

__all__ = ["PostgresUnavailable", "PrivatePostgres", "postgres_binaries"]


class PostgresUnavailable(InputError):
    """No PostgreSQL server binaries on this machine (``apt-get install postgresql``)."""


def postgres_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (Debian keeps them off the PATH), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


class PrivatePostgres:
    """``with PrivatePostgres() as pg: pg.url …; pg.kill(); pg.restart()``."""

    def __init__(self) -> None:
        bin_dir = postgres_binaries()
        if bin_dir is None:
            raise PostgresUnavailable("no PostgreSQL server here: apt-get install postgresql (initdb and postgres are needed)")
        self.bin = bin_dir
        self.user = "postgres" if os.geteuid() == 0 else None
        self.folder = Path(tempfile.mkdtemp(prefix="tamc-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        try:
            self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                       "-E", "UTF8", "--locale=C"])
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(command, capture_output=True, text=True, user=self.user, check=False)
        if done.returncode != 0:
            raise PostgresUnavailable(f"{Path(command[0]).name} failed: {done.stderr.strip()[-500:]}")

    def start(self) -> None:
        """Start the server (after a kill: crash recovery first) and wait until it takes connections."""
        for _ in range(50):  # a killed backend may hold the shared memory a moment longer
            if self._start():
                return
            time.sleep(0.2)
        raise PostgresUnavailable(f"the private PostgreSQL did not start: see {self.folder / 'server.log'}")

    def _start(self) -> bool:
        with (self.folder / "server.log").open("ab") as server_log:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.folder),
                 "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
                stdout=subprocess.DEVNULL, stderr=server_log, user=self.user, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False)
            if ready.returncode == 0:
                return True
            if self.proc.poll() is not None:
                self.proc = None
                return False
            time.sleep(0.1)
        raise PostgresUnavailable(f"the private PostgreSQL did not take connections in 60 s: see {self.folder / 'server.log'}")

    def kill(self) -> None:
        """SIGKILL the server and all its backends at once: no shutdown checkpoint, no goodbye to clients."""
        if self.proc is None:
            return
        os.kill(self.proc.pid, signal.SIGSTOP)  # no new backend forked while we gather them
        for pid in [*_children(self.proc.pid), self.proc.pid]:  # each backend is its own process group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found
