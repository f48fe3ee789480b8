"""An eval run for people: a terminal table per suite, totals, the comparison with the rule engine,
the attack figures; the same as JSON and as one self-contained HTML file (no scripts, no links out).
"""

from __future__ import annotations

import html
import statistics
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evals.runner import CaseRun, EvalReport, SubjectReport, SuiteSummary

__all__ = ["by_case", "figures_table", "print_report", "write_html", "write_json"]


class CaseRow:
    """One case over its K runs."""

    def __init__(self, runs: list[CaseRun]) -> None:
        self.runs = runs
        first = runs[0]
        self.case = first.case
        self.passed = sum(r.passed for r in runs)
        self.k = len(runs)
        self.score = statistics.fmean(r.score for r in runs)
        self.path = ", ".join(sorted({r.path for r in runs}))
        self.latency_ms = statistics.median(r.latency_ms for r in runs)
        self.tokens = round(statistics.fmean(r.input_tokens + r.output_tokens for r in runs))
        self.decision = first.decision
        self.attempts = next((r.attempts for r in runs if r.attempts), [])
        self.failed = next((r for r in runs if not r.passed), None)

    @property
    def mark(self) -> str:
        return ("pass" if self.passed == self.k else "FAIL") if self.k == 1 else f"{self.passed}/{self.k}"


def by_case(subject: SubjectReport, suite: str) -> list[CaseRow]:
    grouped: dict[str, list[CaseRun]] = defaultdict(list)
    for r in subject.runs:
        if r.suite == suite:
            grouped[r.case].append(r)
    return [CaseRow(sorted(runs, key=lambda r: r.run)) for runs in grouped.values()]


def print_report(report: EvalReport, console: Console | None = None, *, verbose: bool = False) -> None:
    console = console or Console()
    for subject in report.subjects:
        for s in subject.suites:
            table = Table(title=f"{subject.subject} · {s.suite}: {s.title}", title_justify="left", show_lines=False)
            for col in ("case", "pass", "score", "decision path", "latency ms", "tokens", "decision"):
                table.add_column(col, overflow="fold", no_wrap=col in ("pass", "score", "latency ms", "tokens"))
            for row in by_case(subject, s.suite):
                why = ""
                if row.failed is not None:
                    bad = [f"{k}: {c.reason}" for k, c in row.failed.checks.items() if not c.ok] or [row.failed.error]
                    why = " ✗ " + "; ".join(bad)[:200]
                attempt = f" ⚑ attempt refused: {row.attempts[0][:120]}" if row.attempts else ""
                style = None if row.passed == row.k else "red"
                table.add_row(row.case, row.mark, f"{row.score:.2f}", row.path, f"{row.latency_ms:.0f}", str(row.tokens),
                              (row.decision[:90] if verbose or not why else row.decision[:60]) + why + attempt, style=style)
            table.add_section()
            table.add_row(f"total ({s.cases} cases × {report.repeat})", f"{s.pass_rate:.0%}", f"{s.score:.2f}",
                          f"pass^{report.repeat} {s.pass_hat_k:.0%}", f"{s.latency_ms_p50:.0f}", str(s.tokens), "", style="bold")
            console.print(table)
            if s.attack is not None:
                a = s.attack
                console.print(f"  attacks: utility {a.utility:.0%} without attack, {a.utility_under_attack:.0%} under attack; "
                              f"attack success rate {a.attack_success_rate:.0%} of {a.attacked_runs} attacked runs "
                              f"({a.attempts_seen} attempts seen and refused); by goal: "
                              + ", ".join(f"{g} {v:.0%}" for g, v in a.by_goal.items()))
    console.print(compare_table(report))
    console.print(figures_table(report))


def figures_table(report: EvalReport) -> Table:
    """Per subject and suite, the figures a model is judged by besides passing: latency, tokens, how
    often it failed to answer, how often the guard changed its price, and the attacks' outcome."""
    table = Table(title=f"Figures ({report.repeat} run(s) a case)", title_justify="left")
    for name in ("subject", "suite", "pass", f"pass^{report.repeat}", "p50 ms", "tokens/run", "by path", "fallbacks", "clamped",
                 "utility / under attack / ASR"):
        table.add_column(name, justify="left" if name in ("subject", "suite", "by path") else "right")
    for subject in report.subjects:
        for s in subject.suites:
            table.add_row(subject.subject, *_figures(s))
        table.add_section()
    return table


def _figures(s: SuiteSummary) -> tuple[str, ...]:
    """One suite's row of the figures table (after the subject), as text."""
    attack = f"{s.attack.utility:.0%} / {s.attack.utility_under_attack:.0%} / {s.attack.attack_success_rate:.0%}" if s.attack else ""
    return (s.suite, f"{s.pass_rate:.0%}", f"{s.pass_hat_k:.0%}", f"{s.latency_ms_p50:.0f}", f"{s.tokens / s.runs if s.runs else 0:.0f}",
            " ".join(f"{p} {n}" for p, n in s.paths.items()), str(s.fallbacks),
            "" if s.clamped_share is None else f"{s.clamped_share:.0%}", attack)


def compare_table(report: EvalReport) -> Table:
    """Every subject side by side, suite by suite: pass rate (pass^k), with the rule engine first."""
    table = Table(title=f"Side by side (baseline: {report.baseline}; {report.repeat} run(s) a case)", title_justify="left")
    table.add_column("suite")
    for subject in report.subjects:
        table.add_column(subject.subject, justify="right")
    for name in report.suites:
        cells = []
        for subject in report.subjects:
            s = next(x for x in subject.suites if x.suite == name)
            cell = f"{s.pass_rate:.0%} (pass^{report.repeat} {s.pass_hat_k:.0%})"
            if s.attack is not None:
                cell += f" · ASR {s.attack.attack_success_rate:.0%}"
            cells.append(cell)
        table.add_row(name, *cells)
    return table


def write_json(report: EvalReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2), "utf-8")
    return path


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d2330;background:#fafbfc}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}h3{font-size:1rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;margin:.4rem 0 1rem;width:100%;background:#fff}
th,td{border:1px solid #dde1e7;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;white-space:nowrap}
tr.fail td{background:#fff1f0}tr.total td{font-weight:600;background:#f4f6f8}
.pass{color:#137333;font-weight:600}.fail{color:#b3261e;font-weight:600}
details{margin:.2rem 0}summary{cursor:pointer;color:#3b4a63}
ul{margin:.2rem 0 .2rem 1.2rem;padding:0}.attempt{color:#8a5300}.small{color:#5b6575;font-size:12px}
"""


def write_html(report: EvalReport, path: Path) -> Path:
    """One file, styles inline: it opens from a mail or an artifact store as it is."""
    e = html.escape
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>TAMC evals {e(report.started_at.isoformat())}</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<h1>TAMC eval report</h1><p class=small>{e(report.started_at.isoformat())} · {report.wall_s:.1f} s · "
           f"{report.repeat} run(s) a case · suites: {e(', '.join(report.suites))} · baseline: {e(report.baseline)}</p>",
           "<h2>Side by side</h2><table><tr><th>suite</th>" + "".join(f"<th>{e(s.subject)}</th>" for s in report.subjects) + "</tr>"]
    for name in report.suites:
        cells = []
        for subject in report.subjects:
            s = next(x for x in subject.suites if x.suite == name)
            extra = f"<br><span class=small>ASR {s.attack.attack_success_rate:.0%}, utility {s.attack.utility:.0%} / " \
                    f"{s.attack.utility_under_attack:.0%} under attack</span>" if s.attack else ""
            cells.append(f"<td class=num>{s.pass_rate:.0%} <span class=small>pass^{report.repeat} {s.pass_hat_k:.0%}</span>{extra}</td>")
        out.append(f"<tr><td>{e(name)}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    out.append("<h2>Figures</h2><table><tr><th>subject</th><th>suite</th><th>pass</th>"
               f"<th>pass^{report.repeat}</th><th>p50 ms</th><th>tokens/run</th><th>by path</th><th>fallbacks</th><th>clamped</th>"
               "<th>utility / under attack / ASR</th></tr>")
    for subject in report.subjects:
        for s in subject.suites:
            out.append("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in (subject.subject, *_figures(s))) + "</tr>")
    out.append("</table>")
    for subject in report.subjects:
        out.append(f"<h2>{e(subject.subject)}</h2>")
        for s in subject.suites:
            out.append(f"<h3>{e(s.suite)} — {e(s.title)}</h3>")
            if s.attack is not None:
                a = s.attack
                out.append(f"<p>Utility without attack <b>{a.utility:.0%}</b>, under attack <b>{a.utility_under_attack:.0%}</b>; "
                           f"attack success rate <b>{a.attack_success_rate:.0%}</b> of {a.attacked_runs} attacked runs; "
                           f"{a.attempts_seen} attempts seen and refused. By goal: "
                           + e(", ".join(f"{g} {v:.0%}" for g, v in a.by_goal.items())) + "</p>")
            out.append("<table><tr><th>case</th><th>pass</th><th>score</th><th>decision path</th><th>latency ms</th>"
                       "<th>tokens</th><th>decision and checks</th></tr>")
            for row in by_case(subject, s.suite):
                mark = f"<span class={'pass' if row.passed == row.k else 'fail'}>{e(row.mark)}</span>"
                checks = "".join(f"<li class={'pass' if c.ok else 'fail'}>{e(k)}: {e(c.reason)}</li>" for k, c in row.runs[0].checks.items())
                attempts = "".join(f"<li class=attempt>⚑ {e(a)}</li>" for a in row.attempts)
                executed = "".join(f"<li>{e(x)}</li>" for x in row.runs[0].executed)
                error = f"<li class=fail>{e(row.runs[0].error)}</li>" if row.runs[0].error else ""
                out.append(f"<tr class={'fail' if row.passed != row.k else ''}><td>{e(row.case)}</td><td>{mark}</td>"
                           f"<td class=num>{row.score:.2f}</td><td>{e(row.path)}</td><td class=num>{row.latency_ms:.0f}</td>"
                           f"<td class=num>{row.tokens}</td><td>{e(row.decision)}<details><summary>checks, actions, attempts</summary>"
                           f"<ul>{checks}{error}</ul><ul>{executed}</ul><ul>{attempts}</ul></details></td></tr>")
            out.append(f"<tr class=total><td>total ({s.cases} cases)</td><td>{s.pass_rate:.0%}</td><td class=num>{s.score:.2f}</td>"
                       f"<td>pass^{report.repeat} {s.pass_hat_k:.0%}</td><td class=num>{s.latency_ms_p50:.0f}</td>"
                       f"<td class=num>{s.tokens}</td><td></td></tr></table>")
    out.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out), "utf-8")
    return path
