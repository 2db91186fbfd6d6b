"""``--help`` as printed: every help text whole (no markup eats ``[base]``), and the options in
the panels docs/cli.md groups them in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.cli._app import load_commands
from fhirimg.cli._help import PanelledCommand

DOCS = Path(__file__).resolve().parent.parent / "docs"
COMMANDS = ["convert", "deidentify", "listen", "push", "validate", "verify", "watch"]
# Documented for every command at once in docs/cli.md's own sections, not in a command's.
SHARED_PANELS = {"Configuration": ("## Logging", "## Configuration")}


def _command(name: str) -> PanelledCommand:
    load_commands()
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    command = group.commands[name]
    assert isinstance(command, PanelledCommand), f"{name}: --help not in panels"
    return command


def _help(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", COMMANDS)
def test_no_help_text_loses_characters(name: str) -> None:
    """Each option's and the command's help text is printed as written, square brackets and all
    (``fhirimg[dimse]``, ``GET [base]/metadata``): nothing is read as markup, nothing cut."""
    printed = _words(_help([name]))
    command = _command(name)
    assert command.help
    assert _words(command.help.partition("\f")[0]) in printed
    for param in command.params:
        text = getattr(param, "help", None)
        if text:
            assert _words(text) in printed, f"{name} {param.opts}: help text changed"


@pytest.mark.parametrize("name", COMMANDS)
def test_usage_line_in_one_style(name: str) -> None:
    """``PATH...`` required, ``[PATH...]`` optional: no typer braces (``{PATH...}``)."""
    usage = _help([name]).splitlines()[0]
    assert "{" not in usage, usage
    assert re.fullmatch(r"Usage: .* [a-z]+ \[OPTIONS\]( \[?[A-Z_]+(\.\.\.)?\]?)*", usage), usage


def test_help_texts_with_brackets_are_covered() -> None:
    """The check above means something: help texts with square brackets exist and print."""
    printed = _words(_help(["convert"])) + _words(_help(["push"]))
    assert "GET [base]/metadata" in printed
    assert "fhirimg[dask]" in printed


def test_help_is_not_wrapped_in_a_log() -> None:
    """Not a terminal (CliRunner, like a log file): one option, one line, even at 80 columns."""
    command = _command("push")
    out = _help(["push"])
    text = next(getattr(p, "help", "") for p in command.params if "--server" in p.opts)
    assert text
    line = next(x for x in out.splitlines() if "--server" in x)
    assert _words(text) in line
    assert len(line) > 80


def _printed_panels(out: str) -> dict[str, str]:
    """Each option (its longest name; ``PATH...`` for the argument) and the panel it is under."""
    panels: dict[str, str] = {}
    title = ""
    for line in out.splitlines():
        if re.match(r"^[A-Z].*:$", line):
            title = _heading(line[:-1])
        elif title and line.startswith("  ") and not line.startswith("   "):
            first = re.split(r"\s{2,}", line.strip())[0]
            names = re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", first)
            if title == "Arguments":
                names = [first.split()[0]]
            for option in names:
                panels[option] = title
    return panels


def _heading(text: str) -> str:
    """A docs heading as a panel title: links and ``(see ...)`` dropped.

    >>> _heading("De-identification (see [deidentify.md](deidentify.md))")
    'De-identification'
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"\s*\([^)]*\)\s*$", "", text)
    return text.replace("`", "").strip()


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: ``#pixels-inside-fhir-see-choosingmd``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^a-z0-9 -]", "", text).replace(" ", "-")


def _tables(section: str) -> list[tuple[str, str, str]]:
    """(group, first cell, meaning) of each table row of a command's section: the group is the
    ### heading above (``Options`` before the first)."""
    rows: list[tuple[str, str, str]] = []
    group = "Options"
    for line in section.splitlines():
        if line.startswith("### "):
            group = _heading(line[4:])
        elif line.startswith("| `"):
            first, meaning = line.split(" | ", 1)
            rows.append((group, first, meaning))
    return rows


def _docs_groups(name: str) -> dict[str, set[str]]:
    """Each option of ``fhirimg NAME``'s tables in docs/cli.md and the groups whose table lists
    it; a row saying ``as for [convert](#x)`` puts its options in convert's group ``x``
    (convert's first group, its own options, is the command's own: ``Options``)."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")

    def section(command: str) -> str:
        return text.split(f"\n## fhirimg {command}\n")[1].split("\n## ")[0]

    anchors = {_anchor(h): _heading(h) for h in re.findall(r"^### (.+)$", text, re.M)}
    own = next(group for group, first, _ in _tables(section("convert")) if "`--" in first)
    anchors[_anchor(own)] = "Options"
    groups: dict[str, set[str]] = {}
    for group, first, meaning in _tables(section(name)):
        link = re.search(r"as for \[`convert`\]\(#([^)]+)\)", meaning)
        here = anchors[link.group(1)] if link else group
        for option in re.findall(r"`(--?[a-z][a-z0-9-]*|[A-Z_]+\.\.\.)", first):
            groups.setdefault(option, set()).add(here)
    return groups


@pytest.mark.parametrize("name", ["convert", "watch", "listen"])
def test_help_panels_match_the_docs_groups(name: str) -> None:
    """Each option docs/cli.md lists for the command is printed in a panel of the same name as
    the group its table is in; each panel printed is a group of the docs."""
    printed = _printed_panels(_help([name]))
    documented = _docs_groups(name)
    assert documented, f"no option table for {name} in docs/cli.md"
    wrong = {
        option: (printed.get(option), sorted(groups))
        for option, groups in documented.items()
        if option.startswith("-") and printed.get(option) not in groups
    }
    assert not wrong, f"{name}: option: (printed in, documented in): {wrong}"
    cli_md = (DOCS / "cli.md").read_text(encoding="utf-8")
    groups = {g for gs in documented.values() for g in gs}
    for panel in set(printed.values()) - groups - {"Arguments"}:
        assert panel in SHARED_PANELS, f"{name}: panel {panel!r} is no group of docs/cli.md"
        assert all(h in cli_md for h in SHARED_PANELS[panel])
