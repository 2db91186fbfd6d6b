"""Start-up cost: a command imports only what it uses (issues 10 and 19).

pydicom, numpy and Pillow take most of fhirimg's import time (about 0.4 s of 0.7 s on the 2-core
CI machine). Commands that never read DICOM (``push``, ``validate``, ``verify``, every ``--help``)
and an incremental ``convert`` over an unchanged tree (it stats files and reads none) must not load
them. Each case runs the real CLI entry point in a fresh interpreter and lists the heavy packages in
``sys.modules`` when it is done.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.helpers import REPO, SAMPLE

HEAVY = ("pydicom", "numpy", "PIL")

# argv[1]: where to write {"code": exit code, "loaded": heavy packages}; argv[2:]: fhirimg's
_PROBE = f"""
import sys, orjson
from fhirimg.cli import main
report = sys.argv[1]
sys.argv = ["fhirimg", *sys.argv[2:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
open(report, "wb").write(orjson.dumps({{"code": code, "loaded": loaded}}))
"""


def _imports(args: list[str], cwd: Path, tmp_path: Path) -> tuple[int, list[str]]:
    """Run ``fhirimg ARGS`` in a fresh interpreter; its exit code and the heavy packages loaded."""
    out = tmp_path / "probe.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert out.exists(), proc.stderr.decode(errors="replace")
    doc = orjson.loads(out.read_bytes())
    return int(doc["code"] or 0), list(doc["loaded"])


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["push", "--help"],
        ["validate", "--help"],
        ["verify", "--help"],
        ["convert", "--help"],
        ["watch", "--help"],
        ["--version"],
    ],
)
def test_help_and_version_load_no_dicom_stack(args: list[str], tmp_path: Path) -> None:
    code, loaded = _imports(args, tmp_path, tmp_path)
    assert code == 0
    assert loaded == [], f"fhirimg {' '.join(args)} imported {loaded}"


def test_push_and_validate_of_a_folder_load_no_dicom_stack(tmp_path: Path) -> None:
    """A real ``validate`` of converted bundles and a ``push --dry-run`` read JSON only."""
    out = tmp_path / "out"
    code, _ = _imports(["convert", str(SAMPLE), "--out", str(out), "-q"], tmp_path, tmp_path)
    assert code in (0, 1)  # the sample data holds files that are meant to fail
    bundles = sorted(str(p) for p in out.glob("study-*.json"))
    assert bundles
    code, loaded = _imports(["validate", *bundles, "-q"], tmp_path, tmp_path)
    assert code == 0
    assert loaded == []
    code, loaded = _imports(
        ["push", str(out), "--server", "http://127.0.0.1:9/fhir", "--dry-run", "-q"],
        tmp_path,
        tmp_path,
    )
    assert code == 0
    assert loaded == []


def test_unchanged_incremental_rerun_reads_nothing_and_loads_no_dicom_stack(
    tmp_path: Path,
) -> None:
    """The nightly case: the tree did not change, so the re-run stats files and reads none."""
    src = tmp_path / "in"
    shutil.copytree(SAMPLE, src)
    hour_ago = time.time() - 3600  # older than the catalog's racy-mtime window (incremental.md)
    for path in src.rglob("*"):
        os.utime(path, (hour_ago, hour_ago))
    out = tmp_path / "out"
    # -j 1: everything in the one process whose modules are listed (workers would hide them)
    args = ["convert", str(src), "--out", str(out), "-q", "-j", "1"]
    first, loaded = _imports(args, tmp_path, tmp_path)
    assert "pydicom" in loaded  # the probe sees it: the first run reads every header
    before = {p.name: p.read_bytes() for p in out.glob("study-*.json")}
    again, loaded = _imports(args, tmp_path, tmp_path)
    assert again == first
    assert loaded == [], f"an unchanged re-run imported {loaded}"
    assert {p.name: p.read_bytes() for p in out.glob("study-*.json")} == before
    run = orjson.loads((out / "report.json").read_bytes())["summary"]["run"]
    assert (run["files"]["new"], run["files"]["changed"]) == (0, 0)
    assert run["files"]["unchanged"] > 0
    assert run["studies"]["written"] == 0


def _loaded_by_cli(argv: list[str], which: str) -> tuple[str, list[str]]:
    """Run ``fhirimg ARGV`` in a fresh interpreter; its stdout before the last line, and the
    modules of ``sys.modules`` the expression ``which`` (over ``m``) selects afterwards."""
    probe = (
        "import sys\n"
        "from fhirimg.cli import main\n"
        f"sys.argv = {['fhirimg', *argv]!r}\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if {which}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    *printed, loaded = proc.stdout.splitlines()
    return "\n".join(printed), ast.literal_eval(loaded)


def test_version_loads_no_command() -> None:
    """``fhirimg --version`` (and scripts probing for fhirimg) load no command module."""
    version, loaded = _loaded_by_cli(
        ["--version"],
        "m.startswith('fhirimg.') and (m.endswith('_cmd') or "
        "m in ('fhirimg.convert', 'fhirimg.push', 'fhirimg.validate'))",
    )
    assert version.strip()
    assert loaded == []


def test_push_loads_no_dicom_record_model(tmp_path: Path) -> None:
    """``push`` reads bundles, never DICOM: the record model, object storage and the SQLite
    grouping stay unloaded (they cost ~25 ms of every push's start; the CLI's option modules
    import fhirimg.images.binary for its enums, which must not pull them in)."""
    args = ["push", str(tmp_path), "--server", "http://127.0.0.1:9/fhir", "-q", "--json"]
    which = "m in ('fhirimg.model', 'fhirimg.objects', 'fhirimg.group', 'sqlite3', 'fhirimg.scan')"
    _, loaded = _loaded_by_cli(args, which)
    assert loaded == []


def test_convert_stays_the_function_after_the_module_is_imported() -> None:
    """``fhirimg.convert`` is the library function whatever was imported first (the package's
    lazy attributes must not let the submodule shadow it)."""
    code = (
        "import fhirimg.cli, fhirimg.convert\n"
        "import fhirimg\n"
        "from fhirimg.convert import convert_records\n"
        "assert callable(fhirimg.convert) and fhirimg.convert.__name__ == 'convert'\n"
        "from fhirimg import convert, ConvertOptions, MapOptions\n"
        "assert convert is fhirimg.convert\n"
        "import sys\n"
        "assert sys.modules['fhirimg.convert'].convert is convert\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "ok", proc.stderr


def test_convert_of_plain_files_with_binaries_loads_no_dicom_stack(tmp_path: Path) -> None:
    """Little-endian files without a character set that needs pydicom: the fast header parser,
    the UID names and the Binary bytes need neither pydicom nor numpy (about 0.8 s of CPU per
    process that reads, most of what ``--binary inline`` costs beyond its floor)."""
    out = tmp_path / "out"
    args = ["convert", str(SAMPLE / "study_a_ct"), "--out", str(out), "-q", "-j", "1"]
    code, loaded = _imports([*args, "--binary", "inline"], tmp_path, tmp_path)
    assert code == 0
    assert loaded == [], f"convert --binary inline imported {loaded}"
    assert len(list(out.glob("study-*.json"))) == 1


def test_convert_and_validate_load_no_http_client(tmp_path: Path) -> None:
    """A run that talks to no server imports no HTTP client: httpx, the push engine and the
    DICOMweb client cost ~0.25 s of every ``convert`` and ``validate`` start when the CLI's
    option modules and the package ``__init__`` files imported them (issue 15). The options
    they parse (TLS, retries, PushOptions) are plain values from :mod:`fhirimg.http.settings`."""
    out = tmp_path / "out"
    which = (
        "m == 'httpx' or m.startswith(('fhirimg.http.', 'fhirimg.dicomweb.', 'fhirimg.push.run'))"
        " and m != 'fhirimg.http.settings'"
    )
    args = ["convert", str(SAMPLE / "study_a_ct"), "--out", str(out), "-q", "-j", "1"]
    _, loaded = _loaded_by_cli([*args, "--binary", "inline"], which)
    assert loaded == [], f"convert imported {loaded}"
    _, loaded = _loaded_by_cli(["validate", str(out), "-q"], which)
    assert loaded == [], f"validate imported {loaded}"
    # the probe can fail: a run that does talk to a server loads them
    _, loaded = _loaded_by_cli(
        ["validate", str(out), "-q", "--server", "http://127.0.0.1:9"], which
    )
    assert "httpx" in loaded
