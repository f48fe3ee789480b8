"""The machine's vector memory (chromadb): what happened to it and what the market wanted.

``store`` keeps the records (one collection per machine, embedded or on a Chroma server),
``embedding`` computes vectors offline, ``signals`` turns records into a price, a wear trend and
demand, ``retention`` keeps the store bounded. Open one with
``MemoryStore(MemoryConfig(...))`` and take a machine's part with ``store.machine(id)``.
"""

from memory.records import MemoryConfig, MemoryItem, MemoryKind, MemoryRecord
from memory.store import MachineMemory, MemoryStore

__all__ = ["MachineMemory", "MemoryConfig", "MemoryItem", "MemoryKind", "MemoryRecord", "MemoryStore"]
