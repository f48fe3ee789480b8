"""``tamc serve``: the demo city, running, with the API and the cockpit in front of it.

The city is started here (``market.city.City``), its day runs on a thread of its own, and the server
gets the started city, makes the demo's logins and serves on uvicorn; on exit the day stops (no
drain), the server stops, and the city tears down, each wait bounded and named. Tests start the very
same thing on a free port.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from core.errors import InputError
from ledger import settlement
from server.access import Access, Role

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from market.city import City
    from market.config import MarketConfig

__all__ = ["DemoLogin", "Served", "demo_logins", "serve"]

log = logging.getLogger("tamc.server")

DEMO_STAKEHOLDER = "alice"
DEMO_OPERATOR = "olga"
DEMO_REQUESTER = "rita"
DEMO_ADMIN = "admin"
REQUESTER_BUDGET = 5_000 * 1_000_000


class DemoLogin(BaseModel):
    name: str
    role: str
    did: str
    token: str


def demo_logins(city: City, access: Access) -> list[DemoLogin]:
    """A stakeholder (alice, whose key owns ``holder:alice``), an operator of every machine, a
    requester with a funded wallet and an admin; each with a fresh token."""
    keys = city.keys
    out = []
    alice = keys.get_or_create(f"holder-{DEMO_STAKEHOLDER}")
    access.register(alice.did, DEMO_STAKEHOLDER)
    out.append((DEMO_STAKEHOLDER, "stakeholder", alice.did))
    for name, role in ((DEMO_OPERATOR, Role.OPERATOR), (DEMO_ADMIN, Role.ADMIN)):
        identity = keys.get_or_create(f"login-{name}")
        access.register(identity.did, name)
        access.grant(identity.did, role)
        out.append((name, role.value, identity.did))
    rita = keys.get_or_create(f"login-{DEMO_REQUESTER}")
    access.register(rita.did, DEMO_REQUESTER)
    if access.requester_wallet(rita.did) is None:
        settlement.open_requester(city.ledger, DEMO_REQUESTER, rita.did, REQUESTER_BUDGET)
    out.append((DEMO_REQUESTER, "requester", rita.did))
    return [DemoLogin(name=n, role=r, did=d, token=access.issue(d)[0]) for n, r, d in out]


@dataclass
class Served:
    """A running city with its server."""

    city: City
    app: FastAPI
    access: Access
    logins: list[DemoLogin]
    url: str
    server: uvicorn.Server
    day_over: threading.Event
    """Set when the market's day has ended (the city stays up: the server goes on showing it)."""

    def login(self, name: str) -> DemoLogin:
        return next(x for x in self.logins if x.name == name)


@contextlib.contextmanager
def serve(config: MarketConfig, *, host: str = "127.0.0.1", port: int = 8000, ready_timeout_s: float = 120.0) -> Iterator[Served]:
    """Run the city and serve it until the block ends; then stop the server and the market. ``port`` 0
    takes a free one. The port is bound first, before the city starts: a taken port fails at once, and
    no connection the city opens meanwhile can take it (picking a free port and binding it later raced)."""
    import uvicorn

    from market.city import City
    from server.app import create_app

    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    port = listener.getsockname()[1]
    stop = threading.Event()
    day_over = threading.Event()
    server: uvicorn.Server | None = None
    server_thread: threading.Thread | None = None
    day: threading.Thread | None = None
    with contextlib.ExitStack() as stack:
        stack.callback(listener.close)
        city = stack.enter_context(City(config))
        def run_day() -> None:
            try:
                city.run(stop=stop)
            except BaseException:  # the server goes on showing the city; the failure is logged
                log.exception("the market's day failed")
            day_over.set()

        day = threading.Thread(target=run_day, name="market", daemon=True)
        day.start()
        try:
            access = Access(city.ledger)
            logins = demo_logins(city, access)
            app = create_app(city, access=access)
            server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1,
                                                   lifespan="on"))
            server_thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True)
            server_thread.start()
            deadline = time.monotonic() + ready_timeout_s
            while not server.started:
                if not server_thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start on {host}:{port} (is the port taken?)")
                time.sleep(0.05)
            shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            yield Served(city=city, app=app, access=access, logins=logins, url=f"http://{shown}:{port}", server=server, day_over=day_over)
        finally:
            stop.set()  # first the day: no more jobs, no drain
            if server is not None:
                server.should_exit = True
            _join(server_thread, "the HTTP server (open streams close within a second)", 5.0)
            _join(day, "the market's day to notice the stop", 10.0)


def _join(thread: threading.Thread | None, what: str, timeout_s: float) -> None:
    """Wait for ``thread``, saying what it is if it takes more than a moment; give up after ``timeout_s``."""
    if thread is None:
        return
    thread.join(1.0)
    if thread.is_alive():
        log.warning("stopping: waiting for %s", what)
        thread.join(max(timeout_s - 1.0, 0.0))
        if thread.is_alive():
            log.error("stopping: %s did not end within %.0f s; going on", what, timeout_s)
