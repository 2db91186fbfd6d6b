"""Start a private Orthanc (with the DICOMweb plugin) for the test suite.

Orthanc 1.10 listens on *all* network interfaces and cannot be restricted to 127.0.0.1.
So :func:`start_orthanc` refuses to run unless the process is inside a private network
namespace that has only the loopback interface; run the tests through
``tools/run-in-netns.sh`` (see ``tools/orthanc/README.md``).

No pytest import here: this module is usable from scripts and benchmarks too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

HOW_TO_RUN = (
    "run the tests inside a private network namespace, e.g.\n"
    "    tools/run-in-netns.sh .venv/bin/python -m pytest tests -q\n"
    "(see tools/orthanc/README.md; install Orthanc with tools/orthanc/install.sh)"
)

_PLUGIN_NAME = "libOrthancDicomWeb.so"
_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",  # Debian/Ubuntu packages
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)
_BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc")

START_TIMEOUT_S = 20.0
ORTHANC_AET = "ORTHANC"
"""The AE title of the test Orthanc's DICOM (DIMSE) port."""


def network_interfaces() -> list[str]:
    """Names of the network interfaces visible in this process's network namespace."""
    return sorted(name for _, name in socket.if_nameindex())


def in_private_netns() -> bool:
    """True when this process's network namespace has no interface besides ``lo``.

    That is the property that makes an all-interfaces listener safe: nothing outside the
    namespace can reach it. It holds inside ``tools/run-in-netns.sh`` (``unshare --net``),
    and also in e.g. a container started with ``--network none``.
    """
    try:
        names = network_interfaces()
    except OSError:
        return False
    return names == ["lo"]


def netns_differs_from_init() -> bool | None:
    """True if our network namespace is not PID 1's; None when that cannot be read."""
    try:
        return os.stat("/proc/self/ns/net").st_ino != os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return None


def find_orthanc_binary() -> str:
    override = os.environ.get("FHIRIMG_ORTHANC_BIN")
    if override:
        return override
    found = shutil.which("Orthanc")
    if found:
        return found
    for cand in _BINARY_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("Orthanc binary not found; install it with: sh tools/orthanc/install.sh")


def find_dicomweb_plugin() -> Path:
    """Locate libOrthancDicomWeb.so (env FHIRIMG_ORTHANC_DICOMWEB_PLUGIN overrides)."""
    override = os.environ.get("FHIRIMG_ORTHANC_DICOMWEB_PLUGIN")
    if override:
        p = Path(override)
        if not p.is_file():
            raise RuntimeError(f"FHIRIMG_ORTHANC_DICOMWEB_PLUGIN={override} is not a file")
        return p
    for cand in _PLUGIN_CANDIDATES:
        if Path(cand).is_file():
            return Path(cand)
    # Ask dpkg where the Debian package put it.
    try:
        out = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.endswith("/" + _PLUGIN_NAME) and Path(line).is_file():
            return Path(line)
    raise RuntimeError(
        f"{_PLUGIN_NAME} not found; install it with: sh tools/orthanc/install.sh "
        "(or set FHIRIMG_ORTHANC_DICOMWEB_PLUGIN)"
    )


def why_unavailable() -> str | None:
    """Why Orthanc with its DICOMweb plugin cannot start here (no private network namespace, no
    binary, no plugin), or None when it can; the tests skip or fail with this reason."""
    if not in_private_netns():
        return "not in a private network namespace; " + HOW_TO_RUN
    try:
        find_orthanc_binary()
        find_dicomweb_plugin()
    except RuntimeError as exc:
        return str(exc)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class OrthancServer:
    """A running Orthanc subprocess; stop it with :meth:`stop` or use it as a context manager."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        workdir: Path,
        config_path: Path,
        log_path: Path,
        username: str | None,
        password: str | None,
        startup_seconds: float,
    ) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir
        self.config_path = config_path
        self.log_path = log_path
        self.username = username
        self.password = password
        self.startup_seconds = startup_seconds
        self.base_url = f"http://127.0.0.1:{port}"
        self.dicomweb_url = f"{self.base_url}/dicom-web"
        self.dicom_port = 0
        """The DIMSE port (C-ECHO, C-FIND, C-GET, C-MOVE, C-STORE), AE title :data:`ORTHANC_AET`."""

    @property
    def pacs_address(self) -> str:
        """``AET@HOST:PORT`` of the DIMSE port, as ``convert --from-pacs`` takes it."""
        return f"{ORTHANC_AET}@127.0.0.1:{self.dicom_port}"

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Register a DICOM peer (a C-MOVE destination, a ``/modalities/{name}/store`` target)
        at run time (REST ``PUT /modalities/{name}``)."""
        with self.client() as c:
            r = c.put(f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port})
            r.raise_for_status()

    @property
    def auth(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client with base_url = the server root and the credentials, if any."""
        kwargs.setdefault("base_url", self.base_url)
        kwargs.setdefault("timeout", 30.0)
        if self.auth is not None:
            kwargs.setdefault("auth", self.auth)
        return httpx.Client(**kwargs)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)

    def __enter__(self) -> OrthancServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"OrthancServer({self.base_url!r}, pid={self.process.pid})"


def build_config(
    workdir: Path,
    port: int,
    plugin: Path,
    username: str | None = None,
    password: str | None = None,
    dicom_port: int | None = None,
) -> dict[str, Any]:
    auth = username is not None
    return {
        "Name": "fhirimg-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": port,
        "HttpDescribeErrors": True,
        "HttpCompressionEnabled": False,
        # The DIMSE side, for convert --from-pacs and listen (docs/pacs.md): any calling AE title
        # may echo, find, get and store; C-MOVE destinations are added with add_modality().
        "DicomServerEnabled": dicom_port is not None,
        "DicomPort": dicom_port or 4242,
        "DicomAet": ORTHANC_AET,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomCheckModalityHost": False,
        "DicomModalities": {},
        # C-FIND answers in UTF-8 (ISO_IR 192): with the default Latin-1, Orthanc drops what
        # Latin-1 cannot hold (the ideographic and phonetic groups of a Japanese name).
        "DefaultEncoding": "Utf8",
        "DicomScuTimeout": 10,
        "DicomAssociationCloseDelay": 0,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth,
        "RegisteredUsers": {username: password} if auth else {},
        "SslEnabled": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "SaveJobs": False,
        "ConcurrentJobs": 2,
        "Plugins": [str(plugin)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            # So that RetrieveURL / BulkDataURI point at the address the tests use.
            "Host": f"127.0.0.1:{port}",
            "Ssl": False,
        },
    }


def start_orthanc(
    workdir: Path,
    username: str | None = None,
    password: str | None = None,
    *,
    timeout: float = START_TIMEOUT_S,
) -> OrthancServer:
    """Write a config into ``workdir``, start Orthanc on a free port, wait until it answers.

    Raises RuntimeError outside a private network namespace (Orthanc 1.10 listens on every
    interface), when Orthanc or the DICOMweb plugin is missing, or when it does not answer
    ``GET /system`` within ``timeout`` seconds (the message includes the log tail).
    """
    if (username is None) != (password is None):
        raise ValueError("give both username and password, or neither")
    if not in_private_netns():
        try:
            ifaces = ", ".join(network_interfaces())
        except OSError:
            ifaces = "?"
        raise RuntimeError(
            "refusing to start Orthanc: this process is not in a private network namespace "
            f"(interfaces: {ifaces}). Orthanc 1.10 listens on all interfaces, so it must only "
            "run where nothing but loopback exists.\n" + HOW_TO_RUN
        )
    binary = find_orthanc_binary()
    plugin = find_dicomweb_plugin()

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "storage").mkdir(exist_ok=True)
    port = _free_port()
    dicom_port = _free_port()
    while dicom_port == port:
        dicom_port = _free_port()
    config = build_config(workdir, port, plugin, username, password, dicom_port)
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"

    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, "--no-jobs", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    server = OrthancServer(process, port, workdir, config_path, log_path, username, password, 0.0)
    auth = server.auth
    deadline = t0 + timeout
    last_error = "no attempt"
    try:
        with httpx.Client(timeout=2.0, auth=auth) as client:
            while True:
                rc = process.poll()
                if rc is not None:
                    raise RuntimeError(
                        f"Orthanc exited with code {rc} during start-up "
                        f"(config {config_path}); log tail:\n{_tail(log_path)}"
                    )
                try:
                    r = client.get(f"{server.base_url}/system")
                    if r.status_code == 200:
                        break
                    last_error = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Orthanc did not answer GET /system within {timeout:.0f} s on "
                        f"{server.base_url} (last: {last_error}; is `lo` up?); log tail:\n"
                        f"{_tail(log_path)}"
                    )
                time.sleep(0.05)
    except BaseException:
        server.stop()
        raise
    server.dicom_port = dicom_port
    server.startup_seconds = time.monotonic() - t0
    return server
