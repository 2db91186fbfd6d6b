"""Local files, ids and secrets (issue 18, items 4, 5, 7, 8, 10, 11).

- Crafted Binary ids and request URLs (``Binary/../../x``, ``Binary/<absolute path>``) fail their
  bundle with the reason; nothing outside ``.binaries/`` is read; no escaped URL reaches a server.
- What holds patient data is owner-only (0600 files, 0700 folders) under the usual umask 022, or
  group-readable (0640 / 0750) with ``--group-readable``.
- Symbolic links planted in the output folder are not written through.
- A URL option holding credentials is refused by every command, its password never printed.
- Secrets from files (``--token-file`` and its twins); a token on the command line warns.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fhirimg import jsonio
from fhirimg.cli import app
from fhirimg.cli._options import DicomwebAuth, FhirAuth
from fhirimg.convert import ConvertOptions, convert
from fhirimg.errors import ConfigError, InputError
from fhirimg.http import BasicAuth, BearerAuth
from fhirimg.mapping import MapOptions
from fhirimg.push import Journal, PushOptions, binaries_beside, push_bundle, push_paths
from fhirimg.push.files import is_fhir_id
from fhirimg.push.split import reference_from_location
from tests.conftest import BINARY_EXT, search, study_bundle, write_bundle
from tests.helpers import SAMPLE
from tests.servers.hostile import HostileServer, RequestLog, json, outcome_resource

FAST = ["--backoff", "0.01", "--retries", "1", "--quiet"]
PASSWORD = "Pa55w0rd-s3cret"
SECRET_BYTES = b"DICM-not-yours-" * 64


def run(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- crafted ids
def crafted_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A push folder: one good study with Binary files, and three crafted bundles, each trying
    to make push read ``secret.dcm`` (outside every ``.binaries/``) or escape ``Binary/``."""
    folder = tmp_path / "out"
    secret = tmp_path / "secret.dcm"
    secret.write_bytes(SECRET_BYTES)
    good, binaries = study_bundle("2.25.7001", "MRN-GOOD", binary_files=True)
    write_bundle(folder, "study-good", good, binaries)

    def crafted(name: str, reference: str, uid: str) -> None:
        bundle, files = study_bundle(uid, f"MRN-{uid}", binary_files=True)
        study = bundle["entry"][-1]["resource"]
        study["series"][0]["instance"][0]["extension"] = [
            {"url": BINARY_EXT, "valueReference": {"reference": reference}}
        ]
        write_bundle(folder, name.removesuffix(".json"), bundle, files)

    crafted("study-dots.json", "Binary/../../secret", "2.25.7002")
    crafted("study-absolute.json", f"Binary/{tmp_path / 'secret'}", "2.25.7003")
    # An inline Binary whose request escapes Binary/ on the server.
    bundle, _ = study_bundle("2.25.7004", "MRN-ESCAPE", inline_binaries=1)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Binary":
            entry["request"]["url"] = "Binary/../Patient/stolen"
    write_bundle(folder, "study-escape", bundle, {})
    return folder, secret


def test_fhir_id_rule() -> None:
    assert is_fhir_id("2f1c-aa.b")
    assert is_fhir_id("x" * 64)
    for bad in ("", ".", "..", "...", "../x", "/etc/passwd", "a/b", "x" * 65, "a b", "é"):
        assert not is_fhir_id(bad), bad
    # Server answers are not trusted either: a location whose id is not a FHIR id is not used.
    assert reference_from_location("http://s/fhir/Patient/12/_history/1") == "Patient/12"
    assert reference_from_location("http://s/fhir/Patient/..") is None


@pytest.mark.server
def test_crafted_binary_ids_fail_their_bundle_and_read_nothing_outside(
    clean_fhir: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, secret = crafted_folder(tmp_path)
    read: list[Path] = []
    original = Path.read_bytes

    def recording(self: Path) -> bytes:
        read.append(self.resolve())
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", recording)
    result = run("push", folder, "--server", clean_fhir.base_url, *FAST, "--json", "-j", "1")
    assert result.exit_code == 1, result.output
    by_file = {r["file"]: r for r in jsonio.loads(result.stdout)["summary"]["bundles"]}
    assert by_file["study-good.json"]["status"] == "pushed"  # the others go on
    for name in ("study-dots.json", "study-absolute.json", "study-escape.json"):
        assert by_file[name]["status"] == "failed", by_file[name]
        assert "is not a FHIR id" in by_file[name]["error"], by_file[name]
    assert secret.resolve() not in read
    assert all(p.parent.name.endswith(".binaries") or p.suffix == ".json" for p in read), read
    # Only the good study reached the server; nothing was created by the escaping request.
    studies = search(clean_fhir.base_url, "ImagingStudy?_count=100")
    assert [s["identifier"][0]["value"] for s in studies] == ["urn:oid:2.25.7001"]
    assert search(clean_fhir.base_url, "Patient?_count=100")[0]["identifier"][0]["value"] == (
        "MRN-GOOD"
    )


def test_crafted_ids_send_no_escaped_url(tmp_path: Path) -> None:
    """The same folder against a recording server: no request path leaves ``Binary/`` or holds
    ``..``, and no request body holds the bytes of the file outside ``.binaries/``."""
    folder, _ = crafted_folder(tmp_path)
    log = RequestLog()
    with HostileServer(log=log) as server:
        server.route("POST", "/", json({"resourceType": "Bundle", "type": "transaction-response"}))
        server.route("PUT", "/Binary/*", json({"resourceType": "Binary"}, 201))
        report = push_paths(
            [folder], PushOptions(server=server.base_url, jobs=1, use_journal=False)
        )
    failed = {r.file: r.error for r in report.results if r.status == "failed"}
    assert {"study-dots.json", "study-absolute.json", "study-escape.json"} <= set(failed)
    for request in log:
        assert ".." not in request.target, request
        assert "%2e" not in request.target.lower(), request
        # "/ImagingStudy": the search for the study to merge into (GET, docs/push.md "Merging")
        assert request.path in ("/", "/metadata", "/ImagingStudy") or request.path.startswith(
            "/Binary/"
        ), request
        assert SECRET_BYTES[:32] not in request.body, request


def test_push_bundle_checks_ids_from_the_library(tmp_path: Path) -> None:
    bundle, _ = study_bundle("2.25.7010", "MRN-LIB")
    outside = tmp_path / "x.dcm"
    outside.write_bytes(SECRET_BYTES)
    result = push_bundle(None, bundle, [("../x", outside)], dry_run=True)
    assert result.status == "failed"
    assert "is not a FHIR id" in (result.error or "")
    bundle["entry"][0]["resource"]["id"] = "../../admin"
    assert "resource.id" in (push_bundle(None, bundle, dry_run=True).error or "")


def test_a_binary_file_linking_outside_is_refused(tmp_path: Path) -> None:
    bundle, binaries = study_bundle("2.25.7020", "MRN-LINK", binary_files=True)
    path = write_bundle(tmp_path / "out", "study-link", bundle, binaries)
    outside = tmp_path / "secret.dcm"
    outside.write_bytes(SECRET_BYTES)
    first = path.with_name("study-link.binaries") / f"{next(iter(binaries))}.dcm"
    first.unlink()
    first.symlink_to(outside)
    with pytest.raises(InputError, match="leads outside"):
        binaries_beside(path, bundle)
    # A .binaries folder that is itself a link is not read from either.
    folder = path.with_name("study-link.binaries")
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    folder.symlink_to(moved, target_is_directory=True)
    with pytest.raises(InputError, match="symbolic link"):
        binaries_beside(path, bundle)
    report = push_paths([tmp_path / "out"], PushOptions(server="http://x.invalid", dry_run=True))
    assert report.results[0].status == "failed"
    assert "symbolic link" in (report.results[0].error or "")


def test_store_plan_checks_binary_ids(tmp_path: Path) -> None:
    from fhirimg.dicomweb.store_plan import plan_study

    bundle, binaries = study_bundle("2.25.7030", "MRN-STOW", binary_files=True)
    study = bundle["entry"][-1]["resource"]
    study["series"][0]["instance"][0]["extension"][0]["valueReference"]["reference"] = (
        "Binary/../../secret"
    )
    path = write_bundle(tmp_path / "out", "study-stow", bundle, binaries)
    (tmp_path / "secret.dcm").write_bytes(SECRET_BYTES)
    plan = plan_study(path, bundle, "https://pacs.example/dicom-web", {})
    assert any("is not a FHIR id" in reason for _, reason in plan.result.failed)
    assert all(s.path.parent.name == "study-stow.binaries" for s in plan.sources)


# --------------------------------------------------------------------------- modes
def test_convert_output_is_owner_only(tmp_path: Path, umask_022: None) -> None:
    out = tmp_path / "new" / "out"
    result = run("convert", SAMPLE, "-o", out, "--binary", "beside", "-q", "-j", "1")
    assert result.exit_code in (0, 1), result.output
    assert mode(out) == 0o700
    assert mode(out.parent) == 0o700
    bundles = sorted(out.glob("study-*.json"))
    assert bundles
    for path in [*bundles, out / "report.json"]:
        assert mode(path) == 0o600, path
    folders = sorted(out.glob("*.binaries"))
    assert folders
    for folder in folders:
        assert mode(folder) == 0o700
        assert {mode(p) for p in folder.iterdir()} == {0o600}


def test_group_readable_output(tmp_path: Path, umask_022: None) -> None:
    out = tmp_path / "shared"
    args = ("convert", SAMPLE, "-o", out, "--binary", "beside", "-q", "-j", "1")
    result = run(*args, "--group-readable")
    assert result.exit_code in (0, 1), result.output
    assert mode(out) == 0o750
    assert {mode(p) for p in out.glob("*.json")} == {0o640}
    assert {mode(p) for p in out.glob("*.binaries")} == {0o750}
    assert {mode(p) for p in out.glob("*.binaries/*.dcm")} == {0o640}
    # An existing folder keeps its mode; files written again are owner-only again.
    result = run(*args)
    assert mode(out) == 0o750
    assert {mode(p) for p in out.glob("*.json")} == {0o600}


def test_journal_is_owner_only(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "journal" / "j.jsonl"
    with Journal(path) as journal:
        journal.record_bundle("http://s", "ab", file="a.json", entries=1)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    shared = tmp_path / "shared.jsonl"
    with Journal(shared, mode=jsonio.GROUP_READABLE) as journal:
        journal.record_bundle("http://s", "ab", file="a.json", entries=1)
    assert mode(shared) == 0o640


def test_convert_push_temp_folder_is_private(
    tmp_path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fhirimg.convert_push as cp

    folders: set[int] = set()
    files: set[int] = set()

    def record(client: Any, journal: Any, push: Any, outcome: Any, folder: Path) -> Any:
        folders.add(mode(folder))
        files.update(mode(p) for p in folder.iterdir())
        return outcome

    log = RequestLog()
    with HostileServer(log=log) as server:
        monkeypatch.setattr(cp, "_push_study", record)
        cp.convert_and_push(
            [SAMPLE], ConvertOptions(out_dir=tmp_path / "o", jobs=1), PushOptions(server.base_url)
        )
    assert (folders, files) == ({0o700}, {0o600})
    assert mode(tmp_path / "o" / ".fhirimg-push-journal.jsonl") == 0o600


# --------------------------------------------------------------------------- symbolic links
def _bundle_names(tmp_path: Path) -> list[str]:
    out = tmp_path / "names"
    convert([SAMPLE], ConvertOptions(out_dir=out, jobs=1))
    return sorted(p.name for p in out.glob("study-*.json"))


def test_a_planted_binaries_link_is_not_written_through(tmp_path: Path) -> None:
    name = _bundle_names(tmp_path)[0]
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (out / name.replace(".json", ".binaries")).symlink_to(target, target_is_directory=True)
    result = run("convert", SAMPLE, "-o", out, "--binary", "beside", "-q", "-j", "1", "--json")
    assert result.exit_code == 1, result.output
    assert list(target.iterdir()) == []
    report = jsonio.loads((out / "report.json").read_bytes())
    failed = [s for s in report["studies"] if s["status"] == "failed"]
    assert len(failed) == 1, failed
    assert "symbolic link" in failed[0]["errors"][0], failed
    assert any(s["status"] == "written" for s in report["studies"])  # the others go on


def test_linked_bundle_and_report_are_replaced_not_followed(tmp_path: Path) -> None:
    name = _bundle_names(tmp_path)[0]
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (out / name).symlink_to(victim)
    (out / "report.json").symlink_to(victim)
    convert([SAMPLE], ConvertOptions(out_dir=out, jobs=1))
    assert victim.read_text() == "keep me\n"
    assert not (out / name).is_symlink()
    assert not (out / "report.json").is_symlink()
    assert jsonio.loads((out / name).read_bytes())["resourceType"] == "Bundle"


def test_a_linked_journal_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    link = tmp_path / "j.jsonl"
    link.symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        Journal(link).open()
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "created-through-the-link")
    with pytest.raises(InputError, match="symbolic link"):
        Journal(dangling).open()
    assert victim.read_text() == "keep me\n"
    assert not (tmp_path / "created-through-the-link").exists()


def test_push_with_a_linked_journal_exits_3(tmp_path: Path) -> None:
    bundle, _ = study_bundle("2.25.7040", "MRN-J")
    folder = tmp_path / "out"
    write_bundle(folder, "study-j", bundle, {})
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (folder / ".fhirimg-push-journal.jsonl").symlink_to(victim)
    with HostileServer() as server:
        result = run("push", folder, "--server", server.base_url, *FAST)
    assert result.exit_code == 3, result.output
    assert "symbolic link" in result.output
    assert victim.read_text() == "keep me\n"


# --------------------------------------------------------------------------- URLs with credentials
PACS = f"https://alice:{PASSWORD}@pacs.example/dicom-web"
FHIR = f"http://alice:{PASSWORD}@127.0.0.1:9/fhir"


@pytest.mark.parametrize(
    "args",
    [
        ["convert", str(SAMPLE), "--dicomweb-url", PACS],
        ["convert", str(SAMPLE), "--dicomweb-url", f"https://pacs/dw?access_token={PASSWORD}"],
        ["convert", "--from-dicomweb", PACS],
        ["convert", str(SAMPLE), "--push", FHIR],
        ["push", "--server", FHIR],
        ["push", "--dicomweb", PACS],
        ["push", "--server", "http://127.0.0.1:9/fhir", "--dicomweb", PACS],
        ["push", "--server", f"http://127.0.0.1:9/fhir?api_key={PASSWORD}"],
        ["validate", str(SAMPLE), "--server", FHIR],
        ["verify", "--server", FHIR],
        ["push", "--server", "http://127.0.0.1:9/fhir", "--token-url", FHIR, "--client-id", "c"],
    ],
    ids=lambda a: " ".join(a[:1] + [x for x in a if x.startswith("--")][:2]),
)
def test_credentials_in_a_url_are_refused(args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    extra = ["-o", str(out)] if args[0] == "convert" else []
    result = run(*args, *extra, "-q")
    assert result.exit_code == 2, result.output
    assert PASSWORD not in result.output
    assert "credentials must not be in a URL" in result.output
    assert not out.exists()  # refused before anything was written


def test_the_library_refuses_credentials_in_urls(tmp_path: Path) -> None:
    options = ConvertOptions(out_dir=tmp_path / "o", mapping=MapOptions(dicomweb_url=PACS))
    with pytest.raises(ConfigError) as caught:
        convert([SAMPLE], options)
    assert PASSWORD not in str(caught.value)
    with pytest.raises(ConfigError):
        push_paths([tmp_path], PushOptions(server=FHIR))
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- secrets from files
@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warnings are once per process; each test is a process of its own here."""
    from fhirimg.cli import _auth

    monkeypatch.setattr(_auth, "_warned", set())


def test_token_file_and_command_line_warning(tmp_path: Path) -> None:
    bundle, _ = study_bundle("2.25.7050", "MRN-V")
    file = tmp_path / "bundle.json"
    file.write_bytes(jsonio.dumps(bundle))
    token = tmp_path / "token"
    token.write_text("t0ken-from-file\n")
    token.chmod(0o600)
    log = RequestLog()
    with HostileServer(log=log) as server:
        server.route("POST", "/Bundle/$validate", json(outcome_resource("fine", "informational")))
        result = run("validate", file, "--server", server.base_url, "--token-file", token)
        assert result.exit_code in (0, 1), result.output
        assert "warning:" not in result.output
        sent = [r.headers.get("authorization") for r in log]
        assert sent == ["Bearer t0ken-from-file"], log.describe()

        log.clear()
        result = run("validate", file, "--server", server.base_url, "--token", "cl1-t0ken")
        assert result.exit_code in (0, 1), result.output
        assert "--token on the command line is visible" in result.output
        assert "--token-file" in result.output
        assert "FHIRIMG_TOKEN" in result.output
        assert "cl1-t0ken" not in result.output
        assert [r.headers.get("authorization") for r in log] == ["Bearer cl1-t0ken"]

        # From the environment: no warning.
        log.clear()
        env = {"FHIRIMG_TOKEN": "env-t0ken"}
        result = run("validate", file, "--server", server.base_url, env=env)
        assert "warning:" not in result.output, result.output
        assert [r.headers.get("authorization") for r in log] == ["Bearer env-t0ken"]


def test_password_file_and_a_readable_secret_file_warns(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(f"{PASSWORD}\r\nsecond line ignored\n")
    secret.chmod(0o644)
    result = run(
        "push", tmp_path, "--server", "http://127.0.0.1:9/fhir", "--dry-run",
        "--user", "u", "--password-file", secret,
    )  # fmt: skip
    assert "can be read by other users (mode 0644)" in result.output, result.output
    assert PASSWORD not in result.output
    auth = FhirAuth(user="alice", password_file=secret).build()
    assert isinstance(auth, BasicAuth)
    assert auth._auth_header == httpx.BasicAuth("alice", PASSWORD)._auth_header
    dw = DicomwebAuth(dicomweb_token_file=secret).build()
    assert isinstance(dw, BearerAuth)
    assert PASSWORD not in repr(dw)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--client-secret-file", "SECRET"], "--client-secret-file needs --token-url"),
        (["--password-file", "SECRET"], "--password-file needs --user"),
        (["--token-file", "EMPTY"], "the first line is empty"),
        (["--token-file", "MISSING"], "cannot read --token-file"),
        (["--token", "x", "--token-file", "SECRET"], "choose one way to authenticate"),
        (["--dicomweb-user", "u", "--dicomweb-password-file", "MISSING"], "--dicomweb-password"),
    ],
)
def test_secret_file_usage_errors(tmp_path: Path, args: list[str], expected: str) -> None:
    files = {"SECRET": tmp_path / "secret", "EMPTY": tmp_path / "empty"}
    files["SECRET"].write_text("s3cret\n")
    files["EMPTY"].write_text("\n")
    args = [str(files.get(a, tmp_path / "missing" if a == "MISSING" else a)) for a in args]
    server = ["--server", "http://127.0.0.1:9/fhir"]
    dicomweb = ["--dicomweb", "http://127.0.0.1:9/dw"] if "--dicomweb-user" in args else []
    result = run("push", tmp_path, *server, *dicomweb, *args, "-q")
    assert result.exit_code == 2, result.output
    assert expected in result.output
