"""The hostile test server does what the issue 18 tests built on it assume.

A regression test that passes because the hostile server never sent the hostile answer would prove
nothing; so each mode is checked here from a plain httpx client: the log, TLS and client
certificates, redirects, links and Endpoints to elsewhere, huge, slow and endless answers,
malformed bodies, escape sequences, and a prompt shutdown.
"""

from __future__ import annotations

import json as jsonlib
import resource
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import hostile
from tests.servers.hostile import HostileServer, Reply, Request, RequestLog


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as running:
        yield running
    assert running.errors == []


def get(url: str, **kwargs: object) -> httpx.Response:
    return httpx.get(url, timeout=10, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- binding, routes, log
def test_binds_loopback_only_on_a_free_port() -> None:
    with HostileServer() as one, HostileServer() as two:
        assert one.port != two.port
        assert one.base_url == f"http://127.0.0.1:{one.port}"
        assert one._server is not None
        assert one._server.server_address[0] == "127.0.0.1"
    assert one.origin == f"http://127.0.0.1:{one.port}"  # still known after exit, for the log


def test_require_client_cert_needs_tls() -> None:
    with pytest.raises(ValueError, match="tls=True"):
        HostileServer(require_client_cert=True)


def test_log_records_origin_method_target_headers_and_body(server: HostileServer) -> None:
    server.route("POST", "/fhir", hostile.json({"ok": True}, 201, {"X-Hostile": "1"}))
    response = httpx.post(
        server.url("/fhir?a=1&b=two"),
        content=b"x" * 1234,
        headers={"X-Custom": "Value", "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 201
    assert response.json() == {"ok": True}
    assert response.headers["x-hostile"] == "1"
    [request] = list(server.log)
    assert request.origin == server.origin
    assert (request.method, request.target, request.path) == ("POST", "/fhir?a=1&b=two", "/fhir")
    assert request.query == {"a": ["1"], "b": ["two"]}
    assert request.url == server.origin + "/fhir?a=1&b=two"
    assert request.headers.get("x-custom") == request.headers.get("X-CUSTOM") == "Value"
    assert "content-type" in request.headers
    assert request.body_length == 1234
    assert request.body == b"x" * 1234
    assert request.credentials() == []


def test_chunked_request_body_is_read_and_measured(server: HostileServer) -> None:
    server.route("PUT", "/upload", hostile.json({}))

    def body() -> Iterator[bytes]:
        yield from (b"abc" * 1000 for _ in range(10))

    assert httpx.put(server.url("/upload"), content=body()).status_code == 200
    [request] = list(server.log)
    assert request.headers.get("transfer-encoding") == "chunked"
    assert request.body_length == 30_000
    assert request.body == b"abc" * 10_000


def test_routes_exact_before_prefix_longest_prefix_any_method(server: HostileServer) -> None:
    server.route("GET", "/a/*", hostile.raw("short prefix"))
    server.route("GET", "/a/b/*", hostile.raw("long prefix"))
    server.route("GET", "/a/b/c", hostile.raw("exact"))
    server.route("*", "/any", hostile.raw("any method"))
    assert get(server.url("/a/b/c?q=1")).text == "exact"
    assert get(server.url("/a/b/d")).text == "long prefix"
    assert get(server.url("/a/x")).text == "short prefix"
    assert httpx.delete(server.url("/any")).text == "any method"
    missing = get(server.url("/nowhere"))
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    server.route("GET", "/a/b/c", hostile.raw("replaced"))
    assert get(server.url("/a/b/c")).text == "replaced"


def test_default_metadata_is_an_r4_capability_statement(server: HostileServer) -> None:
    for path in ("/metadata", "/fhir/R4/metadata"):
        answer = get(server.url(path))
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/fhir+json"
        assert answer.json()["resourceType"] == "CapabilityStatement"
        assert answer.json()["fhirVersion"] == "4.0.1"
    server.route("GET", "/metadata", hostile.metadata("5.0.0"))
    assert get(server.url("/metadata")).json()["fhirVersion"] == "5.0.0"
    with HostileServer(metadata=False) as bare:
        assert get(bare.url("/metadata")).status_code == 404


def test_responder_error_answers_500_and_is_kept(server: HostileServer) -> None:
    def broken(request: Request) -> Reply:
        raise KeyError("boom")

    server.route("GET", "/broken", broken)
    assert get(server.url("/broken")).status_code == 500
    assert len(server.errors) == 1
    assert "boom" in server.errors[0]
    server.errors.clear()


def test_shared_log_tells_which_origin_got_which_credentials() -> None:
    log = RequestLog()
    with HostileServer(log=log) as fhir, HostileServer(log=log) as elsewhere:
        get(fhir.url("/metadata"), headers={"Authorization": "Bearer SECRET-TOKEN"})
        get(elsewhere.url("/plain"))
        get(elsewhere.url("/steal"), headers={"authorization": "Bearer SECRET-TOKEN"})
        get(elsewhere.url("/q?access_token=abc"))
        get(elsewhere.url("/cookie"), headers={"Cookie": "session=1"})
        get(elsewhere.url("/basic"), auth=("user", "PASSWORD-1"))
        httpx.post(elsewhere.url("/secret-in-json"), json={"note": "has SECRET-TOKEN inside"})
    assert log.origins() == [fhir.origin, elsewhere.origin]
    assert len(log) == 7
    assert [r.path for r in log.requests(origin=fhir)] == ["/metadata"]
    leaked = log.with_credentials(origin_not=fhir)
    assert [r.path for r in leaked] == ["/steal", "/q", "/cookie", "/basic"]
    assert leaked[0].credentials() == ["authorization header"]
    assert leaked[1].credentials() == ["access_token in the query"]
    # named secrets are found anywhere: the decoded Basic credentials, a JSON body
    by_secret = log.with_credentials(origin_not=fhir, secrets=["SECRET-TOKEN", "PASSWORD-1"])
    assert [r.path for r in by_secret] == ["/steal", "/q", "/cookie", "/basic", "/secret-in-json"]
    assert "secret 'PASS'... in the headers" in by_secret[3].credentials(["PASSWORD-1"])
    assert "secret 'SECR'... in the body" in by_secret[4].credentials(["SECRET-TOKEN"])
    # origins can be given as URLs (path ignored), servers, or several
    assert log.with_credentials(origin_not=[fhir.url("/x"), elsewhere]) == []
    assert log.with_credentials(origin=fhir.base_url) == log.requests(origin=fhir)
    assert "GET http://127.0.0.1:" in log.describe()
    log.clear()
    assert len(log) == 0


def test_log_wait_for() -> None:
    with HostileServer() as server:
        thread = threading.Thread(target=lambda: get(server.url("/late")))
        thread.start()
        assert server.log.wait_for(1, timeout=10)
        thread.join()
        assert not server.log.wait_for(2, timeout=0.1)


# --------------------------------------------------------------------------- TLS
def test_tls_works_with_the_ca_and_fails_without() -> None:
    with HostileServer(tls=True) as server:
        assert server.base_url.startswith("https://127.0.0.1:")
        assert server.ca_pem.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        context = server.client_ssl_context()
        assert get(server.url("/metadata"), verify=context).status_code == 200
        # the certificate names localhost too
        localhost = f"https://localhost:{server.port}/metadata"
        assert get(localhost, verify=context).status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            get(server.url("/metadata"))  # the system CAs do not know this one
        assert len(server.log) == 2
        assert all(r.origin == server.origin for r in server.log)
        assert server.log.wait_for(2, refused=1)
        assert len(server.log.refused) == 1
    assert server.errors == []


def test_plain_http_to_the_tls_port_is_recorded_and_refused() -> None:
    with HostileServer(tls=True) as server:
        answer = get(server.http_url + "/downgraded", headers={"Authorization": "Bearer T"})
        assert answer.status_code == 400
        [request] = list(server.log)
        assert request.origin == server.http_url != server.origin
        assert request.credentials() == ["authorization header"]
        assert server.log.with_credentials(origin_not=server) == [request]


def test_client_certificate_required() -> None:
    with HostileServer(tls=True, require_client_cert=True) as server:
        good = get(server.url("/metadata"), verify=server.client_ssl_context("good"))
        assert good.status_code == 200
        for context in (server.client_ssl_context(), server.client_ssl_context("wrong")):
            with pytest.raises(httpx.TransportError):
                get(server.url("/metadata"), verify=context)
        assert server.log.wait_for(1, refused=2)
        assert len(server.log) == 1  # the refused ones never became requests
        reasons = [r.reason for r in server.log.refused]
        assert len(reasons) == 2
        assert "CERTIFICATE" in reasons[0].upper()
        assert "CERTIFICATE" in reasons[1].upper()
        for cert, key in (server.client_cert, server.wrong_client_cert):
            assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
            assert b"PRIVATE KEY" in key.read_bytes()
        folder = server.ca_pem.parent
    assert not folder.exists()  # the PEM files go with the server
    assert server.errors == []


# --------------------------------------------------------------------------- data pointing elsewhere
def test_redirect_has_location(server: HostileServer) -> None:
    server.route("GET", "/moved", hostile.redirect("http://127.0.0.1:9/elsewhere"))
    server.route("POST", "/moved", hostile.redirect("https://localhost:9/x", status=307))
    answer = get(server.url("/moved"))
    assert answer.status_code == 302
    assert answer.headers["location"] == "http://127.0.0.1:9/elsewhere"
    post = httpx.post(server.url("/moved"), content=b"{}")
    assert (post.status_code, post.headers["location"]) == (307, "https://localhost:9/x")


def _next(answer: httpx.Response) -> str:
    links = answer.json()["link"]
    return str(next(link["url"] for link in links if link["relation"] == "next"))


def test_search_page_next_links(server: HostileServer) -> None:
    server.route("GET", "/other", hostile.search_page("http://10.9.9.9:8080/fhir/ImagingStudy"))
    server.route("GET", "/same", hostile.search_page(hostile.same_page))
    server.route("GET", "/more", hostile.search_page(hostile.following_page))
    server.route("GET", "/last", hostile.search_page())
    page = get(server.url("/other"))
    assert page.json()["resourceType"] == "Bundle"
    assert page.json()["type"] == "searchset"
    assert _next(page) == "http://10.9.9.9:8080/fhir/ImagingStudy"
    url = server.url("/same?_count=100")
    for _ in range(5):
        url = _next(get(url))
        assert url == server.url("/same?_count=100")
    url = server.url("/more")
    for n in range(2, 6):
        url = _next(get(url))
        assert url == server.url(f"/more?_page={n}")
    assert [link["relation"] for link in get(server.url("/last")).json()["link"]] == ["self"]


def test_imaging_study_and_endpoint_point_elsewhere(server: HostileServer) -> None:
    reference = "http://127.0.0.1:9/fhir/Endpoint/hostile-pacs"
    server.route("GET", "/ImagingStudy", hostile.imaging_study_bundle(reference))
    server.route("GET", "/Endpoint/hostile-pacs", hostile.endpoint("http://127.0.0.1:9/wado"))
    [entry] = get(server.url("/ImagingStudy")).json()["entry"]
    study = entry["resource"]
    assert study["resourceType"] == "ImagingStudy"
    assert study["endpoint"] == [{"reference": reference}]
    assert study["identifier"][0]["value"] == f"urn:oid:{hostile.STUDY_UID}"
    assert study["series"][0]["instance"][0]["uid"].startswith(hostile.STUDY_UID)
    endpoint = get(server.url("/Endpoint/hostile-pacs")).json()
    assert endpoint["address"] == "http://127.0.0.1:9/wado"
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"


def test_oauth_token_endpoint_records_the_form(server: HostileServer) -> None:
    server.route("POST", "/oauth/token", hostile.oauth_token("tok-1", expires_in=60))
    form = {"grant_type": "client_credentials", "client_id": "me", "client_secret": "S3CRET"}
    answer = httpx.post(server.url("/oauth/token"), data=form)
    assert answer.json() == {"access_token": "tok-1", "token_type": "Bearer", "expires_in": 60}
    [request] = list(server.log)
    assert request.form["client_secret"] == ["S3CRET"]
    assert request.credentials(["S3CRET"]) == [
        "client_secret in the body",
        "secret 'S3CR'... in the body",
    ]


# --------------------------------------------------------------------------- huge, slow, endless
@pytest.mark.parametrize("kind", ["array", "capability", "searchset", "padding"])
def test_huge_kinds_are_exact_and_valid(server: HostileServer, kind: hostile.HugeKind) -> None:
    for size in (70_001, 300_000):
        server.route("GET", "/big", hostile.huge(size, kind))
        body = get(server.url("/big")).content
        assert len(body) == size
        if kind == "padding":
            assert body == b"a" * size
        else:
            parsed = jsonlib.loads(body)
            if kind == "capability":
                assert parsed["resourceType"] == "CapabilityStatement"
            elif kind == "searchset":
                assert parsed["type"] == "searchset"
            else:
                assert parsed[0] == {}


def test_huge_streams_200_mb_without_holding_it(server: HostileServer) -> None:
    size = 200_000_000
    server.route("GET", "/metadata", hostile.huge(size))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    received = 0
    head = b""
    with httpx.stream("GET", server.url("/metadata"), timeout=30) as answer:
        assert answer.headers["content-length"] == str(size)
        for chunk in answer.iter_raw():
            head = head or chunk[:40]
            received += len(chunk)
    assert received == size
    assert head.startswith(b'{"resourceType": "CapabilityStatement"')
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB"


def test_huge_without_length_ends_by_closing(server: HostileServer) -> None:
    server.route("GET", "/big", hostile.huge(1_000_000, "array", declare_length=False))
    answer = get(server.url("/big"))
    assert "content-length" not in answer.headers
    assert len(answer.content) == 1_000_000


def test_slow_answer_drips_one_byte_at_a_time(server: HostileServer) -> None:
    server.route("GET", "/slow", hostile.slow(b'{"a":1}', interval=0.2))
    arrivals: list[float] = []
    start = time.monotonic()
    with httpx.stream("GET", server.url("/slow"), timeout=2) as answer:
        headers_after = time.monotonic() - start
        body = b""
        for chunk in answer.iter_raw():
            arrivals.append(time.monotonic())
            body += chunk
    assert body == b'{"a":1}'
    # the headers came at once, the body over >= 6 intervals, in several short reads: each read
    # is quick (a per-read timeout never fires), the whole answer is not
    assert arrivals[-1] - (start + headers_after) >= 6 * 0.2 * 0.8
    assert len(arrivals) >= 4


def test_slow_answer_gives_up_by_itself(server: HostileServer) -> None:
    server.route("GET", "/slow", hostile.slow(b"x" * 100, interval=0.2, max_seconds=1))
    start = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        get(server.url("/slow"))  # the connection closes before Content-Length bytes came
    assert time.monotonic() - start < 3


def test_qido_pages_never_end(server: HostileServer) -> None:
    server.route("GET", "/dicom-web/studies", hostile.qido_endless())
    server.route("GET", "/distinct/studies", hostile.qido_endless(distinct=True))
    pages = [
        get(server.url(f"/dicom-web/studies?limit=10&offset={offset}")).json()
        for offset in (0, 10, 1000)
    ]
    assert [len(page) for page in pages] == [10, 10, 10]
    assert pages[0] == pages[1] == pages[2]  # offset ignored
    assert pages[0][0]["0020000D"]["vr"] == "UI"
    assert len(get(server.url("/dicom-web/studies")).json()) == 100
    first, second = (get(server.url("/distinct/studies?limit=5")).json() for _ in range(2))
    uids = {s["0020000D"]["Value"][0] for s in first + second}
    assert len(uids) == 10


# --------------------------------------------------------------------------- malformed and hostile text
def test_nested_json_overflows_a_recursive_parser(server: HostileServer) -> None:
    server.route("GET", "/deep", hostile.nested_json(100_000))
    body = get(server.url("/deep")).content
    assert body == b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(RecursionError):
        jsonlib.loads(body)


def test_not_json_401_403(server: HostileServer) -> None:
    server.route("GET", "/html", hostile.not_json())
    server.route("GET", "/401", hostile.unauthorized())
    server.route("GET", "/403", hostile.forbidden())
    html = get(server.url("/html"))
    assert html.headers["content-type"] == "application/fhir+json"
    with pytest.raises(ValueError, match="Expecting value"):
        html.json()
    unauthorized = get(server.url("/401"))
    assert unauthorized.status_code == 401
    assert unauthorized.headers["www-authenticate"].startswith("Bearer")
    assert get(server.url("/403")).status_code == 403


def test_escape_sequences_in_operation_outcome(server: HostileServer) -> None:
    server.route("POST", "/", hostile.escape_outcome())
    answer = httpx.post(server.url("/"), content=b"{}")
    assert answer.status_code == 422
    assert b"\xc2\x9b" in answer.content  # the C1 CSI travels as raw UTF-8, not \u escaped
    diagnostics = answer.json()["issue"][0]["diagnostics"]
    assert diagnostics == hostile.ESCAPE_TEXT
    for sequence in ("\x1b[2J", "\x1b]0;", "\x9b", "\x08", "[bold red]"):
        assert sequence in diagnostics
    assert hostile.control_characters(diagnostics)
    assert hostile.control_characters("plain text\twith tab\n") == []


def test_sequence_answers_in_order_then_repeats_the_last(server: HostileServer) -> None:
    server.route(
        "GET", "/seq", hostile.sequence(hostile.status(503), hostile.raw("one"), hostile.raw("two"))
    )
    assert [get(server.url("/seq")).status_code for _ in range(1)] == [503]
    assert [get(server.url("/seq")).text for _ in range(3)] == ["one", "two", "two"]


# --------------------------------------------------------------------------- shutdown
def test_shutdown_is_prompt_with_slow_idle_and_silent_clients() -> None:
    outcomes: list[str] = []

    def read_slowly(url: str, verify: object) -> None:
        try:
            with httpx.stream("GET", url, timeout=20, verify=verify) as answer:  # type: ignore[arg-type]
                for _ in answer.iter_raw():
                    pass
            outcomes.append("complete")
        except httpx.TransportError as exc:
            outcomes.append(type(exc).__name__)

    servers = [HostileServer(), HostileServer(tls=True)]
    for server in servers:
        with server:
            server.route("GET", "/slow", hostile.slow(b"x" * 1000, interval=0.5, max_seconds=25))
            server.route("GET", "/huge", hostile.huge(2_000_000_000, "padding"))
            verify = server.client_ssl_context() if server.tls else True
            readers = [
                threading.Thread(target=read_slowly, args=(server.url(path), verify))
                for path in ("/slow", "/huge")
            ]
            for reader in readers:
                reader.start()
            # a client that connects and says nothing (holds a TLS handshake / request read)
            silent = socket.create_connection(("127.0.0.1", server.port))
            # an idle keep-alive connection after one answer
            idle = httpx.Client(verify=verify)
            idle.get(server.url("/metadata"))
            assert server.log.wait_for(3, timeout=10)
            time.sleep(0.3)
            start = time.monotonic()
        elapsed = time.monotonic() - start  # leaving the block stopped everything
        assert elapsed < 3, f"shutdown took {elapsed:.1f}s"
        assert server.threads_alive() == 0
        for reader in readers:
            reader.join(5)
            assert not reader.is_alive()
        silent.close()
        idle.close()
        assert server.errors == []
    assert len(outcomes) == 4
    assert "complete" not in outcomes  # both streams were cut, none ran to its end
