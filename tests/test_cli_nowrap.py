"""Human output that survives a log file: with stderr redirected to a file (not a terminal), no
message is wrapped at 80 columns, whatever the command and however long the path in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

LONG = "/" + "/".join(["a-folder-with-a-rather-long-name-for-a-log-line"] * 4) + "/input.json"


@pytest.mark.parametrize(
    "args",
    [
        ["convert", LONG, "-o", "{tmp}/out"],
        ["push", LONG, "--server", "http://127.0.0.1:9/fhir"],
        ["validate", LONG],
        ["verify", LONG],
        ["watch", LONG, "--once", "-o", "{tmp}/out"],
        ["deidentify", LONG, "-o", "{tmp}/out"],
        # a store folder that cannot be made: under a regular file (root may write anywhere)
        ["listen", "--store", "{tmp}/file" + LONG, "--port", "0", "-o", "{tmp}/out"],
    ],
    ids=lambda a: a[0],
)
def test_no_line_is_broken_mid_word(args: list[str], tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    (tmp_path / "file").touch()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    with log.open("w") as err:
        done = subprocess.run(
            [sys.executable, "-m", "fhirimg", *(a.format(tmp=tmp_path) for a in args)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            check=False,
        )
    assert done.returncode == 3
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1, lines  # one message, one line
    assert lines[0].startswith("error: ")
    assert LONG in lines[0]
    assert len(lines[0]) > 200
