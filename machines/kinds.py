"""The five kinds of machine TAMC knows, and how a person may spell them."""

from __future__ import annotations

from enum import StrEnum

from core.errors import UnknownMachineKind

__all__ = ["FAB_KINDS", "VEHICLE_KINDS", "MachineKind", "parse_kind"]


class MachineKind(StrEnum):
    PRINTER_3D = "printer_3d"
    CNC_MILL = "cnc_mill"
    LASER_CUTTER = "laser_cutter"
    CAR = "car"
    DRONE = "drone"

    @property
    def is_vehicle(self) -> bool:
        return self in VEHICLE_KINDS


FAB_KINDS = frozenset({MachineKind.PRINTER_3D, MachineKind.CNC_MILL, MachineKind.LASER_CUTTER})
VEHICLE_KINDS = frozenset({MachineKind.CAR, MachineKind.DRONE})


def parse_kind(text: str) -> MachineKind:
    """``'3d-printer'``, ``'Printer_3D'`` or ``'printer_3d'`` -> ``MachineKind.PRINTER_3D``."""
    norm = text.strip().lower().replace("-", "_").replace(" ", "_")
    aliases = {"3d_printer": "printer_3d", "printer": "printer_3d", "cnc": "cnc_mill", "laser": "laser_cutter"}
    try:
        return MachineKind(aliases.get(norm, norm))
    except ValueError:
        known = ", ".join(k.value for k in MachineKind)
        raise UnknownMachineKind(f"unknown machine kind {text!r}; known kinds: {known}") from None
