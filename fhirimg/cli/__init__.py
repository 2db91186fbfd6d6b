"""The ``fhirimg`` command line. Importing this package registers every sub-command on ``app``.

Each ``*_cmd`` module registers its command on ``app`` when imported; add a new one to the import
below.
"""

from __future__ import annotations

import os
import sys

from fhirimg.cli import (  # noqa: F401
    convert_cmd,
    listen_cmd,
    push_cmd,
    validate_cmd,
    verify_cmd,
    watch_cmd,
)
from fhirimg.cli._app import app, err_console
from fhirimg.exitcodes import ExitCode


def main() -> None:
    """Entry point of the ``fhirimg`` console script.

    Bad input and unusable servers are reported by the commands themselves with their exit
    codes. What is left is a bug in fhirimg: it gets one line, exit code 70 (EX_SOFTWARE), and
    the traceback only when FHIRIMG_DEBUG=1 asks for it (tracebacks can carry patient data).
    """
    try:
        app.pretty_exceptions_enable = os.environ.get("FHIRIMG_DEBUG") == "1"
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
    except Exception as exc:
        if os.environ.get("FHIRIMG_DEBUG") == "1":
            raise
        err_console.print(
            f"[bold red]internal error[/] ({type(exc).__name__}): please report it; "
            "run again with FHIRIMG_DEBUG=1 for the traceback",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(int(ExitCode.INTERNAL))


__all__ = ["app", "main"]
