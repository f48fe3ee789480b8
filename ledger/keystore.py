"""A keystore file: named Ed25519 seeds, readable by their owner only (mode 0600).

The file is JSON, ``{"version": 1, "keys": {name: {"did": ..., "seed": base64}}}``. Writes go to a
temporary file created 0600 and are renamed into place, so a crash never leaves half a keystore
and the secret is never world-readable, not even for a moment. A keystore that others can read is
refused, as ssh refuses such a private key.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

from core.errors import KeystoreError
from core.files import write_private
from ledger.identity import Identity

__all__ = ["Keystore"]


class Keystore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def names(self) -> list[str]:
        return sorted(self._load())

    def get(self, name: str) -> Identity:
        keys = self._load()
        if name not in keys:
            raise KeystoreError(f"no key named {name!r} in {self.path}; create it with 'tamc keys new {name}'")
        return self._identity(name, keys[name])

    def create(self, name: str) -> Identity:
        keys = self._load()
        if name in keys:
            raise KeystoreError(f"a key named {name!r} already exists in {self.path}")
        identity = Identity.generate()
        keys[name] = {"did": identity.did, "seed": base64.b64encode(identity.seed).decode()}
        self._save(keys)
        return identity

    def get_or_create(self, name: str) -> Identity:
        return self.get(name) if name in self._load() else self.create(name)

    def _identity(self, name: str, entry: dict[str, str]) -> Identity:
        try:
            identity = Identity.from_seed(base64.b64decode(entry["seed"], validate=True))
        except (KeyError, ValueError, TypeError) as exc:
            raise KeystoreError(f"key {name!r} in {self.path} is corrupt: {exc}") from None
        if identity.did != entry.get("did"):
            raise KeystoreError(f"key {name!r} in {self.path}: stored did does not match its seed")
        return identity

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        if stat.S_ISDIR(st.st_mode):
            raise KeystoreError(f"{self.path} is a folder, not a keystore file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeystoreError(
                f"{self.path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run 'chmod 600 {self.path}'"
            )
        try:
            data = json.loads(self.path.read_text("utf-8"))
            keys = data["keys"]
            if data.get("version") != 1 or not isinstance(keys, dict):
                raise ValueError("unknown layout")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeystoreError(f"cannot read keystore {self.path}: {exc}") from None
        return keys

    def _save(self, keys: dict[str, dict[str, str]]) -> None:
        write_private(self.path, json.dumps({"version": 1, "keys": keys}, indent=2, sort_keys=True))
