"""Exit codes of the ``fhirimg`` command, shared by every sub-command (documented in docs/cli.md)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    """Everything succeeded: all files converted, no validation errors, all bundles pushed."""
    PARTIAL = 1
    """The run finished but some items failed (files not converted, validation errors, bundles
    refused). The report says which and why."""
    USAGE = 2
    """The command line is wrong (unknown option, missing argument, bad value)."""
    CANNOT_START = 3
    """Nothing could be done: no input found, output not writable, server unreachable."""
    NOTHING_DONE = 4
    """The run worked but found nothing to do: an empty input folder, a query that matched no study,
    a folder with no bundle to push, a verify that checked nothing. Under cron this is worth a look
    (a mount that went missing looks like an empty folder), so it is not 0."""
    INTERNAL = 70
    """A bug in fhirimg (EX_SOFTWARE of sysexits.h): one line on stderr, the traceback only with
    FHIRIMG_DEBUG=1. Please report it."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C; re-running continues where it stopped."""
