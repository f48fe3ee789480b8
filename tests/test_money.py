"""Money as integer micro-units, and the exact pro-rata split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidAmount
from core.money import format_units, parse_units, require_micros
from ledger import split_pro_rata


def test_units_round_trip() -> None:
    assert parse_units("12.5") == 12_500_000
    assert parse_units(" 0.000001 ") == 1
    assert format_units(12_500_000) == "12.50"
    assert format_units(4_935_000) == "4.935"
    assert format_units(-1) == "-0.000001"
    with pytest.raises(InvalidAmount, match="more than 6 decimal places"):
        parse_units("0.0000001")
    with pytest.raises(InvalidAmount, match="not a decimal number"):
        parse_units("1,5")


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_then_parse_is_exact(micros: int) -> None:
    assert parse_units(format_units(micros)) == micros


def test_require_micros() -> None:
    assert require_micros(5) == 5
    assert require_micros(0, allow_zero=True) == 0
    for bad in (0, -5, 1.0, True, "5", 10**19):
        with pytest.raises(InvalidAmount):
            require_micros(bad)


@given(st.integers(min_value=0, max_value=10**15), st.dictionaries(st.text(min_size=1, max_size=3), st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8))
def test_split_is_exact_fair_and_deterministic(amount: int, units: dict[str, int]) -> None:
    total = sum(units.values())
    if total == 0:
        with pytest.raises(ValueError):
            split_pro_rata(amount, units)
        return
    parts = split_pro_rata(amount, units)
    assert sum(parts.values()) == amount
    for holder, part in parts.items():
        exact = amount * units[holder] / total
        assert abs(part - exact) < 1 + 1e-6 * exact
    assert split_pro_rata(amount, dict(reversed(list(units.items())))) == parts
