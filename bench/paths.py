"""Every path of fhirimg against its floor, in one run: headers, Binary, Media and validate.

Each run is a whole process (interpreter start-up and imports included), fhirimg at its defaults
(``--jobs`` = all cores), each floor a single process doing the least any implementation must:

=========================  =====================================================================
path                       floor
=========================  =====================================================================
header: ``convert``        ``pydicom.dcmread(stop_before_pixels=True)`` of every file
binary: ``--binary inline``  read + base64 + write every file
media: ``--media`` (PNG)   ``pixel_array``, window to 8 bits, Pillow PNG save, every file
validate (all layers)      fhir.resources R4B ``Bundle.model_validate_json`` of every file
=========================  =====================================================================

The floor and fhirimg run in turns (``--runs`` pairs, 3 by default): a shared machine's speed
drifts by tens of percent within a minute, and a pair sees the same drift. Each time printed is
the best of its runs; ``ratio`` is best floor time / best fhirimg time (higher is faster, 1.0 = as
fast as the floor) and ``pairs`` the median of the ratios of the pairs, the figure that noise
moves least. The peak RSS is that of the largest process of the run (``ru_maxrss`` of the
waited-for children). ``--large`` adds ``--binary inline`` on one study of
50 MB and of 1 GB: the peak RSS must stay flat (one instance at a time, never the study).

Corpora are made with committed code (``bench/convert.py``, ``bench/binary_media.py``,
``bench/validate.py``) into ``--corpus`` (kept there and reused, so that the figures before and
after a change are taken on the same files) or a temporary folder:

    .venv/bin/python bench/paths.py --corpus /tmp/fhirimg-paths [--large] [--only media,validate]

Not a test: the machine is shared and noisy; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # the sibling benchmarks' corpus makers

PYTHON = sys.executable

# ----------------------------------------------------------------------------------- floors

FLOOR_HEADER = """
import sys
from pathlib import Path
import pydicom
for f in sorted(Path(sys.argv[1]).rglob("*.dcm")):
    pydicom.dcmread(f, stop_before_pixels=True)
"""

FLOOR_BINARY = """
import base64, os, sys
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "floor.b64"), "wb") as dst:
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), "rb") as fh:
            dst.write(base64.b64encode(fh.read()))
"""

FLOOR_MEDIA = """
import os, sys
import numpy as np
import pydicom
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
for name in sorted(os.listdir(src)):
    ds = pydicom.dcmread(os.path.join(src, name))
    x = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    y = np.clip(np.rint(((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(y, mode="L").save(os.path.join(out, name + ".png"), "PNG")
"""

FLOOR_VALIDATE = """
import sys
from pathlib import Path
from fhir.resources.R4B.bundle import Bundle
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    Bundle.model_validate_json(f.read_bytes())
"""

PEAK = """
import resource, subprocess, sys, time
t = time.perf_counter()
done = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
elapsed = time.perf_counter() - t
if done.returncode not in [int(c) for c in sys.argv[1].split(",")]:
    sys.exit(f"exit {done.returncode}: {done.stderr.decode()[-2000:]}")
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(elapsed, use.ru_maxrss, use.ru_utime + use.ru_stime)
"""


# Bytecode as a pip install has it: written once (by each path's first run) into a cache of the
# bench's own, even where PYTHONDONTWRITEBYTECODE is set (it would make every run compile fhirimg).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="fhirimg-paths-pycache-")


def measure(cmd: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, float, float]:
    """(seconds, peak RSS MiB, CPU seconds) of one whole process (and its children)."""
    done = subprocess.run(
        [PYTHON, "-c", PEAK, ",".join(map(str, ok)), *cmd],
        capture_output=True,
        text=True,
        check=False,
        env=ENV,
    )
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:6])}: {done.stderr.strip()}")
    seconds, rss_kb, cpu = done.stdout.split()
    return float(seconds), int(rss_kb) / 1024, float(cpu)


Figure = tuple[float, float, float]  # seconds (best), peak RSS MiB (largest), CPU s (best run)


def best(results: list[Figure]) -> Figure:
    """Best time of the runs, the largest peak RSS seen, and the CPU time of the best run."""
    fastest = min(results)
    return fastest[0], max(r[1] for r in results), fastest[2]


def paired(
    floor: Callable[[], list[str]],
    run: Callable[[], list[str]],
    runs: int,
    ok: tuple[int, ...] = (0,),
    clean: Path | None = None,
) -> tuple[Figure, Figure, float]:
    """``runs`` pairs (floor, then fhirimg): the floor's figure, fhirimg's, and the median of the
    pairs' ratios."""
    floors: list[Figure] = []
    ours: list[Figure] = []
    for _ in range(runs):
        for cmd, results, codes in ((floor, floors, (0,)), (run, ours, ok)):
            if clean is not None:
                shutil.rmtree(clean, ignore_errors=True)
            results.append(measure(cmd(), codes))
    ratios = sorted(f[0] / r[0] for f, r in zip(floors, ours, strict=True))
    return best(floors), best(ours), ratios[len(ratios) // 2]


def fhirimg(*args: str) -> list[str]:
    return [PYTHON, "-m", "fhirimg", *args]


# ----------------------------------------------------------------------------------- corpora


def ensure(folder: Path, make: Callable[[Path], object]) -> Path:
    """``folder`` made by ``make`` unless a complete one is there already (a ``.done`` mark)."""
    mark = folder.with_name(folder.name + ".done")  # beside it: not an input file
    if not mark.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        t = time.perf_counter()
        make(folder)
        mark.touch()
        print(f"made {folder} in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def ct_study(size_mb: float) -> Callable[[Path], object]:
    from binary_media import make_study  # type: ignore[import-not-found]

    return lambda folder: make_study(folder, size_mb)


def header_corpus(studies: int, per_study: int) -> Callable[[Path], object]:
    from convert import build_corpus  # type: ignore[import-not-found]

    return lambda folder: build_corpus(folder, studies, per_study)


def bundles(count: int, instances: int) -> Callable[[Path], object]:
    def make(folder: Path) -> None:
        import orjson
        from validate import synthetic_bundle  # type: ignore[import-not-found]

        for n in range(count):
            (folder / f"bundle{n:05d}.json").write_bytes(
                orjson.dumps(synthetic_bundle(n, instances))
            )

    return make


def files_in(folder: Path) -> tuple[int, int]:
    paths = [p for p in folder.rglob("*") if p.is_file()]
    return len(paths), sum(p.stat().st_size for p in paths)


# ----------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, help="folder for the corpora (kept and reused)")
    parser.add_argument("--only", default="header,binary,media,validate")
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs per figure")
    parser.add_argument("--slices", type=int, default=300, help="CT slices of ~0.5 MB")
    parser.add_argument("--studies", type=int, default=200, help="header corpus studies")
    parser.add_argument("--per-study", type=int, default=100, help="header corpus files/study")
    parser.add_argument("--bundles", type=int, default=200)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--large", action="store_true", help="peak RSS of 50 MB vs 1 GB studies")
    args = parser.parse_args()
    only = set(args.only.split(","))
    root = args.corpus or Path(tempfile.mkdtemp(prefix="fhirimg-paths-"))
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fhirimg-paths-out-"))
    slice_mb = 512 * 512 * 2 / 1e6
    rows: list[tuple[str, Figure, Figure, float]] = []
    print(f"cores: {os.cpu_count()}, runs per figure: {args.runs} pairs", flush=True)

    def compare(name: str, figures: tuple[Figure, Figure, float]) -> None:
        floor, run, pairs = figures
        rows.append((name, floor, run, pairs))
        print(
            f"{name:36} floor {floor[0]:6.2f} s  fhirimg {run[0]:6.2f} s  "
            f"ratio {floor[0] / run[0]:5.2f}x  pairs {pairs:5.2f}x  "
            f"peak RSS {floor[1]:4.0f} / {run[1]:4.0f} MiB  "
            f"CPU {floor[2]:6.2f} / {run[2]:6.2f} s",
            flush=True,
        )

    out = work / "out"
    try:
        if "header" in only:
            src = ensure(
                root / f"header-{args.studies}x{args.per_study}",
                header_corpus(args.studies, args.per_study),
            )
            n, size = files_in(src)
            compare(
                f"header: convert ({n} files)",
                paired(
                    lambda: [PYTHON, "-c", FLOOR_HEADER, str(src)],
                    lambda: fhirimg("convert", str(src), "--out", str(out), "-q"),
                    args.runs,
                    clean=out,
                ),
            )
        if {"binary", "media"} & only:
            ct = ensure(root / f"ct-{args.slices}", ct_study(args.slices * slice_mb))
            n, size = files_in(ct)
            if "binary" in only:
                compare(
                    f"binary: --binary inline ({size / 1e6:.0f} MB)",
                    paired(
                        lambda: [PYTHON, "-c", FLOOR_BINARY, str(ct), str(out)],
                        lambda: fhirimg(
                            "convert", str(ct), "--out", str(out), "-q", "--binary", "inline"
                        ),
                        args.runs,
                        clean=out,
                    ),
                )
            if "media" in only:
                compare(
                    f"media: --media png ({n} images)",
                    paired(
                        lambda: [PYTHON, "-c", FLOOR_MEDIA, str(ct), str(out)],
                        lambda: fhirimg("convert", str(ct), "--out", str(out), "-q", "--media"),
                        args.runs,
                        clean=out,
                    ),
                )
        if "validate" in only:
            vb = ensure(
                root / f"bundles-{args.bundles}x{args.instances}",
                bundles(args.bundles, args.instances),
            )
            n, size = files_in(vb)
            compare(
                f"validate: all layers ({n} bundles)",
                # exit 1 would mean errors found: the bundles are valid, so only 0 is right
                paired(
                    lambda: [PYTHON, "-c", FLOOR_VALIDATE, str(vb)],
                    lambda: fhirimg("validate", str(vb), "-q"),
                    args.runs,
                ),
            )
        if args.large:
            print(
                "\n--binary inline as the study grows (peak RSS flat; the floor beside it, 2 pairs):"
            )
            for mb in (50, 1024):
                src = ensure(root / f"large-{mb}", ct_study(mb))
                n, size = files_in(src)
                floor_cmd = [PYTHON, "-c", FLOOR_BINARY, str(src), str(out)]
                run_cmd = fhirimg(
                    "convert", str(src), "--out", str(out), "-q", "--binary", "inline"
                )
                floor, run, pairs = paired(floor_cmd.copy, run_cmd.copy, 2, clean=out)
                print(
                    f"  {size / 1e6:6.0f} MB, {n:5d} files: {run[0]:7.2f} s  peak RSS "
                    f"{run[1]:5.0f} MiB  (floor {floor[0]:6.2f} s, ratio {pairs:4.2f}x)",
                    flush=True,
                )
        figures = {
            name: {
                "floor_s": floor[0],
                "fhirimg_s": run[0],
                "ratio": floor[0] / run[0],
                "floor_rss_mib": floor[1],
                "fhirimg_rss_mib": run[1],
                "floor_cpu_s": floor[2],
                "fhirimg_cpu_s": run[2],
                "pairs_ratio": pairs,
            }
            for name, floor, run, pairs in rows
        }
        print(json.dumps(figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.corpus is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
