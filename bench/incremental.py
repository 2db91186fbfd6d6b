"""Benchmark an incremental ``fhirimg convert``: a re-run over an unchanged tree against the first run.

Builds a synthetic tree (``bench/convert.py``'s corpus: copies of the sample CT/MR files with
rewritten UIDs, ``--per-study`` files per study), then times, each as a fresh process with
start-up included (like a nightly cron job):

1. the first run into an empty folder (reads every header, writes every bundle, creates the
   catalog);
2. a re-run over the unchanged tree into the same folder (stats every file, reads none, writes
   no bundle; report.json only);
3. a ``--full`` run into a fresh folder (every file read again, catalog ignored).

It prints the three times and the ratio first run / re-run (target: >= 10 at 20,000 files), the
start-up floor measured in the same run (``fhirimg convert --help``: the interpreter and the
imports every run pays) and the ratio with that floor taken out of both runs, and checks that the re-run touched no bundle file (same mtime) and that every bundle is byte-identical
to the ``--full`` run's. Figures, not assertions (the machine is shared and noisy), except that a
bundle that differs is an error (exit 1).

The files are dated an hour back before the first run: the catalog reads a file again when it was
modified within two seconds of the start of the run that recorded it (a later write in the same
clock tick would keep its mtime, as git's "racy" index entries), and a tree generated a moment
before the run would otherwise be read again once. An archive's files are older than that.

Usage:  .venv/bin/python bench/incremental.py [--files 20000] [--per-study 100] [--jobs 0]
                                              [--workdir DIR]
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


def _corpus_builder():  # type: ignore[no-untyped-def]
    """``build_corpus`` of bench/convert.py (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_convert", REPO / "bench" / "convert.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_corpus


def age(root: Path, seconds: int = 3600) -> None:
    """Date every file under ``root`` ``seconds`` back (see the module docstring)."""
    when = time.time_ns() - seconds * 10**9
    for dirpath, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(dirpath, name), ns=(when, when))


def timed_convert(corpus: Path, out: Path, jobs: int, *extra: str) -> float:
    """Seconds of one ``fhirimg convert`` process (start-up included)."""
    cmd = [sys.executable, "-m", "fhirimg", "convert", str(corpus), "--out", str(out)]
    cmd += ["--jobs", str(jobs), "--quiet", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"convert failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed


def startup() -> float:
    """Seconds of ``fhirimg convert --help`` (best of three): what every run pays before it
    looks at a file."""
    cmd = [sys.executable, "-m", "fhirimg", "convert", "--help"]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def bundles(out: Path) -> dict[str, tuple[int, bytes]]:
    """Every bundle file of a folder: (mtime_ns, bytes)."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.glob("study-*"))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=20_000, help="files in the tree")
    parser.add_argument("--per-study", type=int, default=100, help="files per study")
    parser.add_argument("--jobs", type=int, default=0, help="convert --jobs (0: all cores)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    studies = max(1, args.files // args.per_study)
    work = Path(tempfile.mkdtemp(prefix="fhirimg-bench-incr-", dir=args.workdir))
    try:
        corpus = work / "corpus"
        start = time.perf_counter()
        files = _corpus_builder()(corpus, studies, args.per_study)
        age(corpus)
        print(
            f"tree: {len(files)} files in {studies} studies (built in "
            f"{time.perf_counter() - start:.0f} s); convert --jobs {args.jobs}, "
            f"cores: {os.cpu_count()}"
        )
        out, fresh = work / "out", work / "fresh"
        t_first = timed_convert(corpus, out, args.jobs)
        first = bundles(out)
        t_again = timed_convert(corpus, out, args.jobs)
        again = bundles(out)
        t_full = timed_convert(corpus, fresh, args.jobs, "--full")
        full = bundles(fresh)
        t_start = startup()

        print(f"  first run (empty folder):       {t_first:8.2f} s")
        print(f"  re-run, unchanged tree:         {t_again:8.2f} s")
        print(f"  --full run (fresh folder):      {t_full:8.2f} s")
        ratio = t_first / t_again
        verdict = "meets" if ratio >= 10 else "MISSES"
        print(f"  ratio first / re-run:           {ratio:8.1f}x  ({verdict} the 10x target)")
        print(f"  start-up floor (convert --help): {t_start:7.2f} s")
        if t_again - t_start > 0.05:
            net = (t_first - t_start) / (t_again - t_start)
            print(f"  ratio without the start-up:     {net:8.1f}x")
        else:
            print("  ratio without the start-up:     n/a (the re-run is within noise of it)")

        touched = sorted(name for name in first if again.get(name, (0, b""))[0] != first[name][0])
        differ = sorted(
            name
            for name in set(first) | set(full)
            if first.get(name, (0, b""))[1] != full.get(name, (0, b""))[1]
        )
        print(
            f"  bundles: {len(first)}; touched by the re-run: {len(touched)}; "
            f"differing from --full: {len(differ)}"
        )
        if touched or differ or set(again) != set(first):
            sys.exit(f"not byte-identical or rewritten: {(touched + differ)[:5]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
