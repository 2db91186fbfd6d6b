"""``watch --modality/--since/--patient``: whole studies kept or left out as ``convert`` does it,
by watch on the headers it reads, without reading a file again at each poll."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhirimg import scan
from fhirimg.cli import app
from fhirimg.convert import ConvertOptions
from fhirimg.model import FileProblem, InstanceRecord
from fhirimg.select import StudySelection
from fhirimg.watch import StudyHandled, watch
from tests.helpers import SAMPLE
from tests.test_watch import DEADLINE, INTERVAL, STUDY_A, STUDY_B, wait_for

runner = CliRunner()
STUDY_C = "2.25.158703524657881"  # the start of study_c_mixed's Study Instance UID


@pytest.fixture
def two_studies(tmp_path: Path) -> Path:
    """A CT study (2024-03-12) and an MR study (2024-04-05) in one folder."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("study_a_ct", "study_b_mr"):
        shutil.copytree(SAMPLE / name, inputs / name)
    return inputs


def _once(inputs: Path, out: Path, *args: str) -> list[dict[str, object]]:
    result = runner.invoke(
        app, ["watch", str(inputs), "-o", str(out), "--once", "--json", "-q", "-j", "1", *args]
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_once_converts_the_studies_that_match(two_studies: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (ct,) = _once(two_studies, out, "--modality", "ct")
    assert ct["studyInstanceUid"] == STUDY_A
    assert ct["instances"] == 5
    assert len(list(out.glob("study-*.json"))) == 1
    # The MR study is left out until asked for; the CT study, catalogued, is not done again.
    (mr,) = _once(two_studies, out, "--since", "2024-04-01", "--patient", "FHIRIMG-0002")
    assert mr["studyInstanceUid"] == STUDY_B
    assert len(list(out.glob("study-*.json"))) == 2
    assert _once(two_studies, out) == []  # everything is converted: an idle folder
    assert _once(two_studies, tmp_path / "none", "--patient", "nobody") == []
    assert not list((tmp_path / "none").glob("study-*.json"))


def test_a_bad_date_is_a_usage_error(two_studies: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["watch", str(two_studies), "-o", str(tmp_path / "o"), "--once", "--since", "May"]
    )
    assert result.exit_code == 2, result.output
    assert "--since" in result.output


class _Run:
    """:func:`watch` in a thread with a selection, counting the header reads of each file."""

    def __init__(self, inputs: Path, out: Path, select: StudySelection, settle: float) -> None:
        self.events: list[StudyHandled] = []
        self.stop = threading.Event()
        self.reads: Counter[str] = Counter()
        self.error: BaseException | None = None
        options = ConvertOptions(out_dir=out, jobs=1, select=select)

        def run() -> None:
            try:
                watch(
                    [inputs],
                    options,
                    settle=settle,
                    interval=INTERVAL,
                    stop_event=self.stop,
                    on_study=self.events.append,
                )
            except BaseException as exc:  # re-raised by finish()
                self.error = exc

        self.thread = threading.Thread(target=run, name="watch", daemon=True)

    def counting(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = scan.read_file

        def read_file(path: str) -> InstanceRecord | FileProblem:
            self.reads[Path(path).name] += 1
            return real(path)

        monkeypatch.setattr(scan, "read_file", read_file)  # watch's own reads (fault-free spy)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error

    def study(self, prefix: str, instances: int) -> StudyHandled:
        def found() -> bool:
            return any(
                e.study_instance_uid.startswith(prefix) and e.instances == instances
                for e in self.events
            )

        wait_for(f"{prefix} with {instances} instances", found)
        return next(e for e in self.events if e.study_instance_uid.startswith(prefix))


def test_the_loop_reads_a_left_out_study_once(
    two_studies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _Run(two_studies, tmp_path / "out", StudySelection.of(["CT"], None, None), 0.3)
    run.counting(monkeypatch)
    run.thread.start()
    try:
        run.study(STUDY_A, 5)
        polls = len(run.events)
        threading.Event().wait(20 * INTERVAL)  # many polls more
    finally:
        run.finish()
    assert {e.study_instance_uid for e in run.events} == {STUDY_A}
    assert polls == len(run.events)
    mr_files = [p.name for p in (two_studies / "study_b_mr").iterdir()]
    assert mr_files
    assert all(run.reads[name] == 1 for name in mr_files), run.reads  # read once, not per poll


def test_a_later_file_makes_a_study_match_and_it_stays_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--modality SR: the study's CR image alone is left out; once its SR arrives the whole
    study (CR too) is converted; an US image after that joins it (a written study is kept
    whole)."""
    inputs, source = tmp_path / "in", SAMPLE / "study_c_mixed"
    inputs.mkdir()
    run = _Run(inputs, tmp_path / "out", StudySelection.of(["SR"], None, None), 0.3)
    run.counting(monkeypatch)
    run.thread.start()
    try:
        shutil.copy(source / "cr_mono1.dcm", inputs)
        wait_for("the CR read", lambda: run.reads["cr_mono1.dcm"] == 1)
        run.stop.wait(10 * INTERVAL)  # settled meanwhile, and left out
        assert run.events == []
        shutil.copy(source / "sr_basic_text.dcm", inputs)
        assert run.study(STUDY_C, 2).new_files == 2
        shutil.copy(source / "us_rgb.dcm", inputs)
        run.study(STUDY_C, 3)
    finally:
        run.finish()
    assert run.reads["cr_mono1.dcm"] == 2  # watch's read, then convert's: not one a poll
