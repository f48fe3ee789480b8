"""Prometheus metrics of one server: its requests, its stream clients and the market it shows.

Each app has its own registry, so two servers in one process (tests) never share counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from market.city import City
    from server.feed import Feed

__all__ = ["Metrics"]


class Metrics:
    def __init__(self, city: City, feed: Feed) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tamc_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r)
        self.latency = Histogram("tamc_http_request_seconds", "Time to answer (to the first byte of a stream)",
                                 ["route"], registry=r)
        self.chats = Counter("tamc_chat_messages", "Chat messages answered", ["mode"], registry=r)
        self.votes = Counter("tamc_votes", "Votes cast through the API", ["choice"], registry=r)
        self.jobs_posted = Counter("tamc_jobs_posted", "Jobs posted through the API", registry=r)
        self.commands = Counter("tamc_operator_commands", "Operator commands the machines carried out", ["command"], registry=r)
        self.refusals = Counter("tamc_refusals", "Requests refused", ["error"], registry=r)
        _gauge("tamc_stream_clients", "Live stream clients connected", lambda: feed.clients, r)
        _gauge("tamc_hub_messages", "Hub messages the server received", lambda: feed.received, r)
        _gauge("tamc_machines", "Machines in the city", lambda: len(city.nodes), r)
        _gauge("tamc_machines_online", "Machines whose presence is online",
               lambda: sum(1 for p in list(feed.presence.values()) if p.state == "online"), r)
        _gauge("tamc_jobs_closed", "Jobs closed in the market (paid, refunded or expired)", lambda: len(city.outcomes), r)
        _gauge("tamc_handoffs_open", "Handoffs pending or held by an operator",
               lambda: sum(1 for _ in feed.open_handoffs()), r)
        _gauge("tamc_sim_hours", "Hours on the market's clock", city.hours, r)


def _gauge(name: str, doc: str, read: Callable[[], float], registry: CollectorRegistry) -> None:
    Gauge(name, doc, registry=registry).set_function(read)
