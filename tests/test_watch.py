"""``watch``: studies arriving in pieces are converted once settled, pushed, and not redone.

End to end and bounded in time: the watcher runs in a thread (the library, with a stop event) or in
a subprocess (the command, for signals), with a short ``settle`` and poll ``interval``; files are
copied from ``sample_data/dicom`` in batches while it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirimg import scan
from fhirimg import watch as watch_module
from fhirimg.catalog import CATALOG_NAME
from fhirimg.cli import app
from fhirimg.convert import ConvertOptions
from fhirimg.folderlock import STATE_DIR
from fhirimg.model import FileProblem, InstanceRecord
from fhirimg.push import PushOptions
from fhirimg.watch import StudyHandled, watch
from tests.conftest import search
from tests.helpers import REPO, SAMPLE, load, resources
from tests.servers.fhir_server import FhirTestServer

runner = CliRunner()
STUDY_A = "2.25.85155649098386921766494752360926339228"
STUDY_B = "2.25.199473283427071051488146072373703684864"
SETTLE, INTERVAL = 0.5, 0.1
DEADLINE = 30.0  # seconds any wait in this module may take at most


def wait_for(what: str, condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Watching:
    """:func:`fhirimg.watch.watch` running in a thread; ``events`` are the studies handled."""

    def __init__(self, inputs: Path, out: Path, **kwargs: Any) -> None:
        self.events: list[StudyHandled] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(inputs, out, kwargs), name="watch", daemon=True
        )

    def _run(self, inputs: Path, out: Path, kwargs: dict[str, Any]) -> None:
        kwargs.setdefault("settle", SETTLE)
        try:
            watch(
                [inputs],
                ConvertOptions(out_dir=out, jobs=1),
                interval=INTERVAL,
                stop_event=self.stop,
                on_study=self.events.append,
                **kwargs,
            )
        except BaseException as exc:  # re-raised in the test by finish()
            self.error = exc

    def of(self, study: str, instances: int | None = None) -> list[StudyHandled]:
        return [
            e
            for e in list(self.events)
            if e.study_instance_uid == study and (instances is None or e.instances == instances)
        ]

    def wait(self, study: str, instances: int) -> StudyHandled:
        wait_for(
            f"study {study} with {instances} instances", lambda: bool(self.of(study, instances))
        )
        return self.of(study, instances)[-1]

    def __enter__(self) -> Watching:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "watch did not stop"
        if self.error is not None and exc is None:
            raise self.error


def copy(name: str, inputs: Path) -> None:
    shutil.copytree(SAMPLE / name, inputs / name)


def study_of(out: Path, event: StudyHandled) -> dict[str, Any]:
    assert event.bundle is not None
    (study,) = resources(load(out / event.bundle), "ImagingStudy")
    return study


def has_catalog(out: Path) -> bool:
    return (out / STATE_DIR / CATALOG_NAME).is_file()


# --------------------------------------------------------------------------- the loop
def test_late_series_joins_its_study(tmp_path: Path) -> None:
    """Study A's CT folder, then (after the first conversion) its late localizer: the bundle
    is rewritten with all six instances; a second study arriving meanwhile gets its own."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy("study_a_ct", inputs)
    with Watching(inputs, out) as w:
        first = w.wait(STUDY_A, 5)
        assert first.new_files == 5
        assert first.status == "written"
        assert first.push is None
        assert study_of(out, first)["numberOfInstances"] == 5
        copy("study_a_ct_localizer", inputs)
        copy("study_b_mr", inputs)
        second = w.wait(STUDY_A, 6)
        w.wait(STUDY_B, 4)
    assert second.new_files == 1
    assert second.series == 2
    study = study_of(out, second)
    assert study["numberOfInstances"] == 6
    assert study["numberOfSeries"] == 2
    assert second.bundle == first.bundle  # one bundle per study, rewritten whole
    assert len(w.of(STUDY_A)) == 2
    assert len(w.of(STUDY_B)) == 1


def test_study_waits_for_settle(tmp_path: Path) -> None:
    """Files of one study arriving every 0.3 s with settle 1 s: one conversion, after the last."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    (inputs / "a").mkdir(parents=True)
    files = sorted((SAMPLE / "study_a_ct").iterdir())
    with Watching(inputs, out, settle=1.0) as w:
        for f in files:
            shutil.copy(f, inputs / "a" / f.name)
            time.sleep(0.3)
        last = time.monotonic()
        event = w.wait(STUDY_A, 5)
        assert time.monotonic() - last >= 0.5  # not before the study had settled
        time.sleep(1.5)
    assert w.of(STUDY_A) == [event], "converted before the study settled"


def test_growing_file_is_not_read_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file being copied slowly (its size changes between polls) is read only when complete."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    source = SAMPLE / "study_a_ct" / "ct_0001.dcm"
    data = source.read_bytes()
    sizes: list[tuple[int, int]] = []
    real = scan.read_file  # watch imports it from fhirimg.scan when it first reads a file

    def reading(path: str) -> InstanceRecord | FileProblem:
        sizes.append((os.path.getsize(path), len(data) if path.endswith("ct_0001.dcm") else -1))
        return real(path)

    monkeypatch.setattr(scan, "read_file", reading)
    target = inputs / "ct_0001.dcm"
    with Watching(inputs, out) as w:
        with target.open("wb") as fh:
            step = len(data) // 30 + 1
            for start in range(0, len(data), step):  # ~1.5 s, a few bytes every 0.05 s
                fh.write(data[start : start + step])
                fh.flush()
                time.sleep(0.05)
        event = w.wait(STUDY_A, 1)
    assert event.status == "written"
    assert sizes
    assert all(size == full for size, full in sizes if full >= 0), sizes
    report = load(out / "report.json")
    assert [f["status"] for f in report["files"]] == ["converted"]


def test_stop_finishes_the_study_at_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop asked for while a study is being converted: the study is finished, then watch
    returns."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy("study_a_ct", inputs)
    real = watch_module.convert  # type: ignore[attr-defined]
    w = Watching(inputs, out)

    def convert_then_stop(*args: Any, **kwargs: Any) -> Any:
        w.stop.set()  # as SIGINT would, in the middle of the study
        return real(*args, **kwargs)

    monkeypatch.setattr(watch_module, "convert", convert_then_stop)
    with w:
        w.thread.join(DEADLINE)
    assert [e.instances for e in w.events] == [5]
    assert study_of(out, w.events[0])["numberOfInstances"] == 5


def test_restart_redoes_nothing(tmp_path: Path) -> None:
    """Stopped and started again over the same folders: no study converted again."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy("study_a_ct", inputs)
    with Watching(inputs, out) as w:
        w.wait(STUDY_A, 5)
    assert has_catalog(out), "convert keeps the folder's catalog (what a restart relies on)"
    bundle = out / str(w.events[0].bundle)
    before = bundle.stat().st_mtime_ns
    with Watching(inputs, out) as again:
        time.sleep(SETTLE + 10 * INTERVAL)
        assert again.events == []
        copy("study_a_ct_localizer", inputs)  # and what is new is still seen
        again.wait(STUDY_A, 6)
    assert again.of(STUDY_A, 6)[0].new_files == 1
    assert bundle.stat().st_mtime_ns != before


def test_second_writer_is_refused(tmp_path: Path) -> None:
    """While watch runs, a convert or another watch into its output folder exits 3."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy("study_a_ct", inputs)
    with Watching(inputs, out) as w:
        w.wait(STUDY_A, 5)
        result = runner.invoke(app, ["watch", str(inputs), "-o", str(out), "--once", "-q"])
        assert result.exit_code == 3, result.output
        assert "in use by another fhirimg process" in result.output


# --------------------------------------------------------------------------- --push
@pytest.mark.server
def test_push_two_batches_server_holds_the_union(
    tmp_path: Path, clean_fhir: FhirTestServer
) -> None:
    base = clean_fhir.base_url
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy("study_a_ct", inputs)
    with Watching(inputs, out, push=PushOptions(server=base)) as w:
        first = w.wait(STUDY_A, 5)
        assert first.push == "pushed", first
        assert _server_study(base)["numberOfInstances"] == 5
        copy("study_a_ct_localizer", inputs)
        second = w.wait(STUDY_A, 6)
    assert second.push == "pushed", second
    study = _server_study(base)
    assert study["numberOfInstances"] == 6
    assert study["numberOfSeries"] == 2
    assert (out / ".fhirimg-push-journal.jsonl").is_file()
    assert (out / str(second.bundle)).is_file()  # bundles stay in --out


@pytest.mark.server
def test_restart_pushes_what_an_earlier_run_did_not(
    tmp_path: Path, clean_fhir: FhirTestServer
) -> None:
    """A bundle written but never pushed (the run stopped, or ran without --push) is pushed when
    watch starts with --push; one the journal confirmed is not sent again."""
    base = clean_fhir.base_url
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy("study_a_ct", inputs)
    with Watching(inputs, out) as w:
        written = w.wait(STUDY_A, 5)
    with Watching(inputs, out, push=PushOptions(server=base)) as w:
        wait_for("the catch-up push", lambda: bool(w.events))
    (event,) = w.events
    assert (event.action, event.push, event.bundle) == ("pushed", "pushed", written.bundle)
    assert event.study_instance_uid == STUDY_A
    assert _server_study(base)["numberOfInstances"] == 5
    with Watching(inputs, out, push=PushOptions(server=base)) as w:
        time.sleep(SETTLE + 5 * INTERVAL)
    if has_catalog(out):
        assert w.events == []


def test_unreachable_push_server_exits_3(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    result = runner.invoke(
        app,
        ["watch", str(inputs), "-o", str(tmp_path / "out"), "--push", "http://127.0.0.1:9/fhir"],
    )
    assert result.exit_code == 3, result.output
    assert "cannot push" in result.output


def _server_study(base: str) -> dict[str, Any]:
    (study,) = search(base, f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{STUDY_A}")
    return study


# --------------------------------------------------------------------------- --once
def test_once_exit_codes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ok = runner.invoke(app, ["watch", str(SAMPLE / "study_a_ct"), "-o", str(out), "--once"])
    assert ok.exit_code == 0, ok.output
    assert f"study {STUDY_A}: 5 instance(s) in 1 series" in ok.output
    # the sample's truncated file: 1, as for convert
    partial = runner.invoke(app, ["watch", str(SAMPLE), "-o", str(tmp_path / "all"), "--once"])
    assert partial.exit_code == 1, partial.output
    assert "Alice" not in partial.output
    assert "Sample^" not in partial.output
    lines = runner.invoke(
        app, ["watch", str(SAMPLE), "-o", str(tmp_path / "j"), "--once", "--json", "-q"]
    )
    assert lines.exit_code == 1
    studies = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(studies) == 5
    assert {s["status"] for s in studies} == {"written"}
    usage = runner.invoke(app, ["watch", str(SAMPLE), "--once", "--push", "ftp://x/"])
    assert usage.exit_code == 2, usage.output
    usage = runner.invoke(app, ["watch", str(SAMPLE), "--once", "--settle", "-1"])
    assert usage.exit_code == 2, usage.output


# --------------------------------------------------------------------------- signals
def _start(inputs: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fhirimg", "watch", str(inputs), "-o", str(out), "--json"]
        + ["--settle", str(SETTLE), "--interval", str(INTERVAL), "-j", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_signal_stops_cleanly(tmp_path: Path, signum: int, code: int) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy("study_a_ct", inputs)
    process = _start(inputs, out)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the first study handled (blocks until then)
        assert json.loads(line)["instances"] == 5, line
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, stderr
    assert "stopping after the study at hand" in stderr
    assert "Traceback" not in stderr
    assert f"study {STUDY_A}: 5 new file(s), 5 instance(s)" in stderr


def test_module_doc_names_every_option() -> None:
    """docs/cli.md documents watch's restart, signals and --once choices (not only options)."""
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text[text.index("## fhirimg watch") :]
    for phrase in ("--settle", "--once", "SIGTERM", "130", "catalog", "journal"):
        assert phrase in section, phrase
