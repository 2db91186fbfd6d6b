"""Push throughput against the local FHIR test server: prints bundles/s and MB/s.

    python bench/push.py [--bundles 200] [--instances 4] [--binary-kb 256] [--jobs 4]

Measures ``--jobs 1`` as the baseline and ``--jobs N`` in the same run (ratios, not absolute
figures, are what compare across these shared machines). Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhirimg.http import RetryPolicy  # noqa: E402
from fhirimg.push import PushOptions, push_paths  # noqa: E402
from tests.conftest import study_bundle, write_bundle  # noqa: E402
from tests.fhir_server import start_fhir_server  # noqa: E402


def make_corpus(folder: Path, bundles: int, instances: int, binary_kb: int) -> int:
    total = 0
    for i in range(bundles):
        bundle, binaries = study_bundle(
            f"2.25.{10_000 + i}",
            f"MRN{i % 50}",
            instances=instances,
            binary_files=binary_kb > 0,
            binary_size=binary_kb * 1024,
        )
        path = write_bundle(folder, f"study-{i:05d}", bundle, binaries)
        total += path.stat().st_size + sum(len(b) for b in binaries.values())
    return total


def run(base_url: str, folder: Path, jobs: int, total_bytes: int, label: str) -> float:
    options = PushOptions(
        server=base_url, jobs=jobs, use_journal=False, retry=RetryPolicy(backoff_base=0.05)
    )
    started = time.perf_counter()
    report = push_paths([folder], options)
    elapsed = time.perf_counter() - started
    n = report.pushed
    print(  # noqa: T201
        f"{label:<10} jobs={jobs:<3} {n} bundles in {elapsed:6.2f} s: "
        f"{n / elapsed:7.1f} bundles/s, {total_bytes / elapsed / 1e6:6.2f} MB/s"
        + (f"  ({report.failed} FAILED)" if report.failed else "")
    )
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=200)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--binary-kb", type=int, default=256, help="0: no Binary files")
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fhirimg-bench-push-"))
    try:
        total = make_corpus(work, args.bundles, args.instances, args.binary_kb)
        print(  # noqa: T201
            f"{args.bundles} bundles, {args.instances} instances each, "
            f"{total / 1e6:.1f} MB with Binaries"
        )
        with start_fhir_server() as server:
            base = run(server.base_url, work, 1, total, "first")
            server.reset()
            par = run(server.base_url, work, args.jobs, total, "first")
            again = run(server.base_url, work, args.jobs, total, "re-push")
        ratios = f"jobs={args.jobs} vs 1: {par / base:.2f}x; re-push vs first: {again / par:.2f}x"
        print(f"speed-up {ratios}")  # noqa: T201
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
