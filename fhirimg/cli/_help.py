"""``--help`` grouped into panels, the way docs/cli.md groups the options, in plain text.

Each option says its group with typer's ``rich_help_panel``; :class:`PanelledCommand` prints one
section per group (``Arguments``, the command's own options, then ``Mapping``, ``Authentication``
..., in the docs' order where the command gives it, else in the order they first appear), titled
like the docs' headings (tests/test_cli_help.py holds the two together).

Plain click sections, not typer's rich help: rich markup would read the square brackets of help
texts (``fhirimg[dimse]``, ``GET [base]/metadata``) as tags and drop them, print ``<str>`` type
columns, draw boxes in a log file and import rich's Markdown stack at every ``--help``. Text is
printed as written. When stdout is not a terminal (a log, a pipe, ``| grep``) nothing is wrapped:
one option, one line.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from typer._click import Context, HelpFormatter, Parameter
from typer.core import TyperCommand

ARGUMENTS = "Arguments"
OPTIONS = "Options"


def panel_of(
    param: Parameter, default: str = OPTIONS, moved: Mapping[str, str] | None = None
) -> str:
    """The help panel ``param`` is printed in: the command's ``moved`` entry for it, its
    ``rich_help_panel``, else ``Arguments`` for an argument and ``default`` (the command's own
    options) for an option."""
    panel = (moved or {}).get(param.name or "") or getattr(param, "rich_help_panel", None)
    if panel:
        return str(panel)
    return ARGUMENTS if param.param_type_name == "argument" else default


def panels(
    command: Any,
    ctx: Context,
    default: str = OPTIONS,
    moved: Mapping[str, str] | None = None,
    order: Sequence[str] = (),
) -> list[tuple[str, list[tuple[str, str]]]]:
    """The help records (``--out, -o DIR``, help text) of ``command`` by panel: arguments first,
    then ``default``, the panels of ``order``, and the others in the order their first option
    comes."""
    grouped: dict[str, list[tuple[str, str]]] = {ARGUMENTS: [], default: []}
    grouped.update((name, []) for name in order)
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            grouped.setdefault(panel_of(param, default, moved), []).append(record)
    return [(name, rows) for name, rows in grouped.items() if rows]


def unwrapped_help(formatter: HelpFormatter) -> None:
    """No wrapping when stdout is not a terminal: a help text in a log stays on its line (every
    command's ``--help`` and ``fhirimg --help``)."""
    if not sys.stdout.isatty():
        formatter.width = 10_000


class PanelledCommand(TyperCommand):
    """A command whose ``--help`` prints its options in their panels (:func:`panels`).

    A command sets in a subclass: ``default_panel``, the title of its own options (those
    without a panel); ``moved``, shared options (by parameter name) it shows in another of its
    panels, where its docs list them (``convert`` shows ``--no-capability-check`` with
    ``--push``); ``panel_order``, the order of the panels after its own (the docs' order).
    """

    default_panel: str = OPTIONS
    moved: Mapping[str, str] = {}
    panel_order: Sequence[str] = ()

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        unwrapped_help(formatter)
        super().format_help(ctx, formatter)

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        """One usage style: ``PATH...`` for a required argument, ``[PATH...]`` for an optional
        one (typer writes a required one ``{PATH...}``, which reads as a choice)."""
        return [
            piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
            for piece in super().collect_usage_pieces(ctx)
        ]

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        for name, rows in panels(self, ctx, self.default_panel, self.moved, self.panel_order):
            with formatter.section(name):
                formatter.write_dl(rows)
