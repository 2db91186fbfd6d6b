"""Push at the floor: ``fhirimg push`` against a minimal httpx client, and start-up (issue 19).

    python bench/push.py [--bundles 200] [--instances 100] [--runs 15] [--jobs 4]

Two comparisons, each of whole processes (start-up and exit included), alternating which goes
first, ``--runs`` pairs each:

- **push**: ``fhirimg push FOLDER --jobs 4`` against a minimal client (a short script: one
  ``httpx.Client`` with 4 connections, 4 threads, each POSTing a bundle file's bytes to the base
  URL as a transaction). Same folder (``--bundles`` transaction bundles, each an ImagingStudy of
  ``--instances`` instances + Patient + Endpoint, about 33 KB at 100, plus a convert-like
  ``report.json`` of about 3 MB that push must pass over), same server (the project's FHIR test
  server, ``tests/servers/fhir_server.py``). The server is emptied (``$reset``) before every
  run, so both clients do the same work each time: create every study. fhirimg gets a fresh
  journal path per run (outside the folder), so it really sends everything, and still journals
  and fsyncs each bundle as it does for users. Ratio: minimal time / fhirimg time (target >= 0.9x).
- **push+GET** (``--search-baseline``): the same against the minimal client that also sends,
  before each POST, the ImagingStudy search push's merge reads first (issue 10; kept).
- **start-up**: ``fhirimg --version`` against ``python -c "import typer, httpx, rich"``.
  Ratio: fhirimg time / import time (target <= 1.5x).

Bytecode is cached as after a pip install (``PYTHONPYCACHEPREFIX`` in the bench's temporary
folder, written by the warm-up runs). Figures are paired medians (the median of the per-pair ratios) and the median of each side.
A benchmark, not a test: it prints figures and asserts nothing (STYLE.md); these machines are
shared and noisy, so compare ratios measured in the same run, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhirimg import jsonio  # noqa: E402
from tests.conftest import study_bundle, write_bundle  # noqa: E402
from tests.servers.fhir_server import start_fhir_server  # noqa: E402

# The minimal client the push is measured against: what any script would do, nothing more.
MINIMAL_CLIENT = """\
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

base, folder = sys.argv[1], Path(sys.argv[2])
files = sorted(folder.glob("study-*.json"))
headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
search = len(sys.argv) > 3 and sys.argv[3] == "--search"
with httpx.Client(limits=httpx.Limits(max_connections=4), timeout=60) as client:

    def post(path):
        data = path.read_bytes()
        if search:  # what push's merge reads first: the study's ImagingStudy (issue 10)
            study_uid = data.split(b"identifier=urn:dicom:uid|", 1)[1].split(b'"', 1)[0].decode()
            client.get(f"{base}/ImagingStudy", params={"identifier": f"urn:dicom:uid|{study_uid}"})
        response = client.post(base, content=data, headers=headers)
        response.raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, files))
"""


def make_corpus(folder: Path, bundles: int, instances: int) -> int:
    """``bundles`` study bundles and a convert-like report.json; returns the bundles' bytes."""
    total = 0
    report_files = []
    for i in range(bundles):
        # Study Instance UIDs of the 2.25 + UUID form convert meets in real archives (44 digits).
        uid = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'bench-push-{i}').int}"
        bundle, _ = study_bundle(uid, f"MRN{i % 50}", instances=instances)
        path = write_bundle(folder, f"study-{i:05d}", bundle, {})
        total += path.stat().st_size
        for n in range(instances):
            report_files.append(
                {
                    "path": f"/archive/2026-11/patient-{i % 50}/study-{i}/series-1/im-{n:05d}.dcm",
                    "status": "converted",
                    "bundle": path.name,
                }
            )
    summary = {"files": len(report_files), "converted": len(report_files), "studies": bundles}
    report = {"fhirVersion": "4.0.1", "summary": summary, "studies": [], "files": report_files}
    (folder / "report.json").write_bytes(jsonio.dumps(report))
    return total


def timed(args: list[str], env: dict[str, str], check: Callable[[bytes], str | None]) -> float:
    """Wall time of one whole process; exits the bench when it did not do its work."""
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    problem = f"exit {done.returncode}" if done.returncode else check(done.stdout)
    if problem:
        sys.exit(f"{args[:3]}: {problem}\n{done.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def alternate(
    runs: int, ours: Callable[[], float], theirs: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """``runs`` pairs, alternating which side goes first."""
    mine: list[float] = []
    other: list[float] = []
    for n in range(runs):
        if n % 2 == 0:
            mine.append(ours())
            other.append(theirs())
        else:
            other.append(theirs())
            mine.append(ours())
    return mine, other


def show(label: str, ours: list[float], theirs: list[float], ratios: list[float]) -> None:
    print(  # noqa: T201
        f"{label:<9} fhirimg {statistics.median(ours) * 1000:7.0f} ms   "
        f"baseline {statistics.median(theirs) * 1000:7.0f} ms   "
        f"paired median ratio {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bundles", type=int, default=200)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument(
        "--search-baseline",
        action="store_true",
        help="also against the minimal client doing the GET push's merge does before each POST",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fhirimg-bench-push-"))
    # Bytecode as a pip install has it: written once (by the warm-up runs) into a cache of the
    # bench's own, even where PYTHONDONTWRITEBYTECODE is set (it would make every run compile).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(work / "pycache")}
    python = sys.executable
    script = Path(python).parent / "fhirimg"  # the console script users run, if installed
    fhirimg = [str(script)] if script.exists() else [python, "-m", "fhirimg"]
    try:
        folder = work / "out"
        total = make_corpus(folder, args.bundles, args.instances)
        report_mb = (folder / "report.json").stat().st_size / 1e6
        print(  # noqa: T201
            f"{args.bundles} bundles of {args.instances} instances, "
            f"{total / args.bundles / 1000:.0f} KB each; report.json {report_mb:.1f} MB; "
            f"{args.runs} alternating runs each; {os.cpu_count()} CPUs"
        )
        minimal = work / "minimal_client.py"
        minimal.write_text(MINIMAL_CLIENT)

        def pushed_all(stdout: bytes) -> str | None:
            envelope = jsonio.loads(stdout)
            summary = envelope.get("summary") if isinstance(envelope, dict) else None
            ok = isinstance(summary, dict) and summary.get("pushed") == args.bundles
            return None if ok else f"not every bundle pushed: {stdout[:300]!r}"

        with start_fhir_server() as server:
            runs = iter(range(10**6))

            def fhirimg_push() -> float:
                server.reset()
                journal = work / f"journal-{next(runs)}.jsonl"
                cmd = [*fhirimg, "push", str(folder), "--server", server.base_url]
                cmd += ["--jobs", str(args.jobs), "--journal", str(journal), "--json", "-q"]
                try:
                    return timed(cmd, env, pushed_all)
                finally:
                    journal.unlink(missing_ok=True)

            def minimal_push() -> float:
                server.reset()
                return timed([python, str(minimal), server.base_url, str(folder)], env, _ok)

            def searching_push() -> float:
                server.reset()
                cmd = [python, str(minimal), server.base_url, str(folder), "--search"]
                return timed(cmd, env, _ok)

            fhirimg_push(), minimal_push()  # warm the page cache and the bytecode
            ours, theirs = alternate(args.runs, fhirimg_push, minimal_push)
            if args.search_baseline:
                ours2, theirs2 = alternate(args.runs, fhirimg_push, searching_push)
        show("push", ours, theirs, [t / o for o, t in zip(ours, theirs, strict=True)])
        if args.search_baseline:
            ratios = [t / o for o, t in zip(ours2, theirs2, strict=True)]
            show("push+GET", ours2, theirs2, ratios)

        version = [*fhirimg, "--version"]
        imports = [python, "-c", "import typer, httpx, rich"]
        timed(version, env, _ok), timed(imports, env, _ok)
        ours, theirs = alternate(
            args.runs, lambda: timed(version, env, _ok), lambda: timed(imports, env, _ok)
        )
        show("start-up", ours, theirs, [o / t for o, t in zip(ours, theirs, strict=True)])
        print(  # noqa: T201
            "targets: push ratio (baseline/fhirimg) >= 0.9x; start-up ratio (fhirimg/baseline) "
            "<= 1.5x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ok(stdout: bytes) -> str | None:
    return None


if __name__ == "__main__":
    main()
