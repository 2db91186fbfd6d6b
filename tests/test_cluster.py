"""``convert --engine dask`` on a real Dask ``LocalCluster`` (2 worker processes, one for the
module): the same bundles and report.json as the local engine, a worker killed mid-run, an
unreachable scheduler, Dask missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pydicom
import pytest
from typer.testing import CliRunner

from fhirimg import ConvertOptions, convert
from fhirimg.cli import app
from fhirimg.cluster import ClusterExecutor, ClusterOptions, start
from fhirimg.convert import _write_study
from fhirimg.group import PackedRecord
from fhirimg.mapping import MapOptions
from fhirimg.model import InstanceRecord
from fhirimg.scan import read_file
from fhirimg.shuffle import partition_of, top_level
from tests.conftest import count
from tests.helpers import SAMPLE, pydicom_file, report_bytes, synthetic_tree
from tests.servers.faultproxy import FaultProxy
from tests.servers.fhir_server import FhirTestServer
from tests.servers.moto_server import ACCESS_KEY, SECRET_KEY

runner = CliRunner()


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterExecutor]:
    """The local cluster ``--engine dask`` starts without a scheduler, used through its
    scheduler's address (``--scheduler``) by every test of the module."""
    executor = start(ClusterOptions(workers=2))
    try:
        yield executor
    finally:
        executor.shutdown()


def _address(cluster: ClusterExecutor) -> str:
    return cluster.address


def _outputs(out: Path) -> dict[str, bytes]:
    """Every bundle and NDJSON file by name, and report.json as the golden files compare it."""
    found = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.json"))}
    found.update({p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.ndjson")})
    found["report.json"] = report_bytes(out)
    return found


def _same(local: Path, dask: Path) -> None:
    a, b = _outputs(local), _outputs(dask)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 studies x 8 files in a folder each, plus duplicates across folders (read by other
    tasks, so possibly other workers): a copy (duplicate) and an edited copy (conflict)."""
    root = synthetic_tree(tmp_path_factory.mktemp("corpus") / "in", studies=12, per_study=8)
    extra = root / "zz-copies"
    extra.mkdir()
    shutil.copy(root / "study-00000" / "00003.dcm", extra / "same.dcm")
    data = bytearray((root / "study-00004" / "00001.dcm").read_bytes())
    data[-1] ^= 0xFF  # other content, same UIDs and size
    (extra / "edited.dcm").write_bytes(bytes(data))
    # A SOP Instance UID of study 1 in another study, of another partition of the shuffle: the
    # first by path (study 1's) is kept, this one fails as a conflict, as with the local engine.
    moved = pydicom.dcmread(root / "study-00001" / "00002.dcm")
    partitions = 4 * 2  # fhirimg.shuffle: 4 partitions a worker thread
    for other in sorted(root.glob("study-*")):
        target = pydicom.dcmread(other / "00000.dcm")
        if partition_of(target.StudyInstanceUID, partitions) != partition_of(
            moved.StudyInstanceUID, partitions
        ):
            break
    moved.StudyInstanceUID = target.StudyInstanceUID
    moved.SeriesInstanceUID = target.SeriesInstanceUID
    moved.save_as(extra / "moved.dcm")
    return root


_COMMON = ["--quiet", "--dicomweb-url", "http://pacs.example/dicom-web", "--format", "ndjson"]


@pytest.fixture(scope="module")
def sample_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample data converted by the local engine: what the Dask runs must give."""
    out = tmp_path_factory.mktemp("local") / "out"
    local = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(out), "--jobs", "2", *_COMMON])
    assert local.exit_code == 1, local.output  # a truncated file, on purpose
    return out


def test_sample_data_byte_identical(
    cluster: ClusterExecutor, sample_local: Path, tmp_path: Path
) -> None:
    dask = runner.invoke(
        app,
        ["convert", str(SAMPLE), "-o", str(tmp_path / "dask"), "--engine", "dask"]
        + ["--scheduler", _address(cluster), *_COMMON],
    )
    assert dask.exit_code == 1, dask.output
    _same(sample_local, tmp_path / "dask")


@pytest.fixture(scope="module")
def corpus_local(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus-local") / "out"
    convert([corpus], ConvertOptions(out_dir=out, jobs=2))
    return out


def test_multi_study_corpus_duplicates_across_workers(
    cluster: ClusterExecutor, corpus: Path, corpus_local: Path, tmp_path: Path
) -> None:
    opts = ConvertOptions(out_dir=tmp_path / "dask", cluster=ClusterOptions(_address(cluster)))
    report = convert([corpus], opts)
    assert report.files["duplicate"] == 1
    assert report.files["failed"] == 2  # the edited copy and the moved one: conflicts, named
    assert len([s for s in report.studies if s.ok]) == 12
    failed = dict(report.failures)
    assert "also in " in failed[str(corpus / "zz-copies" / "moved.dcm")]
    assert "different content" in failed[str(corpus / "zz-copies" / "edited.dcm")]
    _same(corpus_local, tmp_path / "dask")


def test_dask_rewrites_every_study_and_a_local_run_after_it_too(
    cluster: ClusterExecutor, corpus: Path, corpus_local: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    dask = ConvertOptions(out_dir=out, cluster=ClusterOptions(_address(cluster)))
    convert([corpus], dask)
    again = convert([corpus], dask)  # no catalog of records: every file read, every study written
    assert again.run is not None
    assert (again.run.new, again.run.unchanged, again.run.written) == (99, 0, 12)
    local = convert([corpus], ConvertOptions(out_dir=out, jobs=2))
    assert local.run is not None
    # the Dask runs left the catalog's studies dirty: the local run rewrites them all, reading
    # only the files it had not recorded (all of them here), with the same bundles
    assert local.run.written == 12
    first = {p.name: p.read_bytes() for p in corpus_local.glob("study-*.json")}
    assert first == {p.name: p.read_bytes() for p in out.glob("study-*.json")}
    assert len(orjson.loads((out / "report.json").read_bytes())["history"]) == 3


def test_worker_killed_mid_run_same_output(
    cluster: ClusterExecutor, corpus: Path, corpus_local: Path, tmp_path: Path
) -> None:
    client = cluster.client
    pids: dict[str, int] = client.run(os.getpid)
    killed: list[int] = []

    def kill_one(stage: str, advance: int, total: int | None) -> None:
        if stage == "write" and not killed:  # the first study written: more in flight
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    opts = ConvertOptions(out_dir=tmp_path / "dask", cluster=ClusterOptions(_address(cluster)))
    convert([corpus], opts, progress=kill_one)
    assert killed, "no worker was killed"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # it is really gone
    _same(corpus_local, tmp_path / "dask")
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it, for the next tests


def test_a_retried_write_overwrites_the_same_name(cluster: ClusterExecutor, tmp_path: Path) -> None:
    record = read_file(str(pydicom_file("CT_small.dcm")))
    assert isinstance(record, InstanceRecord)
    blobs = [PackedRecord.of(record).blob]
    pixels = ConvertOptions().pixels()
    args = (blobs, MapOptions(), "r4", str(tmp_path), pixels)
    # The same task twice at once (as a retry after a lost worker may run it): one name, the
    # same bytes, no temporary file left.
    first, second = (cluster.client.submit(_write_study, *args, pure=False) for _ in range(2))
    one, two = first.result(), second.result()
    assert one == two
    assert one.bundle is not None
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [one.bundle]
    before = (tmp_path / one.bundle).read_bytes()
    cluster.client.submit(_write_study, *args, pure=False).result()
    assert (tmp_path / one.bundle).read_bytes() == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_scheduler_exits_3_within_seconds(tmp_path: Path) -> None:
    began = time.monotonic()
    result = runner.invoke(
        app,
        ["convert", str(SAMPLE), "-o", str(tmp_path / "out"), "--engine", "dask"]
        + ["--scheduler", f"tcp://127.0.0.1:{_free_port()}"],
    )
    assert result.exit_code == 3, result.output
    assert time.monotonic() - began < 20
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:" in result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "out").glob("study-*.json"))


def test_without_dask_one_line_naming_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed: ImportError
    result = runner.invoke(
        app, ["convert", str(SAMPLE), "-o", str(tmp_path / "out"), "--engine", "dask"]
    )
    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "pip install 'fhirimg[dask]'" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scheduler", "tcp://127.0.0.1:8786"], "need --engine dask"),
        (["--engine", "dask", "--scheduler", "http://host:8786"], "needs tcp://HOST:PORT"),
        (["--engine", "dask", "--scheduler", "tcp://h:1", "--workers", "2"], "not with"),
        (["--engine", "dask", "--from-dicomweb", "http://pacs.example/dw"], "not with"),
        (["--push", "http://127.0.0.1:9/fhir", "--push-concurrency", "2"], "--engine dask"),
        (["--engine", "dask", "--workers", "1", "--push-concurrency", "2"], "needs --push"),
    ],
)
def test_engine_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_s3_objects_read_on_the_workers(
    cluster: ClusterExecutor, moto_s3: str, sample_local: Path, tmp_path: Path
) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=moto_s3, key=ACCESS_KEY, secret=SECRET_KEY)
    bucket = f"fhirimg-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    fs.put(str(SAMPLE) + "/", f"{bucket}/in/", recursive=True)
    storage = ["--storage-option", f"endpoint_url={moto_s3}", "--storage-option"]
    storage += [f"key={ACCESS_KEY}", "--storage-option", f"secret={SECRET_KEY}"]
    src, out = f"s3://{bucket}/in", tmp_path / "dask"
    # the objects at the top are read as they are; each folder is listed by a task of its own
    options = {"endpoint_url": moto_s3, "key": ACCESS_KEY, "secret": SECRET_KEY}
    objects, prefixes = top_level([src], options)
    folders = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())
    assert len(folders) > 1
    assert [p.removeprefix(src + "/") for p in prefixes] == folders
    assert [o.removeprefix(src + "/") for o in objects] == sorted(
        p.name for p in SAMPLE.iterdir() if p.is_file()
    )
    dask = runner.invoke(
        app,
        ["convert", src, "-o", str(out), "--engine", "dask", "--scheduler", _address(cluster)]
        + [*storage, *_COMMON],
    )
    assert dask.exit_code == 1, dask.output
    # The bundles and NDJSON name no path: the same bytes as from the folder, locally.
    mine, theirs = _outputs(out), _outputs(sample_local)
    del mine["report.json"], theirs["report.json"]
    assert mine == theirs
    statuses = {
        f["path"].removeprefix(src + "/"): f["status"]
        for f in orjson.loads((out / "report.json").read_bytes())["files"]
    }
    local_statuses = {
        f["path"].removeprefix(f"{SAMPLE}/"): f["status"]
        for f in orjson.loads((sample_local / "report.json").read_bytes())["files"]
    }
    assert statuses == local_statuses


def test_failed_listing_exits_3_before_any_task(
    cluster: ClusterExecutor, moto_s3: str, tmp_path: Path
) -> None:
    storage = ["--storage-option", f"endpoint_url={moto_s3}", "--storage-option"]
    storage += [f"key={ACCESS_KEY}", "--storage-option", f"secret={SECRET_KEY}"]
    result = runner.invoke(
        app,
        ["convert", "s3://no-such-bucket-fhirimg/in", "-o", str(tmp_path / "out")]
        + ["--engine", "dask", "--scheduler", _address(cluster), *storage],
    )
    assert result.exit_code == 3, result.output
    assert "cannot list s3://no-such-bucket-fhirimg/in" in result.output
    assert "Traceback" not in result.output
    assert SECRET_KEY not in result.output


@pytest.mark.server
def test_push_with_the_dask_engine(
    cluster: ClusterExecutor, clean_fhir: FhirTestServer, tmp_path: Path
) -> None:
    base = clean_fhir.base_url
    result = runner.invoke(
        app,
        ["convert", str(SAMPLE), "-o", str(tmp_path), "--engine", "dask"]
        + ["--scheduler", _address(cluster), "--push", base, "--json", "-q"],
    )
    assert result.exit_code == 1, result.output  # the sample's truncated file
    assert orjson.loads(result.stdout)["summary"]["pushed"] == {
        "pushed": 5,
        "skipped": 0,
        "failed": 0,
    }
    assert count(base, "ImagingStudy") == 5
    assert count(base, "Patient") == 4
    assert (tmp_path / ".fhirimg-push-journal.jsonl").is_file()  # the client's, as ever
    assert not list(tmp_path.glob("study-*.json"))


_TOKEN = "tok-SECRET-w0rk3rs"


@pytest.mark.server
def test_push_from_the_workers_under_the_semaphore(
    cluster: ClusterExecutor,
    clean_fhir: FhirTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--push-concurrency 1``: the workers push (with the token shipped in the tasks), never
    more than one transaction at once; the client journals; a re-run skips every study."""
    import fhirimg.convert_push

    def client_push(*args: object, **kwargs: object) -> None:
        raise AssertionError("the client pushed a study")

    # fault injection in this (the client's) process only: the workers push
    monkeypatch.setattr(fhirimg.convert_push, "_push_study", client_push)
    base = clean_fhir.base_url
    with FaultProxy(base) as proxy:
        proxy.require_bearer(_TOKEN)
        proxy.delay_all = 0.2  # each transaction lasts long enough to overlap another
        args = ["convert", str(SAMPLE), "-o", str(tmp_path), "--engine", "dask", "--scheduler"]
        args += [_address(cluster), "--push", proxy.base_url, "--token", _TOKEN]
        args += ["--push-concurrency", "1", "--json", "-q"]
        first = runner.invoke(app, args)
        assert first.exit_code == 1, first.output  # the sample's truncated file
        assert orjson.loads(first.stdout)["summary"]["pushed"] == {
            "pushed": 5,
            "skipped": 0,
            "failed": 0,
        }
        assert _TOKEN not in first.output
        posts = [s for s in proxy.log if s.method == "POST"]
        assert len(posts) == 5  # one transaction per study, each once
        assert all(s.authorization == f"Bearer {_TOKEN}" for s in proxy.log)
        assert proxy.max_posts_in_flight == 1
        assert count(base, "ImagingStudy") == 5
        assert count(base, "Patient") == 4
        journal = (tmp_path / ".fhirimg-push-journal.jsonl").read_bytes().splitlines()
        assert sum(1 for line in journal if orjson.loads(line)["kind"] == "bundle") == 5
        assert not list(tmp_path.rglob("study-*.json"))  # pushed, not kept

        proxy.clear()
        again = runner.invoke(app, args)
        assert again.exit_code == 1, again.output
        assert orjson.loads(again.stdout)["summary"]["pushed"] == {
            "pushed": 0,
            "skipped": 5,
            "failed": 0,
        }
        assert not [s for s in proxy.log if s.method == "POST"]
    assert count(base, "ImagingStudy") == 5  # no duplicates
    assert count(base, "Patient") == 4


@pytest.mark.server
def test_push_from_the_workers_with_client_credentials(
    cluster: ClusterExecutor, clean_fhir: FhirTestServer, tmp_path: Path
) -> None:
    """The OAuth client (its lock and token left behind) reaches the workers; each fetches its
    own token with the secret the task carried."""
    secret = "cs-SECRET-w0rk3rs"
    with FaultProxy(clean_fhir.base_url) as proxy:
        proxy.enable_oauth("fhirimg", secret)
        result = runner.invoke(
            app,
            ["convert", str(SAMPLE), "-o", str(tmp_path), "--engine", "dask", "--scheduler"]
            + [_address(cluster), "--push", proxy.base_url, "--push-concurrency", "2"]
            + ["--token-url", proxy.token_url, "--client-id", "fhirimg", "--json", "-q"],
            env={"FHIRIMG_CLIENT_SECRET": secret},
        )
        assert result.exit_code == 1, result.output
        assert orjson.loads(result.stdout)["summary"]["pushed"]["pushed"] == 5
        assert secret not in result.output
        assert proxy.max_posts_in_flight <= 2
        assert proxy.tokens_issued >= 2  # the client's (capability check), the workers'
    assert count(clean_fhir.base_url, "ImagingStudy") == 5


def test_push_concurrency_with_a_jwt_key_exits_2(tmp_path: Path) -> None:
    """A signing key cannot travel to the workers: refused before anything is converted."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key = tmp_path / "key.pem"
    key.write_bytes(pem)
    key.chmod(0o600)
    result = runner.invoke(
        app,
        ["convert", str(SAMPLE), "-o", str(tmp_path / "out"), "--engine", "dask"]
        + ["--workers", "1", "--push", "http://127.0.0.1:9/fhir", "--push-concurrency", "1"]
        + ["--token-url", "http://127.0.0.1:9/t", "--client-id", "c", "--jwt-key", str(key)],
    )
    assert result.exit_code == 2, result.output
    assert "cannot be sent to the workers" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "report.json").exists()


def test_s3_pixels_read_on_the_workers(
    cluster: ClusterExecutor, moto_s3: str, tmp_path: Path
) -> None:
    """--binary and --media with object inputs on Dask: the workers read the objects' bytes
    through fsspec; the same files as the local engine from the folder."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=moto_s3, key=ACCESS_KEY, secret=SECRET_KEY)
    bucket = f"fhirimg-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    fs.put(str(SAMPLE) + "/", f"{bucket}/in/", recursive=True)
    storage = ["--storage-option", f"endpoint_url={moto_s3}", "--storage-option"]
    storage += [f"key={ACCESS_KEY}", "--storage-option", f"secret={SECRET_KEY}"]
    pixels = ["--quiet", "--binary", "beside", "--media"]
    src, local, dask = f"s3://{bucket}/in", tmp_path / "local", tmp_path / "dask"
    ran = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(local), "--jobs", "2", *pixels])
    assert ran.exit_code == 1, ran.output  # a truncated file, on purpose
    ran = runner.invoke(
        app,
        ["convert", src, "-o", str(dask), "--engine", "dask", "--scheduler", _address(cluster)]
        + [*storage, *pixels],
    )
    assert ran.exit_code == 1, ran.output

    def written(out: Path) -> dict[str, bytes]:
        return {
            p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "report.json" and ".fhirimg" not in p.parts
        }

    mine, theirs = written(dask), written(local)
    assert any(name.endswith(".dcm") for name in mine)
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        assert mine[name] == theirs[name], name
    report = orjson.loads((dask / "report.json").read_bytes())
    assert (
        report["summary"]["files"]
        == orjson.loads((local / "report.json").read_bytes())["summary"]["files"]
    )
