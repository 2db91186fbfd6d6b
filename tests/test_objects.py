"""Object storage as convert's input and output: moto's S3 server on 127.0.0.1 (``moto_s3``).

The bundles from ``s3://`` inputs are the bytes of the same files converted from a folder; what is
put under an ``s3://`` ``--out`` is what a folder run writes; a listing that fails exits 3; an
object that cannot be read is a failed file; headers are read with ranged GETs.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from fhirimg import objects
from fhirimg.cli import app
from fhirimg.model import FileProblem, FileStatus, InstanceRecord
from tests.helpers import SAMPLE, pydicom_file
from tests.servers.moto_server import ACCESS_KEY, SECRET_KEY

runner = CliRunner()


@pytest.fixture(scope="module")
def s3(moto_s3: str) -> tuple[Any, str]:
    """An S3 file system on moto and a fresh bucket holding the sample data under ``in/``."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=moto_s3, key=ACCESS_KEY, secret=SECRET_KEY)
    bucket = f"fhirimg-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    for path in sorted(SAMPLE.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{bucket}/in/{path.relative_to(SAMPLE).as_posix()}")
    return fs, bucket


def _options(endpoint: str, *, secret: bool = True) -> list[str]:
    args = ["--storage-option", f"endpoint_url={endpoint}"]
    if secret:
        args += [
            "--storage-option",
            f"key={ACCESS_KEY}",
            "--storage-option",
            f"secret={SECRET_KEY}",
        ]
    return args


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample data converted from its folder: what the S3 runs must give."""
    out = tmp_path_factory.mktemp("objects") / "local"
    result = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(out), "--quiet"])
    assert result.exit_code == 1, result.output  # the truncated file, on purpose
    return out


def _statuses(report: dict[str, Any], prefix: str) -> dict[str, str]:
    return {f["path"].removeprefix(prefix): f["status"] for f in report["files"]}


def test_s3_in_and_out_same_as_a_folder_run(s3: tuple[Any, str], moto_s3: str, local: Path) -> None:
    fs, bucket = s3
    result = runner.invoke(
        app,
        ["convert", f"s3://{bucket}/in", "-o", f"s3://{bucket}/out", "--json", "--quiet"]
        + _options(moto_s3),
    )
    assert result.exit_code == 1, result.output
    assert SECRET_KEY not in result.output
    put = sorted(fs.find(f"{bucket}/out"))
    bundles = sorted(p.name for p in local.glob("study-*.json"))
    assert [p.rsplit("/", 1)[1] for p in put] == sorted(["report.json", *bundles])
    for name in bundles:
        assert fs.cat_file(f"{bucket}/out/{name}") == (local / name).read_bytes(), name
    report = orjson.loads(fs.cat_file(f"{bucket}/out/report.json"))
    assert report["summary"]["output"] == f"s3://{bucket}/out"
    mine = _statuses(report, f"s3://{bucket}/in/")
    theirs = _statuses(orjson.loads((local / "report.json").read_bytes()), f"{SAMPLE}/")
    assert mine == theirs  # every object accounted for, as every file is
    assert orjson.loads(result.stdout)["summary"]["output"] == f"s3://{bucket}/out"


def _tree(out: Path) -> dict[str, bytes]:
    """Every file a run wrote but report.json (it names the inputs) and its private state."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "report.json" and ".fhirimg" not in p.parts
    }


@pytest.mark.parametrize(
    "pixels",
    [["--binary", "inline"], ["--binary", "beside", "--jobs", "1"], ["--media"]],
    ids=["inline", "beside", "media"],
)
def test_pixels_from_objects_same_as_from_a_folder(
    s3: tuple[Any, str], moto_s3: str, tmp_path: Path, pixels: list[str]
) -> None:
    """--binary and --media read the objects' bytes through fsspec: the same files as from the
    folder (inline: the pool writing Binaries at offsets; beside: one process)."""
    _, bucket = s3
    folder, objs = tmp_path / "folder", tmp_path / "objects"
    result = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(folder), "--quiet", *pixels])
    assert result.exit_code == 1, result.output  # the truncated file, on purpose
    src = f"s3://{bucket}/in"
    result = runner.invoke(
        app, ["convert", src, "-o", str(objs), "--quiet", *pixels] + _options(moto_s3)
    )
    assert result.exit_code == 1, result.output
    mine, theirs = _tree(objs), _tree(folder)
    assert any(n.endswith((".dcm", ".json")) and "study-" in n for n in mine)
    if "beside" in pixels:
        assert any(n.endswith(".dcm") for n in mine)
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        assert mine[name] == theirs[name], name
    report = orjson.loads((objs / "report.json").read_bytes())
    local = orjson.loads((folder / "report.json").read_bytes())
    assert _statuses(report, src + "/") == _statuses(local, f"{SAMPLE}/")
    assert report["summary"]["files"] == local["summary"]["files"]


def test_object_deleted_before_its_bytes_are_read_fails_its_files(
    s3: tuple[Any, str], moto_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, bucket = s3
    gone = f"{bucket}/gone/ct.dcm"
    fs.put_file(
        str(next(p for p in sorted((SAMPLE / "study_a_ct").rglob("*")) if p.is_file())), gone
    )
    read = objects.read_object

    def then_deleted(url: str, options: objects.StorageOptions) -> Any:
        # Fault injection: the object goes away after its header was read, before --binary.
        record = read(url, options)
        fs.rm(gone)
        return record

    monkeypatch.setattr(objects, "read_object", then_deleted)
    result = runner.invoke(
        app,
        ["convert", f"s3://{gone}", "-o", str(tmp_path / "out"), "--jobs", "1"]
        + ["--binary", "inline", *_options(moto_s3)],
    )
    assert result.exit_code not in (0, 70), result.output
    assert "Traceback" not in result.output
    report = orjson.loads((tmp_path / "out" / "report.json").read_bytes())
    assert [(f["path"], f["status"]) for f in report["files"]] == [(f"s3://{gone}", "failed")]
    assert not list((tmp_path / "out").glob("study-*.json"))
    assert "FileNotFoundError" in str(report["files"][0]) or "NoSuchKey" in str(report)
    assert SECRET_KEY not in result.output + str(report["files"])


def test_credentials_from_the_environment(
    s3: tuple[Any, str], moto_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, bucket = s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    result = runner.invoke(
        app,
        ["convert", f"s3://{bucket}/in/study_a_ct", "-o", str(tmp_path / "out")]
        + _options(moto_s3, secret=False),
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").glob("study-*.json"))) == 1
    assert SECRET_KEY not in result.output


def test_failed_listing_exits_3(moto_s3: str, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["convert", "s3://no-such-bucket-fhirimg/dicom", "-o", str(tmp_path / "out")]
        + _options(moto_s3),
    )
    assert result.exit_code == 3, result.output
    assert "cannot list s3://no-such-bucket-fhirimg/dicom" in result.output
    assert "Traceback" not in result.output
    assert SECRET_KEY not in result.output


def test_unreadable_object_is_a_failed_file(
    s3: tuple[Any, str], moto_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, bucket = s3
    listed = objects.list_objects

    def with_a_gone_object(urls: list[str], options: objects.StorageOptions) -> Iterator[str]:
        # Fault injection: an object deleted between the listing and its read.
        yield from listed(urls, options)
        yield f"s3://{bucket}/in/deleted-after-listing.dcm"

    monkeypatch.setattr(objects, "list_objects", with_a_gone_object)
    result = runner.invoke(
        app,
        ["convert", f"s3://{bucket}/in/study_a_ct", "-o", str(tmp_path / "out"), "--jobs", "1"]
        + _options(moto_s3),
    )
    assert result.exit_code == 1, result.output
    report = orjson.loads((tmp_path / "out" / "report.json").read_bytes())
    gone = [f for f in report["files"] if f["path"].endswith("deleted-after-listing.dcm")]
    assert len(gone) == 1
    assert gone[0]["status"] == "failed"
    assert gone[0]["reason"].startswith("cannot read object: FileNotFoundError")
    assert report["summary"]["files"]["converted"] >= 1


def test_many_reads_in_flight_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch keeps several object reads waiting on the store at once (fault injection: each
    read is made slow here), never more than READS_IN_FLIGHT, and answers in the batch's order."""
    lock = threading.Lock()
    now = [0]
    most = [0]

    def slow(url: str, options: Any) -> Any:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.05)
        with lock:
            now[0] -= 1
        return FileProblem(url, FileStatus.FAILED, "slow")

    monkeypatch.setattr(objects, "read_object", slow)
    urls = [f"s3://bucket/{n:03d}.dcm" for n in range(40)]
    got = list(objects.read_many(urls, {}))
    assert [p.path for p in got] == urls
    assert 2 < most[0] <= objects.READS_IN_FLIGHT


def test_header_read_with_ranged_gets(
    s3: tuple[Any, str], moto_s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    fs, bucket = s3
    big = pydicom_file("CT_small.dcm").read_bytes() + b"\0" * 3_000_000  # pixels, never read
    fs.pipe_file(f"{bucket}/big/ct.dcm", big)
    ranges: list[tuple[int, int]] = []
    fetch = s3fs.core.S3File._fetch_range

    def counted(self: Any, start: int, end: int) -> Any:  # instrumentation, passes through
        ranges.append((start, end))
        return fetch(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counted)
    options = {"endpoint_url": moto_s3, "key": ACCESS_KEY, "secret": SECRET_KEY}
    record = objects.read_object(f"s3://{bucket}/big/ct.dcm", options)
    assert isinstance(record, InstanceRecord), record
    assert record.size == len(big)
    assert ranges, "no ranged GET seen"
    assert sum(end - start for start, end in ranges) <= 512 * 1024 < len(big)


def test_without_the_extra_one_line_naming_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec: ImportError
    result = runner.invoke(app, ["convert", "s3://bucket/dicom", "-o", str(tmp_path / "o")])
    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "pip install 'fhirimg[s3]'" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["s3://b/in", str(SAMPLE)], "not both"),
        (["s3://b/in", "--storage-option", "novalue"], "KEY=VALUE"),
        (["s3://b/in", "--deidentify"], "not with URL inputs"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    key = {"FHIRIMG_DEID_KEY": "k" * 32}  # --deidentify refused for URLs, not for its key
    result = runner.invoke(app, ["convert", *args, "-o", str(tmp_path / "o")], env=key)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_missing_local_path_exits_3_as_for_every_command(tmp_path: Path) -> None:
    """Issue 16's one exit-code table: no input to work on is 3, beside URL inputs too."""
    result = runner.invoke(app, ["convert", "/no/such/dicom/folder", "-o", str(tmp_path / "o")])
    assert result.exit_code == 3, result.output
    assert "no such file or folder: /no/such/dicom/folder" in result.output
