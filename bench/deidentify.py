"""Benchmark ``convert --deidentify`` against a plain header conversion, in the same run.

Builds the synthetic corpus of bench/convert.py (copies of the sample CT/MR files with new UIDs),
then times ``fhirimg convert`` and ``fhirimg convert --deidentify`` over it, each in a fresh
subprocess into a new folder, best of ``--runs``, with ``--jobs 1`` and ``--jobs 2``. Prints
files/s and the ratio deidentify / plain (target: <= 1.5). Figures, not assertions: this machine
is shared and noisy.

Usage:  .venv/bin/python bench/deidentify.py [--studies 40] [--per-study 50] [--runs 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _corpus_builder() -> object:
    spec = importlib.util.spec_from_file_location("bench_convert", REPO / "bench" / "convert.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_corpus


def _time(args: list[str], out: Path, runs: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FHIRIMG_DEID_KEY": "bench-key-0123456789abcdef"}
    best = float("inf")
    for _ in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "fhirimg", *args, "--out", str(out), "-q"],
            env=env,
            capture_output=True,
        )
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(proc.stderr.decode(errors="replace"))
        best = min(best, elapsed)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--per-study", type=int, default=50)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fhirimg-bench-deid-") as tmp:
        root = Path(tmp)
        build = _corpus_builder()
        files = build(root / "in", args.studies, args.per_study)  # type: ignore[operator]
        n = len(files)
        print(f"corpus: {n} files in {args.studies} studies")
        for jobs in ("1", "2"):
            plain = _time(["convert", str(root / "in"), "-j", jobs], root / "plain", args.runs)
            deid = _time(
                ["convert", str(root / "in"), "-j", jobs, "--deidentify"], root / "deid", args.runs
            )
            print(
                f"--jobs {jobs}: plain {n / plain:8.0f} files/s ({plain:.2f} s), "
                f"--deidentify {n / deid:8.0f} files/s ({deid:.2f} s), "
                f"ratio {deid / plain:.2f} (target <= 1.5)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
