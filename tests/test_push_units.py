"""Unit tests of the push pieces that need no server: retry policy, journal, splitting, discovery."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhirimg import jsonio
from fhirimg.errors import AuthError, JournalLockedError, PushError
from fhirimg.http import (
    BasicAuth,
    BearerAuth,
    ClientCredentialsAuth,
    FhirClient,
    RetryPolicy,
    parse_retry_after,
)
from fhirimg.push import (
    Journal,
    binaries_beside,
    discover,
    plan_pieces,
    too_large_limit,
)
from fhirimg.push.split import dependency_order, rewrite_references, urn_references
from fhirimg.push.transaction import CreateGate
from tests.conftest import study_bundle, write_bundle

FAST = RetryPolicy(max_attempts=4, backoff_base=0.001, backoff_max=0.01, max_elapsed=5)


# --------------------------------------------------------------------------- retry policy
def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=4.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


@given(st.integers(min_value=1, max_value=30))
def test_jitter_stays_between_half_and_full_delay(attempt: int) -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=10.0)
    fixed = RetryPolicy(backoff_base=0.5, backoff_max=10.0, jitter=False).delay(attempt)
    assert fixed / 2 <= policy.delay(attempt) <= fixed


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    now = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Fri, 27 Nov 2026 12:00:03 GMT", now=now) == 3.0
    assert parse_retry_after("Fri, 27 Nov 2026 11:00:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("later") is None
    assert parse_retry_after(None) is None


def _client(handler: Any, retry: RetryPolicy = FAST, **kw: Any) -> FhirClient:
    return FhirClient(
        "https://fhir.test/r4", retry=retry, transport=httpx.MockTransport(handler), **kw
    )


def test_client_retries_503_then_succeeds() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503) if len(calls) < 3 else httpx.Response(200, json={"ok": 1})

    with _client(handler) as client:
        assert client.get_json("metadata") == {"ok": 1}
    assert len(calls) == 3


def test_client_does_not_retry_400_and_carries_the_outcome() -> None:
    calls = []
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad name"}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(400, json=outcome)

    with _client(handler) as client, pytest.raises(PushError) as caught:
        client.transaction({"resourceType": "Bundle"})
    assert len(calls) == 1
    assert caught.value.status == 400
    assert caught.value.outcome == outcome
    assert "bad name" in str(caught.value)


def test_client_gives_up_after_max_attempts() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    with _client(handler) as client, pytest.raises(PushError, match="gave up after 4 attempts"):
        client.get_json("metadata")
    assert len(calls) == 4


def test_client_honours_retry_after_and_the_time_limit() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "30"})

    policy = RetryPolicy(max_attempts=10, backoff_base=0.001, max_elapsed=5)
    started = time.monotonic()
    with _client(handler, policy) as client, pytest.raises(PushError, match="429"):
        client.get_json("metadata")
    assert time.monotonic() - started < 1  # a 30 s wait past the 5 s limit: give up at once


def test_client_401_is_an_auth_error() -> None:
    with (
        _client(lambda r: httpx.Response(401)) as client,
        pytest.raises(AuthError),
    ):
        client.get_json("metadata")


def test_stop_interrupts_a_retry_wait() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_base=30, backoff_max=30, jitter=False)
    client = _client(lambda r: httpx.Response(503), policy)
    threading.Timer(0.2, client.stop).start()
    started = time.monotonic()
    with pytest.raises(PushError, match="stopped"):
        client.get_json("metadata")
    assert time.monotonic() - started < 5


def test_credentials_never_in_repr() -> None:
    assert "s3cret" not in repr(BearerAuth("s3cret"))
    assert "s3cret" not in repr(BasicAuth("u", "s3cret"))
    assert "s3cret" not in repr(ClientCredentialsAuth("http://t/token", "id", "s3cret"))


def test_oauth_fetches_once_and_refreshes_on_401() -> None:
    issued: list[str] = []
    valid: set[str] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            assert request.headers["Authorization"].startswith("Basic ")
            token = f"t{len(issued)}"
            issued.append(token)
            valid.add(token)
            return httpx.Response(200, json={"access_token": token, "expires_in": 3600})
        if request.headers.get("Authorization", "").removeprefix("Bearer ") in valid:
            return httpx.Response(200, json={})
        return httpx.Response(401)

    auth = ClientCredentialsAuth("https://fhir.test/token", "id", "secret")
    with _client(handler, auth=auth) as client:
        client.get_json("metadata")
        client.get_json("metadata")
        assert issued == ["t0"]
        valid.clear()  # revoked early
        client.get_json("metadata")
        assert issued == ["t0", "t1"]


def test_oauth_bad_secret_is_an_auth_error() -> None:
    auth = ClientCredentialsAuth("https://fhir.test/token", "id", "wrong")
    handler = lambda r: httpx.Response(401, json={"error": "invalid_client"})  # noqa: E731
    with _client(handler, auth=auth) as client, pytest.raises(AuthError, match="token endpoint"):
        client.get_json("metadata")


# --------------------------------------------------------------------------- journal
def test_journal_round_trip_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.record_bundle("http://a", "h1", file="x.json", entries=3)
        journal.record_binary("http://a", "b1", "h2", size=10)
    again = Journal(path)
    assert again.bundle_done("http://a", "h1")
    assert not again.bundle_done("http://b", "h1")
    assert again.binary_done("http://a", "b1", "h2")
    assert not again.binary_done("http://a", "b1", "changed")
    assert not Journal(path, ignore_existing=True).bundle_done("http://a", "h1")


def test_journal_ignores_a_torn_last_line_and_keeps_appending(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.record_bundle("http://a", "h1", file="x.json", entries=3)
    with path.open("ab") as fh:
        fh.write(b'{"v": 1, "kind": "bundle", "server": "http://a", "sha2')  # crash mid-write
    journal = Journal(path)
    assert journal.torn_lines == 1
    with journal:
        journal.record_bundle("http://a", "h3", file="y.json", entries=3)
    reread = Journal(path)
    assert reread.bundle_done("http://a", "h1")
    assert reread.bundle_done("http://a", "h3")
    assert reread.torn_lines == 1


def test_journal_is_locked_while_a_push_runs(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path), pytest.raises(JournalLockedError):
        Journal(path).open()
    Journal(path).open().close()  # released


def test_journal_read_only_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path, read_only=True) as journal:
        journal.record_bundle("http://a", "h1", file="x.json", entries=3)
    assert not path.exists()


# --------------------------------------------------------------------------- splitting
def test_plan_keeps_referenced_entries_first() -> None:
    bundle, _ = study_bundle("2.25.1", "MRN1", media=6, inline_binaries=2)
    entries = list(reversed(bundle["entry"]))  # worst order: Media before ImagingStudy
    pieces = plan_pieces(entries, 3)
    flat = [e["fullUrl"] for piece in pieces for e in piece]
    assert sorted(flat) == sorted(e["fullUrl"] for e in entries)
    assert all(len(p) <= 3 for p in pieces)
    position = {url: i for i, url in enumerate(flat)}
    for entry in entries:
        for ref in urn_references(entry["resource"]):
            assert position[ref] < position[entry["fullUrl"]]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=12),
    st.lists(st.lists(st.integers(min_value=0, max_value=20), max_size=3), max_size=20),
)
def test_plan_is_a_permutation_respecting_acyclic_references(
    limit: int, refs: list[list[int]]
) -> None:
    # Entry i may only reference entries with a smaller index: acyclic by construction.
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{i}",
            "resource": {"r": [{"reference": f"urn:uuid:{j}"} for j in deps if j < i]},
        }
        for i, deps in enumerate(refs)
    ]
    flat = [e["fullUrl"] for p in plan_pieces(entries, limit) for e in p] if entries else []
    assert sorted(flat) == sorted(e["fullUrl"] for e in entries)
    position = {url: i for i, url in enumerate(flat)}
    for entry in entries:
        for ref in urn_references(entry["resource"]):
            assert position[ref] < position[entry["fullUrl"]]


def test_cycles_keep_bundle_order() -> None:
    a = {"fullUrl": "urn:uuid:a", "resource": {"x": {"reference": "urn:uuid:b"}}}
    b = {"fullUrl": "urn:uuid:b", "resource": {"x": {"reference": "urn:uuid:a"}}}
    assert dependency_order([a, b]) == [0, 1]


def test_rewrite_replaces_references_and_attachment_urls() -> None:
    piece: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:m",
            "resource": {
                "partOf": [{"reference": "urn:uuid:s"}],
                "content": {"url": "urn:uuid:b"},
                "note": "urn:uuid:s is kept in longer text",
            },
        }
    ]
    out = rewrite_references(piece, {"urn:uuid:s": "ImagingStudy/1", "urn:uuid:b": "Binary/2"})
    assert out[0]["resource"]["partOf"][0]["reference"] == "ImagingStudy/1"
    assert out[0]["resource"]["content"]["url"] == "Binary/2"
    assert out[0]["fullUrl"] == "urn:uuid:m"
    assert piece[0]["resource"]["partOf"][0]["reference"] == "urn:uuid:s"  # not mutated


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (400, "Transaction requires strict isolation but has too many entries (12 > 8)", 8),
        (400, "Bundle contains 600 entries, which exceeds the maximum of 500", 500),
        (422, "Bundle exceeds maximum bundle size", 0),
        (413, "", 0),
        (400, "Patient.name: missing", None),
        (404, "too many entries", None),
    ],
)
def test_too_large_detection(status: int, text: str, expected: int | None) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
    assert too_large_limit(status, outcome) == expected


# --------------------------------------------------------------------------- discovery
def test_discover_skips_report_and_non_bundles(tmp_path: Path) -> None:
    bundle, binaries = study_bundle("2.25.7", "MRN7", binary_files=True)
    write_bundle(tmp_path, "study", bundle, binaries)
    (tmp_path / "report.json").write_bytes(jsonio.dumps({"files": 1}))
    (tmp_path / "patient.json").write_bytes(jsonio.dumps({"resourceType": "Patient"}))
    (tmp_path / "broken.json").write_bytes(b"{nope")
    (tmp_path / "coll.json").write_bytes(
        jsonio.dumps({"resourceType": "Bundle", "type": "collection"})
    )
    files, ignored = discover([tmp_path])
    # Broken JSON may be a damaged bundle: refused with its reason (issue 11 item 10), not ignored.
    assert [(f.path.name, f.problem is None) for f in files] == [
        ("broken.json", False),
        ("study.json", True),
    ]
    assert {Path(name).name for name, _ in ignored} == {"report.json", "patient.json", "coll.json"}
    assert files[1].binaries_size == sum(len(b) for b in binaries.values())


def test_binaries_beside_reads_the_instance_extension(tmp_path: Path) -> None:
    bundle, binaries = study_bundle("2.25.8", "MRN8", binary_files=True, instances=3)
    path = write_bundle(tmp_path, "s", bundle, binaries)
    found = binaries_beside(path, bundle)
    assert [i for i, _ in found] == list(binaries)
    assert all(p.read_bytes() == binaries[i] for i, p in found)


def test_create_gate_serialises_first_creation_only() -> None:
    gate = CreateGate()
    first = gate.claim(["Patient?identifier=a", "Endpoint?identifier=e"])
    assert len(first) == 2
    got: list[list[str]] = []
    waiter = threading.Thread(target=lambda: got.append(gate.claim(["Endpoint?identifier=e"])))
    waiter.start()
    time.sleep(0.1)
    assert not got  # waits while the first bundle creates the Endpoint
    gate.release(first, confirmed=True)
    waiter.join(2)
    assert got == [[]]  # created meanwhile: nothing left to claim


def test_no_secret_in_journal_or_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.record_bundle("http://a", "h1", file="x.json", entries=3)
    assert oct(os.stat(path).st_mode & 0o777) in ("0o644", "0o600", "0o640")
    assert set(jsonio.loads(path.read_bytes().splitlines()[0])) == {
        "v",
        "kind",
        "server",
        "sha256",
        "file",
        "entries",
        "at",
    }


def test_every_push_option_has_help_and_docs() -> None:
    import re

    from typer.testing import CliRunner

    from fhirimg.cli import app

    result = CliRunner().invoke(app, ["push", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", result.output)) - {"--help"}
    assert len(options) > 15
    docs = (Path(__file__).resolve().parent.parent / "docs" / "push.md").read_text()
    assert sorted(o for o in options if f"`{o}" not in docs) == []
    # Each option line in --help carries a description.
    for line in result.output.splitlines():
        stripped = line.strip()
        if stripped.startswith("--") and stripped not in options:
            assert len(stripped.split(maxsplit=2)) >= 2, line


# --------------------------------------------------------------------------- learned size limit
def test_a_refused_bundle_does_not_teach_the_run_a_size_limit(tmp_path: Path) -> None:
    """A validation refusal that reads like "too large" (HAPI-style location text) makes push try
    that bundle in pieces; when the pieces are refused too, the guessed limit was wrong and must
    not cut every later bundle of the run into pieces."""
    from fhirimg.push import PushOptions, push_paths

    bad, _ = study_bundle("2.25.1", "MRN1")
    bad["entry"][2]["resource"]["description"] = "x" * 70
    write_bundle(tmp_path, "a-bad", bad, {})
    good, _ = study_bundle("2.25.2", "MRN2")
    write_bundle(tmp_path, "b-good", good, {})
    refusal = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "Bundle.entry[2].resource.description: exceeds maximum length",
            }
        ],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the ImagingStudy search before merging: none yet
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})
        bundle = jsonio.loads(request.content)
        entries = bundle["entry"]
        if any("x" * 70 == (e["resource"].get("description")) for e in entries):
            return httpx.Response(400, json=refusal)
        answers = [{"response": {"status": "201 Created"}} for _ in entries]
        return httpx.Response(200, json={"resourceType": "Bundle", "entry": answers})

    options = PushOptions(server="http://fhir.test/r4", retry=FAST, jobs=1, check_server=False)
    report = push_paths([tmp_path], options, transport=httpx.MockTransport(handler))
    assert [(r.file, r.status) for r in report.results] == [
        ("a-bad.json", "failed"),
        ("b-good.json", "pushed"),
    ]
    assert report.results[1].pieces == 1  # sent whole, as converted


def test_retry_after_that_is_not_ascii_digits_falls_back_to_backoff() -> None:
    # str.isdigit() accepts '²' (a latin-1 header byte 0xB2), which float() rejects: the request
    # crashed with ValueError instead of being retried.
    assert parse_retry_after("²") is None
    assert parse_retry_after("１") is None
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 2:
            return httpx.Response(503, headers=[(b"Retry-After", b"\xb2")])
        return httpx.Response(200, json={"ok": 1})

    with _client(handler) as client:
        assert client.get_json("metadata") == {"ok": 1}
    assert len(calls) == 2
