"""What ``tamc demo`` shows: a live line while the city runs and the closing tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from core.money import format_units
from market.report import MarketReport, Snapshot

__all__ = ["live_view", "report_tables"]


def live_view(s: Snapshot) -> Table:
    bar_width = 30
    done = min(s.sim_hours / s.horizon_h, 1.0)
    clock = f"[bold]hour {s.sim_hours:5.1f}[/] / {s.horizon_h:g}" if done < 1 else f"[bold]closing {s.open} open jobs[/]"
    bar = "█" * round(done * bar_width) + "░" * (bar_width - round(done * bar_width))
    t = Table.grid(padding=(0, 2))
    t.add_row(
        clock, bar,
        f"jobs {s.posted}/{s.total}", f"[green]paid {s.paid}[/]", f"[yellow]expired {s.expired}[/]",
        f"[red]refunded {s.refunded}[/]", f"open {s.open}", f"busy {s.busy}/{s.machines}",
        f"revenue {format_units(s.revenue)}",
    )
    return t


def report_tables(r: MarketReport) -> list[Any]:
    machines = Table(title=f"Machines after {r.hours:g} simulated hours (seed {r.seed}, broker: {r.broker})")
    for col in ("machine", "kind", "region", "jobs", "utilization", "revenue", "costs", "profit", "wear %"):
        machines.add_column(col, justify="left" if col in ("machine", "kind", "region") else "right")
    for m in r.machines:
        machines.add_row(m.machine_id, m.kind, m.region, str(m.jobs), f"{m.utilization:.0%}", format_units(m.revenue),
                         format_units(m.costs), format_units(m.profit), f"{m.wear_pct:.3f}")
    machines.add_row("[bold]fleet[/]", "", "", f"[bold]{r.paid}[/]", f"[bold]{r.fleet_utilization:.0%}[/]",
                     f"[bold]{format_units(r.revenue)}[/]", f"[bold]{format_units(r.costs)}[/]",
                     f"[bold]{format_units(r.profit)}[/]", "")
    market = Table(title="The market against its yardsticks", show_header=True)
    for col in ("", "jobs filled", "welfare", "of the bound", "fleet utilization"):
        market.add_column(col, justify="left" if not col else "right")
    market.add_row("contract net over MQTT", str(r.paid), format_units(r.welfare), f"{r.efficiency:.1%}", f"{r.fleet_utilization:.0%}")
    market.add_row("first-come-first-served", str(r.baseline_filled), format_units(r.baseline_welfare),
                   f"{r.baseline_efficiency:.1%}", f"{r.baseline_utilization:.0%}")
    market.add_row("offline planner (hindsight schedule)", str(r.planner_filled), format_units(r.planner_welfare),
                   f"{r.planner_efficiency:.1%}", f"{r.planner_utilization:.0%}")
    market.add_row("hindsight bound (LP relaxation)", "", format_units(r.optimum_welfare), "100%", "")
    drops = ", ".join(f"{k} {v}" for k, v in sorted(r.dropped.items())) or "none"
    latency = f"{r.accept_latency_ms_p50:.1f} / {r.accept_latency_ms_p99:.1f} ms" if r.accept_latency_ms_p50 is not None else "n/a"
    unfinished = f", {r.unfinished} STILL OPEN (drain time ran out)" if r.unfinished else ""
    summary = (f"{r.posted} jobs posted: {r.paid} paid, {r.expired} expired unfilled, {r.refunded} refunded{unfinished}; "
               f"{r.takeovers} takeovers; jobs paid twice: {r.double_awards}; envelopes dropped: {drops}; "
               f"CFP→accept p50/p99 {latency} (market time); {r.wall_s:.1f} s wall, {r.machine_days_per_s:.2f} machine-days/s; "
               f"{r.clock} clock, digest {r.digest}" + ("" if r.deterministic else " (not replayable: real time decided part of it)")
               + f"; ledger {r.ledger_url}")
    decisions = Table(title="Bidding decisions by path", show_header=True)
    for col in ("path", "decisions", "what it means"):
        decisions.add_column(col, justify="right" if col == "decisions" else "left")
    for path, meaning in PATHS.items():
        if r.decisions.get(path):
            decisions.add_row(path, str(r.decisions[path]), meaning)
    if r.model is None:
        model = "model: none configured; every bid is the rule engine's (tamc demo --model … to run LLM agents)"
    else:
        u = r.model
        lat = f"{u.latency_ms_p50:.0f} / {u.latency_ms_p99:.0f} ms" if u.latency_ms_p50 is not None and u.latency_ms_p99 is not None else "n/a"
        errors = ", ".join(f"{k} {v}" for k, v in sorted(u.errors.items())) or "none"
        model = (f"model {u.model}: asked for {u.asked} decisions, {u.calls} requests, {u.input_tokens} input + "
                 f"{u.output_tokens} output tokens, latency p50/p99 {lat}; answers not used: {errors}")
    return [machines, market, decisions, *haggle_view(r), *life_view(r), model, memory_line(r), summary]


def haggle_view(r: MarketReport) -> list[Any]:
    """The day's negotiations: deals, savings, the surplus split, and a few of the haggled jobs."""
    h = r.haggle
    if h is None:
        return []
    share = f"{h.requester_share:.0%}" if h.requester_share is not None else "n/a"
    plain = f"{h.plain_requester_share:.0%}" if h.plain_requester_share is not None else "n/a"
    answers = ", ".join(f"{k} {v}" for k, v in sorted(h.answers.items())) or "none"
    paths = ", ".join(f"{k} {v}" for k, v in sorted(h.paths.items())) or "none"
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(h.dropped.items())) or "none"
    table = Table(title=f"Haggling: {h.haggled} jobs haggled, {h.deals} deals, {h.paid} paid, {format_units(h.saved)} under the best bids")
    for col in ("job", "outcome", "best bid", "price", "messages", "deal"):
        table.add_column(col, justify="left" if col in ("job", "outcome") else "right")
    for o in [o for o in r.outcomes if o.haggled][:12]:
        table.add_row(o.job_id.rpartition(".")[2], o.outcome, format_units(o.best_bid) if o.best_bid is not None else "-",
                      format_units(o.price) if o.price is not None else "-", str(o.haggle_messages), "yes" if o.deal else "no")
    line = (f"surplus of haggled jobs: requesters {format_units(h.requester_surplus)}, machines {format_units(h.machine_surplus)} "
            f"(requesters' share {share}; {plain} on jobs not haggled; 50% is the Nash split); machines' answers: {answers}; "
            f"by path: {paths}; counters refused: {dropped}")
    return [table, line]


SHOWN = ("birth", "move", "park", "resume", "death", "retire", "maintained", "rejected", "failed")


def life_view(r: MarketReport) -> list[Any]:
    """The machines' lives: what was born, moved, parked, died, and what the holders turned down."""
    life = r.life
    if life is None:
        return ["life cycle: off (fixed costs not charged, no proposals)"]
    events = [e for e in life.events if e.event in SHOWN]
    table = Table(title=f"Life: {life.births} births, {life.moves} moves, {life.parkings} parkings, {life.resumes} resumes, "
                        f"{life.deaths} deaths, {life.maintenances} maintenances")
    for col in ("hour", "machine", "event", "detail"):
        table.add_column(col, justify="right" if col == "hour" else "left")
    for e in events[:30]:
        table.add_row(f"{e.at_h:.1f}", e.machine_id, e.event, e.detail)
    props = life.proposals
    line = (f"holders' votes: {props.get('proposal', 0)} proposals opened by the machines, {props.get('passed', 0)} passed, "
            f"{props.get('rejected', 0)} rejected, {props.get('failed', 0)} failed to execute; 'tamc proposals' lists them")
    return [table, line] if events else [line]


def memory_line(r: MarketReport) -> str:
    m = r.memory
    if m is None or m.store == "off":
        return "memory: off (--no-memory); prices follow the market index only"
    if m.unavailable:
        return f"memory: UNAVAILABLE, the machines bid without it — {m.unavailable}"
    errors = f", {m.errors} store errors (bidding went on without memory for them)" if m.errors else ""
    return (f"memory {m.store}: {m.records} records held ({m.added} added this run); "
            f"{m.priced} bids priced from memory of similar jobs{errors}")


PATHS = {
    "rules": "no model configured: the rule engine decided",
    "rules-fast-path": "routine job, or one the rules refuse: the model was not asked",
    "llm": "the model's decision, inside policy as given",
    "llm-clamped": "the model's decision, changed by the rules (price band, refusal)",
    "rules-fallback": "the model failed (timeout, error, invalid output): the rule engine decided",
}
