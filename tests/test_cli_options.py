"""Option groups shared between commands: the same name means the same help text and default, and
``convert --push`` takes the credentials, TLS and retry options of ``push``."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperOption as Option
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.cli._app import COMMAND_MODULES
from fhirimg.cli._options import DicomwebAuth, FhirAuth, Network, push_options
from tests.helpers import SAMPLE

runner = CliRunner()


def _options(command: str) -> dict[str, Option]:
    importlib.import_module(COMMAND_MODULES[command])  # commands are loaded when used
    group = typer.main.get_command(app)
    params = group.commands[command].params  # type: ignore[attr-defined]
    return {p.name: p for p in params if isinstance(p, Option) and p.name is not None}


@pytest.mark.parametrize(
    ("group", "commands"),
    [
        (FhirAuth, ["push", "convert", "verify", "validate"]),
        (Network, ["push", "convert"]),
        (DicomwebAuth, ["push", "convert", "verify"]),
    ],
)
def test_a_group_is_the_same_on_every_command(group: type, commands: list[str]) -> None:
    for field in dataclasses.fields(group):
        seen = {c: _options(c)[field.name] for c in commands}
        assert len({(o.opts[0], o.help, o.default) for o in seen.values()}) == 1, (field, seen)
        assert next(iter(seen.values())).default == field.default


def test_push_options_from_the_groups() -> None:
    network = Network(ca_bundle=Path("ca.pem"), timeout=7.0, retries=2, backoff=0.25)
    options = push_options("https://fhir.example/r4", FhirAuth(token="t0k"), network, jobs=2)
    assert options.timeout == 7.0
    assert options.retry.max_attempts == 3
    assert options.retry.backoff_base == 0.25
    assert options.verify == Path("ca.pem")
    assert options.jobs == 2
    assert repr(options.auth) == "BearerAuth(token=***)"


def test_convert_push_auth_options_are_checked(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["convert", str(SAMPLE), "-o", str(tmp_path), "--push", "http://127.0.0.1:9/fhir",
         "--token", "a", "--user", "b"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "choose one way to authenticate" in result.output


def test_convert_push_missing_ca_bundle_is_cannot_start(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["convert", str(SAMPLE), "-o", str(tmp_path / "out"), "-q",
         "--push", "https://127.0.0.1:9/fhir", "--ca-bundle", str(tmp_path / "no.pem")],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "CA bundle" in result.output
