"""A driver for a real 3D printer behind OctoPrint, over its REST API.

A job becomes a G-code file named after it (``tamc-{job_id}.gcode``, see ``machines.gcode``),
uploaded, selected and printed in one request. Everything the driver reports is read back from
OctoPrint: the state of its printer, the selected file, its progress, and the record OctoPrint
keeps of each file's last print (which a fresh upload resets). So a driver started again after a
crash still knows how the jobs it started ended, and repeating ``start_job`` never prints twice.

Only operating hours, wear and energy are the driver's own: it counts the real seconds it sees
the printer working (between two reads, by the state of the earlier one) and converts them to
market hours with ``seconds_per_hour``. Read it at least as often as that precision needs.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from core.errors import CommandRejected, DriverError, InvalidProfile
from core.ids import NAME_PATTERN
from machines.driver import AMBIENT_C, SAFE_LIMITS_C, WORKING_TEMPS, JobRun, MachineState, Telemetry
from machines.gcode import print_program
from machines.kinds import MachineKind
from machines.profile import MachineProfile, Point

if TYPE_CHECKING:
    from machines.driver import Driver

__all__ = ["OctoPrintDriver", "file_name", "job_of_file"]

TRANSITIONS = ("Pausing", "Resuming", "Cancelling", "Starting", "Finishing")
"""OctoPrint states on the way from one to another: a command sent meanwhile may be ignored."""
HEATERS = {"nozzle": "tool0", "bed": "bed"}
"""TAMC's names for the printer's heaters, and OctoPrint's."""
BOX_MM = (20.0, 20.0, 5.0)
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_FILE = re.compile(r"^tamc-(.+)\.gcode$")
_NAME = re.compile(NAME_PATTERN)


def file_name(job_id: str) -> str:
    """The G-code file of a job on the printer: ``tamc-{job_id}.gcode`` for ids of letters, digits,
    ``-`` and ``_`` (up to 100). Other ids are reduced to those characters plus a hash of the id, so
    that OctoPrint keeps the name as it is and two ids never share a file."""
    if _SAFE_ID.match(job_id):
        return f"tamc-{job_id}.gcode"
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:12]
    return f"tamc-{re.sub(r'[^A-Za-z0-9_-]+', '_', job_id)[:60]}-{digest}.gcode"


def job_of_file(name: str) -> str | None:
    """The job a file on the printer is of (``tamc-{job_id}.gcode``), or None. A file somebody else
    put there names no job of ours unless its id is a name (``core.ids``): it reaches a model as the
    job in telemetry, so it cannot carry a sentence."""
    m = _FILE.match(name)
    return m.group(1) if m and _NAME.match(m.group(1)) else None


def _machine_state(text: str) -> MachineState:
    """OctoPrint's state string (``/api/job`` ``state``) as a machine state."""
    if text.startswith(("Printing", "Starting")) or text in ("Resuming", "Finishing", "Cancelling"):
        return MachineState.WORKING
    if text in ("Paused", "Pausing"):
        return MachineState.PAUSED
    if text in ("Operational", "Ready"):
        return MachineState.IDLE
    return MachineState.OFFLINE


def _failed(text: str) -> bool:
    return text.startswith("Error") or text == "Offline after error"


class OctoPrintDriver:
    """Runs one printer through an OctoPrint server (``url``, an application ``api_key``).

    Call ``connect()`` before the first job; ``close()`` (or use it as a context manager) frees
    the HTTP client. Errors: ``CommandRejected`` when the printer cannot do that now or at all,
    ``DriverError`` when OctoPrint cannot be reached or answers something unexpected.
    """

    def __init__(
        self,
        profile: MachineProfile,
        url: str,
        api_key: str,
        *,
        seconds_per_hour: float = 3600.0,
        port: str = "VIRTUAL",
        wear_pct: float = 0.0,
        timeout_s: float = 5.0,
    ) -> None:
        if profile.kind is not MachineKind.PRINTER_3D:
            raise InvalidProfile(f"OctoPrint drives 3D printers; {profile.id} is a {profile.kind.value}")
        if not seconds_per_hour > 0:
            raise ValueError(f"seconds_per_hour must be positive, not {seconds_per_hour}")
        self.profile = profile
        self.url = url.rstrip("/")
        self.port = port
        self.seconds_per_hour = seconds_per_hour
        self._http = httpx.Client(base_url=self.url, headers={"X-Api-Key": api_key}, timeout=timeout_s)
        self._lock = threading.Lock()
        self._work_s = 0.0
        """Real seconds the driver has seen the printer working."""
        self._seen_state = MachineState.OFFLINE
        self._seen_at = time.monotonic()
        self._wear0 = wear_pct
        self._wear_from_h = 0.0
        """Operating hours at the last maintenance: wear counts from there."""
        self._temps = {name: AMBIENT_C for name in HEATERS}
        self._jobs: dict[str, str] = {}
        """File name -> job id, for the jobs this driver started."""
        self._cancelled: set[str] = set()
        fab = profile.fab
        volume = fab.build_volume_mm if fab else BOX_MM
        self._box = (min(BOX_MM[0], volume[0] / 2), min(BOX_MM[1], volume[1] / 2), min(BOX_MM[2], volume[2] / 2))

    paced_by_clock = False

    def set_pace(self, seconds_per_hour: float) -> None:
        if not seconds_per_hour > 0:
            raise ValueError(f"seconds_per_hour must be positive, not {seconds_per_hour}")
        self.seconds_per_hour = seconds_per_hour

    def recover(self, job_id: str, hours: float, progress: float, *, paused: bool, route: list[Point] | None = None) -> None:
        """OctoPrint kept the print across the node's restart: nothing to put back."""

    def __enter__(self) -> OctoPrintDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- connection --------------------------------------------------------------------------------

    def connect(self, *, wait_s: float = 15.0) -> None:
        """Connect OctoPrint to the printer on ``port`` and wait until it is operational. A printer
        already connected (even mid-print) is left as it is."""
        connection = self._json(self._call("GET", "/api/connection"), "/api/connection")
        state = str((connection.get("current") or {}).get("state"))
        if _machine_state(state) is MachineState.OFFLINE:
            r = self._call("POST", "/api/connection", json={"command": "connect", "port": self.port, "baudrate": 115200},
                           bad_request_ok=True)
            if r.status_code == 400:
                ports = ", ".join(map(repr, (connection.get("options") or {}).get("ports") or [])) or "none"
                raise DriverError(f"OctoPrint at {self.url} refused to connect port {self.port!r} ({_error_text(r)}); "
                                  f"the ports it offers: {ports}")
        deadline = time.monotonic() + wait_s
        while _machine_state(state) is MachineState.OFFLINE:
            if time.monotonic() > deadline:
                raise DriverError(f"OctoPrint at {self.url} did not get the printer on port {self.port!r} operational "
                                  f"in {wait_s:g} s (state: {state}); check the port, the cable and the printer's power")
            time.sleep(0.05)
            state = self._connection_state()
        self._observe(_machine_state(state))

    def _connection_state(self) -> str:
        return str((self._json(self._call("GET", "/api/connection"), "/api/connection").get("current") or {}).get("state"))

    # -- reading -----------------------------------------------------------------------------------

    def telemetry(self) -> Telemetry:
        job = self._job()
        state = _machine_state(str(job.get("state")))
        self._read_temperatures()
        job_id = None
        progress = 0.0
        if state in (MachineState.WORKING, MachineState.PAUSED):
            job_id = self._job_of(job)
            completion = (job.get("progress") or {}).get("completion")
            progress = min(1.0, max(0.0, float(completion or 0.0) / 100))
        hours = self._observe(state) / self.seconds_per_hour
        wear = min(100.0, self._wear0 + self.profile.wear_pct_per_hour * (hours - self._wear_from_h))
        return Telemetry(
            machine_id=self.profile.id,
            at=datetime.now(UTC),
            state=state,
            job_id=job_id,
            progress=round(progress, 6),
            wear_pct=round(wear, 6),
            temperatures_c={k: round(v, 2) for k, v in self._temps.items()},
            energy_used_kwh=round(self.profile.energy_kw * hours, 6),
            operating_hours=round(hours, 6),
        )

    def job_run(self, job_id: str) -> JobRun:
        name = file_name(job_id)
        job = self._job()
        text = str(job.get("state"))
        state = _machine_state(text)
        self._observe(state)
        active = self._selected(job) == name
        if job_id in self._cancelled or (active and text == "Cancelling"):
            return "cancelled"
        if active and state is MachineState.WORKING:
            return "running"
        if active and state is MachineState.PAUSED:
            return "paused"
        if active and _failed(text):
            return "failed"
        record = self._file(name)
        if record is None:
            return "unknown"
        last = (record.get("prints") or {}).get("last")
        if last is None:
            # Uploaded and selected, its print starting or just ended and not yet on record.
            return "running" if active and state is MachineState.IDLE else "unknown"
        if last.get("success"):
            return "done"
        completion = (job.get("progress") or {}).get("completion")
        if active and state is MachineState.IDLE and (completion is None or completion < 100):
            return "cancelled"  # by someone at the printer or in OctoPrint's own interface
        return "failed"

    # -- jobs --------------------------------------------------------------------------------------

    def start_job(self, job_id: str, hours: float, *, route: list[Point] | None = None) -> None:
        """Print ``job_id`` for about ``hours`` market hours (``hours * seconds_per_hour`` real
        seconds). A job already printing, paused or done on the printer is left alone; ``route``
        is ignored (a printer does not travel)."""
        if not (hours > 0 and math.isfinite(hours)):
            raise CommandRejected(f"a job takes a positive number of hours, not {hours}")
        name = file_name(job_id)
        job = self._job()
        text = str(job.get("state"))
        state = _machine_state(text)
        self._observe(state)
        selected = self._selected(job)
        if state in (MachineState.WORKING, MachineState.PAUSED):
            if selected == name:
                return  # already under way: a resumed workflow repeats the call
            raise CommandRejected(f"{self.profile.id} is {state.value} with {selected or 'another print'}: "
                                  f"wait for it to end or cancel it before starting {job_id}")
        if state is not MachineState.IDLE:
            raise CommandRejected(f"{self.profile.id} is not ready to print (OctoPrint says {text!r}): "
                                  f"connect it (and clear any error) before starting {job_id}")
        record = self._file(name)
        if record is not None and ((record.get("prints") or {}).get("last") or {}).get("success"):
            return  # printed to the end already: a repeated call must not print it twice
        nozzle_c, bed_c = (WORKING_TEMPS[MachineKind.PRINTER_3D][k] for k in ("nozzle", "bed"))
        program = print_program(job_id, hours * self.seconds_per_hour, size_mm=self._box, nozzle_c=nozzle_c, bed_c=bed_c)
        r = self._call("POST", "/api/files/local", files={"file": (name, program.encode(), "application/octet-stream")},
                       data={"select": "true", "print": "true"}, conflict=f"cannot start {job_id}")
        body = self._json(r, "/api/files/local")
        if not body.get("effectivePrint"):
            raise CommandRejected(f"{self.profile.id} did not start {job_id}: OctoPrint stored {name} but did not print "
                                  "it (the printer became busy or lost its connection); try again when it is idle")
        with self._lock:
            self._jobs[name] = job_id
            self._cancelled.discard(job_id)
        self._observe(MachineState.WORKING)

    def finish_job(self) -> None:
        """Nothing to do: the printer knows when its job is done (``job_run`` says so)."""

    # -- remote control ----------------------------------------------------------------------------

    def pause(self) -> None:
        """Pause the print; OctoPrint lets the current line finish and parks the head. Returns once the
        printer says Paused (OctoPrint ignores a resume sent while it is still Pausing)."""
        self._settle()
        self._call("POST", "/api/job", json={"command": "pause", "action": "pause"},
                   conflict="cannot pause: only a printing machine can be paused")
        self._settle()

    def resume(self) -> None:
        self._settle()
        self._call("POST", "/api/job", json={"command": "pause", "action": "resume"},
                   conflict="cannot resume: only a paused machine can be resumed")
        self._settle()

    def _settle(self, wait_s: float = 5.0) -> str:
        """Wait (bounded) while the printer is between two states (Pausing, Resuming…); its state then."""
        deadline = time.monotonic() + wait_s
        state = str(self._job().get("state"))
        while (state.split() or [""])[0] in TRANSITIONS and time.monotonic() < deadline:
            time.sleep(0.1)
            state = str(self._job().get("state"))
        return state

    def cancel(self) -> None:
        job = self._job()
        job_id = self._job_of(job) if _machine_state(str(job.get("state"))) is not MachineState.IDLE else None
        self._call("POST", "/api/job", json={"command": "cancel"}, conflict="has no print to cancel")
        if job_id is not None:
            with self._lock:
                self._cancelled.add(job_id)

    def set(self, name: str, value: float) -> None:
        """Set a heater's target: ``nozzle`` or ``bed``, in °C (0 turns it off)."""
        if name not in HEATERS:
            raise CommandRejected(f"{self.profile.id} has no parameter {name!r}; it has {', '.join(sorted(HEATERS))}")
        limit = SAFE_LIMITS_C[name]
        if not 0 <= value <= limit:
            raise CommandRejected(f"{name} must be set between 0 and {limit:g} °C, not {value:g}")
        conflict = f"cannot set {name}: the printer is not connected (connect it first)"
        if name == "nozzle":
            self._call("POST", "/api/printer/tool", json={"command": "target", "targets": {"tool0": value}},
                       conflict=conflict)
        else:
            self._call("POST", "/api/printer/bed", json={"command": "target", "target": value}, conflict=conflict)

    def move_to(self, point: Point) -> None:
        raise CommandRejected(f"{self.profile.id} is a {self.profile.kind.value}: a 3D printer does not travel; "
                              "bring the work to it instead")

    def maintain(self) -> None:
        """Service the printer: wear back to zero. Refused while a job is on it."""
        state = self.telemetry().state
        if state in (MachineState.WORKING, MachineState.PAUSED):
            raise CommandRejected(f"{self.profile.id} is {state.value}: maintain it when its job is over or cancelled")
        with self._lock:
            self._wear0 = 0.0
            self._wear_from_h = self._work_s / self.seconds_per_hour

    # -- OctoPrint ---------------------------------------------------------------------------------

    def _observe(self, state: MachineState) -> float:
        """Record a reading of the state; the real seconds worked so far."""
        with self._lock:
            now = time.monotonic()
            if self._seen_state is MachineState.WORKING:
                self._work_s += now - self._seen_at
            self._seen_state, self._seen_at = state, now
            return self._work_s

    def _job(self) -> dict[str, Any]:
        return self._json(self._call("GET", "/api/job"), "/api/job")

    @staticmethod
    def _selected(job: dict[str, Any]) -> str | None:
        name = ((job.get("job") or {}).get("file") or {}).get("name")
        return str(name) if name else None

    def _job_of(self, job: dict[str, Any]) -> str | None:
        name = self._selected(job)
        if name is None:
            return None
        if name in self._jobs:
            return self._jobs[name]
        return job_of_file(name)

    def _file(self, name: str) -> dict[str, Any] | None:
        r = self._call("GET", f"/api/files/local/{name}", missing_ok=True)
        return None if r.status_code == 404 else self._json(r, f"/api/files/local/{name}")

    def _read_temperatures(self) -> None:
        r = self._call("GET", "/api/printer", params={"exclude": "sd,state"}, conflict=None)
        if r.status_code == 409:
            return  # not connected: keep the last temperatures seen
        temps = self._json(r, "/api/printer").get("temperature") or {}
        for name, key in HEATERS.items():
            actual = (temps.get(key) or {}).get("actual")
            if isinstance(actual, int | float):
                self._temps[name] = float(actual)

    def _call(
        self,
        method: str,
        path: str,
        *,
        conflict: str | None = "",
        missing_ok: bool = False,
        bad_request_ok: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request. A 409 (the printer's state forbids it) raises ``CommandRejected`` with
        ``conflict`` as its reason, or is returned when ``conflict`` is None; a 404 is returned
        when ``missing_ok`` and a 400 when ``bad_request_ok``; any other failure raises ``DriverError`` naming the call."""
        call = f"{method} {self.url}{path}"
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise DriverError(f"OctoPrint did not answer {call} in time ({type(exc).__name__}); is it overloaded?") from exc
        except httpx.HTTPError as exc:
            raise DriverError(f"OctoPrint is unreachable: {call} failed ({exc or type(exc).__name__}); "
                              "check that it runs and the URL") from exc
        if (r.is_success or (r.status_code == 404 and missing_ok) or (r.status_code == 400 and bad_request_ok)
                or (r.status_code == 409 and conflict is None)):
            return r
        reason = _error_text(r)
        if r.status_code == 409:
            raise CommandRejected(f"{self.profile.id} {conflict or 'cannot do that now'} (OctoPrint: {reason})")
        if r.status_code in (401, 403):
            raise DriverError(f"OctoPrint refused {call} ({r.status_code}): the API key is wrong or lacks a "
                              "permission; make an application key for a user with admin rights")
        raise DriverError(f"OctoPrint answered {call} with {r.status_code}: {reason}")

    def _json(self, r: httpx.Response, path: str) -> dict[str, Any]:
        try:
            body = r.json()
        except ValueError as exc:
            raise DriverError(f"OctoPrint answered {self.url}{path} with something that is not JSON: {r.text[:200]!r}") from exc
        if not isinstance(body, dict):
            raise DriverError(f"OctoPrint answered {self.url}{path} with {type(body).__name__}, not an object")
        return body


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200] or r.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return r.text[:200]


if TYPE_CHECKING:

    def _is_a_driver(d: OctoPrintDriver) -> Driver:
        return d
