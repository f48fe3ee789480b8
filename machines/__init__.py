"""Machines: the five kinds, their profiles, the physics of a job, and drivers.

Knows nothing of agents, the hub or the market.
"""

from machines.driver import Driver, MachineState, SimDriver, Telemetry
from machines.job import JobSpec, load_job, parse_job
from machines.kinds import FAB_KINDS, VEHICLE_KINDS, MachineKind, parse_kind
from machines.loader import BUNDLED_PROFILES, find_profile, load_profile, load_profiles, profiles_dir
from machines.profile import FabSpec, MachineProfile, Material, Point, Policy, VehicleSpec
from machines.work import WorkEstimate, estimate

__all__ = [
    "BUNDLED_PROFILES",
    "FAB_KINDS",
    "VEHICLE_KINDS",
    "Driver",
    "FabSpec",
    "JobSpec",
    "MachineKind",
    "MachineProfile",
    "MachineState",
    "Material",
    "Point",
    "Policy",
    "SimDriver",
    "Telemetry",
    "VehicleSpec",
    "WorkEstimate",
    "estimate",
    "find_profile",
    "load_job",
    "load_profile",
    "load_profiles",
    "parse_job",
    "parse_kind",
    "profiles_dir",
]
