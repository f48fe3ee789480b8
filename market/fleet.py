"""A fleet for a simulated city: copies of the bundled profiles spread over the regions, each with
its circle of stakeholders."""

from __future__ import annotations

from collections.abc import Sequence

from machines.kinds import MachineKind
from machines.loader import load_profiles, profiles_dir
from machines.profile import MachineProfile
from machines.regions import Region

__all__ = ["COLLECTIVE_MEMBERS", "FAB_CELL", "STAKEHOLDERS", "build_fleet", "stakeholders"]

TEMPLATE_ORDER = ("prusa-01", "taxi-01", "shapeoko-01", "glowforge-01", "bambu-02", "drone-01")
"""Varied kinds first, so even a small fleet has printers, vehicles and mills."""
STAKEHOLDERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace")
FAB_CELL = "dao:fab-cell"
"""A collective holding a fifth of every 3D printer in the city; its members decide its votes."""
COLLECTIVE_MEMBERS = ("erin", "frank", "grace")


def build_fleet(count: int, regions: Sequence[Region], templates: Sequence[MachineProfile] | None = None) -> list[MachineProfile]:
    """``count`` machines, alternating regions, cycling the templates. Workshops serve their own
    region; vehicles, which move, serve every region (and compete across it)."""
    if count < 1:
        raise ValueError("a fleet needs at least one machine")
    if templates is None:
        bundled = load_profiles(profiles_dir())
        templates = [bundled[t] for t in TEMPLATE_ORDER if t in bundled] or list(bundled.values())
    fleet = []
    for i in range(count):
        region = regions[i % len(regions)]
        template = templates[(i // len(regions)) % len(templates)]
        serial = i // (len(regions) * len(templates)) + 1
        base = template.id.rsplit("-", 1)[0]
        update: dict[str, object] = {
            "id": f"{base}-{region.name[0]}{serial}",
            "name": f"{template.name.split(',')[0]}, {region.name} #{serial}",
            "region": region.name,
            "policy": template.policy.model_copy(update={
                "territory": tuple(r.name for r in regions) if template.vehicle else (region.name,),
            }),
        }
        if template.vehicle is not None:
            update["vehicle"] = template.vehicle.model_copy(update={"home": region.center})
        fleet.append(template.model_copy(update=update))
    return fleet


def stakeholders(index: int, profile: MachineProfile | None = None) -> dict[str, int]:
    """Three owners per machine, 50/30/20 shares, rotating through the circle; the fab cell holds
    the 20 of every 3D printer."""
    names = [STAKEHOLDERS[(index + k) % len(STAKEHOLDERS)] for k in range(3)]
    if profile is not None and profile.kind is MachineKind.PRINTER_3D:
        names[2] = FAB_CELL
        if names[1] == names[2]:
            names[1] = STAKEHOLDERS[(index + 3) % len(STAKEHOLDERS)]
    return dict(zip(names, (50, 30, 20), strict=True))
