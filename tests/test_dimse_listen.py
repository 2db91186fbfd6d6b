"""``fhirimg listen`` fed by real senders: Orthanc (REST ``/modalities/{id}/store``, C-STORE from
its DICOM port) and dcmtk's ``storescu``/``echoscu``, in the tests' private network namespace."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fhirimg.convert import ConvertOptions, convert
from fhirimg.dimse.listen import ListenOptions, Peer, Received, StorageScp, listen
from fhirimg.watch import StudyHandled
from tests.helpers import REPO, SAMPLE, bundles, orthanc_or_skip, require_or_skip, resources
from tests.servers.orthanc_server import OrthancServer
from tests.test_dimse_orthanc import _assert_same, _key_entries, source_files, upload

pytestmark = pytest.mark.dicomweb


def _dcmtk(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        require_or_skip(f"{tool} not found: install dcmtk with sh tools/dcmtk/install.sh")
    return found


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with orthanc_or_skip(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def converted(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("from-files")
    convert([SAMPLE], ConvertOptions(out_dir=out, jobs=1))
    upload(orthanc, sorted(source_files(out).values()))
    return out


class Running:
    """:func:`listen` in a thread, stopped (and joined) by :meth:`stop`."""

    def __init__(self, tmp: Path, options: ListenOptions | None = None, settle: float = 0.5):
        self.out = tmp / "out"
        self.stop_event = threading.Event()
        self.started = threading.Event()
        self.events: list[StudyHandled] = []
        self.scp: StorageScp | None = None
        self.result: tuple[Any, Received] | None = None
        self.error: BaseException | None = None
        opts = options or ListenOptions(port=0, store=tmp / "store")

        def on_start(scp: StorageScp) -> None:
            self.scp = scp
            self.started.set()

        def run() -> None:
            try:
                self.result = listen(
                    opts,
                    ConvertOptions(out_dir=self.out, jobs=1),
                    settle=settle,
                    interval=0.1,
                    stop_event=self.stop_event,
                    on_study=self.events.append,
                    on_start=on_start,
                )
            except BaseException as exc:
                self.error = exc
                self.started.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.started.wait(20), "listen did not start"
        assert self.error is None, self.error

    @property
    def port(self) -> int:
        assert self.scp is not None
        return self.scp.port

    def wait_for(self, check: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out"
            assert self.error is None, self.error
            time.sleep(0.1)

    def instances(self) -> int:
        return sum(
            resources(b, "ImagingStudy")[0]["numberOfInstances"] for b in bundles(self.out).values()
        )

    def stop(self) -> Received:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        assert self.error is None, self.error
        assert self.result is not None
        return self.result[1]


def test_orthanc_forwards_the_archive_and_the_bundles_place_every_instance(
    orthanc: OrthancServer, converted: Path, tmp_path: Path
) -> None:
    run = Running(tmp_path)
    try:
        orthanc.add_modality("fhirimg", "FHIRIMG", run.port)
        with orthanc.client(timeout=120) as c:
            ids = c.get("/instances").json()
            assert len(ids) == 20
            answer = c.post("/modalities/fhirimg/store", json={"Resources": ids})
            assert answer.status_code == 200, answer.text
        run.wait_for(lambda: run.instances() == 20)
    finally:
        received = run.stop()
    assert received.stored == 20
    from_files, from_listen = bundles(converted), bundles(run.out)
    assert sorted(from_listen) == sorted(from_files)
    for name, bundle in from_files.items():
        _assert_same(_key_entries(from_listen[name]), _key_entries(bundle), name)
    stored = sorted((tmp_path / "store").rglob("*.dcm"))
    assert len(stored) == 20
    assert {p.stat().st_mode & 0o777 for p in stored} == {0o600}  # patient data: owner-only
    assert all(p.parent.parent == tmp_path / "store" for p in stored)  # <study>/<sop>.dcm


def test_storescu_to_listen_and_echoscu(tmp_path: Path) -> None:
    storescu, echoscu = _dcmtk("storescu"), _dcmtk("echoscu")
    files = sorted(str(p) for p in (SAMPLE / "study_a_ct").glob("*.dcm"))
    run = Running(tmp_path)
    try:
        port = str(run.port)
        echo = subprocess.run(
            [echoscu, "-aet", "CT1", "-aec", "FHIRIMG", "127.0.0.1", port], capture_output=True
        )
        assert echo.returncode == 0, echo.stderr
        sent = subprocess.run(
            [storescu, "-aet", "CT1", "-aec", "FHIRIMG", "127.0.0.1", port, *files],
            capture_output=True,
            text=True,
        )
        assert sent.returncode == 0, sent.stderr
        run.wait_for(lambda: run.instances() == len(files))
    finally:
        received = run.stop()
    assert received.stored == len(files)
    assert [e.status for e in run.events] == ["written"]


def test_a_disallowed_ae_title_is_rejected(tmp_path: Path) -> None:
    storescu = _dcmtk("storescu")
    files = sorted(str(p) for p in (SAMPLE / "study_a_ct").glob("*.dcm"))
    options = ListenOptions(
        port=0, store=tmp_path / "store", allow=(Peer("CT1"), Peer("CT2", "10.9.9.9"))
    )
    run = Running(tmp_path, options)
    try:
        port = str(run.port)
        refused = subprocess.run(
            [storescu, "-aet", "EVIL", "-aec", "FHIRIMG", "127.0.0.1", port, *files],
            capture_output=True,
            text=True,
        )
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stderr + refused.stdout
        # a known AE title from another host: associated, each C-STORE refused (0x0124)
        wrong_host = subprocess.run(
            [storescu, "-aet", "CT2", "-aec", "FHIRIMG", "127.0.0.1", port, files[0]],
            capture_output=True,
            text=True,
        )
        assert "0x0124" in wrong_host.stderr + wrong_host.stdout or wrong_host.returncode != 0
        allowed = subprocess.run(
            [storescu, "-aet", "CT1", "-aec", "FHIRIMG", "127.0.0.1", port, files[0]],
            capture_output=True,
            text=True,
        )
        assert allowed.returncode == 0, allowed.stderr
    finally:
        received = run.stop()
    assert (received.stored, received.refused) == (1, 1)
    assert len(list((tmp_path / "store").rglob("*.dcm"))) == 1


def test_cli_listen_survives_a_restart_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The CLI as a service runs it: instances received, SIGTERM before the study settled (exit
    0), a restart converts it from the store folder."""
    storescu = _dcmtk("storescu")
    files = sorted(str(p) for p in (SAMPLE / "study_a_ct").glob("*.dcm"))
    store, out = tmp_path / "store", tmp_path / "out"

    def start(settle: str) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fhirimg", "listen", "--port", "0", "--store", str(store)]
            + ["-o", str(out), "--settle", settle, "--interval", "0.1", "-j", "1"],
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"on port (\d+)", line)
        assert match, line
        return proc, int(match.group(1))

    proc, port = start("3600")
    try:
        sent = subprocess.run(
            [storescu, "-aec", "FHIRIMG", "127.0.0.1", str(port), *files], capture_output=True
        )
        assert sent.returncode == 0, sent.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"received {len(files)} instance(s)" in err
    assert not bundles(out)  # not settled: nothing converted yet
    proc, _ = start("0")
    try:
        deadline = time.monotonic() + 60
        while not bundles(out):
            assert time.monotonic() < deadline, "the restart did not convert the stored study"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    (bundle,) = bundles(out).values()
    assert resources(bundle, "ImagingStudy")[0]["numberOfInstances"] == len(files)


def test_listen_over_tls_accepts_tls_only(tmp_path: Path) -> None:
    """``--tls-cert``/``--tls-key``/``--tls-client-ca``: a sender with a client certificate the CA
    signed stores over TLS; a plain-TCP association and one without a client certificate fail."""
    import ssl

    import trustme
    from pydicom import dcmread
    from pynetdicom import AE

    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("ct1.example")
    cert, key, client, ca_pem = (tmp_path / n for n in ("s.pem", "s.key", "c.pem", "ca.pem"))
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(client))
    ca.cert_pem.write_to_path(str(ca_pem))
    options = ListenOptions(
        port=0, store=tmp_path / "store", tls_cert=cert, tls_key=key, tls_client_ca=ca_pem
    )
    dataset = dcmread(sorted((SAMPLE / "study_a_ct").glob("*.dcm"))[0])

    def store(context: ssl.SSLContext | None, port: int) -> int | None:
        ae = AE(ae_title="CT1")
        ae.add_requested_context(dataset.SOPClassUID, str(dataset.file_meta.TransferSyntaxUID))
        ae.acse_timeout = ae.network_timeout = 5
        tls_args = (context, "127.0.0.1") if context is not None else None
        assoc = ae.associate("127.0.0.1", port, ae_title="FHIRIMG", tls_args=tls_args)
        if not assoc.is_established:
            return None
        status = assoc.send_c_store(dataset)
        assoc.release()
        return int(status.Status)

    run = Running(tmp_path, options, settle=3600)
    try:
        good = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_pem))
        good.load_cert_chain(str(client))
        no_client_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_pem))
        assert store(None, run.port) is None  # plain TCP to a TLS port
        assert store(no_client_cert, run.port) is None
        assert store(good, run.port) == 0
    finally:
        received = run.stop()
    assert received.stored == 1
    assert len(list((tmp_path / "store").rglob("*.dcm"))) == 1


def test_listen_tls_options_are_checked(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fhirimg.cli import app

    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    for args, message in (
        (["--tls-cert", str(cert)], "both --tls-cert and --tls-key"),
        (["--tls-cert", str(cert), "--tls-key", str(cert)], "cannot use the TLS"),
        (["--tls-client-ca", str(cert)], "needs --tls-cert"),
        (["--allow", "CT1@"], "not AET or AET@HOST"),
    ):
        result = CliRunner().invoke(app, ["listen", "--store", str(tmp_path / "s"), *args])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())
