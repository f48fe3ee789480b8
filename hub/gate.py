"""A front door for the broker that caps how fast one address may open connections.

mosquitto 2.0 caps how many clients are connected (``max_connections``) but not how fast they
arrive: a client reconnecting in a loop costs the broker a TLS/CONNECT and a password hash check
(PBKDF2) each time. The gate listens where participants connect, admits at most ``burst`` new
connections at once from one source address, refilled at ``per_s`` a second, closes the rest at once
(counted), and pipes the admitted ones to the broker on loopback, byte for byte. Connections already
open are never touched, so honest participants carry on while one address hammers the door.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from core.errors import BrokerStartFailed

__all__ = ["ConnectionGate", "GateStats", "open_gate"]

log = logging.getLogger("tamc.hub.gate")

CHUNK = 64 * 1024


@dataclass
class GateStats:
    admitted: int = 0
    refused: int = 0
    """Connections closed at once: their address was over its rate."""
    open: int = 0


class ConnectionGate:
    """Per-address token buckets of new connections, and the pipes of those admitted. Runs its own
    event loop on a thread (``open_gate``)."""

    def __init__(self, upstream: tuple[str, int], *, burst: int = 20, per_s: float = 5.0, addresses: int = 100_000) -> None:
        self.upstream = upstream
        self.burst, self.per_s, self.addresses = burst, per_s, addresses
        self.stats = GateStats()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._pipes: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def cut(self) -> None:
        """Sever every connection through the gate and refuse new ones until ``restore`` (a fault
        campaign's network cut: the clients see their broker vanish, and reconnect after)."""
        self._cut = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._sever)

    def restore(self) -> None:
        self._cut = False

    def _sever(self) -> None:
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    def admit(self, address: str, now: float | None = None) -> bool:
        """Take one token from ``address``'s bucket (real monotonic seconds); False if it has none."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(now - last, 0.0) * self.per_s)
        ok = tokens >= 1.0
        self._buckets[address] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.addresses:  # the least recent go first; a new address starts full
            self._buckets.popitem(last=False)
        return ok

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._loop = asyncio.get_running_loop()
        peer = writer.get_extra_info("peername")
        address = peer[0] if peer else "?"
        if self._cut:
            writer.transport.abort()
            return
        if not self.admit(address):
            self.stats.refused += 1
            if self.stats.refused in (1, 10, 100) or self.stats.refused % 1000 == 0:
                log.warning("gate refused a connection address=%s refused_total=%d", address, self.stats.refused)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.error("gate cannot reach the broker at %s:%d: %s", *self.upstream, exc)
            writer.close()
            return
        self.stats.admitted += 1
        self.stats.open += 1
        self._pipes.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self.stats.open -= 1
            self._pipes.discard(writer)
            self._pipes.discard(up_writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()


@contextlib.contextmanager
def open_gate(gate: ConnectionGate, host: str, port: int) -> Iterator[tuple[str, int]]:
    """Serve ``gate`` on ``host:port`` (0: a free port) for the ``with`` block; yields where it listens."""
    loop = asyncio.new_event_loop()
    ready: list[tuple[str, int] | BaseException] = []
    started = threading.Event()
    server: asyncio.Server | None = None

    async def start() -> None:
        nonlocal server
        gate._loop = asyncio.get_running_loop()
        try:
            server = await asyncio.start_server(gate.handle, host, port, reuse_address=True)
            ready.append(server.sockets[0].getsockname()[:2])
        except OSError as exc:
            ready.append(exc)
        started.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, name="broker-gate", daemon=True)
    thread.start()
    started.wait(10)
    if not ready or isinstance(ready[0], BaseException):
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        raise BrokerStartFailed(f"the broker's gate cannot listen on {host}:{port}: {ready[0] if ready else 'timed out'}")
    address = ready[0]
    log.info("broker gate listening at %s:%d for %s:%d burst=%d per_s=%g", *address, *gate.upstream, gate.burst, gate.per_s)
    try:
        yield address
    finally:
        async def stop() -> None:
            if server is not None:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
