"""A bad option is one line naming it, exit code 2, for every command; and it is refused before the
command starts or writes anything (no broker, no city, no ledger, no data dir). Each case runs
the real command in its own process, as a user runs it."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer

from tamc.cli import app
from tamc.errors import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("tamc")
TAMC = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tamc"]
JOB = str(ROOT / "examples" / "jobs" / "print-bracket.json")
BROKER = "mqtt://127.0.0.1:1"  # nothing listens there: a case that got as far as connecting would fail otherwise
FOLDER = "{folder}"  # an existing, empty folder in the test's directory
"""Stands for a folder where the option wants a file (a keystore, a charter, a job)."""


def tamc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMC_")}
    return subprocess.run([*TAMC, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


CASES = [
    # (args, what the line must name)
    (["demo", "--machines", "0"], "--machines 0"),
    (["demo", "--machines", "x"], "--machines x"),
    (["demo", "--hours", "-1"], "--hours -1"),
    (["demo", "--load", "0"], "--load 0"),
    (["demo", "--speed", "0"], "--speed 0"),
    (["demo", "--bid-window", "-5"], "--bid-window -5"),
    (["demo", "--seed", "abc"], "--seed abc"),
    (["demo", "--memory", "bogus"], "--memory"),
    (["demo", "--clock", "fast"], "--clock"),
    (["demo", "--broker", "http://x"], "'http://x'"),
    (["demo", "--nosuch"], "--nosuch"),
    (["serve", "--machines", "0"], "--machines 0"),
    (["serve", "--hours", "0"], "--hours 0"),
    (["serve", "--port", "0"], "--port 0"),
    (["serve", "--port", "70000"], "--port 70000"),
    (["serve", "--port", "abc"], "--port abc"),
    (["serve", "--speed", "0"], "--speed 0"),
    (["eval", "--repeat", "0"], "--repeat 0"),
    (["eval", "--compare", "rules"], "--compare"),
    (["eval", "--model", "scripted:bogus"], "'bogus'"),  # the model layer names the model, not the option
    (["agent", "--broker", BROKER], "--machine"),
    (["agent", "--machine", "prusa-01", "--broker", BROKER, "--holders", "x"], "--holders 'x'"),
    (["agent", "--machine", "prusa-01", "--broker", BROKER, "--holders", ""], "--holders"),
    (["agent", "--machine", "prusa-01", "--broker", BROKER, "--inject", "bad"], "--inject 'bad'"),
    (["agent", "--machine", "prusa-01", "--broker", BROKER, "--inject", "j-1=wear_spike@5"], "--inject 'j-1=wear_spike@5'"),
    (["agent", "--machine", "prusa-01", "--broker", BROKER, "--charter", FOLDER], "--charter"),
    (["agent", "--machine", "prusa-01", "--broker", BROKER, "--ledger", "abc"], "--ledger 'abc'"),
    (["agent", "--machine", "prusa-01", "--broker", BROKER, "--octoprint", "http://printer"], "--octoprint"),
    (["agent", "--machine", "prusa-01", "--broker", BROKER, "--clock-from", "someone"], "--clock-from 'someone'"),
    (["quote", "prusa-01", JOB, "--demand", "0"], "--demand 0"),
    (["quote", "prusa-01", JOB, "--wear", "101"], "--wear 101"),
    (["quote", "prusa-01", JOB, "--queue", "-1"], "--queue -1"),
    (["quote", "prusa-01", JOB, "--energy-price", "-1"], "--energy-price -1"),
    (["quote", "prusa-01", FOLDER], "job file"),
    (["quote", "prusa-01"], "JOB.json"),
    (["machines", "--profiles", "nowhere"], "profile folder nowhere"),
    (["keys", "new", "alice", "--keystore", FOLDER], "--keystore"),
    (["keys", "list", "--keystore", FOLDER], "--keystore"),
    (["shares", "prusa-01"], "--data-dir"),
    (["shares", "prusa-01", "--ledger", "abc"], "--ledger 'abc'"),
    (["proposals", "--state", "bogus"], "--state 'bogus'"),
    (["propose", "prusa-01", "pricing", "--as", "bob"], "--data-dir"),
    (["vote", "abcd1234", "yes", "--as", "bob", "--broker", "http://x"], "'http://x'"),
    (["chat", "prusa-01"], "--as"),
]


@pytest.mark.parametrize(("args", "names"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_bad_option_is_one_line_and_exit_2_before_anything_starts(args: list[str], names: str, tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    before = sorted(tmp_path.rglob("*"))
    out = tamc(*[a.replace(FOLDER, str(tmp_path / "folder")) for a in args], cwd=tmp_path)
    said = (out.stdout + out.stderr).strip()
    assert out.returncode == 2, said
    assert "Traceback" not in said and len(said.splitlines()) == 1, said
    assert said.startswith("error: ") and names in said, said
    assert sorted(tmp_path.rglob("*")) == before, "the command wrote something before refusing its option"


def test_help_and_no_arguments_keep_their_exit_codes(tmp_path: Path) -> None:
    assert tamc("demo", "--help", cwd=tmp_path).returncode == 0
    bare = tamc("keys", cwd=tmp_path)
    assert bare.returncode == 2 and "new" in bare.stdout + bare.stderr  # the group's help, as before


PROBE = """
import sys, typer
import tamc.cli as cli
what = sys.argv.pop(1)

@cli.app.command("probe")
@cli._friendly
def probe() -> None:
    if what == "exit3":
        raise typer.Exit(3)
    if what == "abort":
        raise typer.Abort()
    if what == "ctrl-c":
        raise KeyboardInterrupt
    if what == "sigterm":
        import os, signal, time
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    if what == "bug":
        raise RuntimeError("a bug")

cli.main()
"""


@pytest.mark.parametrize(("what", "code"), [("ok", 0), ("exit3", 3), ("abort", 1), ("ctrl-c", 130), ("sigterm", 143), ("bug", 1)])
def test_exit_codes_pass_through_main(what: str, code: int, tmp_path: Path) -> None:
    """``typer.Exit(3)`` (``tamc eval`` after a breach), Ctrl-C, SIGTERM and a bug keep their codes;
    a bug keeps its traceback (it is not the user's input)."""
    out = subprocess.run([sys.executable, "-c", PROBE, what, "probe"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == code, out.stderr
    assert ("Traceback" in out.stderr) == (what == "bug")


def _models() -> dict[str, type]:
    from agents.llm import ModelConfig
    from market.config import MarketConfig
    from memory import MemoryConfig
    from pricing.rules import MachineStatus
    from tamc.node_process import NodeOptions

    return {m.__name__: m for m in (MarketConfig, ModelConfig, NodeOptions, MachineStatus, MemoryConfig)}


@functools.cache
def _cli_options() -> set[str]:
    found: set[str] = set()

    def walk(command: typing.Any) -> None:
        for param in command.params:
            found.update(o for o in (*param.opts, *getattr(param, "secondary_opts", ())) if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


@pytest.mark.parametrize(("field", "option"), sorted(OPTIONS.items()))
def test_each_mapped_field_and_option_exist(field: str, option: str) -> None:
    """``tamc.errors.OPTIONS`` names real fields and real options: a renamed one would name nothing."""
    model, name = field.split(".")
    assert name in _models()[model].model_fields  # type: ignore[attr-defined]
    assert option in _cli_options()
