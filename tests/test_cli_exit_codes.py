"""One exit-code table for all commands (docs/cli.md#exit-codes): a missing path is 3 (nothing
could be done: no input), a URL that is not http(s) is 2 (a bad value), an unreachable server is 3,
from every command that takes one, with the same words."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.exitcodes import ExitCode
from tests.helpers import SAMPLE

runner = CliRunner()
MISSING = "/nonexistent/fhirimg-input"
DOWN = "http://127.0.0.1:9/fhir"  # the discard port: nothing listens, connection refused
FAST = ["--retries", "0", "--timeout", "2"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("codes") / "out"
    result = runner.invoke(
        app, ["convert", str(SAMPLE / "study_b_mr"), "-o", str(out), "-q", "-j", "1"]
    )
    assert result.exit_code == 0, result.output
    return out


def _out(tmp_path: Path) -> list[str]:
    return ["-o", str(tmp_path / "out")]


@pytest.mark.parametrize(
    "args",
    [
        ["convert", MISSING],
        ["push", MISSING, "--server", DOWN],
        ["validate", MISSING],
        ["verify", MISSING],
        ["watch", MISSING, "--once"],
    ],
    ids=lambda a: a[0],
)
def test_a_missing_path_is_3_everywhere(args: list[str], tmp_path: Path) -> None:
    extra = _out(tmp_path) if args[0] in ("convert", "watch") else []
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == ExitCode.CANNOT_START, result.output
    assert "no such file or folder" in result.output
    assert MISSING in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["convert", "{sample}", "--push", "ftp://x/fhir"],
        ["push", "{bundles}", "--server", "ftp://x/fhir"],
        ["validate", "{bundles}", "--server", "ftp://x/fhir"],
        ["verify", "--server", "ftp://x/fhir"],
        ["watch", "{sample}", "--once", "--push", "ftp://x/fhir"],
        ["listen", "--push", "ftp://x/fhir"],
    ],
    ids=lambda a: a[0],
)
def test_a_url_that_is_not_http_is_2_everywhere(
    args: list[str], bundles: Path, tmp_path: Path
) -> None:
    values = {"sample": str(SAMPLE / "study_b_mr"), "bundles": str(bundles)}
    extra = _out(tmp_path) if args[0] in ("convert", "watch") else []
    result = runner.invoke(app, [*(a.format(**values) for a in args), *extra])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "ftp://x/fhir" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["convert", "{sample}", "--push", DOWN, *FAST, "-j", "1"],
        ["push", "{bundles}", "--server", DOWN, *FAST],
        ["validate", "{bundles}", "--server", DOWN, "-j", "1"],
        ["verify", "--server", DOWN, *FAST],
        ["watch", "{sample}", "--once", "--push", DOWN, *FAST],
    ],
    ids=lambda a: a[0],
)
def test_an_unreachable_server_is_3_everywhere(
    args: list[str], bundles: Path, tmp_path: Path
) -> None:
    values = {"sample": str(SAMPLE / "study_b_mr"), "bundles": str(bundles)}
    extra = _out(tmp_path) if args[0] in ("convert", "watch") else []
    result = runner.invoke(app, [*(a.format(**values) for a in args), *extra, "-q"])
    assert result.exit_code == ExitCode.CANNOT_START, result.output
    assert "127.0.0.1:9" in result.output
