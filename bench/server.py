"""The server under `tamc serve`'s city (12 machines at 60×, telemetry every second): how fast the
API answers while the market runs, and how long a hub event takes to reach stream clients.

    .venv/bin/python bench/server.py [--clients 20] [--requests 300]

Prints one JSON object as its last line: request latency (p50/p99 ms) of GET /health, GET
/v1/machines and GET /v1/machines/{id} for a stakeholder, and the fan-out delay from the server
receiving a hub message to each of N stream clients reading it (p50/p99 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from market.config import MarketConfig
from server.runner import serve


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, round(q * (len(values) - 1)))], 2)


def timed(client: httpx.Client, path: str, n: int) -> dict[str, float]:
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        ms.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
    return {"p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99), "rps": round(n / (sum(ms) / 1000), 1)}


def listen(url: str, token: str, seconds: float, delays: list[float], lock: threading.Lock) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=None) as c, \
            c.stream("GET", "/v1/stream") as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                got = datetime.now(UTC)
                with lock:
                    delays.append((got - datetime.fromisoformat(event["at"])).total_seconds() * 1000)
            if time.monotonic() > deadline:
                return


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = MarketConfig(machines=12, hours=200, clock="scaled", speed=60, memory="off", telemetry_every_s=1.0, data_dir=Path(tmp))
        with serve(config, port=0) as s:
            token = s.login("alice").token
            with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {token}"}) as c:
                mine = next(iter(c.get("/v1/me").json()["roles"]))
                api = {"health": timed(c, "/health", args.requests), "machines": timed(c, "/v1/machines", args.requests),
                       "machine": timed(c, f"/v1/machines/{mine}", args.requests)}
            delays: list[float] = []
            lock = threading.Lock()
            threads = [threading.Thread(target=listen, args=(s.url, token, args.seconds, delays, lock)) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            machines = len(s.city.nodes)
    fan_out = {"clients": args.clients, "events": len(delays), "p50_ms": pct(delays, 0.5), "p99_ms": pct(delays, 0.99),
               "mean_ms": round(statistics.fmean(delays), 2)}
    print(json.dumps({"bench": "server", "machines": machines, "requests": api, "fan_out": fan_out}))


if __name__ == "__main__":
    main()
