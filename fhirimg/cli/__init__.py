"""The ``fhirimg`` command line.

Each ``*_cmd`` module registers its command on ``app`` when imported; the command group imports it
when the command is used (:data:`fhirimg.cli._app.COMMAND_MODULES`: add a new command there).

``app`` is imported on first use too (module ``__getattr__``): the console script imports this
package before :func:`main` runs, and a Ctrl-C during the imports of typer and rich must already
find :func:`main`'s handler (one line, exit 130), not print a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from fhirimg.exitcodes import ExitCode

if TYPE_CHECKING:
    from fhirimg.cli._app import app


def main() -> None:
    """Entry point of the ``fhirimg`` console script.

    Bad input and unusable servers are reported by the commands themselves with their exit
    codes. What is left is a bug in fhirimg: it gets one line, exit code 70 (EX_SOFTWARE), and
    the traceback only when FHIRIMG_DEBUG=1 asks for it (tracebacks can carry patient data).
    Ctrl-C wherever it lands: one line saying so, exit 130.
    """
    try:
        from fhirimg.cli._app import app, err_console, say_interrupted

        app.pretty_exceptions_enable = os.environ.get("FHIRIMG_DEBUG") == "1"
        app()
    except KeyboardInterrupt:
        _say_interrupted()
        sys.exit(int(ExitCode.INTERRUPTED))
    except SystemExit as exc:
        if exc.code == int(ExitCode.INTERRUPTED):  # typer's own exit on Ctrl-C says nothing
            say_interrupted()
        raise
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


def _say_interrupted() -> None:
    """:func:`fhirimg.cli._app.say_interrupted`, or its words when the interrupt came before that
    module was imported."""
    module = sys.modules.get("fhirimg.cli._app")
    if module is not None and hasattr(module, "say_interrupted"):
        module.say_interrupted()
        return
    sys.stderr.write("interrupted: run the same command again to continue where it stopped\n")


def __getattr__(name: str) -> Any:
    if name == "app":
        from fhirimg.cli._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
