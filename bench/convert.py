"""Benchmark ``fhirimg convert`` against the header-reading floor, measured in the same run.

Builds a synthetic corpus (copies of the sample CT/MR files with rewritten Study/Series/SOP
Instance UIDs), then times:

* the floor: ``pydicom.dcmread(f, stop_before_pixels=True)`` over every file, one process, timed
  inside this process and as a fresh process (whose start-up convert's own run includes too);
* ``fhirimg convert --jobs 1`` and ``--jobs 2`` (each in a fresh subprocess, output to a temp folder,
  start-up included; best of two runs, like the floor).

It prints files/s, the ratio to the floor (targets: >= 0.8 with 1 job, >= 1.5 with 2 jobs) and
the peak RSS of each convert run, for two corpus sizes, so that memory growing with the number of
studies shows. Figures, not assertions: this machine is shared and noisy.

Usage:  .venv/bin/python bench/convert.py [--studies 200] [--per-study 100] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted((REPO / "sample_data" / "dicom" / "study_a_ct").glob("*.dcm")) + sorted(
    (REPO / "sample_data" / "dicom" / "study_b_mr").glob("mr_000*.dcm")
)


def build_corpus(root: Path, studies: int, per_study: int) -> list[Path]:
    """``studies`` studies of ``per_study`` instances in 2 series, deterministic UIDs."""
    templates = [pydicom.dcmread(p) for p in SOURCES]
    files = []
    for s in range(studies):
        study_uid = generate_uid(entropy_srcs=[f"bench-study-{s}"])
        folder = root / f"study{s:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_study):
            ds = templates[(s + i) % len(templates)].copy()
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"bench-series-{s}-{i % 2}"])
            sop = generate_uid(entropy_srcs=[f"bench-sop-{s}-{i}"])
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.InstanceNumber = i + 1
            ds.SeriesNumber = i % 2 + 1
            path = folder / f"{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


def floor(files: list[Path]) -> float:
    start = time.perf_counter()
    for f in files:
        pydicom.dcmread(f, stop_before_pixels=True)
    return time.perf_counter() - start


_FLOOR_SCRIPT = """
import sys
from pathlib import Path
import pydicom
for f in sorted(Path(sys.argv[1]).rglob("*.dcm")):
    pydicom.dcmread(f, stop_before_pixels=True)
"""


def floor_process(corpus: Path) -> float:
    """The floor as a fresh process, like convert is run: interpreter and pydicom start-up in."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _FLOOR_SCRIPT, str(corpus)], check=True)
    return time.perf_counter() - start


def run_convert(corpus: Path, out: Path, jobs: int) -> tuple[float, float]:
    """Seconds and peak RSS (MiB, largest process of the run) of one convert subprocess."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "fhirimg",
        "convert",
        str(corpus),
        "--out",
        str(out),
        "--jobs",
        str(jobs),
        "--quiet",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"convert failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--per-study", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fhirimg-bench-", dir=args.workdir))
    try:
        sizes = sorted({max(1, args.studies // 4), args.studies})
        print(
            f"corpus: up to {args.studies} studies x {args.per_study} files (cores: {os.cpu_count()})"
        )
        for studies in sizes:
            corpus = work / f"corpus{studies}"
            files = build_corpus(corpus, studies, args.per_study)
            n = len(files)
            floor(files[: min(n, 500)])  # warm the page cache
            t_floor = min(floor(files), floor(files))  # best of two: the machine is noisy
            t_proc = min(floor_process(corpus), floor_process(corpus))
            print(f"\n{studies} studies, {n} files")
            print(
                f"  floor  dcmread(stop_before_pixels), in this process: {n / t_floor:8.0f} files/s"
            )
            print(
                f"  floor  the same as a fresh process (start-up in):   {n / t_proc:8.0f} files/s"
            )
            for jobs in (1, 2):
                runs = [run_convert(corpus, work / "out", jobs) for _ in range(2)]
                t, peak = min(r[0] for r in runs), max(r[1] for r in runs)
                print(
                    f"  convert --jobs {jobs}: {n / t:8.0f} files/s  ratio {t_floor / t:4.2f} "
                    f"(vs fresh process {t_proc / t:4.2f})  peak RSS {peak:6.0f} MiB"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
