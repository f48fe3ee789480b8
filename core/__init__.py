"""The vocabulary every TAMC package shares: the error tree, money, clocks.

It depends on nothing of ours, so ``ledger`` and ``machines`` can use it without reaching up
into ``tamc`` (which wires everything) or ``agents``.
"""

from core.clock import Clock, SimClock, WallClock
from core.errors import TamcError
from core.money import MICROS_PER_UNIT, Micros, Money, format_units, parse_units, require_micros

__all__ = [
    "MICROS_PER_UNIT",
    "Clock",
    "Micros",
    "Money",
    "SimClock",
    "TamcError",
    "WallClock",
    "format_units",
    "parse_units",
    "require_micros",
]
