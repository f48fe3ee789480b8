"""Pro-rata division of an integer amount, exact to the micro-unit.

Each holder gets the floor of its share; the micro-units the floors leave over go one each to the
holders with the largest remainders (ties to the smaller account id), so the parts always add up
to the whole and the same cap table always divides the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["split_pro_rata"]


def split_pro_rata(amount: int, units: Mapping[str, int]) -> dict[str, int]:
    """Divide ``amount`` among ``units``' holders in proportion to their units."""
    held = {holder: n for holder, n in units.items() if n > 0}
    total = sum(held.values())
    if amount < 0 or total <= 0:
        raise ValueError("need a non-negative amount and at least one holder with units")
    parts: dict[str, int] = {}
    remainders: list[tuple[int, str]] = []
    for holder, n in held.items():
        part, rem = divmod(amount * n, total)
        parts[holder] = part
        remainders.append((-rem, holder))
    left = amount - sum(parts.values())
    for _, holder in sorted(remainders)[:left]:
        parts[holder] += 1
    return parts
