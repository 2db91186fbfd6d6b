"""Throughput of --binary and --media against the raw read + base64 floor, and peak memory.

Makes a synthetic single-study CT series (512 x 512 x 16-bit slices, ~0.5 MB each) of about
``--size-mb`` MB in a temporary folder, then measures, each in a fresh subprocess (so peak RSS is
that run's own):

- floor: read every file and base64-encode it (what any inline Binary writer must do at least);
- ``convert --binary inline`` and ``--binary beside`` (one process, ``jobs=1``);
- ``convert --media`` (PNG, one per instance) on the same files;

and prints MB/s (source bytes per second), the ratio to the floor, and the peak RSS of each run:
memory must stay flat as the study grows (one chunk / one instance, not the study).

    .venv/bin/python bench/binary_media.py --size-mb 1024

Not a test: figures depend on the machine; compare ratios measured in the same run.
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
from pathlib import Path

SLICE = 512


def make_study(folder: Path, size_mb: float) -> tuple[int, int]:
    """Write the synthetic study; returns (files, bytes)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

    rng = np.random.default_rng(1)
    base = (rng.normal(40, 300, (SLICE, SLICE)) + 1024).clip(0, 4095).astype(np.uint16)
    per_file = SLICE * SLICE * 2
    count = max(1, int(size_mb * 1_000_000 // per_file))
    study, series = "2.25.1001", "2.25.1002"
    total = 0
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = UID(f"2.25.2{i:06d}")
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName, ds.Modality = "BENCH-1", "Bench^Mark", "CT"
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20240101", 1, i + 1
        ds.Rows = ds.Columns = SLICE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.roll(base, i, axis=0).tobytes()
        path = folder / f"ct_{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return count, total


FLOOR = """
import base64, os, sys
total = 0
for name in sorted(os.listdir(sys.argv[1])):
    with open(os.path.join(sys.argv[1], name), "rb") as fh:
        total += len(base64.b64encode(fh.read()))
print(total)
"""

CONVERT = """
import sys
from pathlib import Path
from fhirimg import ConvertOptions, convert
from fhirimg.images.binary import BinaryMode
from fhirimg.images.rendered import MediaOptions
mode, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
kw = {}
if mode in ("inline", "beside"):
    kw["binary"] = BinaryMode(mode)
if mode == "media":
    kw["media"] = MediaOptions()
report = convert([src], ConvertOptions(out_dir=Path(out), jobs=1, **kw))
assert report.studies and all(s.ok for s in report.studies), report.summary()
"""

PEAK = """
import resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
elapsed = time.perf_counter() - t
print(elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MB) of a subprocess."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK, *args], check=True, capture_output=True, text=True
    )
    seconds, rss_kb = done.stdout.split()
    return float(seconds), int(rss_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024, help="study size (default 1024)")
    parser.add_argument(
        "--media-mb", type=float, default=100, help="part of the study rendered (default 100 MB)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ns = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fhirimg-bench-"))
    try:
        src = root / "in"
        src.mkdir()
        t = time.perf_counter()
        files, nbytes = make_study(src, ns.size_mb)
        print(
            f"study: {files} files, {nbytes / 1e6:.0f} MB ({time.perf_counter() - t:.1f} s to make)"
        )
        media_src = root / "media-in"
        media_src.mkdir()
        per_file = nbytes / files
        media_files = max(1, min(files, int(ns.media_mb * 1e6 // per_file)))
        for p in sorted(src.iterdir())[:media_files]:
            os.link(p, media_src / p.name)
        media_bytes = sum(p.stat().st_size for p in media_src.iterdir())

        results = {}
        secs, rss = measure([sys.executable, "-c", FLOOR, str(src)])
        results["floor (read + base64)"] = (nbytes, secs, rss)
        for mode in ("inline", "beside"):
            out = root / f"out-{mode}"
            secs, rss = measure([sys.executable, "-c", CONVERT, mode, str(src), str(out)])
            results[f"convert --binary {mode}"] = (nbytes, secs, rss)
            shutil.rmtree(out)
        out = root / "out-media"
        secs, rss = measure([sys.executable, "-c", CONVERT, "media", str(media_src), str(out)])
        results[f"convert --media (png, {media_files} images)"] = (media_bytes, secs, rss)

        floor_rate = nbytes / 1e6 / results["floor (read + base64)"][1]
        print(f"{'run':42} {'MB':>7} {'s':>7} {'MB/s':>8} {'x floor':>8} {'peak RSS MB':>12}")
        for name, (size, secs, rss) in results.items():
            rate = size / 1e6 / secs
            print(
                f"{name:42} {size / 1e6:7.0f} {secs:7.2f} {rate:8.1f} {rate / floor_rate:8.2f} {rss:12.0f}"
            )
        print(
            json.dumps(
                {k: {"mb": v[0] / 1e6, "s": v[1], "peak_rss_mb": v[2]} for k, v in results.items()}
            )
        )
    finally:
        if ns.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
