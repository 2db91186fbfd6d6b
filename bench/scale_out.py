"""Benchmark ``convert --engine dask`` (a 2-worker local cluster) against ``--engine local --jobs 2``
on the same corpus, in the same run.

Builds a synthetic corpus (``--files`` small CT headers, ``--per-study`` per study, written fast
from one template with its UIDs replaced byte for byte), then times, best of ``--repeat``:

* ``fhirimg convert --jobs 2`` in a fresh subprocess (start-up included);
* ``fhirimg convert --engine dask --workers 2`` in a fresh subprocess (start-up and the local
  cluster's start included);
* the same Dask conversion through the library on a cluster started once (what a long-lived
  cluster costs per run), with the peak RSS of each worker and of the client afterwards.

It prints files/s, the ratio dask / local (target >= 0.8), peak memory, and an estimate for 10
nodes from the measured per-worker rate. Figures, not assertions: this machine is shared and noisy.

Usage:  .venv/bin/python bench/scale_out.py [--files 20000] [--per-study 50] [--workdir DIR]
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_corpus(root: Path, files: int, per_study: int) -> int:
    """``files`` CT headers (no pixel data), ``per_study`` a study, one folder per study."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.2")
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID("2.25.700000000000.777777")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "2.25.700000000000.777777"
    ds.StudyInstanceUID = "2.25.700000000000"
    ds.SeriesInstanceUID = "2.25.700000000000.1"
    ds.PatientID = "PID700000000000"
    ds.PatientName = "Bench^Patient700000000000"
    ds.Modality = "CT"
    ds.StudyDate = "20240102"
    ds.InstanceNumber = "1"
    root.mkdir(parents=True)
    template = root / ".template.dcm"
    ds.save_as(template, enforce_file_format=True)
    data = template.read_bytes()
    template.unlink()
    written = 0
    study = 0
    while written < files:
        by_study = data.replace(b"700000000000", b"1%011d" % study)
        folder = root / f"study-{study:06d}"
        folder.mkdir()
        for i in range(min(per_study, files - written)):
            (folder / f"{i:05d}.dcm").write_bytes(by_study.replace(b"777777", b"1%05d" % i))
            written += 1
        study += 1
    return written


def run_cli(corpus: Path, out: Path, *args: str) -> tuple[float, float]:
    """Seconds and peak RSS (MiB, the largest process of the run) of one convert subprocess."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "fhirimg", "convert", str(corpus), "--out", str(out), "--quiet"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *args], capture_output=True, check=False, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"convert {args} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return elapsed, peak


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_library(corpus: Path, out: Path, repeat: int) -> tuple[float, float, dict[str, float]]:
    """Best seconds of ``convert`` on one cluster started once, its start-up seconds, and each
    worker's peak RSS (MiB)."""
    from fhirimg.cluster import ClusterOptions, start
    from fhirimg.convert import ConvertOptions, convert

    began = time.perf_counter()
    cluster = start(ClusterOptions(workers=2))
    startup = time.perf_counter() - began
    try:
        opts = ConvertOptions(out_dir=out, cluster=ClusterOptions(cluster.address))
        best = float("inf")
        for _ in range(repeat):
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            convert([corpus], opts)
            best = min(best, time.perf_counter() - t0)
        peaks: dict[str, float] = cluster.client.run(_peak_rss_mib)
    finally:
        cluster.shutdown()
    return best, startup, peaks


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--per-study", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fhirimg-scale-", dir=args.workdir))
    try:
        corpus = work / "corpus"
        n = build_corpus(corpus, args.files, args.per_study)
        studies = -(-n // args.per_study)
        print(f"corpus: {n} files, {studies} studies (cores: {os.cpu_count()})")
        local = [run_cli(corpus, work / "local", "--jobs", "2") for _ in range(args.repeat)]
        dask = [
            run_cli(corpus, work / "dask", "--engine", "dask", "--workers", "2")
            for _ in range(args.repeat)
        ]
        t_local, m_local = min(r[0] for r in local), max(r[1] for r in local)
        t_dask, m_dask = min(r[0] for r in dask), max(r[1] for r in dask)
        t_lib, startup, peaks = run_library(corpus, work / "lib", args.repeat)
        print(
            f"  local --jobs 2 (fresh process):        {n / t_local:7.0f} files/s  {t_local:6.1f} s  peak RSS {m_local:5.0f} MiB"
        )
        print(
            f"  dask --workers 2 (fresh process):      {n / t_dask:7.0f} files/s  {t_dask:6.1f} s  peak RSS {m_dask:5.0f} MiB  ratio {t_local / t_dask:4.2f}"
        )
        print(
            f"  dask, cluster already up ({startup:4.1f} s start): {n / t_lib:7.0f} files/s  {t_lib:6.1f} s  ratio {t_local / t_lib:4.2f}"
        )
        print(
            f"    fixed cost of a fresh run (process, imports, cluster start): {t_dask - t_lib:5.1f} s"
        )
        for address, peak in sorted(peaks.items()):
            print(f"    worker {address}: peak RSS {peak:5.0f} MiB")
        print(f"    client (this process): peak RSS {_peak_rss_mib():5.0f} MiB")
        per_worker = n / t_lib / 2
        print(
            f"  10 nodes x 2 workers, if the rate per worker held: {per_worker * 20:7.0f} files/s "
            f"({50e6 / (per_worker * 20) / 3600:5.1f} h for 50 million); the shared file "
            "system and the client's walk are what would stop it holding (docs/scale-out.md)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
