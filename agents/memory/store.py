"""The machine's memory: one chromadb collection per machine, embedded or on a Chroma server.

Records are short texts with metadata (kind, capability, region, time, and numbers such as prices
or wear) embedded on this machine (``agents.memory.embedding``). What stakeholders tell the machine
is stored as a quote of who said it; it is recalled as data, never obeyed.

Record ids carry the fields a query filters on — ``kind:capability:region:hex`` — because
chromadb's local metadata filter scans every record (60 ms at 100k records, 150 ms when most
match): a filtered recall runs the vector search unfiltered, widening it until enough ids match,
and only then falls back to chromadb's ``where``. Any failure of the store is raised as
``MemoryStoreError`` with the store's location, so a caller can go on without memory.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from core.errors import EmbeddingUnavailable, InputError, MemoryStoreError

if TYPE_CHECKING:
    from agents.memory.retention import Compaction

__all__ = ["MAX_RECORD_CHARS", "MachineMemory", "MemoryConfig", "MemoryItem", "MemoryKind", "MemoryRecord", "MemoryStore"]

log = logging.getLogger("tamc.memory")

MAX_RECORD_CHARS = 2000
MAX_QUERY_CHARS = 2000
MAX_K = 50
_WIDEN_UNTIL = 1024
"""Nearest records scanned before a filtered recall hands the filter to chromadb (8 ms at 100k)."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FIELD = re.compile(r"[^a-zA-Z0-9_.-]")
Meta = dict[str, str | int | float | bool]


class MemoryKind(StrEnum):
    JOB_OUTCOME = "job_outcome"
    """A job we bid on: spec, our price and cost, the winner and winning price, profit."""
    WEAR = "wear"
    """Wear observed after a job."""
    DEMAND = "demand"
    """Calls seen, bids and wins in one market hour, for a capability and region."""
    MAINTENANCE = "maintenance"
    """Maintenance asked for or done."""
    FACT = "fact"
    """Something a stakeholder (or the agent) told the machine, attributed to them."""
    SUMMARY = "summary"
    """Old records of one kind, day, capability and region folded into one (retention)."""


class MemoryItem(NamedTuple):
    text: str
    kind: str
    source: str
    metadata: dict[str, Any]
    at: datetime | None = None


class MemoryConfig(BaseModel):
    """Where memories live and how many are kept."""

    model_config = ConfigDict(frozen=True)

    path: Path | None = None
    """Folder of the embedded store (``{data dir}/memory`` by default)."""
    url: str | None = None
    """A Chroma server (``http://host:8000``); when set, ``path`` is not used."""
    max_records: int = Field(default=20_000, ge=100)
    """Per machine; past it, the oldest records are folded into summaries."""
    keep_days: float = Field(default=30.0, gt=0)
    """Job outcomes, wear and demand older than this (market time) are folded into daily summaries."""


class MemoryRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    kind: str
    source: str
    """Who it came from: ``market``, ``telemetry``, ``agent`` or a stakeholder's name."""
    at: datetime
    score: float = 0.0
    """Similarity to the query, 1 is identical (0 when listed rather than searched)."""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        """The short id an answer cites, e.g. ``mem:4f1a2b3c9d``."""
        return "mem:" + self.id.rsplit(":", 1)[-1]


class MemoryStore:
    """A chromadb client: embedded under a folder, or talking to a Chroma server. One per process
    and location; machines each get a collection from it."""

    def __init__(self, config: MemoryConfig) -> None:
        if config.url is None and config.path is None:
            raise InputError("memory needs a folder (path) or a Chroma server URL")
        self.config = config
        self.where = config.url or str(config.path)
        self._client: Any = None
        self._embed: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            import chromadb
            from chromadb.config import Settings

            from agents.memory.embedding import MiniLMInt8, model_files

            model_files()  # missing model files: say how to install them before touching the store
            settings = Settings(anonymized_telemetry=False, allow_reset=False)
            try:
                if self.config.url is not None:
                    u = urlparse(self.config.url)
                    if u.scheme not in ("http", "https") or not u.hostname:
                        raise InputError(f"memory URL {self.config.url!r} must look like http://host:8000")
                    client = chromadb.HttpClient(host=u.hostname, port=u.port or (443 if u.scheme == "https" else 8000),
                                                 ssl=u.scheme == "https", settings=settings)
                    client.heartbeat()
                else:
                    assert self.config.path is not None
                    self.config.path.mkdir(parents=True, exist_ok=True)
                    client = chromadb.PersistentClient(path=str(self.config.path), settings=settings)
                    client.heartbeat()
            except (InputError, EmbeddingUnavailable):
                raise
            except Exception as exc:
                raise _store_error(self.where, "cannot be opened", exc) from exc
            self._embed = MiniLMInt8()
            self._client = client
            return client

    def machine(self, machine_id: str, *, clock: Callable[[], datetime] | None = None) -> MachineMemory:
        """The machine's own memory (its collection is made on first use)."""
        client = self._open()
        name = f"tamc-memory-{_field(machine_id)}"
        try:
            collection = client.get_or_create_collection(
                name, embedding_function=self._embed, configuration={"hnsw": {"space": "cosine"}},
                metadata={"machine_id": machine_id})
        except Exception as exc:
            raise _store_error(self.where, f"cannot open the collection {name}", exc) from exc
        return MachineMemory(machine_id, collection, self._embed, self.config, where=self.where,
                             clock=clock or (lambda: datetime.now(UTC)))


class MachineMemory:
    """One machine's records: remember, recall (semantic, filtered), list recent ones, forget old ones."""

    def __init__(self, machine_id: str, collection: Any, embed: Any, config: MemoryConfig, *, where: str,
                 clock: Callable[[], datetime]) -> None:
        self.machine_id = machine_id
        self.config = config
        self.where = where
        self.clock = clock
        self._col = collection
        self._embed = embed
        self._lock = threading.RLock()
        self._added = 0
        self._compacting = False
        with self._guard("count records"):
            self._count = int(collection.count())
        if self._count > config.max_records:
            self.compact()

    # -- writing ---------------------------------------------------------------------------------

    def remember(self, text: str, *, kind: str, source: str, metadata: dict[str, Any] | None = None,
                 at: datetime | None = None) -> MemoryRecord:
        """Store one record. Text is cleaned of control characters; empty or longer than
        ``MAX_RECORD_CHARS`` is an ``InputError`` (nothing stored)."""
        return self.remember_many([MemoryItem(text, kind, source, metadata or {}, at)])[0]

    def remember_many(self, items: list[MemoryItem]) -> list[MemoryRecord]:
        """Store several records in one batch (one embedding pass, one write)."""
        now = self.clock()
        records = []
        for text, kind, source, metadata, at in items:
            when = at or now
            text = _clean(text)
            if not text:
                raise InputError("nothing to remember: the text is empty")
            if len(text) > MAX_RECORD_CHARS:
                raise InputError(f"a memory is at most {MAX_RECORD_CHARS} characters, got {len(text)}; say it in fewer words")
            kind = MemoryKind(kind).value
            meta: Meta = {k: v for k, v in metadata.items() if isinstance(v, str | int | float | bool)}
            for key in ("capability", "region"):
                if key in meta:
                    meta[key] = _field(str(meta[key]))
            meta.update(kind=kind, source=_clean(source)[:100] or "unknown", at=when.timestamp())
            rid = f"{kind}:{_field(str(meta.get('capability', '*')))}:{_field(str(meta.get('region', '*')))}:{uuid.uuid4().hex[:10]}"
            records.append(MemoryRecord(id=rid, text=text, kind=kind, source=str(meta["source"]), at=when, metadata=dict(meta)))
        if not records:
            return []
        with self._guard("store records"), self._lock:
            vectors = self._embed([r.text for r in records])
            self._col.add(ids=[r.id for r in records], documents=[r.text for r in records],
                          metadatas=[r.metadata for r in records], embeddings=vectors)
            self._count += len(records)
            self._added += len(records)
        if not self._compacting and (self._count > self.config.max_records
                                     or self._added >= max(self.config.max_records // 10, 100)):
            self.compact()
        return records

    def compact(self, now: datetime | None = None) -> Compaction:
        """Apply the retention policy now (it also runs by itself as records are added)."""
        from agents.memory.retention import compact

        self._compacting, self._added = True, 0
        try:
            return compact(self, now)
        finally:
            self._compacting = False

    def forget(self, ids: list[str]) -> None:
        if not ids:
            return
        with self._guard("delete records"), self._lock:
            self._col.delete(ids=ids)
            self._count = int(self._col.count())

    # -- reading ---------------------------------------------------------------------------------

    def count(self) -> int:
        return self._count

    def recall(self, query: str, *, k: int = 5, kind: str | None = None, capability: str | None = None,
               region: str | None = None) -> list[MemoryRecord]:
        """The ``k`` records nearest in meaning to ``query`` that match the filters, best first.
        An empty query lists the most recent instead."""
        k = max(1, min(int(k), MAX_K))
        query = _clean(query)[:MAX_QUERY_CHARS]
        if not query:
            return self.recent(kind=kind, capability=capability, region=region, limit=k)
        want = (kind, capability and _field(capability), region and _field(region))
        with self._guard("search"):
            vector = self._embed([query])
            if self._count == 0:
                return []
            n = min(self._count, max(4 * k, 64) if any(want) else k)
            while True:
                found = self._col.query(query_embeddings=vector, n_results=n, include=["distances"])
                ids = [(i, d) for i, d in zip(found["ids"][0], found["distances"][0], strict=True) if _matches(i, want)][:k]
                if len(ids) >= k or n >= self._count:
                    break
                if n >= _WIDEN_UNTIL:  # a rare kind: let chromadb filter (exact, slower)
                    found = self._col.query(query_embeddings=vector, n_results=k, where=_where(want), include=["distances"])
                    ids = list(zip(found["ids"][0], found["distances"][0], strict=True))
                    break
                n = min(self._count, n * 4)
            if not ids:
                return []
            got = self._col.get(ids=[i for i, _ in ids], include=["documents", "metadatas"])
        by_id = {i: (doc, meta) for i, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)}
        return [_record(i, *by_id[i], score=1.0 - d) for i, d in ids if i in by_id]

    def recent(self, *, kind: str | None = None, capability: str | None = None, region: str | None = None,
               limit: int = 20) -> list[MemoryRecord]:
        """The newest records matching the filters, newest last."""
        want = (kind, capability and _field(capability), region and _field(region))
        rows = self.all(where=_where(want))
        rows.sort(key=lambda r: r.at)
        return rows[-max(1, limit):]

    def all(self, *, where: dict[str, Any] | None = None, page: int = 5000) -> list[MemoryRecord]:
        """Every record (matching chromadb ``where``); for retention and reports, not the bidding path."""
        out: list[MemoryRecord] = []
        with self._guard("list records"):
            offset = 0
            while True:
                got = self._col.get(where=where, limit=page, offset=offset, include=["documents", "metadatas"])
                out += [_record(i, doc, meta) for i, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)]
                if len(got["ids"]) < page:
                    return out
                offset += page

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (InputError, MemoryStoreError):
            raise
        except Exception as exc:
            raise _store_error(self.where, f"could not {doing} for {self.machine_id}", exc) from exc


def _record(rid: str, doc: str | None, meta: dict[str, Any] | None, *, score: float = 0.0) -> MemoryRecord:
    meta = dict(meta or {})
    at = datetime.fromtimestamp(float(meta.get("at", 0.0)), UTC)
    return MemoryRecord(id=rid, text=doc or "", kind=str(meta.get("kind", rid.split(":", 1)[0])),
                        source=str(meta.get("source", "unknown")), at=at, score=round(score, 4), metadata=meta)


def _matches(rid: str, want: tuple[str | None, str | None, str | None]) -> bool:
    parts = rid.split(":")
    return len(parts) == 4 and all(w is None or w == p for w, p in zip(want, parts, strict=False))


def _where(want: tuple[str | None, str | None, str | None]) -> dict[str, Any] | None:
    terms = [{key: value} for key, value in zip(("kind", "capability", "region"), want, strict=True) if value]
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else {"$and": terms}


def _field(value: str) -> str:
    return _FIELD.sub("_", value)[:64] or "_"


def _clean(text: str) -> str:
    return _CONTROL.sub("", str(text)).strip()


def _store_error(where: str, what: str, exc: Exception) -> MemoryStoreError:
    advice = ("is the Chroma server running at that URL?" if where.startswith("http")
              else "check the folder exists, is writable and its chroma.sqlite3 is not damaged (move the folder aside to start a new memory)")
    return MemoryStoreError(f"memory store {where} {what}: {type(exc).__name__}: {exc} — {advice}; "
                            "the machine bids on without memory meanwhile")
