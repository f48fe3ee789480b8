"""A Chroma server on the data dir's memory folder, for a process that runs many machines.

Chromadb's embedded client holds Python's GIL for the whole of each write (measured: ~5 ms plus
~0.3-2 ms per record), which stalls every other machine's thread in the process and makes bids
miss their window when a dozen machines share one process. The market simulation therefore
starts chromadb's own server (``chroma run``, from the chromadb package) on the same folder and
talks to it over HTTP, where writes cost the caller nothing but I/O. The folder stays readable by
the embedded client afterwards (``tamc chat``), one process at a time.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from core.errors import MemoryStoreError
from core.net import free_port, wait_for_port

__all__ = ["chroma_server"]

log = logging.getLogger("tamc.memory")

START_TIMEOUT_S = 30.0


@contextlib.contextmanager
def chroma_server(path: Path) -> Iterator[str]:
    """Run ``chroma run`` on ``path`` for the ``with`` block; yields its URL."""
    path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-c", "import sys; from chromadb.cli.cli import app; sys.argv[0] = 'chroma'; app()",
               "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)]
    log_file = path / "server.log"
    with log_file.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # a Ctrl-C to our terminal is ours to handle: we stop it last
    if not wait_for_port("127.0.0.1", port, START_TIMEOUT_S) or proc.poll() is not None:
        proc.kill()
        proc.wait(5)
        tail = log_file.read_text("utf-8", errors="replace")[-600:].strip()
        raise MemoryStoreError(f"the Chroma server for {path} did not start on 127.0.0.1:{port}: {tail or 'no output'} — "
                               "the machines bid without memory; run with --no-memory, or point --memory-url at a running server")
    url = f"http://127.0.0.1:{port}"
    log.info("chroma server started path=%s url=%s", path, url)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

