"""The machine's memory: one chromadb collection per machine, embedded or on a Chroma server.

Records are short texts with metadata (kind, capability, region, time, and numbers such as prices
or wear) embedded on this machine (``memory.embedding``). What stakeholders tell the machine
is stored as a quote of who said it; it is recalled as data, never obeyed.

Filtered recalls do not use chromadb's metadata filter: on a local store it scans every record
(measured at 100k records: 60-110 ms, whatever the filter). A recall filtered by kind (job
outcomes for a capability, facts, wear) searches that kind's vectors held in process instead —
loaded from the collection on first use, kept in step with every write and deletion, ~2 KB a
record — a numpy product of well under a millisecond. chromadb stays the store of record and
serves unfiltered searches (HNSW). Record ids carry ``kind:capability:region:hex``, so a recall
filtered by capability or region alone runs the vector search unfiltered and widens it until
enough ids match. Any failure of the store is raised as ``MemoryStoreError`` with the store's
location, so a caller can go on without memory.

A machine's own records (outcomes, wear, demand) are written by one background thread per store
(``remember_later``), in batches, so embedding never holds up a bid; query embeddings are cached,
so the machines of one process that hear the same call embed it once.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np

from core.clock import Timeline
from core.errors import EmbeddingUnavailable, InputError, MemoryStoreError
from core.mailbox import Mailbox
from memory.records import MemoryConfig, MemoryItem, MemoryKind, MemoryRecord
from memory.retention import Compaction, compact

__all__ = ["MAX_RECORD_CHARS", "MachineMemory", "MemoryStore"]

log = logging.getLogger("tamc.memory")

MAX_RECORD_CHARS = 2000
MAX_QUERY_CHARS = 2000
MAX_K = 50
_WIDEN_UNTIL = 1024
"""Nearest records scanned before a filtered recall hands the filter to chromadb (8 ms at 100k)."""
_CACHE = 16_384
"""Query embeddings kept (a call heard by several machines is embedded once)."""
_WARM_BATCH = 32
"""Texts the warm-up embeds in one pass."""
_BATCH = 256
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FIELD = re.compile(r"[^a-zA-Z0-9_.-]")
Meta = dict[str, str | int | float | bool]
T = TypeVar("T")


class MemoryStore:
    """A chromadb client: embedded under a folder, or talking to a Chroma server. One per process
    and location; machines each get a collection from it."""

    def __init__(self, config: MemoryConfig, *, clock: Timeline | None = None) -> None:
        if config.url is None and config.path is None:
            raise InputError("memory needs a folder (path) or a Chroma server URL")
        self.config = config
        self.clock = clock
        """What the writer's gathering delay runs on (real time unless told)."""
        self.where = (f"{config.path} via {config.url}" if config.path else config.url) if config.url else str(config.path)
        self._client: Any = None
        self._model: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._pending: list[tuple[MachineMemory, list[MemoryItem]]] = []
        self._writer: Mailbox | None = None
        self._persisting: queue.Queue[tuple[MachineMemory, list[MemoryRecord], list[Any]] | None] = queue.Queue()
        self._persister: threading.Thread | None = None
        self._warmer: threading.Thread | None = None
        self._computing: dict[str, Future[Any]] = {}
        self._closing = False
        self._readers: ThreadPoolExecutor | None = None

    def _open(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            import chromadb
            from chromadb.config import Settings

            from memory.embedding import MiniLMInt8, model_files

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
            model = MiniLMInt8()
            model(["warm-up"])  # load the ONNX session now: a first bid must not wait for it
            self._model = model
            self._client = client
            return client

    def machine(self, machine_id: str, *, clock: Callable[[], datetime] | None = None, fresh: bool = False) -> MachineMemory:
        """The machine's own memory (its collection is made on first use); ``fresh`` forgets what an
        earlier run left in it."""
        client = self._open()
        name = f"tamc-memory-{_field(machine_id)}"
        try:
            if fresh:
                from chromadb.errors import NotFoundError

                with contextlib.suppress(NotFoundError):  # asking first lists every collection, each validated
                    client.delete_collection(name)
            collection = client.get_or_create_collection(
                name, embedding_function=self._model, configuration={"hnsw": {"space": "cosine"}},
                metadata={"machine_id": machine_id})
        except Exception as exc:
            raise _store_error(self.where, f"cannot open the collection {name}", exc) from exc
        return MachineMemory(machine_id, collection, self, where=self.where, clock=clock or (lambda: datetime.now(UTC)))

    # -- embedding -------------------------------------------------------------------------------

    def embed(self, texts: list[str]) -> list[Any]:
        return list(self._model(texts))

    def embed_query(self, text: str) -> Any:
        """One text's vector, cached; machines asking for the same text at once share one pass."""
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
            pending = self._computing.get(text)
            mine = pending is None
            if pending is None:
                pending = self._computing[text] = Future()
        if not mine:
            return pending.result()
        try:
            vector = self._model([text])[0]
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._computing.pop(text, None)
        with self._lock:
            self._cache[text] = vector
            while len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        pending.set_result(vector)
        return vector

    def warm(self, texts: list[str]) -> None:
        """Embed ``texts`` into the query cache on a background thread, in order and in batches (a
        batch of 32 costs a quarter less CPU per text than one at a time; a city knows the
        jobs its requesters will post: their vectors are ready when the calls come). A vector is the
        same whenever it is computed, alone or in a batch (the padding is masked: bit for bit), so
        this changes how fast a price is found, never the price."""
        wanted = list(dict.fromkeys(texts))[: _CACHE // 2]

        def run() -> None:
            try:
                self._open()
            except Exception:  # the machines will report it
                return
            for i in range(0, len(wanted), _WARM_BATCH):
                if self._closing:
                    return
                with self._lock:  # the cache is written by the machines' threads too
                    batch = [t for t in wanted[i:i + _WARM_BATCH] if t not in self._cache]
                try:
                    vectors = self._model(batch) if batch else []
                except Exception:  # a cold cache is only slower
                    log.debug("memory warm-up stopped", exc_info=True)
                    return
                with self._lock:
                    for text, vector in zip(batch, vectors, strict=True):
                        self._cache.setdefault(text, vector)

        self._warmer = threading.Thread(target=run, name="memory-warm", daemon=True)
        self._warmer.start()

    # -- background work -------------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run a read (a price signal, a recall) on the store's reader threads, or at once on the
        caller's when it has none (``read_threads=0``)."""
        if self.config.read_threads == 0:
            future: Future[T] = Future()
            try:
                future.set_result(fn(*args))
            except Exception as exc:  # handed to whoever reads the future
                future.set_exception(exc)
            return future
        with self._lock:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(max_workers=self.config.read_threads, thread_name_prefix="tamc-memory-read")
            return self._readers.submit(fn, *args)

    def write_later(self, memory: MachineMemory, items: list[MemoryItem]) -> None:
        """Queue records; the writer stores everything queued within ``write_delay_s`` in one go
        (fewer, larger writes: each add costs a commit)."""
        with self._lock:
            first = not self._pending
            self._pending.append((memory, items))
            if self._writer is None:
                self._writer = Mailbox("memory-writer", clock=self.clock)
            writer = self._writer
        if first:
            writer.call_later(self.config.write_delay_s, self._write_pending)

    def flush(self) -> None:
        """Wait until every record handed to ``remember_later`` is stored (or has failed)."""
        writer = self._writer
        if writer is not None:
            writer.call(self._write_pending, timeout=120)
        self.persisted()

    def close(self) -> None:
        """Store what is queued and stop the writer and reader threads."""
        self._closing = True
        if self._warmer is not None:  # a daemon thread left inside onnxruntime at exit aborts the process
            self._warmer.join(timeout=30)
        self.flush()
        with self._lock:
            writer, self._writer = self._writer, None
            readers, self._readers = self._readers, None
        if writer is not None:
            writer.close(timeout=30)
        if self._persister is not None and self._persister.is_alive():
            self._persisting.put(None)
            self._persister.join(timeout=30)
        if readers is not None:
            readers.shutdown(wait=True, cancel_futures=True)

    def _write_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        groups: dict[int, tuple[MachineMemory, list[MemoryItem]]] = {}
        for memory, items in batch:
            groups.setdefault(id(memory), (memory, []))[1].extend(items)
        for memory, items in groups.values():
            for start in range(0, len(items), _BATCH):
                self._write(memory, items[start:start + _BATCH])

    def persist(self, memory: MachineMemory, records: list[MemoryRecord], vectors: list[Any]) -> None:
        """Hand records to the persister thread, which writes them to the store in order."""
        with self._lock:
            if self._persister is None or not self._persister.is_alive():
                self._persister = threading.Thread(target=self._persist_loop, name="memory-persister", daemon=True)
                self._persister.start()
        self._persisting.put((memory, records, vectors))

    def persisted(self) -> None:
        """Wait until the persister has written everything handed to it (a read of the store itself
        must see every record; the searches of the bidding path read the in-process vectors)."""
        if self._persister is not None and self._persister.is_alive() and threading.current_thread() is not self._persister:
            self._persisting.join()

    def _persist_loop(self) -> None:
        while True:
            entry = self._persisting.get()
            try:
                if entry is None:
                    return
                memory, records, vectors = entry
                try:
                    memory.add_now(records, vectors)
                except MemoryStoreError as exc:
                    memory.write_errors += 1
                    log.warning("machine=%s memory write of %d records failed: %s", memory.machine_id, len(records), exc)
                except Exception:  # the persister must survive anything a record does
                    memory.write_errors += 1
                    log.exception("machine=%s memory write failed", memory.machine_id)
            finally:
                self._persisting.task_done()

    def _write(self, memory: MachineMemory, items: list[MemoryItem]) -> None:
        try:
            memory.remember_many(items, persist_later=True)
        except (MemoryStoreError, InputError) as exc:
            memory.write_errors += 1
            log.warning("machine=%s memory write of %d records failed: %s", memory.machine_id, len(items), exc)
        except Exception:  # the writer must survive anything a record does
            memory.write_errors += 1
            log.exception("machine=%s memory write failed", memory.machine_id)


class MachineMemory:
    """One machine's records: remember, recall (semantic, filtered), list recent ones, forget old ones."""

    def __init__(self, machine_id: str, collection: Any, store: MemoryStore, *, where: str,
                 clock: Callable[[], datetime]) -> None:
        self.machine_id = machine_id
        self.store = store
        self.config = store.config
        self.where = where
        self.clock = clock
        self.write_errors = 0
        """Background writes that failed (the records were not kept)."""
        self._col = collection
        self._lock = threading.RLock()
        self._mirrors: dict[tuple[str, str | None], _Vectors] = {}
        """Vectors of one kind (and capability) held in process, for filtered recalls."""
        self._added = 0
        self._compacting = False
        with self._guard("count records"):
            self._count = int(collection.count())
        if self._count > self.config.max_records:
            self.compact()

    # -- writing ---------------------------------------------------------------------------------

    def remember(self, text: str, *, kind: str, source: str, metadata: dict[str, Any] | None = None,
                 at: datetime | None = None) -> MemoryRecord:
        """Store one record. Text is cleaned of control characters; empty or longer than
        ``MAX_RECORD_CHARS`` is an ``InputError`` (nothing stored)."""
        return self.remember_many([MemoryItem(text, kind, source, metadata or {}, at)])[0]

    def remember_many(self, items: list[MemoryItem], *, persist_later: bool = False) -> list[MemoryRecord]:
        """Store several records in one batch (one embedding pass, one write). With ``persist_later``
        (the background writer) they are searchable at once and written to the store by its persister
        thread: a city's market time does not wait for the store's disk or server."""
        now = self.clock()
        records, keys = [], []
        for text, kind, source, metadata, at, key in items:
            when = at or now
            text = _clean(text)
            if not text:
                raise InputError("nothing to remember: the text is empty")
            if len(text) > MAX_RECORD_CHARS:
                raise InputError(f"a memory is at most {MAX_RECORD_CHARS} characters, got {len(text)}; say it in fewer words")
            kind = _kind(kind)
            meta: Meta = {k: v for k, v in metadata.items() if isinstance(v, str | int | float | bool)}
            for name in ("capability", "region"):
                if name in meta:
                    meta[name] = _field(str(meta[name]))
            meta.update(kind=kind, source=_clean(source)[:100] or "unknown", at=when.timestamp())
            rid = f"{kind}:{_field(str(meta.get('capability', '*')))}:{_field(str(meta.get('region', '*')))}:{uuid.uuid4().hex[:10]}"
            records.append(MemoryRecord(id=rid, text=text, kind=kind, source=str(meta["source"]), at=when, metadata=dict(meta)))
            keys.append(_clean(key)[:MAX_QUERY_CHARS] if key else None)
        if not records:
            return []
        with self._guard("store records"), self._lock:
            plain = [r.text for r, key in zip(records, keys, strict=True) if not key]
            fresh = iter(self.store.embed(plain) if plain else [])
            vectors = [self.store.embed_query(key) if key else next(fresh) for key in keys]
            self.add_embedded(records, vectors, persist_later=persist_later)
        if not self._compacting and (self._count > self.config.max_records
                                     or self._added >= max(self.config.max_records // 10, 100)):
            self.compact()
        return records

    def add_embedded(self, records: list[MemoryRecord], vectors: list[Any], *, persist_later: bool = False) -> None:
        """Keep records whose vectors are computed already: written (or handed to the persister),
        counted and searchable at once. ``remember_many``'s last step; a bulk load's (``bench/memory.py``)."""
        with self._lock:
            if persist_later:
                self.store.persist(self, records, vectors)
            else:
                self.add_now(records, vectors)
            for r, v in zip(records, vectors, strict=True):
                for mirrored in ((r.kind, None), (r.kind, str(r.metadata.get("capability")))):
                    if mirrored in self._mirrors:
                        self._mirrors[mirrored].add(r, v)
            self._count += len(records)
            self._added += len(records)

    def add_now(self, records: list[MemoryRecord], vectors: list[Any]) -> None:
        """Write records to the store (the persister's step, or a direct ``remember``)."""
        with self._guard("store records"):
            self._col.add(ids=[r.id for r in records], documents=[r.text for r in records],
                          metadatas=[r.metadata for r in records], embeddings=vectors)

    def compact(self, now: datetime | None = None) -> Compaction:
        """Apply the retention policy now (it also runs by itself as records are added)."""
        self._compacting, self._added = True, 0
        try:
            return compact(self, now)
        finally:
            self._compacting = False

    def remember_later(self, items: list[MemoryItem]) -> None:
        """Queue records for the store's writer thread: returns at once; failures are counted in
        ``write_errors`` and logged."""
        if items:
            self.store.write_later(self, items)

    def forget(self, ids: list[str]) -> None:
        if not ids:
            return
        self.store.persisted()
        with self._guard("delete records"), self._lock:
            self._col.delete(ids=ids)
            self._count = int(self._col.count())
            gone = set(ids)
            for mirror in self._mirrors.values():
                mirror.drop(gone)

    # -- reading ---------------------------------------------------------------------------------

    def count(self) -> int:
        return self._count

    @property
    def collection(self) -> Any:
        """The chromadb collection itself, to measure chromadb (``bench/memory.py``). Read it only:
        a write that bypasses ``remember_many`` and ``add_embedded`` leaves the count and the
        in-process vectors stale."""
        return self._col

    def similar_outcomes(self, text: str, capability: str, *, k: int = 12) -> list[MemoryRecord]:
        """The ``k`` job outcomes for ``capability`` nearest to ``text`` (a job as ``job_text``
        writes it), best first: what the bidding path prices from."""
        return self.recall(text, k=k, kind=MemoryKind.JOB_OUTCOME, capability=capability)

    def recall(self, query: str, *, k: int = 5, kind: str | None = None, capability: str | None = None,
               region: str | None = None) -> list[MemoryRecord]:
        """The ``k`` records nearest in meaning to ``query`` that match the filters, best first.
        An empty query lists the most recent instead."""
        k = max(1, min(int(k), MAX_K))
        query = _clean(query)[:MAX_QUERY_CHARS]
        if not query:
            return self.recent(kind=kind, capability=capability, region=region, limit=k)
        want = (kind and _kind(kind), capability and _field(capability), region and _field(region))
        with self._guard("search"):
            vector = self.store.embed_query(query)
            if want[0] is not None:
                mirror = self._mirror(want[0], want[1])
                with self._lock:
                    return mirror.nearest(vector, k, region=want[2])
            if self._count == 0:
                return []
            self.store.persisted()  # what the store is asked must hold every record remembered
            n = min(self._count, max(4 * k, 64) if any(want) else k)
            while True:
                found = self._col.query(query_embeddings=[vector], n_results=n, include=["distances"])
                ids = [(i, d) for i, d in zip(found["ids"][0], found["distances"][0], strict=True) if _matches(i, want)][:k]
                if len(ids) >= k or n >= self._count:
                    break
                if n >= _WIDEN_UNTIL:  # rare: let chromadb filter (exact, slower)
                    found = self._col.query(query_embeddings=[vector], n_results=k, where=_where(want), include=["distances"])
                    ids = list(zip(found["ids"][0], found["distances"][0], strict=True))
                    break
                n = min(self._count, n * 4)
            if not ids:
                return []
            got = self._col.get(ids=[i for i, _ in ids], include=["documents", "metadatas"])
        by_id = {i: (doc, meta) for i, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)}
        return [_record(i, *by_id[i], score=1.0 - d) for i, d in ids if i in by_id]

    def _mirror(self, kind: str, capability: str | None) -> _Vectors:
        """The in-process vectors of ``kind`` (and ``capability``), loaded on first use."""
        key = (kind, capability)
        with self._lock:
            mirror = self._mirrors.get(key)
            if mirror is not None:
                return mirror
            mirror = _Vectors()
            self.store.persisted()  # the store holds every record remembered before it is read
            with self._guard(f"load {kind} records"):
                offset = 0
                while True:
                    got = self._col.get(where=_where((kind, capability, None)), limit=5000, offset=offset,
                                        include=["documents", "metadatas", "embeddings"])
                    for i, doc, meta, vec in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True):
                        mirror.add(_record(i, doc, meta), vec)
                    if len(got["ids"]) < 5000:
                        break
                    offset += 5000
            self._mirrors[key] = mirror
            return mirror

    def recent(self, *, kind: str | None = None, capability: str | None = None, region: str | None = None,
               limit: int = 20) -> list[MemoryRecord]:
        """The newest records matching the filters, newest last."""
        want = (kind and _kind(kind), capability and _field(capability), region and _field(region))
        if want[0] is not None:
            with self._lock:
                rows = [r for r in self._mirror(want[0], want[1]).records
                        if want[2] is None or r.metadata.get("region") == want[2]]
        else:
            rows = self.all(where=_where(want))
        rows.sort(key=lambda r: r.at)
        return rows[-max(1, limit):]

    def find(self, **equals: str | int | float | bool) -> list[MemoryRecord]:
        """Records whose metadata has these values (e.g. ``job_id=...``), oldest first; a metadata
        scan, for chat and reports rather than the bidding path."""
        terms = [{k: v} for k, v in equals.items()]
        rows = self.all(where=terms[0] if len(terms) == 1 else {"$and": terms}) if terms else self.all()
        return sorted(rows, key=lambda r: r.at)

    def all(self, *, where: dict[str, Any] | None = None, page: int = 5000) -> list[MemoryRecord]:
        """Every record (matching chromadb ``where``); for retention and reports, not the bidding path."""
        out: list[MemoryRecord] = []
        self.store.persisted()
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


class _Vectors:
    """Records and their unit vectors, searched by cosine similarity."""

    def __init__(self) -> None:
        self.records: list[MemoryRecord] = []
        self.rows: list[Any] = []
        self._matrix: Any = None

    def add(self, record: MemoryRecord, vector: Any) -> None:
        self.records.append(record)
        self.rows.append(np.asarray(vector, dtype=np.float32))
        self._matrix = None

    def drop(self, ids: set[str]) -> None:
        keep = [i for i, r in enumerate(self.records) if r.id not in ids]
        if len(keep) != len(self.records):
            self.records = [self.records[i] for i in keep]
            self.rows = [self.rows[i] for i in keep]
            self._matrix = None

    def nearest(self, vector: Any, k: int, *, region: str | None = None) -> list[MemoryRecord]:
        if not self.records:
            return []
        if self._matrix is None:
            self._matrix = np.vstack(self.rows)
        scores = self._matrix @ np.asarray(vector, dtype=np.float32)
        if region is not None:
            scores = np.where([r.metadata.get("region") == region for r in self.records], scores, -np.inf)
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k] if len(scores) > k else np.arange(len(scores))
        order = top[np.argsort(-scores[top], kind="stable")]
        return [self.records[i].model_copy(update={"score": round(float(scores[i]), 4)}) for i in order if scores[i] > -np.inf]


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


def _kind(kind: str) -> str:
    try:
        return MemoryKind(kind).value
    except ValueError:
        raise InputError(f"no memory kind {kind!r}: say one of {', '.join(k.value for k in MemoryKind)}") from None


def _field(value: str) -> str:
    return _FIELD.sub("_", value)[:64] or "_"


def _clean(text: str) -> str:
    return _CONTROL.sub("", str(text)).strip()


def _store_error(where: str, what: str, exc: Exception) -> MemoryStoreError:
    advice = ("is the Chroma server running at that URL?" if where.startswith("http")
              else "check the folder exists, is writable and its chroma.sqlite3 is not damaged (move the folder aside to start a new memory)")
    return MemoryStoreError(f"memory store {where} {what}: {type(exc).__name__}: {exc} — {advice}; "
                            "the machine bids on without memory meanwhile")
