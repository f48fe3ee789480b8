"""The local model's figures (``agents.local_model``): the eval's suites against the 0.5B (and the
1.5B with ``--sizes=0.5b,1.5b``), one CPU thread, the eval's 20 s budget per bid.

For each size, bidding: the share of the decisions that reach the model answered by it within the
budget (target ≥ 0.9), their median latency (target < 10 s), tokens per decision, fallbacks, and the
share the guard clamped. With ``--suites=…`` (``make eval-local`` runs bidding, escalation, chat,
adversarial and market) every suite's summary for the rule engine and the model, and the eval's JSON
and HTML report in ``--out``. Needs ``make model`` (``make model SIZE=1.5b`` for the larger). The
last line is one JSON object.

    .venv/bin/python bench/local_model.py [--sizes=0.5b,1.5b] [--repeat=3] [--suites=bidding,chat] [--out=DIR]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from pydantic_ai import models

    from agents.local_model import start_server
    from evals.report import write_html, write_json
    from evals.runner import run_evals

    sizes, repeat, suites, folder = ["0.5b"], 1, ["bidding"], Path("eval-report-local")
    for arg in sys.argv[1:]:
        if arg.startswith("--sizes="):
            sizes = arg.split("=", 1)[1].split(",")
        elif arg.startswith("--repeat="):
            repeat = int(arg.split("=", 1)[1])
        elif arg.startswith("--suites="):
            suites = arg.split("=", 1)[1].split(",")
        elif arg.startswith("--out="):
            folder = Path(arg.split("=", 1)[1])
    models.ALLOW_MODEL_REQUESTS = True
    out: dict[str, object] = {"bench": "local_model", "threads": 1, "budget_s": 20.0, "repeat": repeat}
    for size in sizes:
        server = start_server(size, threads=1)
        try:
            report = run_evals(suites, ["local"], base_url=server.base_url, repeat=repeat,
                               progress=lambda line: print(line, file=sys.stderr, flush=True) if "/" in line.split()[-1] else None)
        finally:
            server.close()
        write_json(report, folder / size / "eval-report.json")
        write_html(report, folder / size / "eval-report.html")
        runs = [r for r in report.subjects[1].runs if r.suite == "bidding" and r.path != "rules-fast-path"]  # refusals never reach the model
        answered = [r for r in runs if r.model_calls and not r.error]  # a timeout is an error (and counts no call)
        out[size] = {
            "decisions_reaching_model": len(runs),
            "answered_by_model_within_budget": round(len(answered) / max(len(runs), 1), 3),
            "median_latency_ms": round(statistics.median(r.latency_ms for r in answered), 1) if answered else None,
            "max_latency_ms": round(max((r.latency_ms for r in answered), default=0.0), 1),
            "tokens_per_decision": round(statistics.mean(r.input_tokens + r.output_tokens for r in answered), 1) if answered else None,
            "fallbacks": sum(r.path == "rules-fallback" for r in runs),
            "clamped_share": round(sum(r.path == "llm-clamped" for r in runs) / max(len(runs), 1), 3),
            "suites": {subject.subject: {x.suite: x.model_dump(exclude={"title"}) for x in subject.suites} for subject in report.subjects},
            "wall_s": report.wall_s,
        }
        print(json.dumps({size: out[size]}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
