"""Regions of the city grid: where jobs appear and which machines serve them."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict

from machines.profile import Point

__all__ = ["DEFAULT_REGIONS", "Region"]


class Region(BaseModel):
    """An axis-aligned rectangle of the city grid, in kilometres."""

    model_config = ConfigDict(frozen=True)

    name: str
    x_km: tuple[float, float]
    y_km: tuple[float, float]

    @property
    def center(self) -> Point:
        return Point(x_km=sum(self.x_km) / 2, y_km=sum(self.y_km) / 2)

    def random_point(self, rng: random.Random) -> Point:
        return Point(x_km=round(rng.uniform(*self.x_km), 3), y_km=round(rng.uniform(*self.y_km), 3))


DEFAULT_REGIONS = (
    Region(name="north", x_km=(0.0, 12.0), y_km=(6.0, 12.0)),
    Region(name="south", x_km=(0.0, 12.0), y_km=(0.0, 6.0)),
)
