"""The ``fhirimg`` command line. Importing this package registers every sub-command on ``app``.

Each ``*_cmd`` module registers its command on ``app`` when imported; add a new one to the import
below.
"""

from __future__ import annotations

from fhirimg.cli import convert_cmd, push_cmd, validate_cmd, verify_cmd  # noqa: F401
from fhirimg.cli._app import app


def main() -> None:
    """Entry point of the ``fhirimg`` console script."""
    app()


__all__ = ["app", "main"]
