"""``tamc serve``: the demo city, running, with the API and the cockpit in front of it.

The market runs in a thread of its own (``market.city.run_market``); when its day has started, the
server gets the running city, makes the demo's logins and serves on uvicorn. Tests start the very
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

from core.errors import InputError, TamcError
from ledger import settlement
from server.access import Access, Role

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from market.city import LiveCity, MarketConfig, MarketReport

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


def demo_logins(city: LiveCity, access: Access) -> list[DemoLogin]:
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

    city: LiveCity
    app: FastAPI
    access: Access
    logins: list[DemoLogin]
    url: str
    server: uvicorn.Server
    report: list[MarketReport]
    """The market's report, once its day has ended."""

    def login(self, name: str) -> DemoLogin:
        return next(x for x in self.logins if x.name == name)


@contextlib.contextmanager
def serve(config: MarketConfig, *, host: str = "127.0.0.1", port: int = 8000, ready_timeout_s: float = 120.0) -> Iterator[Served]:
    """Run the city and serve it until the block ends; then stop the server and the market. ``port`` 0
    takes a free one. The port is bound first, before the city starts: a taken port fails at once, and
    no connection the city opens meanwhile can take it (picking a free port and binding it later raced)."""
    import uvicorn

    from market.city import run_market
    from server.app import create_app

    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    port = listener.getsockname()[1]
    ready = threading.Event()
    stop = threading.Event()
    holder: dict[str, LiveCity] = {}
    failure: list[BaseException] = []
    report: list[MarketReport] = []

    def on_ready(city: LiveCity) -> None:
        holder["city"] = city
        ready.set()

    def market() -> None:
        try:
            report.append(run_market(config, on_ready=on_ready, stop=stop))
        except BaseException as exc:  # reported to the caller waiting for the city
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=market, name="market", daemon=True)
    thread.start()
    if not ready.wait(ready_timeout_s) or failure:
        stop.set()
        listener.close()
        if failure and isinstance(failure[0], TamcError):
            raise failure[0]
        raise RuntimeError(f"the city did not start within {ready_timeout_s:.0f} s") from (failure[0] if failure else None)
    city = holder["city"]
    server: uvicorn.Server | None = None
    server_thread: threading.Thread | None = None
    try:
        access = Access(city.ledger)
        logins = demo_logins(city, access)
        app = create_app(city, access=access)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1,
                                               lifespan="on"))
        server_thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True)
        server_thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not server_thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{port} (is the port taken?)")
            time.sleep(0.05)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        yield Served(city=city, app=app, access=access, logins=logins, url=f"http://{shown}:{port}", server=server, report=report)
    finally:
        if server is not None:
            server.should_exit = True
        if server_thread is not None:
            server_thread.join(timeout=10)
        listener.close()
        stop.set()
        thread.join(timeout=120)
