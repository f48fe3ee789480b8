"""Regions of the city grid: where jobs appear, which machines serve them, and where a machine's
territory lies (the rule engine checks a job's pick-up, drop-off and route against it, not its label)."""

from __future__ import annotations

import itertools
import math
import random

from pydantic import BaseModel, ConfigDict

from machines.profile import Point

__all__ = ["DEFAULT_REGIONS", "Region", "outside"]


class Region(BaseModel):
    """An axis-aligned rectangle of the city grid, in kilometres."""

    model_config = ConfigDict(frozen=True)

    name: str
    x_km: tuple[float, float]
    y_km: tuple[float, float]

    @property
    def center(self) -> Point:
        return Point(x_km=sum(self.x_km) / 2, y_km=sum(self.y_km) / 2)

    def contains(self, point: Point) -> bool:
        return self.x_km[0] <= point.x_km <= self.x_km[1] and self.y_km[0] <= point.y_km <= self.y_km[1]

    def random_point(self, rng: random.Random) -> Point:
        return Point(x_km=round(rng.uniform(*self.x_km), 3), y_km=round(rng.uniform(*self.y_km), 3))


DEFAULT_REGIONS = (
    Region(name="north", x_km=(0.0, 12.0), y_km=(6.0, 12.0)),
    Region(name="south", x_km=(0.0, 12.0), y_km=(0.0, 6.0)),
)


ROUTE_STEP_KM = 0.25
"""How finely a route is checked against a territory: a finer grid than any street of the city."""


def outside(points: tuple[Point, ...], territory: tuple[str, ...], regions: tuple[Region, ...]) -> Point | None:
    """The first place along the straight legs through ``points`` that lies outside every region of
    ``territory`` (None: the whole route is inside). Regions of the territory with no known bounds
    make the whole territory unchecked here (only the job's label is: the point may lie in that one)."""
    areas = [r for r in regions if r.name in territory]
    if not areas or len(areas) < len(set(territory)):
        return None
    legs = list(itertools.pairwise(points)) or [(points[0], points[0])]
    for a, b in legs:
        steps = max(1, math.ceil(a.distance_to(b) / ROUTE_STEP_KM))
        for i in range(steps + 1):
            at = Point(x_km=a.x_km + (b.x_km - a.x_km) * i / steps, y_km=a.y_km + (b.y_km - a.y_km) * i / steps)
            if not any(r.contains(at) for r in areas):
                return at
    return None
