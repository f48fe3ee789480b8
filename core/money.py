"""Money as integer micro-units: 1 unit = 1,000,000 micro-units.

Floats never carry money: binary fractions lose micro-units on every sum. Amounts cross the
edges as ``int`` (machines) or decimal strings such as ``"12.5"`` (people), never as ``float``.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import BeforeValidator, Field, ValidationInfo

from core.errors import InvalidAmount

__all__ = ["MAX_MICROS", "MICROS_PER_UNIT", "Micros", "Money", "format_units", "parse_units", "require_micros"]

MICROS_PER_UNIT = 1_000_000
MAX_MICROS = 10**18
"""The largest amount one operation may carry (10^12 units): far below the 64-bit column limit."""

Micros = Annotated[int, Field(strict=True, ge=0, le=MAX_MICROS)]
"""A non-negative amount of micro-units in a pydantic model; strict, so ``1.5`` is refused."""


def require_micros(value: object, *, what: str = "amount", allow_zero: bool = False) -> int:
    """Return ``value`` if it is a positive ``int`` of micro-units, else raise ``InvalidAmount``."""
    if isinstance(value, bool) or not isinstance(value, int):
        hint = ""
        if isinstance(value, float):
            hint = f" (for {value} units pass {parse_units(str(value))} micro-units)"
        raise InvalidAmount(
            f"{what} must be an integer number of micro-units (1 unit = 1,000,000), "
            f"got {type(value).__name__} {value!r}{hint}"
        )
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise InvalidAmount(f"{what} must be {bound} micro-units, got {value}")
    if value > MAX_MICROS:
        raise InvalidAmount(f"{what} {value} is above the per-operation maximum of {MAX_MICROS} micro-units")
    return value


def parse_units(text: str) -> int:
    """Parse a decimal string of units ("12.5") into micro-units, refusing sub-micro precision."""
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidAmount(f"{text!r} is not a decimal number of units, e.g. '12.5'") from None
    micros = d * MICROS_PER_UNIT
    if not d.is_finite() or micros != micros.to_integral_value():
        raise InvalidAmount(f"{text!r} has more than 6 decimal places; 1 micro-unit is the smallest")
    return int(micros)


def format_units(micros: int) -> str:
    """Render micro-units as units, exactly, with at least two decimals: 4935000 -> '4.935'."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    decimals = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{decimals}"


def _coerce_money(value: object, info: ValidationInfo) -> object:
    """Strings are units ("12.50"); ints are micro-units; floats are refused outright.

    A data file a person wrote (``info.context['units_only']``) must quote its amounts, because
    a bare ``1100`` there almost always means 1,100 units, not 1,100 micro-units.
    """
    if isinstance(value, str):
        try:
            return parse_units(value)
        except InvalidAmount as exc:
            raise ValueError(str(exc)) from None
    if isinstance(value, float):
        raise ValueError(f"money is never a float: write {value} as the string \"{value}\" (units)")
    if isinstance(value, int) and not isinstance(value, bool) and (info.context or {}).get("units_only"):
        raise ValueError(f"write amounts as quoted units, e.g. \"{value}\" for {value} units")
    return value


Money = Annotated[Micros, BeforeValidator(_coerce_money)]
"""Micro-units in a model that people also write: accepts ``"12.5"`` (units) or an int of micros."""
