"""The promises of the HTTP layer (issue 18 items 1-3, 12, 13 and TLS), tested against the hostile
server (tests/servers/hostile.py) that records which origin got which headers.

- credentials are bound to the origin of the configured base URL, and no request leaves the base
  URL (links from server answers included);
- credentials never go over plain http:// to a host that is not loopback, unless allowed (warned
  once per host);
- every answer has a size cap, every attempt a deadline;
- TLS: CA bundle, client certificates (mutual TLS), clear errors naming the server.

Every test server is on loopback; a non-loopback host name is routed to one by a transport hook
(:class:`RouteTo`), so that the refusal can be shown to happen before anything is sent.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fhirimg.errors import (
    ConfigError,
    PushError,
    ResponseTooLargeError,
    ServerUnreachableError,
    UntrustedUrlError,
)
from fhirimg.http import (
    BasicAuth,
    BearerAuth,
    ClientCredentialsAuth,
    FhirClient,
    HttpClient,
    OriginBoundAuth,
    RetryPolicy,
    origin_of,
)
from fhirimg.http.limits import CAPABILITY_MAX, MiB
from tests.servers import hostile
from tests.servers.hostile import HostileServer, RequestLog

SECRET = "s3cret-token-18"
PASSWORD = "pa55word-18"
CLIENT_SECRET = "client-secret-18"
ONCE = RetryPolicy(max_attempts=1)
FAST = RetryPolicy(max_attempts=3, backoff_base=0.01, jitter=False)


class RouteTo(httpx.BaseTransport):
    """Send every request to ``server`` (plain HTTP, loopback), whatever host its URL names:
    how a test reaches a "remote" host name. Counts what it sent."""

    def __init__(self, server: HostileServer) -> None:
        self._server = server
        self._inner = httpx.HTTPTransport()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._server.port)
        routed = httpx.Request(request.method, url, headers=request.headers, stream=request.stream)
        return self._inner.handle_request(routed)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture
def log() -> RequestLog:
    return RequestLog()


def _real_errors(server: HostileServer) -> list[str]:
    # A client that stops reading a huge answer closes the connection under the server's feet:
    # expected here, not a fault of the server.
    dropped = ("ConnectionResetError", "BrokenPipeError")
    return [e for e in server.errors if not any(d in e for d in dropped)]


@pytest.fixture
def fhir(log: RequestLog) -> Iterator[HostileServer]:
    with HostileServer(log=log) as server:
        yield server
    assert _real_errors(server) == []


@pytest.fixture
def elsewhere(log: RequestLog) -> Iterator[HostileServer]:
    with HostileServer(log=log) as server:
        yield server
    assert _real_errors(server) == []


# --------------------------------------------------------------------------- origin binding
def test_a_url_outside_the_base_is_not_requested(
    fhir: HostileServer, elsewhere: HostileServer, log: RequestLog
) -> None:
    fhir.route("GET", "/fhir/Patient", hostile.json({"resourceType": "Bundle"}))
    with FhirClient(fhir.url("/fhir"), auth=BearerAuth(SECRET), retry=ONCE) as client:
        client.get_json("Patient")
        for url in (
            elsewhere.url("/fhir/steal"),
            fhir.url("/other/steal"),  # same origin, outside the base path
            fhir.url("/fhir/../steal"),
            "../steal",
        ):
            with pytest.raises(UntrustedUrlError) as caught:
                client.get_json(url)
            assert "127.0.0.1" in str(caught.value), caught.value
            assert SECRET not in str(caught.value)
    assert [r.path for r in log] == ["/fhir/Patient"], log.describe()
    assert log.with_credentials(origin_not=fhir, secrets=[SECRET]) == []


def test_links_are_followed_only_under_the_base(
    fhir: HostileServer, elsewhere: HostileServer, log: RequestLog
) -> None:
    fhir.route("GET", "/fhir/ImagingStudy", hostile.search_page(next_url=elsewhere.url("/x")))
    fhir.route("GET", "/fhir/page2", hostile.search_page())
    with FhirClient(fhir.url("/fhir"), auth=BearerAuth(SECRET), retry=ONCE) as client:
        page = client.get_json("ImagingStudy")
        link = page["link"][-1]["url"]
        assert not client.under_base(link)
        with pytest.raises(UntrustedUrlError, match=f"127.0.0.1:{elsewhere.port}") as caught:
            client.get_link_json(link)
        assert f"127.0.0.1:{fhir.port}" in str(caught.value)
        assert client.under_base(fhir.url("/fhir/page2"))
        assert client.get_link_json(fhir.url("/fhir/page2"))["resourceType"] == "Bundle"
        assert client.get_link_json("page2")["resourceType"] == "Bundle"  # relative to the base
    assert log.requests(origin=elsewhere) == []
    assert len(log.requests(origin=fhir, path="/fhir/page2")) == 2
    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in log)


def test_same_host_over_http_is_another_origin(log: RequestLog) -> None:
    with HostileServer(log=log, tls=True) as fhir:
        with HttpClient(
            fhir.base_url, auth=BearerAuth(SECRET), verify=fhir.ca_pem, retry=ONCE
        ) as client:
            assert not client.under_base(fhir.http_url + "/Patient")
            with pytest.raises(UntrustedUrlError):
                client.get_link(fhir.http_url + "/Patient")
            with pytest.raises(UntrustedUrlError):
                client.request("GET", fhir.http_url + "/Patient")
    assert log.requests() == [], log.describe()


@pytest.mark.parametrize(
    "auth", [BearerAuth(SECRET), BasicAuth("alice", PASSWORD)], ids=["bearer", "basic"]
)
def test_origin_bound_auth_adds_nothing_elsewhere(
    auth: httpx.Auth, fhir: HostileServer, elsewhere: HostileServer, log: RequestLog
) -> None:
    # The binding itself, below HttpClient's base-URL check: even a raw client sending anywhere
    # adds the credentials only for the bound origin.
    bound = OriginBoundAuth(auth, origin_of(fhir.base_url))
    with httpx.Client(auth=bound, timeout=10) as raw:
        raw.get(fhir.url("/a"))
        raw.get(elsewhere.url("/b"))
    assert len(log) == 2
    assert log.with_credentials(origin=fhir, secrets=[SECRET, PASSWORD]) != []
    assert log.with_credentials(origin_not=fhir, secrets=[SECRET, PASSWORD]) == []


def test_oauth_secret_goes_to_the_token_url_and_the_token_to_the_server(
    fhir: HostileServer, elsewhere: HostileServer, log: RequestLog
) -> None:
    with HostileServer(log=log) as idp:
        idp.route("POST", "/token", hostile.oauth_token(access_token=SECRET))
        auth = ClientCredentialsAuth(idp.url("/token"), "fhirimg", CLIENT_SECRET)
        fhir.route("GET", "/fhir/Patient", hostile.json({"resourceType": "Bundle"}))
        with FhirClient(fhir.url("/fhir"), auth=auth, retry=ONCE) as client:
            client.get_json("Patient")
            with pytest.raises(UntrustedUrlError):
                client.get_link_json(elsewhere.url("/fhir/Patient"))
        secrets = [SECRET, CLIENT_SECRET]
        assert [r.path for r in log.requests(origin=idp)] == ["/token"]
        assert log.with_credentials(origin_not=[fhir, idp], secrets=secrets) == []
        # The FHIR server saw the access token only, never the client's Basic credentials.
        assert [r.headers.get("authorization") for r in log.requests(origin=fhir)] == [
            f"Bearer {SECRET}"
        ]
        assert _real_errors(idp) == []


# --------------------------------------------------------------------------- cleartext
@pytest.mark.parametrize(
    "auth",
    [BearerAuth(SECRET), BasicAuth("alice", PASSWORD)],
    ids=["bearer", "basic"],
)
def test_credentials_over_http_to_a_remote_host_are_refused(
    auth: httpx.Auth, fhir: HostileServer, log: RequestLog
) -> None:
    route = RouteTo(fhir)
    with pytest.raises(ConfigError, match=r"plain http:// to fhir\.example\.test"):
        HttpClient("http://fhir.example.test/r4", auth=auth, transport=route)
    assert route.sent == 0
    assert len(log) == 0


def test_client_secret_over_http_is_refused(fhir: HostileServer, log: RequestLog) -> None:
    route = RouteTo(fhir)
    auth = ClientCredentialsAuth("http://idp.example.test/token", "fhirimg", CLIENT_SECRET)
    with pytest.raises(ConfigError, match=r"client secret over plain http:// to idp\.example"):
        HttpClient("https://fhir.example.test/r4", auth=auth, transport=route)
    assert route.sent == 0
    assert len(log) == 0


def test_no_credentials_over_http_is_fine(fhir: HostileServer, log: RequestLog) -> None:
    fhir.route("GET", "/r4/Patient", hostile.json({}))
    with HttpClient("http://fhir.example.test/r4", transport=RouteTo(fhir)) as client:
        client.request("GET", "Patient")
    assert len(log) == 1


def test_allowed_cleartext_warns_once_per_host(
    fhir: HostileServer, log: RequestLog, caplog: pytest.LogCaptureFixture
) -> None:
    fhir.route("GET", "/r4/Patient", hostile.json({}))
    host = "allowed-once.example.test"
    with caplog.at_level(logging.WARNING, logger="fhirimg.http"):
        for _ in range(2):
            with HttpClient(
                f"http://{host}/r4",
                auth=BearerAuth(SECRET),
                transport=RouteTo(fhir),
                allow_insecure_http=True,
            ) as client:
                client.request("GET", "Patient")
    warnings = [r.getMessage() for r in caplog.records if host in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "plain http://" in warnings[0]
    assert [r.headers.get("authorization") for r in log] == [f"Bearer {SECRET}"] * 2


def test_loopback_over_http_is_allowed_without_warning(
    fhir: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    fhir.route("GET", "/Patient", hostile.json({}))
    with caplog.at_level(logging.WARNING, logger="fhirimg.http"):
        with HttpClient(fhir.base_url, auth=BearerAuth(SECRET)) as client:
            client.request("GET", "Patient")
        with HttpClient(f"http://localhost:{fhir.port}", auth=BearerAuth(SECRET)) as client:
            client.request("GET", "Patient")
    assert not [r for r in caplog.records if "plain http" in r.getMessage()]


# --------------------------------------------------------------------------- size caps
def test_a_huge_capability_statement_is_refused_by_its_length(
    fhir: HostileServer,
) -> None:
    fhir.route("GET", "/metadata", hostile.huge(200_000_000, "capability"))
    started = time.monotonic()
    with FhirClient(fhir.base_url, retry=ONCE) as client, pytest.raises(ResponseTooLargeError) as e:
        client.capabilities()
    assert f"127.0.0.1:{fhir.port}" in str(e.value)
    assert "16 MiB" in str(e.value)
    assert time.monotonic() - started < 5


def test_a_huge_answer_without_length_stops_at_the_cap(fhir: HostileServer) -> None:
    fhir.route("GET", "/metadata", hostile.huge(200_000_000, "capability", declare_length=False))
    tracemalloc.start()
    try:
        with FhirClient(fhir.base_url, retry=FAST) as client:
            with pytest.raises(ResponseTooLargeError, match="16 MiB") as caught:
                client.capabilities()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "reading stopped" in str(caught.value)
    assert peak < CAPABILITY_MAX + 8 * MiB, peak
    # Not retried: the same server sends the same answer again.
    assert len(fhir.log.requests(path="/metadata")) == 1


def test_each_kind_of_answer_has_its_cap(fhir: HostileServer) -> None:
    fhir.route("GET", "/big", hostile.huge(3 * MiB, "padding", declare_length=False))
    fhir.route("GET", "/ImagingStudy", hostile.huge(3 * MiB, "searchset"))
    with FhirClient(fhir.base_url, retry=ONCE) as client:
        assert len(client.request("GET", "big").content) == 3 * MiB  # under the default cap
        with pytest.raises(ResponseTooLargeError, match="2 MiB"):
            client.request("GET", "big", max_bytes=2 * MiB)
        assert client.get_json("ImagingStudy")["type"] == "searchset"
        with pytest.raises(ResponseTooLargeError):
            client.get_json("ImagingStudy", max_bytes=MiB)


def test_a_large_body_can_go_to_a_sink(fhir: HostileServer) -> None:
    fhir.route("GET", "/instance", hostile.huge(5 * MiB, "padding", declare_length=False))
    received: list[int] = []
    with HttpClient(fhir.base_url, retry=ONCE) as client:
        response = client.request(
            "GET", "instance", max_bytes=MiB, sink=lambda chunk: received.append(len(chunk))
        )
    assert sum(received) == 5 * MiB
    assert response.content == b""


def test_a_huge_token_response_is_refused(fhir: HostileServer, log: RequestLog) -> None:
    with HostileServer(log=log) as idp:
        idp.route("POST", "/token", hostile.huge(50 * MiB, "padding", declare_length=False))
        auth = ClientCredentialsAuth(idp.url("/token"), "fhirimg", CLIENT_SECRET)
        with FhirClient(fhir.base_url, auth=auth, retry=ONCE) as client:
            with pytest.raises(ResponseTooLargeError, match=r"token response .*1 MiB"):
                client.capabilities()
    assert log.requests(origin=fhir) == []


def test_a_huge_refusal_is_truncated_not_hoarded(fhir: HostileServer) -> None:
    def refusal(request: hostile.Request) -> hostile.Reply:
        body = hostile.huge(50 * MiB, "padding", declare_length=False)(request)
        return hostile.Reply(422, body.headers, chunks=body.chunks)

    fhir.route("POST", "/", refusal)
    with FhirClient(fhir.base_url, retry=ONCE) as client:
        with pytest.raises(PushError, match="HTTP 422") as caught:
            client.transaction({"resourceType": "Bundle", "type": "transaction"})
    assert caught.value.status == 422


# --------------------------------------------------------------------------- deadline
def test_a_dripping_body_ends_at_the_deadline(fhir: HostileServer) -> None:
    fhir.route("GET", "/metadata", hostile.slow(interval=0.2, max_seconds=20))
    started = time.monotonic()
    retry = RetryPolicy(max_attempts=2, backoff_base=0.01, jitter=False)
    with FhirClient(fhir.base_url, timeout=5.0, deadline=1.0, retry=retry) as client:
        with pytest.raises(PushError, match=r"deadline of 1 s \(--max-time\)") as caught:
            client.capabilities()
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 4.0, elapsed
    assert "gave up after 2 attempts" in str(caught.value)
    assert len(fhir.log.requests(path="/metadata")) == 2


def test_max_elapsed_still_bounds_the_retries(fhir: HostileServer) -> None:
    fhir.route("GET", "/metadata", hostile.slow(interval=0.2, max_seconds=20))
    retry = RetryPolicy(max_attempts=50, backoff_base=0.01, jitter=False, max_elapsed=2.5)
    started = time.monotonic()
    with FhirClient(fhir.base_url, timeout=5.0, deadline=1.0, retry=retry) as client:
        with pytest.raises(PushError, match="deadline"):
            client.capabilities()
    assert time.monotonic() - started < 4.5


@pytest.fixture
def dripping_headers() -> Iterator[str]:
    """A server that sends its status line and headers one byte every 0.2 s, for ever."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                head = b"HTTP/1.1 200 OK\r\n" + b"X-Drip: " + b"a" * 10_000
                for byte in head:
                    if stop.wait(0.2):
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_dripping_headers_end_at_the_deadline(dripping_headers: str) -> None:
    started = time.monotonic()
    with HttpClient(dripping_headers, timeout=5.0, deadline=1.0, retry=ONCE) as client:
        with pytest.raises(PushError, match="deadline of 1 s"):
            client.request("GET", "metadata")
    assert time.monotonic() - started < 2.5


# --------------------------------------------------------------------------- TLS
@pytest.fixture
def mtls(log: RequestLog) -> Iterator[HostileServer]:
    with HostileServer(log=log, tls=True, require_client_cert=True) as server:
        server.route("GET", "/ImagingStudy", hostile.search_page())
        yield server


def test_mutual_tls_with_a_good_pair(mtls: HostileServer) -> None:
    with FhirClient(
        mtls.base_url, verify=mtls.ca_pem, client_cert=mtls.client_cert, retry=ONCE
    ) as client:
        assert client.capabilities()["resourceType"] == "CapabilityStatement"


def test_mutual_tls_without_a_certificate_says_so(mtls: HostileServer) -> None:
    with FhirClient(mtls.base_url, verify=mtls.ca_pem, retry=FAST) as client:
        with pytest.raises(ServerUnreachableError) as caught:
            client.capabilities()
    message = str(caught.value)
    assert f"127.0.0.1:{mtls.port}" in message
    assert "client certificate" in message or "--client-cert" in message, message
    assert mtls.log.wait_for(0, refused=1)


def test_mutual_tls_with_a_certificate_of_another_ca_fails(mtls: HostileServer) -> None:
    with FhirClient(
        mtls.base_url, verify=mtls.ca_pem, client_cert=mtls.wrong_client_cert, retry=FAST
    ) as client:
        with pytest.raises(ServerUnreachableError, match=f"127.0.0.1:{mtls.port}"):
            client.capabilities()
    assert mtls.log.requests() == []


def test_a_server_certificate_from_an_unknown_ca_fails_clearly(mtls: HostileServer) -> None:
    with FhirClient(mtls.base_url, client_cert=mtls.client_cert, retry=FAST) as client:
        with pytest.raises(ServerUnreachableError, match="--ca-bundle") as caught:
            client.capabilities()
    assert f"127.0.0.1:{mtls.port}" in str(caught.value)
    assert mtls.log.requests() == []


def test_bad_tls_files_are_config_errors(tmp_path: Path, mtls: HostileServer) -> None:
    with pytest.raises(ConfigError, match="CA bundle not found"):
        HttpClient(mtls.base_url, verify=tmp_path / "none.pem")
    with pytest.raises(ConfigError, match="client certificate file not found"):
        HttpClient(mtls.base_url, client_cert=(tmp_path / "c.pem", tmp_path / "k.pem"))
    cert, _ = mtls.client_cert
    _, wrong_key = mtls.wrong_client_cert
    with pytest.raises(ConfigError, match="cannot use the client certificate"):
        HttpClient(mtls.base_url, client_cert=(cert, wrong_key))


# --------------------------------------------------------------------------- the CLI
runner = CliRunner()


def _cli(*args: str) -> tuple[int, str]:
    from fhirimg.cli import app

    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_cli_verify_with_mutual_tls(mtls: HostileServer) -> None:
    cert, key = mtls.client_cert
    tls = ["--ca-bundle", str(mtls.ca_pem), "--retries", "0"]
    code, output = _cli(
        "verify", "--server", mtls.base_url, *tls, "--client-cert", str(cert),
        "--client-key", str(key),
    )  # fmt: skip
    # The handshake worked and the search was answered; the server holds no ImagingStudy, so
    # verify checked nothing: 4 (issue 11 item 17), not a TLS failure's 3.
    assert code == 4, output
    assert mtls.log.requests(path="/ImagingStudy"), mtls.log.describe()

    code, output = _cli("verify", "--server", mtls.base_url, *tls)
    assert code == 3, output
    assert f"127.0.0.1:{mtls.port}" in output, output
    assert "client certificate" in output, output

    code, output = _cli(
        "verify", "--server", mtls.base_url, "--retries", "0", "--client-cert", str(cert),
        "--client-key", str(key),
    )  # fmt: skip
    assert code == 3, output
    assert "--ca-bundle" in output, output


def test_cli_client_cert_needs_its_key(mtls: HostileServer) -> None:
    cert, _ = mtls.client_cert
    code, output = _cli("verify", "--server", mtls.base_url, "--client-cert", str(cert))
    assert code == 2, output
    assert "--client-key" in output


def test_cli_refuses_a_token_over_http(tmp_path: Path) -> None:
    code, output = _cli(
        "verify", "--server", "http://fhir.example.test/r4", "--token", SECRET, "--retries", "0"
    )
    assert code == 2, output  # a URL that cannot be used with credentials: a usage error
    assert "plain http:// to fhir.example.test" in output, output
    assert SECRET not in output


def test_cli_max_time(fhir: HostileServer) -> None:
    fhir.route("GET", "/ImagingStudy", hostile.slow(interval=0.2, max_seconds=20))
    started = time.monotonic()
    code, output = _cli("verify", "--server", fhir.base_url, "--max-time", "1", "--retries", "0")
    assert code == 3, output
    assert "deadline of 1 s" in output, output
    assert time.monotonic() - started < 5


def test_cli_validate_server_with_mutual_tls(mtls: HostileServer, tmp_path: Path) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": "ok"}],
    }
    mtls.route("POST", "/Patient/$validate", hostile.json(outcome))
    resource = tmp_path / "patient.json"
    resource.write_text('{"resourceType": "Patient", "id": "p1"}')
    cert, key = mtls.client_cert
    server = ["--server", mtls.base_url, "--ca-bundle", str(mtls.ca_pem)]
    code, output = _cli(
        "validate", str(resource), *server, "--client-cert", str(cert), "--client-key", str(key)
    )
    assert code in (0, 1), output
    assert mtls.log.requests(method="POST", path="/Patient/$validate"), mtls.log.describe()

    code, output = _cli("validate", str(resource), *server)
    assert code == 3, output
    assert f"127.0.0.1:{mtls.port}" in output, output
