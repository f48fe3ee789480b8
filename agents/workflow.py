"""The job workflow: each accepted job runs as a langgraph graph with a persistent checkpoint.

::

    prepare ──concern──▶ raise_handoff ──▶ await_operator ──continue──▶ execute (not started) / carry_on
       │                     ▲                   │ abort / done / escalate / closed
       ▼                     │ concern           ▼
    execute ──▶ monitor ─────┘  ◀─ tick ─┐     finish ──▶ END
                   │  └──────────────────┘       ▲
                   └──── done / failed / closed ─┘

``monitor`` and ``await_operator`` wait in ``interrupt``: for the node's next tick (it reads the
machine then), or for an operator's handback. The checkpointer (SQLite by default, PostgreSQL for
scale) keeps every step, written before the next one runs (``durability="sync"``; langgraph's default
writes in the background, and a killed process could lose the last steps), so a restarted node finds
each job, and each pending handoff, where it was.

langgraph re-runs an interrupted node from its start when it resumes, and a crash may repeat a
step: every effect goes through the ``JobPort`` (the machine node) and is idempotent — starting a
job already running does nothing, a handoff id is derived from the job and a counter, publishing
``done`` twice still pays once (the escrow is released under one idempotency key).
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from pydantic import BaseModel

from agents.handoff import Concern
from core.errors import InputError
from core.mailbox import Mailbox

__all__ = ["FlowState", "FlowStatus", "JobFlows", "JobPort", "Outcome", "Run", "checkpointer", "in_memory", "thread_id"]

Outcome = Literal["done", "aborted", "escalated", "failed", "closed"]
Run = Literal["running", "paused", "done", "cancelled", "failed", "unknown"]
DECIDED: dict[str, Outcome] = {"abort": "aborted", "done": "done", "escalate": "escalated"}


class FlowState(TypedDict, total=False):
    job_id: str
    machine_id: str
    contract: dict[str, Any]
    """What the node needs to rebuild the contract after a restart (job, requester, price, deadlines)."""
    hours: float
    wear_at_start: float
    expected_wear: float
    confidence: float | None
    started: bool
    progress: float
    run: str
    concern: dict[str, Any] | None
    """A concern found and not yet raised as a handoff."""
    handoff: dict[str, Any] | None
    """The handoff waiting for an operator."""
    handoffs: int
    decision: str | None
    outcome: str | None
    finished: bool
    """Set by ``finish``, the last step: the workflow's end (langgraph's own ``next`` is empty too
    when a step's writes are saved but the following checkpoint is not, after a kill)."""


class JobPort(Protocol):
    """What the graph asks of the machine node (on the node's thread). Every method is idempotent."""

    def check_start(self, state: FlowState) -> Concern | None: ...
    def start(self, state: FlowState) -> dict[str, Any]: ...
    def read(self, state: FlowState) -> tuple[Run, float, Concern | None]: ...
    def safe_state(self, state: FlowState) -> None: ...
    def raise_handoff(self, state: FlowState, concern: Concern, handoff_id: str) -> dict[str, Any]: ...
    def carry_on(self, state: FlowState) -> None: ...
    def finish(self, state: FlowState, outcome: Outcome) -> None: ...


class FlowStatus(BaseModel):
    """Where a job's workflow stands after a step: waiting for a tick, for an operator, or ended."""

    thread_id: str
    waiting: Literal["tick", "operator"] | None
    values: dict[str, Any]
    ended: bool = False
    """True once the graph reached its end; a workflow neither waiting nor ended stopped between two
    steps (its process died) and ``proceed`` carries it on."""

    @property
    def outcome(self) -> str | None:
        return cast(str | None, self.values.get("outcome"))


def thread_id(machine_id: str, job_id: str) -> str:
    return f"{machine_id}/{job_id}"


def _port(config: RunnableConfig) -> JobPort:
    return cast(JobPort, config["configurable"]["port"])


# -- the nodes --------------------------------------------------------------------------------------

def _prepare(state: FlowState, config: RunnableConfig) -> dict[str, Any]:
    concern = _port(config).check_start(state)
    return {"concern": concern.model_dump() if concern else None, "handoffs": state.get("handoffs", 0)}


def _execute(state: FlowState, config: RunnableConfig) -> dict[str, Any]:
    return {**_port(config).start(state), "started": True, "run": "running"}


def _monitor(state: FlowState, config: RunnableConfig) -> dict[str, Any]:
    signal = interrupt({"wait": "tick"})
    if "closed" in signal:
        return {"outcome": "closed"}
    port = _port(config)
    if "takeover" in signal:
        taken = Concern(reason="operator", detail=f"{signal['takeover']} took control", proposal="hand back when done")
        return {"concern": taken.model_dump()}
    run, progress, concern = port.read(state)
    update: dict[str, Any] = {"run": run, "progress": progress}
    if run == "done":
        update["outcome"] = "done"
    elif run in ("cancelled", "failed"):
        update["outcome"] = "failed"
    elif concern is not None:
        update["concern"] = concern.model_dump()
    return update


def _raise_handoff(state: FlowState, config: RunnableConfig) -> dict[str, Any]:
    port = _port(config)
    number = state.get("handoffs", 0) + 1
    concern = Concern.model_validate(state["concern"])
    if state.get("started"):
        port.safe_state(state)
    handoff = port.raise_handoff(state, concern, f"{state['job_id']}~h{number}")
    return {"handoff": handoff, "handoffs": number, "concern": None}


def _await_operator(state: FlowState, config: RunnableConfig) -> dict[str, Any]:
    signal = interrupt({"wait": "operator", "handoff": state.get("handoff")})
    if "closed" in signal:
        return {"outcome": "closed", "handoff": None}
    decision = str(signal.get("decision", ""))
    return {"decision": decision, "outcome": DECIDED.get(decision), "handoff": None}


def _carry_on(state: FlowState, config: RunnableConfig) -> dict[str, Any]:
    _port(config).carry_on(state)
    return {}


def _finish(state: FlowState, config: RunnableConfig) -> dict[str, Any]:
    _port(config).finish(state, cast(Outcome, state.get("outcome") or "failed"))
    return {"finished": True}


def _after_prepare(state: FlowState) -> str:
    return "raise_handoff" if state.get("concern") else "execute"


def _after_monitor(state: FlowState) -> str:
    if state.get("outcome"):
        return "finish"
    return "raise_handoff" if state.get("concern") else "monitor"


def _after_operator(state: FlowState) -> str:
    if state.get("outcome"):
        return "finish"
    return "carry_on" if state.get("started") else "execute"


def build_graph() -> StateGraph[FlowState]:
    graph = StateGraph(FlowState)
    for name, fn in (("prepare", _prepare), ("execute", _execute), ("monitor", _monitor), ("raise_handoff", _raise_handoff),
                     ("await_operator", _await_operator), ("carry_on", _carry_on), ("finish", _finish)):
        graph.add_node(name, fn)
    graph.add_edge(START, "prepare")
    graph.add_conditional_edges("prepare", _after_prepare, ["raise_handoff", "execute"])
    graph.add_edge("execute", "monitor")
    graph.add_conditional_edges("monitor", _after_monitor, ["finish", "raise_handoff", "monitor"])
    graph.add_edge("raise_handoff", "await_operator")
    graph.add_conditional_edges("await_operator", _after_operator, ["finish", "carry_on", "execute"])
    graph.add_edge("carry_on", "monitor")
    graph.add_edge("finish", END)
    return graph


class JobFlows:
    """The compiled job workflow over one checkpointer; shared by every node of a process."""

    def __init__(self, saver: BaseCheckpointSaver[Any], *, worker: Mailbox | None = None) -> None:
        self.saver = saver
        self.graph = build_graph().compile(checkpointer=saver)
        self.durable = not isinstance(saver, InMemorySaver)
        """False for an in-memory checkpointer: nothing survives the process, so nothing is indexed to resume."""
        self.worker = worker
        """The thread graph steps run on (one at a time), off every node's own thread, where bid
        windows are real milliseconds; None runs each step on its node's own mailbox, as an item of
        its own (a city on virtual time: a step then takes no market time and its order is fixed)."""

    def start(self, port: JobPort, state: FlowState) -> FlowStatus:
        """Run a new job's workflow to its first wait (starting it again resumes it where it is)."""
        tid = thread_id(state["machine_id"], state["job_id"])
        current = self.status(tid)
        if current is not None:
            return current
        return self._run(port, tid, state)

    def resume(self, port: JobPort, tid: str, signal: dict[str, Any]) -> FlowStatus:
        """Wake a waiting workflow with ``signal``: ``{"tick": True}``, ``{"decision": …}``,
        ``{"takeover": did}`` or ``{"closed": outcome}``."""
        return self._run(port, tid, Command(resume=signal))

    def status(self, tid: str) -> FlowStatus | None:
        """The workflow's state, or None if it never ran."""
        snapshot = self.graph.get_state({"configurable": {"thread_id": tid}})
        if not snapshot.values:
            return None
        return _status(tid, snapshot.values, [i.value for i in snapshot.interrupts])

    def proceed(self, port: JobPort, tid: str) -> FlowStatus:
        """Carry on a workflow that stopped between two steps, from its last checkpoint."""
        return self._run(port, tid, None)

    def _run(self, port: JobPort, tid: str, payload: Any) -> FlowStatus:
        config: RunnableConfig = {"configurable": {"thread_id": tid, "port": port}, "recursion_limit": 50}
        # durable: each step on disk before the next runs (a kill loses none); in memory: only where it waits
        result = self.graph.invoke(payload, config, durability="sync" if self.durable else "exit")
        waits = [i.value for i in result.get("__interrupt__", ())]
        return _status(tid, {k: v for k, v in result.items() if k != "__interrupt__"}, waits)


def _status(tid: str, values: dict[str, Any], waits: list[Any]) -> FlowStatus:
    waiting = waits[0].get("wait") if waits and isinstance(waits[0], dict) else None
    return FlowStatus(thread_id=tid, waiting=waiting, values=dict(values), ended=bool(values.get("finished")))


class _Pickled:
    """What an in-memory checkpointer keeps a state as: its pickle (the states are plain data). It
    never leaves the process, so langgraph's portable msgpack serializer, with a type hook per
    value, would be work spent for nothing at every step of every job."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return "pickle", pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        return pickle.loads(data[1])


def in_memory() -> BaseCheckpointSaver[Any]:
    """A checkpointer in memory: a simulation aid (a restart loses its workflows)."""
    return InMemorySaver(serde=_Pickled())


@contextmanager
def checkpointer(url: str | None) -> Iterator[BaseCheckpointSaver[Any]]:
    """A checkpointer for ``url``: a SQLite file (``sqlite:///path`` or a plain path), PostgreSQL
    (``postgresql://…``; ``+psycopg`` is accepted), or None / ``memory`` for an in-memory one (a
    simulation aid: a restart loses its workflows)."""
    if url is None or url == "memory":
        yield InMemorySaver()
        return
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg import Connection
        from psycopg.rows import dict_row

        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with Connection.connect(plain, autocommit=True, prepare_threshold=0, row_factory=dict_row) as pg:
            saver = PostgresSaver(pg)
            saver.setup()
            yield saver
        return
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///"):
            raise InputError(f"checkpoint URL {url!r}: write sqlite:///path/to/file.db")
        url = url.removeprefix("sqlite:///")
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()
