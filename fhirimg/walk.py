"""Walk input folders and tell, from ``stat`` alone, what each path is.

This is the part of reading input that needs no DICOM library: an incremental run over an unchanged
tree (:mod:`fhirimg.convert` with its catalog) walks and stats every file and reads none, so it
imports this module and never pydicom, numpy or Pillow (issue 19: a nightly re-run pays for what it
does). :mod:`fhirimg.scan` reads the files this walk yields.

The walk (:func:`iter_files`) is iterative (a tree thousands of folders deep is fine), follows
symbolic links to folders once each (loops are detected by the folders' (st_dev, st_ino)), and
yields every path it could not walk instead of dropping it, so that the reader reports it with its
reason: a folder that cannot be listed, a path longer than PATH_MAX, a dangling link, a link loop.
Only regular files are opened (:func:`open_regular`): a FIFO, a socket or a device would block the
read (or never end), so each is reported as skipped, unopened (:func:`not_a_file`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fhirimg.model import FileProblem, FileStatus


def iter_files(paths: Iterable[str | Path], exclude: Iterable[Path] = ()) -> Iterator[str]:
    """Yield every file under ``paths`` (files as given, folders walked), in a stable order:
    each folder's files by name, then its subfolders by name, so the same tree always yields the
    same sequence. Folders in ``exclude`` (fhirimg's own output, for instance) are not entered.

    Symbolic links to folders are followed after the real folders of the tree, each folder once:
    a link to a folder already walked (a loop back to a parent, or a second way to one folder) is
    not entered again. The walk keeps its own stack, so its depth is limited by nothing but the
    file system.

    Nothing is dropped silently: a path that does not exist, a folder that cannot be listed
    (permission denied, a path longer than PATH_MAX), a dangling link, a link loop, and a folder
    not walked twice are yielded too, so that :func:`~fhirimg.scan.read_file` reports each with its reason.
    Devices, FIFOs and sockets are yielded like files; :func:`~fhirimg.scan.read_file` skips them unopened.
    """
    skip = set()  # excluded folders by (st_dev, st_ino): no path arithmetic, bind mounts too
    for p in exclude:
        try:
            st = os.stat(p)
        except OSError:
            continue  # not there (yet): nothing to walk into
        skip.add((st.st_dev, st.st_ino))
    walked: set[tuple[int, int]] = set()  # (st_dev, st_ino) of every folder entered
    given: set[tuple[int, int]] = set()  # ... of the folders given as inputs
    for path in (os.fspath(p) for p in paths):
        try:
            st = os.stat(path)
        except OSError:
            yield path  # gone, dangling, a loop, too long: read_file says which
            continue
        if not stat.S_ISDIR(st.st_mode):
            yield path
            continue
        key = (st.st_dev, st.st_ino)
        given.add(key)
        if key in walked:
            continue  # given twice, or inside a folder given before: its files are out already
        yield from _walk(path, key, walked, given, skip)


def _walk(
    top: str,
    key: tuple[int, int],
    walked: set[tuple[int, int]],
    given: set[tuple[int, int]],
    skip: set[tuple[int, int]],
) -> Iterator[str]:
    """Walk one input folder without recursion (see :func:`iter_files`)."""
    walked.add(key)
    stack = [top]  # folders to list, the next on top
    links: deque[str] = deque()  # links to folders, followed once the real tree is walked
    while stack or links:
        if not stack:
            link = links.popleft()
            try:
                st = os.stat(link)
            except OSError:
                yield link  # changed since it was listed: read_file says what it is now
                continue
            key = (st.st_dev, st.st_ino)
            if key in skip:
                continue
            if key in walked:
                yield link  # a loop, or a second way to one folder: reported, not walked
                continue
            walked.add(key)
            stack.append(link)
            continue
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError:
            yield folder  # cannot be listed: read_file says why
            continue
        folders: list[str] = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif entry.is_symlink() and entry.is_dir():
                    links.append(entry.path)
                else:
                    yield entry.path  # files, links to files, dangling links, FIFOs, ...
            except OSError:
                yield entry.path
        for sub in reversed(folders):  # popped in name order
            try:
                st = os.lstat(sub)
            except OSError:
                yield sub
                continue
            key = (st.st_dev, st.st_ino)
            if key in skip:
                continue
            if key in walked:  # a bind mount of a folder walked already
                if key not in given:
                    yield sub
                continue
            walked.add(key)
            stack.append(sub)


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_a_file(path: str) -> FileProblem | None:
    """Why ``path`` is not read as a file (None: it is a regular file, or a link to one).

    Decided from stat alone, never by opening: opening a FIFO blocks until a writer comes, a
    device may have side effects. A folder reaches :func:`~fhirimg.scan.read_file` only when the walk could not
    or would not enter it (:func:`iter_files`); :func:`_folder_problem` tells why.
    """
    st = os.stat(path)  # follows links: a link is what it points to (OSError: os_problem)
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return _folder_problem(path)
    return skipped_kind(path, _kind(st.st_mode))


def skipped_kind(path: str, kind: str) -> FileProblem:
    return FileProblem(path, FileStatus.SKIPPED, f"{kind}, not a file: not opened")


def _folder_problem(path: str) -> FileProblem:
    """A folder the walk yielded instead of entering: one it cannot list, or one it walks once
    only (a link loop, a second way to the same folder)."""
    try:
        with os.scandir(path):
            pass
    except OSError as exc:
        return FileProblem(path, FileStatus.FAILED, f"folder cannot be read: {_strerror(exc)}")
    if os.path.islink(path):
        target = os.path.realpath(path)
        parent = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        if parent == target or parent.startswith(target.rstrip(os.sep) + os.sep):
            return FileProblem(
                path,
                FileStatus.SKIPPED,
                f"symbolic link loop: links back to {target}, a folder above it; not followed",
            )
        return FileProblem(
            path,
            FileStatus.SKIPPED,
            f"link to a folder read through another path ({target}); not read twice",
        )
    return FileProblem(
        path, FileStatus.FAILED, "is a directory, not a file (a folder reached twice is read once)"
    )


def os_problem(path: str, exc: OSError) -> FileProblem:
    """The reason an OSError gives, in words a person can act on."""
    if exc.errno == errno.ENOENT and os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:  # gone meanwhile
            target = "?"
        return FileProblem(
            path, FileStatus.FAILED, f"dangling symbolic link: its target {target} does not exist"
        )
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return FileProblem(path, FileStatus.FAILED, "no such file")
    if exc.errno == errno.ELOOP:
        return FileProblem(path, FileStatus.FAILED, "symbolic link loop: links that never end")
    if exc.errno == errno.ENAMETOOLONG:
        return FileProblem(
            path,
            FileStatus.FAILED,
            f"path longer than the system allows (PATH_MAX {_path_max()} bytes): cannot be opened",
        )
    return FileProblem(path, FileStatus.FAILED, _strerror(exc))


def _strerror(exc: OSError) -> str:
    """``permission denied``, ``is a directory``, ...: the system's message, lower case."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _path_max() -> int:
    try:
        return os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError):
        return 4096


class NotRegular(Exception):
    """The path stopped being a regular file between stat and open (its kind, for the reason)."""


@contextmanager
def open_regular(path: str) -> Iterator[tuple[BinaryIO, int]]:
    """Open ``path`` for reading only if it is (still) a regular file; ``(file, size)``.

    O_NONBLOCK makes open() return at once should the path have become a FIFO since it was
    stat'ed (it means nothing for a regular file), and fstat on the open descriptor closes that
    race: what is read is what was checked.
    """
    flags = os.O_RDONLY
    for name in ("O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC"):  # POSIX; not on Windows
        flags |= getattr(os, name, 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(_kind(st.st_mode))
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh, st.st_size
