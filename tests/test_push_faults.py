"""``fhirimg push`` through a fault-injecting proxy in front of the real FHIR test server:
retries and their limits, auth (bearer, basic, OAuth2 with refresh), secrets kept out of output,
and crash/interrupt + resume converging to the state of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirimg import jsonio
from fhirimg.cli import app
from fhirimg.http import ClientCredentialsAuth, FhirClient, RetryPolicy
from tests.conftest import MakeFolder, count, snapshot
from tests.servers.faultproxy import Fault, FaultProxy

pytestmark = pytest.mark.server

FAST = ["--backoff", "0.01", "--retries", "3", "--quiet"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def proxy(clean_fhir: Any) -> Iterator[FaultProxy]:
    with FaultProxy(clean_fhir.base_url) as running:
        yield running


def push(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["push", *map(str, args)], env=env)


def is_transaction(method: str, path: str) -> bool:
    return method == "POST" and path.rstrip("/").endswith("/R4")


# --------------------------------------------------------------------------- retries
def test_503_then_success(proxy: FaultProxy, make_folder: MakeFolder) -> None:
    folder = make_folder(1)
    proxy.script(Fault("status", status=503, times=2, match=is_transaction))
    result = push(folder, "--server", proxy.base_url, *FAST, "--json")
    assert result.exit_code == 0, result.output
    # metadata first; no ImagingStudy search: a new study is created without reading first
    assert proxy.actions() == ["pass", "status", "status", "pass"]
    assert jsonio.loads(result.stdout)["summary"]["retries"] == 2
    assert count(proxy.base_url, "ImagingStudy") == 1


def test_429_retry_after_is_honoured(proxy: FaultProxy, make_folder: MakeFolder) -> None:
    folder = make_folder(1)
    proxy.script(Fault("status", status=429, retry_after="1", match=is_transaction))
    result = push(folder, "--server", proxy.base_url, *FAST)
    assert result.exit_code == 0, result.output
    refused, passed = (s for s in proxy.log if is_transaction(s.method, s.path))
    assert passed.at - refused.at >= 0.9  # not the 0.01 s backoff


def test_dropped_connection_is_retried(proxy: FaultProxy, make_folder: MakeFolder) -> None:
    folder = make_folder(1)
    proxy.script(Fault("drop", match=is_transaction))
    result = push(folder, "--server", proxy.base_url, *FAST)
    assert result.exit_code == 0, result.output
    assert "drop" in proxy.actions()
    assert count(proxy.base_url, "ImagingStudy") == 1


def test_lost_response_after_commit_makes_no_duplicate(
    proxy: FaultProxy, make_folder: MakeFolder
) -> None:
    # The server commits the transaction but the answer never arrives: the retry must be harmless.
    folder = make_folder(2, binary_files=True)
    proxy.script(Fault("drop_after", times=2, match=is_transaction))
    proxy.script(Fault("drop_after", match=lambda m, p: m == "PUT" and "/Binary/" in p))
    result = push(folder, "--server", proxy.base_url, *FAST, "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert proxy.actions().count("drop_after") == 3
    base = proxy.base_url
    assert (count(base, "Patient"), count(base, "Endpoint"), count(base, "ImagingStudy")) == (
        2,
        1,
        2,
    )
    assert count(base, "Binary") == 4


def test_slow_response_times_out_and_is_retried(proxy: FaultProxy, make_folder: MakeFolder) -> None:
    folder = make_folder(1)
    proxy.script(Fault("delay", seconds=1.5, match=is_transaction))
    started = time.monotonic()
    result = push(folder, "--server", proxy.base_url, *FAST, "--timeout", "0.4")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 10
    assert [a for s in proxy.log if is_transaction(s.method, s.path) for a in [s.action]][:2] == [
        "delay",
        "pass",
    ] or proxy.actions().count("pass") >= 2
    time.sleep(1.2)  # let the slow forward land, then check it did not duplicate anything
    assert count(proxy.base_url, "ImagingStudy") == 1
    assert count(proxy.base_url, "Patient") == 1


def test_retry_limit_then_the_bundle_fails(proxy: FaultProxy, make_folder: MakeFolder) -> None:
    folder = make_folder(2)
    proxy.script(Fault("status", status=503, times=100, match=is_transaction))
    result = push(folder, "--server", proxy.base_url, "--quiet", "--backoff", "0.01",
                  "--retries", "2", "--jobs", "1")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "HTTP 503" in result.stderr
    assert "gave up after 3 attempts" in result.stderr
    assert sum(1 for s in proxy.log if is_transaction(s.method, s.path)) == 6


def test_timeouts_up_to_the_limit_fail_the_bundle(
    proxy: FaultProxy, make_folder: MakeFolder
) -> None:
    folder = make_folder(1)
    proxy.script(Fault("delay", seconds=1.0, times=2, match=is_transaction))
    result = push(folder, "--server", proxy.base_url, "--quiet", "--backoff", "0.01",
                  "--retries", "1", "--timeout", "0.3")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "ReadTimeout" in result.stderr
    assert "gave up after 2 attempts" in result.stderr


def test_4xx_is_not_retried(proxy: FaultProxy, make_folder: MakeFolder) -> None:
    folder = make_folder(1)
    proxy.script(Fault("status", status=409, match=is_transaction))
    result = push(folder, "--server", proxy.base_url, *FAST)
    assert result.exit_code == 1, result.output
    assert "HTTP 409" in result.stderr
    assert sum(1 for s in proxy.log if is_transaction(s.method, s.path)) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_is_cannot_start(make_folder: MakeFolder) -> None:
    folder = make_folder(1)
    url = f"http://127.0.0.1:{_closed_port()}/fhir/R4"
    result = push(folder, "--server", url, *FAST)
    assert result.exit_code == 3, result.output
    assert "ConnectError" in result.output


def test_server_gone_mid_run_stops_the_run(proxy: FaultProxy, make_folder: MakeFolder) -> None:
    folder = make_folder(4)
    proxy.script(Fault("drop", times=100, match=is_transaction))
    result = push(folder, "--server", proxy.base_url, *FAST, "--jobs", "1", "--json")
    # Dropped connections are transport errors but not "cannot connect": every bundle is tried.
    assert result.exit_code == 1, result.output
    assert jsonio.loads(result.stdout)["summary"]["failed"] == 4


# --------------------------------------------------------------------------- auth
TOKEN = "tok-SECRET-7f3a9c"


def test_bearer_token_from_env_and_never_printed(
    proxy: FaultProxy, make_folder: MakeFolder
) -> None:
    folder = make_folder(2, binary_files=True)
    proxy.require_bearer(TOKEN)
    result = push(folder, "--server", proxy.base_url, "--backoff", "0.01", "-vv", "--json",
                  env={"FHIRIMG_TOKEN": TOKEN})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    assert TOKEN not in (folder / ".fhirimg-push-journal.jsonl").read_text()
    assert all(s.authorization == f"Bearer {TOKEN}" for s in proxy.log)
    help_text = push("--help", env={"FHIRIMG_TOKEN": TOKEN}).output
    assert TOKEN not in help_text


def test_wrong_token_is_cannot_start(proxy: FaultProxy, make_folder: MakeFolder) -> None:
    folder = make_folder(1)
    proxy.require_bearer(TOKEN)
    result = push(folder, "--server", proxy.base_url, *FAST, "--token", "wrong-token-123")
    assert result.exit_code == 3, result.output
    assert "401" in result.output
    assert "wrong-token-123" not in result.output


def test_basic_auth_password_from_env(proxy: FaultProxy, make_folder: MakeFolder) -> None:
    folder = make_folder(1)
    proxy.require_basic("alice", "pw-SECRET-1")
    result = push(folder, "--server", proxy.base_url, *FAST, "--user", "alice", "-vv",
                  env={"FHIRIMG_PASSWORD": "pw-SECRET-1"})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pw-SECRET-1" not in result.output
    bad = push(folder, "--server", proxy.base_url, *FAST, "--user", "alice", "--force",
               env={"FHIRIMG_PASSWORD": "nope"})  # fmt: skip
    assert bad.exit_code == 3, bad.output


def test_oauth_client_credentials(proxy: FaultProxy, make_folder: MakeFolder) -> None:
    folder = make_folder(3)
    proxy.enable_oauth("fhirimg", "cs-SECRET-9")
    args = ["--server", proxy.base_url, *FAST, "--token-url", proxy.token_url]
    result = push(folder, *args, "--client-id", "fhirimg", "-vv",
                  env={"FHIRIMG_CLIENT_SECRET": "cs-SECRET-9"})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert proxy.tokens_issued == 1
    assert "cs-SECRET-9" not in result.output
    assert "tok-" not in result.output
    bad = push(folder, *args, "--client-id", "fhirimg", "--force",
               env={"FHIRIMG_CLIENT_SECRET": "wrong"})  # fmt: skip
    assert bad.exit_code == 3, bad.output
    assert "token endpoint" in bad.output


def test_oauth_token_refreshed_after_401(proxy: FaultProxy) -> None:
    proxy.enable_oauth("fhirimg", "cs")
    auth = ClientCredentialsAuth(proxy.token_url, "fhirimg", "cs")
    with FhirClient(proxy.base_url, auth=auth, retry=RetryPolicy(backoff_base=0.01)) as client:
        client.capabilities()
        client.capabilities()
        assert proxy.tokens_issued == 1
        proxy.revoke_tokens()  # the server drops the token before its expiry
        client.capabilities()
        assert proxy.tokens_issued == 2
        assert [s.action for s in proxy.log if s.action != "token"] == [
            "pass",
            "pass",
            "unauthorized",
            "pass",
        ]


def test_auth_options_are_exclusive(make_folder: MakeFolder) -> None:
    folder = make_folder(1)
    result = push(folder, "--server", "http://127.0.0.1:9/x", "--token", "a", "--user", "b")
    assert result.exit_code == 2, result.output


def test_missing_ca_bundle_is_cannot_start(make_folder: MakeFolder, tmp_path: Path) -> None:
    folder = make_folder(1)
    result = push(folder, "--server", "https://127.0.0.1:9/x", "--ca-bundle", tmp_path / "no.pem")
    assert result.exit_code == 3, result.output
    assert "CA bundle" in result.output


# --------------------------------------------------------------------------- crash and resume
def _run_cli(folder: Path, url: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fhirimg",
            "push",
            str(folder),
            "--server",
            url,
            "--quiet",
            "--backoff",
            "0.01",
            "--jobs",
            "2",
            *extra,
        ],  # fmt: skip
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _confirmed(journal: Path) -> int:
    if not journal.exists():
        return 0
    return journal.read_bytes().count(b'"kind":"bundle"')


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_push_resumes_to_the_same_state(
    sig: signal.Signals, proxy: FaultProxy, make_folder: MakeFolder, clean_fhir: Any
) -> None:
    n = 12
    folder = make_folder(n, patients=5, binary_files=True, media=2)
    journal = folder / ".fhirimg-push-journal.jsonl"

    # The reference: one uninterrupted run, on an empty server.
    done = _run_cli(folder, proxy.base_url, "--journal", str(folder.parent / "ref.jsonl"))
    assert done.wait(60) == 0, done.stderr.read() if done.stderr else ""
    expected = snapshot(clean_fhir.base_url)
    expected_binaries = count(clean_fhir.base_url, "Binary")
    clean_fhir.reset()

    proxy.delay_all = 0.08  # slow enough to stop it midway
    run = _run_cli(folder, proxy.base_url)
    deadline = time.monotonic() + 30
    while _confirmed(journal) < 3 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.02)
    run.send_signal(sig)
    code = run.wait(30)
    assert code == (-9 if sig == signal.SIGKILL else 130), run.stderr.read() if run.stderr else ""
    stopped_at = _confirmed(journal)
    assert 3 <= stopped_at < n

    proxy.delay_all = 0.0
    resumed = push(folder, "--server", proxy.base_url, *FAST, "--json")
    assert resumed.exit_code == 0, resumed.output
    summary = jsonio.loads(resumed.stdout)["summary"]
    assert summary["skipped"] == stopped_at
    assert summary["pushed"] == n - stopped_at
    assert snapshot(clean_fhir.base_url) == expected
    assert count(clean_fhir.base_url, "Binary") == expected_binaries
