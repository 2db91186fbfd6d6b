"""The ``fhirimg`` command line. Importing this package registers every sub-command on ``app``."""

from __future__ import annotations

from fhirimg.cli._app import app

# --- command registration: one import per command module (each registers itself on ``app``) ---
# (kept sorted; add your command module here)
from fhirimg.cli import validate_cmd  # noqa: F401
from fhirimg.cli import convert_cmd  # noqa: F401
from fhirimg.cli import push_cmd  # noqa: F401
from fhirimg.cli import verify_cmd  # noqa: F401
# --- end of command registration ---


def main() -> None:
    """Entry point of the ``fhirimg`` console script."""
    app()


__all__ = ["app", "main"]
