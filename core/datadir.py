"""The data directory's layout, in one place: where a city or a machine keeps its ledger, keys,
memory, workflow checkpoints, saved machine state, chats and the market's clock.

Every command and the city read the same folder the same way (``tamc demo`` writes it, ``tamc chat``
and ``tamc agent`` read it), so the names live here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataDir"]


class DataDir:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def make(self) -> DataDir:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.db"

    @property
    def ledger_url(self) -> str:
        """The SQLite ledger's URL (absolute: a process started elsewhere finds the same file)."""
        return f"sqlite:///{self.ledger_path.resolve()}"

    def fresh_ledger(self) -> str:
        """Delete the ledger (a simulated city is new each run; its keys carry over) and return its URL."""
        for suffix in ("", "-wal", "-shm"):
            self.root.joinpath(f"ledger.db{suffix}").unlink(missing_ok=True)
        return self.ledger_url

    @property
    def keys(self) -> Path:
        return self.root / "keys.json"

    @property
    def memory(self) -> Path:
        """The machines' vector memory (a Chroma folder)."""
        return self.root / "memory"

    @property
    def workflows(self) -> Path:
        """Job workflows' checkpoints (SQLite), for a machine in its own process."""
        return self.root / "workflows.db"

    @property
    def machines(self) -> Path:
        """Each machine's saved state, ``{id}.json``, for chat after the run."""
        return self.root / "machines"

    @property
    def chats(self) -> Path:
        return self.root / "chat"

    @property
    def market_clock(self) -> Path:
        """The market's pace as a machine in its own process heard it, kept across its restarts."""
        return self.root / "market-clock.json"
