"""What the machine's vector memory costs: writes, and recalls with and without a filter, at
1k, 10k and 100k records in one machine's collection (embedded chromadb, int8 MiniLM).

- add: records per second through ``remember_many`` (embedding + write), measured on the first
  2,000 records of each size. The rest of a large store is filled with the vectors of 5,000
  embedded texts, each nudged and renormalised (distinct vectors, real texts), written straight
  to the collection: embedding 100k texts would take minutes and measures the model, not memory;
  that fill's write rate is reported too.
- recall: ``MachineMemory.recall`` end to end (embed a new query — never cached — then search),
  p50/p99 over distinct queries: unfiltered; filtered by a common kind and capability (job
  outcomes for "print", ~12%); filtered by a rare kind (facts, 5%); and chromadb's own ``where``
  on the same filter, for comparison.
- bidding: ``similar_outcomes`` (the in-process vectors the bidding path reads).

Prints one JSON object per size and a summary as the last line.

    .venv/bin/python bench/memory.py [--quick]
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memory import MemoryConfig, MemoryItem, MemoryRecord, MemoryStore  # noqa: E402

CAPS = ["print", "mill", "cut", "ride", "deliver"]
REGIONS = ["north", "south", "east", "west"]
MATERIALS = ["PLA", "PETG", "ABS", "aluminium", "plywood", "acrylic"]
PARTS = ["nozzle", "belt", "bed", "spindle", "laser tube", "bearing", "fan", "tyre", "battery", "extruder gear"]


def item(rng: random.Random, i: int) -> MemoryItem:
    cap, region = rng.choice(CAPS), rng.choice(REGIONS)
    roll = rng.random()
    if roll < 0.6:
        won = rng.random() < 0.4
        text = (f"job j{i}: {cap} in {region}, {rng.choice(MATERIALS)} {rng.randint(10, 250)}×{rng.randint(10, 250)} mm, "
                f"due {rng.randint(1, 48)} h. We bid {rng.randint(2, 90)}.{rng.randint(0, 99):02d}; "
                + ("won." if won else f"lost to m{rng.randint(1, 40)} at {rng.randint(2, 90)}.00."))
        return MemoryItem(text, "job_outcome", "market", {"capability": cap, "region": region, "outcome": "won" if won else "lost"})
    if roll < 0.75:
        return MemoryItem(f"wear {rng.uniform(1, 79):.2f}% after job j{i} ({cap}, {rng.uniform(0.2, 9):.2f} h)", "wear", "telemetry",
                          {"capability": cap})
    if roll < 0.95:
        return MemoryItem(f"demand {cap} in {region} at {rng.randint(0, 23):02d}:00: {rng.randint(0, 40)} calls seen, "
                          f"we bid on {rng.randint(0, 10)}, won {rng.randint(0, 5)}", "demand", "market", {"capability": cap, "region": region})
    return MemoryItem(f"{rng.choice(['alice', 'bob', 'carol'])} says the {rng.choice(PARTS)} was {rng.choice(['replaced', 'cleaned', 'adjusted', 'checked'])} "
                      f"on day {rng.randint(1, 365)} after {rng.choice(['a jam', 'noise', 'a failed job', 'routine service'])}", "fact", "alice", {})


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def timed(fn, queries: list[str]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    ms = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        ms.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99)}


def run(size: int, queries: int, rng: random.Random, pool: tuple[list[MemoryItem], np.ndarray]) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="tamc-bench-memory-"))
    store = MemoryStore(MemoryConfig(path=folder, max_records=size * 2))
    memory = store.machine(f"bench-{size}")
    real = [item(rng, i) for i in range(min(size, 2000))]
    t = time.perf_counter()
    for start in range(0, len(real), 500):
        memory.remember_many(real[start : start + 500])
    add_per_s = len(real) / (time.perf_counter() - t)

    fill_per_s = None
    rest = size - len(real)
    if rest > 0:
        items, vectors = pool
        t = time.perf_counter()
        for start in range(0, rest, 5000):
            n = min(5000, rest - start)
            picks = [rng.randrange(len(items)) for _ in range(n)]
            vecs = vectors[picks] + np.random.default_rng(start).normal(0, 0.02, (n, vectors.shape[1])).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            chosen = [items[p] for p in picks]
            now = datetime.now(UTC)
            memory.add_embedded([MemoryRecord(
                id=f"{c.kind}:{c.metadata.get('capability', '*')}:{c.metadata.get('region', '*')}:{uuid.uuid4().hex[:10]}",
                text=c.text, kind=c.kind, source=c.source, at=now,
                metadata={**c.metadata, "kind": c.kind, "source": c.source, "at": now.timestamp()}) for c in chosen], list(vecs))
        fill_per_s = rest / (time.perf_counter() - t)

    asks = [item(rng, 10_000_000 + i).text for i in range(queries)]  # never seen: every query is embedded
    col = memory.collection
    result = {
        "records": memory.count(),
        "add_per_s": round(add_per_s),
        "fill_write_per_s": round(fill_per_s) if fill_per_s else None,
        "recall": timed(lambda q: memory.recall(q, k=10), asks),
        "recall_jobs_print": timed(lambda q: memory.recall(q + " (b)", k=10, kind="job_outcome", capability="print"), asks),
        "recall_facts": timed(lambda q: memory.recall(q + " (c)", k=10, kind="fact"), asks),
        "chroma_where_jobs_print": timed(
            lambda q: col.query(query_embeddings=[store.embed_query(q + " (d)")], n_results=10,
                                where={"$and": [{"kind": "job_outcome"}, {"capability": "print"}]},  # chromadb's own filter
                                include=["documents", "metadatas", "distances"]),
            asks[: max(queries // 4, 10)]),
        "similar_outcomes": timed(lambda q: memory.similar_outcomes(q + " (e)", "print", k=12), asks),
    }
    store.close()
    return {"size": size, **result}


def main() -> None:
    quick = "--quick" in sys.argv
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    queries = 50 if quick else 200
    rng = random.Random(7)
    warm = MemoryStore(MemoryConfig(path=Path(tempfile.mkdtemp(prefix="tamc-bench-pool-"))))
    warm.machine("pool")
    pool_items = [item(rng, 5_000_000 + i) for i in range(2000 if quick else 5000)]
    t = time.perf_counter()
    pool_vectors = np.asarray(warm.embed([p.text for p in pool_items]), dtype=np.float32)
    embed_per_s = len(pool_items) / (time.perf_counter() - t)
    print(json.dumps({"embed_per_s": round(embed_per_s), "texts": len(pool_items)}), flush=True)
    rows = []
    for size in sizes:
        row = run(size, queries, rng, (pool_items, pool_vectors))
        rows.append(row)
        print(json.dumps(row), flush=True)
    top = rows[-1]
    print(json.dumps({
        "bench": "memory", "embed_per_s": round(embed_per_s),
        "sizes": [r["size"] for r in rows],
        "add_per_s": [r["add_per_s"] for r in rows],
        "recall_p50_ms": [r["recall"]["p50_ms"] for r in rows],  # type: ignore[index]
        "recall_filtered_p50_ms": [r["recall_jobs_print"]["p50_ms"] for r in rows],  # type: ignore[index]
        "recall_filtered_p99_ms": [r["recall_jobs_print"]["p99_ms"] for r in rows],  # type: ignore[index]
        "recall_rare_filter_p50_ms": [r["recall_facts"]["p50_ms"] for r in rows],  # type: ignore[index]
        "chroma_where_p50_ms": [r["chroma_where_jobs_print"]["p50_ms"] for r in rows],  # type: ignore[index]
        "similar_outcomes_p50_ms": [r["similar_outcomes"]["p50_ms"] for r in rows],  # type: ignore[index]
        "target": "p50 filtered recall < 10 ms at the largest size",
        "target_met": top["recall_jobs_print"]["p50_ms"] < 10 and top["recall_facts"]["p50_ms"] < 10,  # type: ignore[index]
    }))


if __name__ == "__main__":
    main()
