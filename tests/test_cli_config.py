"""Settings from ``fhirimg.toml`` / ``--config`` and ``FHIRIMG_*`` variables, the same for every
command (fhirimg.cli._config). Precedence: command line > environment > config file > default.

The values chosen are ones a command reports back (an unknown time zone, an unreachable server
URL, a missing token file), so each test sees which source won without a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.cli._config import SETTINGS
from tests.helpers import SAMPLE

runner = CliRunner()

BUNDLE = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:0b0e3c1a-0000-4000-8000-000000000001",
            "resource": {"resourceType": "Patient", "id": "p1"},
            "request": {"method": "PUT", "url": "Patient/p1"},
        }
    ],
}


def _toml(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def _run(args: list[str], env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, args, env=env)


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder of the test's own (where fhirimg.toml is looked for)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def bundles(tmp_path: Path) -> Path:
    folder = tmp_path / "bundles"
    folder.mkdir()
    (folder / "one.json").write_text(json.dumps(BUNDLE), encoding="utf-8")
    return folder


def test_timezone_precedence_cli_env_file_default(cwd: Path) -> None:
    convert = ["convert", str(SAMPLE / "study_b_mr"), "-o", str(cwd / "out"), "-q", "-j", "1"]
    # No file, no env: the default (no time zone) converts.
    assert _run(convert).exit_code == 0
    _toml(cwd / "fhirimg.toml", 'timezone = "File/Zone"\n')
    from_file = _run(convert)
    assert from_file.exit_code == 2, from_file.output
    assert "'File/Zone'" in from_file.output
    env = {"FHIRIMG_TIMEZONE": "Env/Zone"}
    from_env = _run(convert, env)
    assert from_env.exit_code == 2
    assert "'Env/Zone'" in from_env.output
    from_cli = _run([*convert, "--timezone", "Cli/Zone"], env)
    assert from_cli.exit_code == 2
    assert "'Cli/Zone'" in from_cli.output


def test_server_precedence_for_push(cwd: Path, bundles: Path) -> None:
    push = ["push", str(bundles), "--retries", "0", "--timeout", "2"]
    _toml(cwd / "fhirimg.toml", 'server = "http://127.0.0.1:9/file"\n')
    from_file = _run(push)
    assert from_file.exit_code == 3, from_file.output
    assert "127.0.0.1:9/file" in from_file.output
    env = {"FHIRIMG_SERVER": "http://127.0.0.1:9/env"}
    assert "127.0.0.1:9/env" in _run(push, env).output
    from_cli = _run([*push, "--server", "http://127.0.0.1:9/cli"], env)
    assert "127.0.0.1:9/cli" in from_cli.output
    assert "/env" not in from_cli.output


def test_command_table_over_shared_keys_and_explicit_config(tmp_path: Path, bundles: Path) -> None:
    config = _toml(
        tmp_path / "elsewhere.toml",
        'server = "http://127.0.0.1:9/shared"\n[push]\nserver = "http://127.0.0.1:9/own"\n',
    )
    push = ["push", str(bundles), "--retries", "0", "--config", str(config)]
    result = _run(push)
    assert result.exit_code == 3, result.output
    assert "127.0.0.1:9/own" in result.output
    by_env = _run(push[:-2], {"FHIRIMG_CONFIG": str(config)})
    assert "127.0.0.1:9/own" in by_env.output


def test_paths_in_the_file_are_relative_to_it(tmp_path: Path, bundles: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    config = _toml(
        folder / "fhirimg.toml",
        'server = "http://127.0.0.1:9/fhir"\ntoken_file = "secrets/fhir-token"\n',
    )
    result = _run(["push", str(bundles), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert f"{folder / 'secrets' / 'fhir-token'}" in result.output


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('servr = "http://x"\n', "unknown key 'servr'"),
        ("[pusj]\njobs = 2\n", "[pusj] is not a command"),
        ("[push]\nlayers = 'all'\n", "[push] has no option --layers"),
        ("server = [\n", "not valid TOML"),
        ('patient_id_system = 5\n[push]\nserver = ["a", "b"]\n', "server takes one value"),
    ],
)
def test_a_bad_file_is_a_usage_error(cwd: Path, bundles: Path, text: str, words: str) -> None:
    _toml(cwd / "fhirimg.toml", text)
    result = _run(["push", str(bundles)])
    assert result.exit_code == 2, result.output
    assert words in result.output


def test_a_token_in_a_file_others_can_read_is_refused(cwd: Path, bundles: Path) -> None:
    secret = "tok-SECRET-in-config"
    text = f'server = "http://127.0.0.1:9/fhir"\ntoken = "{secret}"\n'
    _toml(cwd / "fhirimg.toml", text, 0o644)
    result = _run(["push", str(bundles), "--retries", "0"])
    assert result.exit_code == 2, result.output
    assert "other users can read it" in result.output
    assert secret not in result.output
    _toml(cwd / "fhirimg.toml", text, 0o640)  # the group: a warning, and the token is used
    grouped = _run(["push", str(bundles), "--retries", "0"])
    assert grouped.exit_code == 3, grouped.output
    assert "its group can read it" in grouped.output
    _toml(cwd / "fhirimg.toml", text, 0o600)
    private = _run(["push", str(bundles), "--retries", "0"])
    assert private.exit_code == 3, private.output
    # A token from the file is not one typed on the command line: no "visible in ps" warning.
    assert "visible to other local users" not in private.output
    assert "can read it" not in private.output


def test_shared_keys_do_not_switch_on_what_they_do_not_mean(cwd: Path, bundles: Path) -> None:
    """A server and OAuth2 settings meant for push leave `validate` local, and `verify FILES`
    checks the files."""
    _toml(
        cwd / "fhirimg.toml",
        'server = "http://127.0.0.1:9/fhir"\ntoken_url = "http://127.0.0.1:9/token"\n'
        'client_id = "fhirimg"\n',
    )
    validated = _run(["validate", str(bundles), "-q", "-j", "1"])
    assert validated.exit_code in (0, 1), validated.output
    assert "127.0.0.1:9" not in validated.output
    verified = _run(["verify", str(bundles), "-q", "--json"])
    assert "127.0.0.1:9" not in verified.output
    assert "give --server" not in verified.output
    assert verified.exit_code != 2, verified.output


def test_every_setting_has_its_variable_on_every_command_with_the_option() -> None:
    import typer.main

    from fhirimg.cli._app import load_commands

    load_commands()
    group = typer.main.get_command(app)
    commands: dict[str, Any] = getattr(group, "commands", {})
    seen = set()
    for name, command in commands.items():
        params = {p.name: p for p in command.params}
        assert "config" in params, name
        for setting in SETTINGS:
            param = params.get(setting.key)
            if param is None or (name, setting.key) == ("validate", "server"):
                continue
            seen.add(setting.key)
            assert param.envvar == setting.env, (name, setting.key)
    assert seen == {s.key for s in SETTINGS}, "a setting no command has"
