"""The docs are part of the product: every command and option has help text and a docs entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperCommand, TyperGroup, TyperOption

from fhirimg.cli import app
from fhirimg.cli._app import load_commands

DOCS = Path(__file__).resolve().parent.parent / "docs"
# Where each command is documented (a new command must be added here, with its docs).
COMMAND_DOCS = {
    "convert": "cli.md",
    "deidentify": "deidentify.md",
    "validate": "validate.md",
    "push": "push.md",
    "verify": "dicomweb.md",
    "watch": "cli.md",
    "listen": "cli.md",
}


def _commands() -> dict[str, TyperCommand]:
    load_commands()  # commands are loaded when used; the docs cover them all
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup), "the app has subcommands, so typer gives a group"
    commands: dict[str, TyperCommand] = {}
    for name, command in group.commands.items():
        assert isinstance(command, TyperCommand), f"{name} is a group, not a command"
        commands[name] = command
    return commands


def test_every_command_has_docs() -> None:
    for name in _commands():
        assert name in COMMAND_DOCS, f"command {name!r} has no docs entry in COMMAND_DOCS"
        assert (DOCS / COMMAND_DOCS[name]).is_file(), COMMAND_DOCS[name]


@pytest.mark.parametrize("name", sorted(COMMAND_DOCS))
def test_options_have_help_and_docs(name: str) -> None:
    commands = _commands()
    if name not in commands:
        pytest.fail(f"documented command {name!r} is not registered")
    command = commands[name]
    assert command.help, f"{name} has no help text"
    text = (DOCS / COMMAND_DOCS[name]).read_text(encoding="utf-8")
    for param in command.params:
        if isinstance(param, TyperOption):
            assert param.help, f"{name} {param.opts} has no help text"
            longest = max(param.opts, key=len)
            assert re.search(re.escape(longest) + r"\b", text), (
                f"{name} {longest} missing from docs/{COMMAND_DOCS[name]}"
            )


def test_config_keys_and_variables_are_documented() -> None:
    """Every shared config key and its FHIRIMG_* variable has a row in docs/cli.md."""
    from fhirimg.cli._config import CONFIG_ENV, SETTINGS

    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert "## Configuration" in text
    assert f"`{CONFIG_ENV}`" in text
    for setting in SETTINGS:
        assert f"| `{setting.key}` | `{setting.env}` |" in text, setting.key


def test_readme_links_resolve() -> None:
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)", readme):
        if not target.startswith("http"):
            assert (DOCS.parent / target).exists(), target


@pytest.mark.parametrize("name", sorted(COMMAND_DOCS))
def test_help_is_readable(name: str) -> None:
    """Readable metavars (PATH, URL, N; never typer's <str> or <list[str]>, nor TEXT), one usage style,
    and the command's first sentence whole in `fhirimg --help` (not cut with '...')."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(str|int|float|path|list|bool)", result.output), result.output
    # click's type names say nothing of what to give: every option names its value
    generic = re.findall(r"^ +(-[-\w, ]+?) (TEXT|INTEGER|FLOAT)\b", result.output, re.MULTILINE)
    assert not generic, generic
    assert result.output.startswith("Usage: ")
    assert f" {name} [OPTIONS]" in result.output.splitlines()[0]
    top = CliRunner().invoke(app, ["--help"])
    listed = " ".join(top.output.split("Commands:")[1].split())
    short = _commands()[name].short_help
    assert short
    assert short.endswith(".")
    assert " ".join(short.split()) in listed
    assert "..." not in listed
