"""The CLI's one error edge: ``fail`` prints text as it is, one table gives every exception its exit
code, and a bug is exit 70 with one line and no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fhirimg.cli import app, main
from fhirimg.cli._app import exit_code_for, exit_on_error, fail
from fhirimg.errors import AuthError, ConfigError, InputError, ServerUnreachableError
from fhirimg.exitcodes import ExitCode
from tests.helpers import SAMPLE

runner = CliRunner()


@pytest.mark.parametrize(
    "message",
    [
        "cannot write to /data/[x]/out",
        "server said: [bold]no[/bold]",
        "a lone closing tag [/] and [/red] from a server",
    ],
)
def test_fail_prints_markup_as_is(message: str, capsys: pytest.CaptureFixture[str]) -> None:
    exit_ = fail(message, ExitCode.USAGE)
    assert exit_.exit_code == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"


def test_a_path_with_brackets_reaches_the_user(tmp_path: Path) -> None:
    blocker = tmp_path / "[bold]x[red]"
    blocker.write_text("a file, not a folder")
    result = runner.invoke(app, ["convert", str(SAMPLE), "-q", "--out", str(blocker / "out")])
    assert result.exit_code == 3, result.output
    assert f"cannot write to {blocker / 'out'}" in result.output


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (AuthError("401"), ExitCode.CANNOT_START),
        (ServerUnreachableError("no route"), ExitCode.CANNOT_START),
        (InputError("no bundles"), ExitCode.CANNOT_START),
        (ConfigError("not an http(s) server URL"), ExitCode.USAGE),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (RuntimeError("a bug"), None),
        (ValueError("a bug too"), None),
    ],
)
def test_exit_code_table(exc: BaseException, code: ExitCode | None) -> None:
    assert exit_code_for(exc) == code


def test_a_command_adds_to_the_table() -> None:
    assert exit_code_for(ConfigError("bad --layers"), {ConfigError: ExitCode.USAGE}) == 2
    assert exit_code_for(InputError("x"), {ConfigError: ExitCode.USAGE}) == 3


def test_exit_on_error_leaves_bugs_and_exits_alone() -> None:
    with pytest.raises(RuntimeError), exit_on_error():
        raise RuntimeError("a bug")
    with pytest.raises(typer.Exit) as exited, exit_on_error():
        raise typer.Exit(1)
    assert exited.value.exit_code == 1
    with pytest.raises(typer.Exit) as exited, exit_on_error(message=lambda e: f"at {e}"):
        raise AuthError("[the] server")
    assert exited.value.exit_code == 3


@pytest.mark.parametrize(
    ("target", "argv"),
    [
        ("fhirimg.cli.push_cmd.push_paths", ["push", "--server", "http://127.0.0.1:9/fhir"]),
        ("fhirimg.cli.validate_cmd.iter_validate", ["validate", "x.json"]),
        ("fhirimg.cli.convert_cmd.convert", ["convert", str(SAMPLE)]),
    ],
)
def test_unexpected_exception_is_exit_70_in_one_line(
    target: str,
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bug gets ExitCode.INTERNAL and one line, no traceback (it could carry patient data)."""

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret patient detail [x]")

    monkeypatch.delenv("FHIRIMG_DEBUG", raising=False)
    monkeypatch.setattr(target, boom)
    monkeypatch.setattr(sys, "argv", ["fhirimg", *argv, "-q"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == ExitCode.INTERNAL
    assert exit_info.value.code == 70  # the documented code, not only the enum's name
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("internal error (RuntimeError): please report it")
    assert "Traceback" not in err
    assert "secret patient detail" not in err


def test_deidentify_of_url_inputs_is_refused_before_the_key_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Object inputs are not de-identified: the refusal says so, with or without a key (without
    one, "needs a key" came first and sent the user after the wrong fix)."""
    monkeypatch.delenv("FHIRIMG_DEID_KEY", raising=False)
    args = ["convert", "s3://bucket/study/", "--deidentify", "--out", str(tmp_path / "out"), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == ExitCode.USAGE
    assert "--deidentify reads local files: not with URL inputs" in result.output
    assert "needs a key" not in result.output
    key = tmp_path / "key"
    key.write_text("k" * 32)
    key.chmod(0o600)
    result = runner.invoke(app, [*args, "--deid-key-file", str(key)])
    assert result.exit_code == ExitCode.USAGE
    assert "--deidentify reads local files" in result.output
    assert not (tmp_path / "out").exists()
