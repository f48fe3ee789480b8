"""Loading machine profiles from a folder of TOML files, one machine per file."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import ValidationError

from core.errors import InvalidProfile, UnknownMachine
from machines.job import describe_errors
from machines.profile import MachineProfile

__all__ = ["BUNDLED_PROFILES", "find_profile", "load_profile", "load_profiles", "profiles_dir"]

BUNDLED_PROFILES = Path(__file__).with_name("profiles")


def profiles_dir() -> Path:
    """``$TAMC_PROFILES`` if set, else the profiles shipped with TAMC."""
    return Path(os.environ.get("TAMC_PROFILES") or BUNDLED_PROFILES)


def load_profile(path: str | Path) -> MachineProfile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise InvalidProfile(f"cannot read profile {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidProfile(f"{path} is not valid TOML: {exc}") from None
    try:
        return MachineProfile.model_validate(data, context={"units_only": True})
    except ValidationError as exc:
        raise InvalidProfile(f"{path}: {describe_errors(exc)}") from None


def load_profiles(directory: str | Path | None = None) -> dict[str, MachineProfile]:
    """Every ``*.toml`` profile in ``directory``, by machine id, sorted by id."""
    directory = Path(directory) if directory is not None else profiles_dir()
    if not directory.is_dir():
        raise InvalidProfile(f"profile folder {directory} does not exist (set TAMC_PROFILES to a folder of .toml files)")
    found: dict[str, MachineProfile] = {}
    for path in sorted(directory.glob("*.toml")):
        profile = load_profile(path)
        if profile.id in found:
            raise InvalidProfile(f"{path}: machine id {profile.id!r} is used by another profile in {directory}")
        found[profile.id] = profile
    return dict(sorted(found.items()))


def find_profile(machine_id: str, directory: str | Path | None = None) -> MachineProfile:
    profiles = load_profiles(directory)
    if machine_id not in profiles:
        raise UnknownMachine(f"no machine {machine_id!r}; known: {', '.join(profiles) or 'none'} (see 'tamc machines')")
    return profiles[machine_id]
