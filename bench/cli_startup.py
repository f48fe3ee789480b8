"""Wall time of `tamc --help` and `tamc quote` in a fresh process. Target: --help under 0.5 s.

Run: .venv/bin/python bench/cli_startup.py   (last line: JSON)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAMC = str(Path(sys.executable).with_name("tamc"))


def timed(args: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([TAMC, *args], check=True, capture_output=True, cwd=ROOT)
        out.append(time.perf_counter() - t)
    return out


def main(runs: int = 15) -> None:
    timed(["--help"], 2)  # warm the file cache
    help_s = timed(["--help"], runs)
    quote_s = timed(["quote", "prusa-01", "examples/jobs/print-bracket.json", "--json"], runs)
    print(json.dumps({"bench": "cli.startup", "runs": runs, "help_median_s": round(statistics.median(help_s), 3),
                      "help_max_s": round(max(help_s), 3), "quote_median_s": round(statistics.median(quote_s), 3),
                      "target_help_s": 0.5}))


if __name__ == "__main__":
    main()
