"""Messages dispatched by type: one small table shared by every actor.

An actor registers one handler per body type it answers (``Dispatch().on(Bid, self._on_bid)``), and
its mailbox hands each envelope to the table; a body of a type nobody registered is ignored (a topic
may carry kinds an actor has no use for). Like uAgents' handlers keyed by message model, instead of
an ``isinstance`` chain in every actor. Registering a type twice is a programming error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hub.envelope import Envelope
from hub.messages import Body

__all__ = ["Dispatch"]

B = TypeVar("B", bound=Body)


class Dispatch:
    """Body type -> the handler that answers it, called with the envelope and its (typed) body."""

    def __init__(self) -> None:
        self._table: dict[type[Body], Callable[[Envelope, Any], None]] = {}

    def on(self, kind: type[B], handler: Callable[[Envelope, B], None]) -> Dispatch:
        if kind in self._table:
            raise ValueError(f"{kind.__name__} already has a handler: one per body type")
        self._table[kind] = handler
        return self

    def handles(self, kind: type[Body]) -> bool:
        return kind in self._table

    def __call__(self, env: Envelope) -> None:
        handler = self._table.get(type(env.body))
        if handler is not None:
            handler(env, env.body)
