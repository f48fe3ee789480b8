"""The ``tamc`` command, run as a user runs it: a separate process, reading its output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "jobs"
SCRIPT = Path(sys.executable).with_name("tamc")
TAMC = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tamc"]


def tamc(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TAMC_PROFILES"}
    return subprocess.run([*TAMC, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def test_help_lists_the_commands() -> None:
    out = tamc("--help")
    assert out.returncode == 0
    for command in ("machines", "quote", "keys"):
        assert command in out.stdout


def test_help_does_not_import_the_heavy_parts() -> None:
    probe = "import sys, tamc.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'pydantic', 'nacl', 'ledger', 'machines', 'agents'}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "[]"


def test_machines_lists_every_profile() -> None:
    out = tamc("machines", "--json")
    assert out.returncode == 0
    machines = json.loads(out.stdout)
    assert {m["id"] for m in machines} == {"prusa-01", "bambu-02", "shapeoko-01", "glowforge-01", "taxi-01", "drone-01"}
    table = tamc("machines")
    assert "taxi-01" in table.stdout and "40000.00" in table.stdout
    assert [m["id"] for m in json.loads(tamc("machines", "--kind", "3d-printer", "--json").stdout)] == ["bambu-02", "prusa-01"]


@pytest.mark.parametrize(
    ("machine", "job", "price"),
    [
        ("prusa-01", "print-bracket", 5_930_000),
        ("shapeoko-01", "mill-plate", 17_410_000),
        ("glowforge-01", "cut-sign", 5_000_000),
        ("taxi-01", "ride-station", 4_000_000),
        ("drone-01", "drone-parcel", 2_000_000),
    ],
)
def test_quote_explains_a_price_for_each_kind(machine: str, job: str, price: int) -> None:
    out = tamc("quote", machine, str(EXAMPLES / f"{job}.json"), "--json")
    assert out.returncode == 0, out.stderr
    decision = json.loads(out.stdout)
    assert (decision["machine"], decision["action"], decision["price"]) == (machine, "bid", price)
    assert decision["cost"]["total"] > 0 and decision["rules"]
    human = tamc("quote", machine, str(EXAMPLES / f"{job}.json"))
    assert "BID" in human.stdout and "price.margin" in human.stdout and decision["reason"][:20] in human.stdout


def test_quote_options_change_the_decision() -> None:
    job = str(EXAMPLES / "print-bracket.json")
    busy = json.loads(tamc("quote", "prusa-01", job, "--json", "--demand", "1.4", "--queue", "1", "--queue-hours", "2").stdout)
    assert busy["price"] == 7_410_000
    worn = json.loads(tamc("quote", "prusa-01", job, "--json", "--wear", "79.99").stdout)
    assert worn["action"] == "decline" and worn["rules"][0]["code"] == "decline.wear"


def test_quote_declines_with_the_reason() -> None:
    out = tamc("quote", "bambu-02", str(EXAMPLES / "print-bracket.json"))
    assert out.returncode == 0
    assert "DECLINE" in out.stdout and "outside territory south" in out.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["quote", "prusa-01", "missing.json"], "InvalidJobSpec: job file missing.json does not exist"),
        (["quote", "nosuch", str(EXAMPLES / "print-bracket.json")], "UnknownMachine: no machine 'nosuch'"),
        (["machines", "--kind", "boat"], "UnknownMachineKind: unknown machine kind 'boat'"),
        (["quote", "prusa-01", str(EXAMPLES / "print-bracket.json"), "--energy-price", "cheap"], "InvalidAmount"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], words: str) -> None:
    out = tamc(*args)
    assert out.returncode == 2
    assert words in out.stderr
    assert "Traceback" not in out.stderr


def test_malformed_job_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "x", "kind": "printer_3d",\n "amount": }')
    out = tamc("quote", "prusa-01", str(bad))
    assert out.returncode == 2
    assert "not valid JSON" in out.stderr and "line 2" in out.stderr


def test_keys(tmp_path: Path) -> None:
    store = tmp_path / "keys.json"
    made = tamc("keys", "new", "alice", "--keystore", str(store))
    assert made.returncode == 0 and made.stdout.startswith("did:key:z6Mk")
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    listed = tamc("keys", "list", "--keystore", str(store))
    assert listed.stdout.strip() == f"alice\t{made.stdout.strip()}"
    again = tamc("keys", "new", "alice", "--keystore", str(store))
    assert again.returncode == 1 and "already exists" in again.stderr


def test_holders_govern_a_machine_from_the_command_line(tmp_path: Path) -> None:
    from ledger import Governance, Keystore, Ledger, machine_wallet, settlement

    book = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    keys = Keystore(tmp_path / "keys.json")
    settlement.register_machine(book, "prusa-cli", keys.get_or_create("prusa-cli").did, {"alice": 60, "bob": 40})
    Governance(book).register("prusa-cli", region="north")
    book.mint(machine_wallet("prusa-cli"), 100_000_000, key="cash")
    for name in ("alice", "bob", "mallory"):
        keys.get_or_create(f"holder-{name}")
    book.close()
    d = ("--data-dir", str(tmp_path))

    shares = json.loads(tamc("shares", "prusa-cli", "--json", *d).stdout)
    assert [(h["holder"], h["units"]) for h in shares["holders"]] == [("holder:alice", 60), ("holder:bob", 40)]

    opened = tamc("propose", "prusa-cli", "pricing", "--as", "bob", "--price-floor", "12.5", "--title", "Floor 12.5", "--json", *d)
    assert opened.returncode == 0, opened.stderr
    pid = json.loads(opened.stdout)["id"]
    refused = tamc("vote", pid[:8], "yes", "--as", "mallory", *d)
    assert refused.returncode == 1 and "VoteRefused" in refused.stderr and "no shares" in refused.stderr
    bad = tamc("propose", "prusa-cli", "coup", "--as", "bob", *d)
    assert bad.returncode == 2 and "no proposal kind 'coup'" in bad.stderr
    voted = tamc("vote", pid[:8], "yes", "--as", "alice", *d)
    assert voted.returncode == 0 and "passed and executed" in voted.stdout, voted.stderr
    (row,) = json.loads(tamc("proposals", "prusa-cli", "--json", *d).stdout)
    assert (row["state"], row["yes"], row["total"], row["payload"]["price_floor"]) == ("executed", 60, 100, 12_500_000)
    after = json.loads(tamc("shares", "prusa-cli", "--json", *d).stdout)
    assert after["standing"]["policy"] == {"price_floor": 12_500_000}
    late = tamc("vote", pid[:8], "no", "--as", "bob", *d)
    assert late.returncode == 1 and "closed" in late.stderr


@pytest.mark.slow
def test_the_demo_twice_prints_the_same_day_and_beats_first_come_dispatch(tmp_path: Path) -> None:
    """``tamc demo --json`` as the README runs it (12 machines, a day, memory and life cycle on),
    twice: the same digest and figures, and a market at least as good as first-come dispatch."""
    runs = []
    for name in ("first", "second"):
        env = {k: v for k, v in os.environ.items() if k != "TAMC_PROFILES"}
        out = subprocess.run([*TAMC, "demo", "--json", "--data-dir", str(tmp_path / name)], capture_output=True, text=True,
                             cwd=ROOT, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["clock"] == "virtual" and first["deterministic"] is True
    assert first["digest"] == second["digest"]
    figures = ("posted", "paid", "expired", "refunded", "welfare", "revenue", "costs", "profit", "efficiency")
    assert {k: first[k] for k in figures} == {k: second[k] for k in figures}
    assert first["efficiency"] >= first["baseline_efficiency"], (first["efficiency"], first["baseline_efficiency"])
    assert first["planner_efficiency"] >= first["baseline_efficiency"], (first["planner_efficiency"], first["baseline_efficiency"])
    assert first["planner_welfare"] <= first["optimum_welfare"], "the planner's schedule above the bound: the bound is not one"


@pytest.mark.slow
def test_demo_flat_keeps_demand_at_load_through_the_night(tmp_path: Path) -> None:
    """The first three hours of a day are its night lull (a fifth to a third of the mean rate);
    ``--flat`` offers ``--load`` then too, so it posts several times the jobs."""
    posted = {}
    for flat in (False, True):
        args = ["demo", "--json", "--hours", "3", "--machines", "4", "--load", "1.5", "--memory", "off", "--no-life",
                "--data-dir", str(tmp_path / str(flat)), *(["--flat"] if flat else [])]
        out = tamc(*args)
        assert out.returncode == 0, out.stderr[-2000:]
        posted[flat] = json.loads(out.stdout.strip().splitlines()[-1])["posted"]
    assert posted[True] > 3 * posted[False] > 0, posted
