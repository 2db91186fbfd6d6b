"""C-STORE ingest rate of ``fhirimg listen`` against Orthanc's own receive rate (target >= 0.8x).

Makes a synthetic CT study (512 x 512 x 16-bit slices, ~0.5 MB each, ``--files`` of them), then,
for each round, sends it with dcmtk's ``storescu`` (one association, the files in order) to:

- a fresh Orthanc (Debian ``orthanc``, its DICOM port; it indexes each instance as it stores it);
- a fresh ``fhirimg listen`` (subprocess, ``--settle`` long enough that no conversion runs during
  the measurement: this is the receive path, write included);

and prints instances/s and MB/s of each, and the ratio listen / Orthanc (median over rounds, the
two alternating so that both see the same machine load).

Orthanc listens on every interface, so this runs only inside a private network namespace:

    tools/run-in-netns.sh .venv/bin/python bench/listen.py --files 400 --rounds 3

Not a test: figures depend on the machine; compare the ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SLICE = 512


def make_study(folder: Path, count: int) -> int:
    """Write ``count`` CT slices; returns the total bytes."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

    rng = np.random.default_rng(7)
    pixels = (rng.normal(40, 300, (SLICE, SLICE)) + 1024).clip(0, 4095).astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = UID(f"2.25.31{i:06d}")
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "2.25.3001", "2.25.3002"
        ds.PatientID, ds.PatientName, ds.Modality = "BENCH-LISTEN", "Bench^Listen", "CT"
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20240101", 1, i + 1
        ds.Rows = ds.Columns = SLICE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
        path = folder / f"ct_{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def send(storescu: str, called: str, port: int, files: list[str]) -> float:
    """Seconds ``storescu`` takes to send every file in one association."""
    started = time.perf_counter()
    done = subprocess.run(
        [storescu, "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *files],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"storescu to {called} failed: {done.stderr[-2000:]}")
    return elapsed


def orthanc_round(storescu: str, files: list[str], work: Path) -> float:
    from tests.servers.orthanc_server import start_orthanc

    with start_orthanc(work) as orthanc:
        return send(storescu, "ORTHANC", orthanc.dicom_port, files)


def listen_round(storescu: str, files: list[str], work: Path) -> float:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fhirimg", "listen", "--port", "0", "--store", str(work / "store")]
        + ["-o", str(work / "out"), "--settle", "3600", "--interval", "60"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"on port (\d+)", line)
        if not match:
            raise SystemExit(f"fhirimg listen did not start: {line}{proc.stderr.read()}")
        elapsed = send(storescu, "FHIRIMG", int(match.group(1)), files)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    stored = len(list((work / "store").rglob("*.dcm")))
    if stored != len(files):
        raise SystemExit(f"fhirimg listen stored {stored} of {len(files)} instances")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="instances to send (~0.5 MB each)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("storescu not found: sh tools/dcmtk/install.sh")
    with tempfile.TemporaryDirectory(prefix="fhirimg-bench-listen-") as tmp:
        root = Path(tmp)
        size = make_study(root / "study", args.files)
        files = sorted(str(p) for p in (root / "study").glob("*.dcm"))
        mb = size / 1e6
        print(f"{len(files)} instances, {mb:.0f} MB, {args.rounds} round(s), storescu -> each")
        times: dict[str, list[float]] = {"orthanc": [], "listen": []}
        for r in range(args.rounds):
            times["orthanc"].append(orthanc_round(storescu, files, root / f"orthanc-{r}"))
            times["listen"].append(listen_round(storescu, files, root / f"listen-{r}"))
            shutil.rmtree(root / f"orthanc-{r}", ignore_errors=True)
            shutil.rmtree(root / f"listen-{r}", ignore_errors=True)
            print(
                f"  round {r + 1}: Orthanc {times['orthanc'][-1]:.2f} s, "
                f"fhirimg listen {times['listen'][-1]:.2f} s"
            )
        for name, label in (("orthanc", "Orthanc 1.10"), ("listen", "fhirimg listen")):
            t = statistics.median(times[name])
            print(f"{label:>15}: {len(files) / t:7.1f} instances/s  {mb / t:7.1f} MB/s (median)")
        ratio = statistics.median(times["orthanc"]) / statistics.median(times["listen"])
        print(f"ratio listen / Orthanc: {ratio:.2f}x (target >= 0.8x)")


if __name__ == "__main__":
    main()
