"""fhirimg's version, as ``pyproject.toml`` gives it (``project.version``; a test checks they
agree). Read from here rather than from the installed distribution's metadata: importing
:mod:`importlib.metadata` and searching the path for it cost more than the rest of a
``--json`` summary (issue 19), and a source tree without an install knows its version too."""

__version__ = "0.1.0"
