"""Long fuzz campaigns over fhirimg (issue 11, "nothing breaks, nothing is lost").

The mutators and checks are those of the test suite (``tests/fuzzing.py``): mutated DICOM
headers through ``fhirimg.convert``, mutated pixel data through ``convert`` with Binaries inline
and rendered images, mutated JSON through ``fhirimg.validate`` and ``fhirimg push --dry-run``
(or a real server with ``--server``). Inputs go in batches (one ``convert`` call per batch) to
``-j`` long-lived worker processes; a batch past its time limit (``--timeout`` seconds per input)
is killed and its inputs are run one by one to find the one that hangs; a worker that dies
(a segfault, a panic that aborts) is a crash, bisected the same way.

It prints a table per kind: inputs run, crashes (an exception escaping the library, exit 70 or a
traceback from the CLI, a dead worker), hangs, unaccounted files (not in report.json exactly once,
or without a reason), invalid bundles written (errors from all layers of ``fhirimg.validate``),
then each distinct failure with a reproducer folder under ``--out``/repro. ``summary.json`` there
holds the same. The same ``--seed`` gives the same inputs.

Usage:  .venv/bin/python bench/fuzz.py [--inputs 1000] [--seed 1] [--kind all] [--out DIR]
            [-j 2] [--batch 100] [--timeout 5] [--server URL]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fuzzing import (  # noqa: E402  (the repository on the path first)
    CATEGORIES,
    CRASH,
    HANG,
    KINDS,
    Failure,
    check_inputs,
    write_batch,
)

# Share of the inputs per kind with --kind all: convert batches are cheap, JSON ones dearer.
WEIGHTS = {"headers": 0.72, "pixels": 0.2, "validate": 0.04, "push": 0.04}
BATCH = {"headers": 200, "pixels": 100, "validate": 50, "push": 50}


@dataclass
class Task:
    kind: str
    work: str  # the batch's folder: in/ (the inputs) and out/
    seed: int | None = None  # a new batch from this seed, or ...
    count: int = 0
    files: list[str] = field(default_factory=list)  # ... these inputs again, alone (bisecting)


# --------------------------------------------------------------------------- the worker


def worker(server: str | None) -> None:
    """Read tasks (JSON lines) on stdin, answer each with a JSON line on stdout."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # pydicom warns for every odd element: time, not news
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing a library prints can break the protocol
    for line in sys.stdin:
        task = Task(**json.loads(line))
        work = Path(task.work)
        try:
            if task.seed is not None:
                inputs = write_batch(task.kind, task.seed, task.count, work / "in")
            else:
                inputs = [Path(f) for f in task.files]
        except Exception as exc:  # the fuzzer's own bug: said, not taken for fhirimg's
            trace = "".join(traceback.format_exception(exc))
            out.write(json.dumps({"inputs": 0, "failures": [], "error": trace}) + "\n")
            out.flush()
            continue
        variant = task.seed or 0  # pixel batches cycle through the Binary / image options
        failures = check_inputs(task.kind, inputs, work / "out", server, variant)
        answer = {"inputs": len(inputs), "failures": [asdict(f) for f in failures]}
        out.write(json.dumps(answer) + "\n")
        out.flush()


class Worker:
    """One worker process; restarted after a hang or a death."""

    def __init__(self, number: int, out: Path, server: str | None) -> None:
        self.number, self.out, self.server = number, out, server
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            log = open(self.out / f"worker-{self.number}.log", "ab")  # noqa: SIM115
            cmd = [sys.executable, __file__, "--worker"]
            if self.server:
                cmd += ["--server", self.server]
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            log.close()
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def run(self, task: Task, timeout: float) -> dict[str, Any]:
        """The worker's answer, or a hang / crash made up here."""
        proc = self.start()
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write((json.dumps(asdict(task)) + "\n").encode())
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return {"failures": [asdict(Failure(HANG, "no answer in the time limit"))]}
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            self.proc = None
            detail = f"the worker died (exit {code}; see worker-{self.number}.log)"
            return {"failures": [asdict(Failure(CRASH, detail))]}
        answer: dict[str, Any] = json.loads(line)
        return answer


# --------------------------------------------------------------------------- the campaign


def signature(kind: str, failure: dict[str, Any]) -> str:
    """What makes two failures the same: the kind, the category, the exception and the frame it
    was raised in (crashes), else the detail with numbers and names blanked."""
    trace = failure.get("trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    if failure["category"] == CRASH and frames:
        path, line = frames[-1]
        exc = failure["detail"].split(":")[0]
        return f"{kind} {CRASH} {exc} at {Path(path).name}:{line}"
    detail = re.sub(r"study-[0-9a-f-]+|\d+|'[^']*'|\"[^\"]*\"", "#", failure["detail"])
    return f"{kind} {failure['category']} {detail[:160]}"


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.tasks: queue.Queue[Task | None] = queue.Queue()
        self.lock = threading.Lock()
        self.inputs: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CATEGORIES, 0))
        self.distinct: dict[str, dict[str, Any]] = {}
        self.pending = 0
        self.done = threading.Event()

    def plan(self) -> None:
        kinds = list(KINDS) if self.args.kind == "all" else [self.args.kind]
        total = sum(WEIGHTS[k] for k in kinds)
        for k in kinds:
            n = round(self.args.inputs * WEIGHTS[k] / total)
            size = self.args.batch or BATCH[k]
            for i in range(0, n, size):
                seed = self.args.seed * 1_000_000 + i // size
                work = self.out / "work" / f"{k}-{seed}"
                self.put(Task(k, str(work), seed=seed, count=min(size, n - i)))

    def put(self, task: Task) -> None:
        with self.lock:
            self.pending += 1
        self.tasks.put(task)

    def finish(self, task: Task, answer: dict[str, Any]) -> None:
        work = Path(task.work)
        failures = answer["failures"]
        whole = task.seed is not None
        if answer.get("error"):
            print(f"fuzzer error in {task.kind} batch {task.seed}:\n{answer['error']}", flush=True)
        # A hang, a dead worker or an escaping exception names no input: run each input alone
        # (in a worker, with its own time limit) to find the one to keep as the reproducer.
        if whole and any(f["category"] in (HANG, CRASH) and not f["inputs"] for f in failures):
            for path in sorted((work / "in").glob("0*")):
                single = work / "single" / path.stem / "in"
                single.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, single / path.name)
                self.put(Task(task.kind, str(single.parent), files=[str(single / path.name)]))
        with self.lock:
            if whole:
                self.inputs[task.kind] += answer.get("inputs", task.count)
                for f in failures:
                    self.record(task, f, count=True)
                if not failures:
                    shutil.rmtree(work, ignore_errors=True)
            else:  # a bisection: it names the input of a failure already counted
                for f in failures:
                    if f["category"] in (HANG, CRASH):
                        self.record(task, {**f, "inputs": task.files}, count=False)
            self.pending -= 1
            if self.pending == 0:
                self.done.set()

    def record(self, task: Task, failure: dict[str, Any], count: bool) -> None:
        if count:
            self.counts[task.kind][failure["category"]] += 1
        sig = signature(task.kind, failure)
        seen = self.distinct.setdefault(sig, {"count": 0, "example": failure, "kind": task.kind})
        seen["count"] += int(count)
        names = failure.get("inputs") or []
        if "reproducer" in seen and (seen["narrowed"] or not names):
            return
        repro = self.out / "repro" / re.sub(r"[^A-Za-z0-9.]+", "-", sig)[:120]
        shutil.rmtree(repro, ignore_errors=True)
        repro.mkdir(parents=True, exist_ok=True)
        for src in names or [str(p) for p in sorted(Path(task.work, "in").glob("*"))]:
            if Path(src).is_file():
                shutil.copy(src, repro / Path(src).name)
        (repro / "failure.json").write_text(json.dumps(failure, indent=2))
        seen["reproducer"] = str(repro)
        seen["narrowed"] = bool(names)
        seen["example"] = failure

    def slot(self, number: int) -> None:
        w = Worker(number, self.out, self.args.server)
        try:
            while True:
                task = self.tasks.get()
                if task is None:
                    return
                n = task.count or len(task.files)
                limit = max(60.0, self.args.timeout * n) if task.seed else self.args.timeout + 30
                started = time.monotonic()
                answer = w.run(task, limit)
                with self.lock:
                    self.seconds[task.kind] += time.monotonic() - started
                self.finish(task, answer)
        finally:
            w.stop()

    def run(self) -> float:
        started = time.monotonic()
        self.plan()
        slots = [threading.Thread(target=self.slot, args=(i,)) for i in range(self.args.jobs)]
        for t in slots:
            t.start()
        last = time.monotonic()
        while not self.done.wait(5):
            if time.monotonic() - last > 60:
                last = time.monotonic()
                with self.lock:
                    done = sum(self.inputs.values())
                    table = self.table(time.monotonic() - started)
                print(f"... {done} inputs, {len(self.distinct)} distinct failures, "
                      f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
                (self.out / "table.md").write_text(table + "\n")  # so far
        for _ in slots:
            self.tasks.put(None)
        for t in slots:
            t.join()
        return time.monotonic() - started

    def table(self, elapsed: float) -> str:
        head = ["kind", "inputs", "crashes", "hangs", "unaccounted", "invalid bundles", "distinct"]
        head.append("worker s")
        rows: list[list[Any]] = []
        for kind in KINDS:
            if kind not in self.inputs:
                continue
            c = self.counts[kind]
            distinct = sum(1 for d in self.distinct.values() if d["kind"] == kind)
            seconds = round(self.seconds[kind])
            rows.append([kind, self.inputs[kind], *(c[k] for k in CATEGORIES), distinct, seconds])
        total: list[Any] = ["total", *(sum(r[i] for r in rows) for i in range(1, len(head)))]
        rows.append(total)
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
        lines.append(f"\n{sum(self.inputs.values())} inputs in {elapsed:.0f} s "
                     f"({sum(self.inputs.values()) / max(elapsed, 1e-9):.0f}/s), -j {self.args.jobs}, "
                     f"seed {self.args.seed}")  # fmt: skip
        for sig, d in sorted(self.distinct.items()):
            lines.append(f"- {sig} (x{d['count']}): {d.get('reproducer', '')}")
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1000, help="mutated inputs in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kind", choices=[*KINDS, "all"], default="all")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"))
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=0, help="inputs per batch (0: per kind)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per input")
    parser.add_argument("--server", help="FHIR server for the push kind (default: --dry-run)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.server)
        return 0
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True, mode=0o700)
    campaign = Campaign(args)
    elapsed = campaign.run()
    table = campaign.table(elapsed)
    print(table)
    summary = {
        "inputs": dict(campaign.inputs),
        "counts": campaign.counts,
        "elapsed_s": round(elapsed, 1),
        "worker_s": {k: round(v, 1) for k, v in campaign.seconds.items()},
        "seed": args.seed,
        "distinct": {
            s: {k: d.get(k) for k in ("kind", "count", "reproducer", "example")}
            for s, d in campaign.distinct.items()
        },
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "table.md").write_text(table + "\n")
    return 1 if campaign.distinct else 0


if __name__ == "__main__":
    sys.exit(main())
