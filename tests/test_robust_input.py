"""Bad input never stops a run (issue 11, items 1, 2, 3, 5 and 13).

Every case builds its crafted input here: a Rust decoder panic on an RLE image whose segment
table is corrupted, a bare JPEG dataset that decodes to an odd shape, FIFOs, sockets and devices
in the input, link loops and dangling links, a tree 1,500 folders deep, a path longer than
PATH_MAX, sequences nested thousands of levels deep. ``convert`` runs in a child process with a
time limit (a hang fails the test instead of stopping the suite), and each test asserts: the exit
code is 0 or 1 (never 70), report.json exists, and every input path is in it with a status (and a
reason when it was not converted).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from fhirimg import scan
from fhirimg.errors import RenderError
from fhirimg.images import render
from fhirimg.images.render import is_decoder_panic, render_file
from fhirimg.model import FileProblem, FileStatus, InstanceRecord
from tests.helpers import load, pydicom_file

TIMEOUT = 120  # seconds: far above a normal run, far below "hangs forever"


# --- running convert ---


def _convert(inputs: list[Path], out: Path, *options: str) -> tuple[int, dict[str, Any]]:
    """``fhirimg convert`` in a child process (its own process group, killed on a hang)."""
    cmd = [sys.executable, "-m", "fhirimg", "convert", *map(str, inputs), "-o", str(out), "-q"]
    proc = subprocess.Popen(
        [*cmd, *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes
        proc.communicate()
        pytest.fail(f"convert {' '.join(options)} hung for {TIMEOUT} s")
    text = stderr.decode("utf-8", "replace")
    assert proc.returncode in (0, 1), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    return proc.returncode, load(out / "report.json")


def _files(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in report["files"]}


def _accounted(report: dict[str, Any], paths: list[Path | str]) -> dict[str, dict[str, Any]]:
    """Every path is in the report, with a reason unless it was converted."""
    files = _files(report)
    for path in map(str, paths):
        assert path in files, f"{path} missing from report.json: {sorted(files)}"
        entry = files[path]
        if entry["status"] != "converted":
            assert entry.get("reason"), entry
    return files


def _rendered_failures(report: dict[str, Any]) -> dict[str, str]:
    return {f["path"]: f["reason"] for s in report["studies"] for f in s.get("renderFailures", ())}


# --- crafted files ---


def _dicom(path: Path, name: str | None = None) -> Path:
    """pydicom's CT_small.dcm with UIDs of its own (a study per name)."""
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    seed = name or path.name
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "instance"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def _corrupt_rle(path: Path) -> Path:
    """MR_small_RLE.dcm with its second segment offset moved into the first segment: the first
    segment is cut short, and pylibjpeg-rle's Rust decoder panics (index out of bounds)."""
    raw = bytearray(pydicom_file("MR_small_RLE.dcm").read_bytes())
    at = raw.rfind(b"\xe0\x7f\x10\x00OB")  # (7FE0,0010) Pixel Data, encapsulated
    pos = at + 12  # the Basic Offset Table item
    group, element, length = struct.unpack_from("<HHI", raw, pos)
    assert (group, element) == (0xFFFE, 0xE000)
    pos += 8 + length + 8  # past the offset table and the first fragment's item header
    segments, first, second = struct.unpack_from("<3I", raw, pos)  # the RLE header (PS3.5 G.5)
    assert (segments, first) == (2, 64)
    assert second > 100
    struct.pack_into("<I", raw, pos + 8, 100)
    path.write_bytes(bytes(raw))
    return path


def _odd_jpeg(path: Path) -> Path:
    """SC_rgb_small_odd_jpeg.dcm without its file meta: read as a bare dataset, its JPEG bytes
    decode as native pixels of a shape that is not one frame."""
    ds = pydicom.dcmread(pydicom_file("SC_rgb_small_odd_jpeg.dcm"))
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.preamble = None
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return path


def _element(tag: int, vr: bytes, value: bytes, order: str = "<") -> bytes:
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"SQ", b"UN"):
        return head + b"\0\0" + struct.pack(order + "I", len(value)) + value
    return head + struct.pack(order + "H", len(value)) + value


def _uid(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)


def _deep_sequences(path: Path, levels: int, *, defined: bool, big_endian: bool = False) -> Path:
    """A Secondary Capture header with (0040,0275) nested ``levels`` deep, byte by byte:
    undefined lengths (delimiters) or defined lengths; explicit VR little or big endian."""
    order = ">" if big_endian else "<"
    syntax = "1.2.840.10008.1.2.2" if big_endian else "1.2.840.10008.1.2.1"
    sop_class, sop = "1.2.840.10008.5.1.4.1.1.7", generate_uid(entropy_srcs=[path.name])
    meta = (
        _element(0x00020001, b"OB", b"\0\1")
        + _element(0x00020002, b"UI", _uid(sop_class))
        + _element(0x00020003, b"UI", _uid(sop))
        + _element(0x00020010, b"UI", _uid(syntax))
    )
    meta = _element(0x00020000, b"UL", struct.pack("<I", len(meta))) + meta

    def delimiter(element: int, length: int) -> bytes:
        return struct.pack(order + "HHI", 0xFFFE, element, length)

    seq_tag = struct.pack(order + "HH", 0x0040, 0x0275) + b"SQ\0\0"
    if defined:
        nested = b""
        for _ in range(levels):
            item = delimiter(0xE000, len(nested)) + nested
            nested = seq_tag + struct.pack(order + "I", len(item)) + item
    else:
        undefined = struct.pack(order + "I", 0xFFFFFFFF)
        opening = seq_tag + undefined + delimiter(0xE000, 0xFFFFFFFF)
        closing = delimiter(0xE00D, 0) + delimiter(0xE0DD, 0)
        nested = opening * levels + closing * levels
    study = generate_uid(entropy_srcs=[path.name, "study"])
    dataset = (
        _element(0x00080016, b"UI", _uid(sop_class), order)
        + _element(0x00080018, b"UI", _uid(sop), order)
        + _element(0x00080060, b"CS", b"OT", order)
        + _element(0x0020000D, b"UI", _uid(study), order)
        + _element(0x0020000E, b"UI", _uid(generate_uid(entropy_srcs=[path.name, "series"])), order)
        + nested
    )
    path.write_bytes(b"\0" * 128 + b"DICM" + meta + dataset)
    return path


# --- 1. a Rust decoder panic fails the image, not the run ---


def test_corrupted_rle_is_a_render_failure(tmp_path: Path) -> None:
    bad = _corrupt_rle(tmp_path / "rle.dcm")
    with pytest.raises(RenderError, match="decoder panicked"):
        render_file(str(bad))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_decoder_panic_never_kills_the_run(tmp_path: Path, jobs: str) -> None:
    src = tmp_path / "in"
    good = _dicom(src / "good.dcm")
    bad = _corrupt_rle(src / "rle.dcm")
    code, report = _convert([src], tmp_path / "out", "--media", "-j", jobs)
    assert code == 1  # an image not rendered is a failure to see, not a crash
    files = _accounted(report, [good, bad])
    assert files[str(good)]["status"] == "converted"
    assert files[str(bad)]["status"] == "converted"  # its study is written without the image
    failures = _rendered_failures(report)
    assert "decoder panicked" in failures[str(bad)]
    assert str(good) not in failures
    assert report["summary"]["studies"] == {"total": 2, "written": 2, "failed": 0}


def test_only_decoder_panics_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    panic = type("PanicException", (BaseException,), {"__module__": "pyo3_runtime"})
    assert is_decoder_panic(panic("boom"))
    assert not is_decoder_panic(KeyboardInterrupt())
    assert not is_decoder_panic(SystemExit(1))

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pydicom.pixels.utils.pixel_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        render_file(str(pydicom_file("CT_small.dcm")))

    def panics(*args: object, **kwargs: object) -> None:
        raise panic("index out of bounds")

    monkeypatch.setattr("pydicom.pixels.utils.pixel_array", panics)
    with pytest.raises(RenderError, match="decoder panicked: index out of bounds"):
        render_file(str(pydicom_file("CT_small.dcm")))


# --- 2. an odd pixel shape fails the image, not the study ---


def test_odd_shape_is_not_rendered_but_the_study_converts(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    odd = _odd_jpeg(src / "odd.dcm")
    good = _dicom(src / "good.dcm")
    with pytest.raises(RenderError, match="not one rows x columns x 3 frame"):
        render_file(str(odd))
    code, report = _convert([src], tmp_path / "out", "--media")
    assert code == 1
    files = _accounted(report, [odd, good])
    assert files[str(odd)]["status"] == "converted"
    assert "cannot render pixel data" in _rendered_failures(report)[str(odd)]
    assert report["summary"]["studies"]["failed"] == 0


def test_pillow_failure_is_a_render_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuses(*args: object, **kwargs: object) -> None:
        raise TypeError("Cannot handle this data type")

    monkeypatch.setattr("PIL.Image.fromarray", refuses)
    with pytest.raises(RenderError, match="TypeError: Cannot handle this data type"):
        render_file(str(pydicom_file("CT_small.dcm")))
    assert render.FORMATS  # the module is unchanged otherwise


# --- 3. FIFOs, sockets and devices are skipped, never opened ---


def test_fifo_socket_and_device_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = _dicom(src / "good.dcm")
    fifo = src / "fifo.dcm"
    os.mkfifo(fifo)
    given_fifo = tmp_path / "given.fifo"
    os.mkfifo(given_fifo)
    monkeypatch.chdir(src)  # a socket path must be short (108 bytes): bind a relative one
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("socket.dcm")
    zero = src / "zero.dcm"
    zero.symlink_to("/dev/zero")  # opened, it would be read forever
    try:
        code, report = _convert([src, given_fifo], tmp_path / "out", "-j", "2")
    finally:
        sock.close()
    assert code == 0
    files = _accounted(report, [good, fifo, given_fifo, src / "socket.dcm", zero])
    assert files[str(good)]["status"] == "converted"
    for path, kind in (
        (fifo, "FIFO"),
        (given_fifo, "FIFO"),
        (src / "socket.dcm", "socket"),
        (zero, "character device"),
    ):
        assert files[str(path)]["status"] == "skipped"
        assert kind in files[str(path)]["reason"]
        assert "not opened" in files[str(path)]["reason"]


def _unblock(fifo: Path) -> None:
    """Open the FIFO's writing end and close it: a reader blocked in open() gets EOF."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting (ENXIO): nothing was blocked


def test_read_file_never_opens_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    timer = threading.Timer(10, _unblock, [fifo])  # a hang fails the test instead
    timer.start()
    try:
        result = scan.read_file(str(fifo))  # would block forever if it opened the FIFO
    finally:
        timer.cancel()
    assert isinstance(result, FileProblem)
    assert result.status is FileStatus.SKIPPED
    assert result.reason == "a FIFO (named pipe), not a file: not opened"


# --- 5. the walk: links followed once, every error reported, no recursion ---


def test_links_followed_once_and_every_walk_error_reported(tmp_path: Path) -> None:
    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    real = _dicom(src / "real" / "a.dcm")
    outside = _dicom(elsewhere / "study" / "b.dcm")
    (src / "linked").symlink_to(elsewhere / "study")  # a symlinked study folder: followed
    (src / "linked-again").symlink_to(elsewhere / "study")  # the same folder: read once
    (src / "real" / "up").symlink_to(src)  # a loop back to the top
    (src / "self.dcm").symlink_to(src / "self.dcm")  # a link to itself (ELOOP)
    (src / "dangling.dcm").symlink_to(tmp_path / "gone.dcm")
    code, report = _convert([src], tmp_path / "out")
    assert code == 1
    via_link = src / "linked" / "b.dcm"
    loop, twice = src / "real" / "up", src / "linked-again"
    files = _accounted(
        report, [real, via_link, loop, twice, src / "self.dcm", src / "dangling.dcm"]
    )
    assert files[str(real)]["status"] == "converted"
    assert files[str(via_link)]["status"] == "converted"
    assert str(outside) not in files
    assert files[str(loop)]["status"] == "skipped"
    assert "symbolic link loop" in files[str(loop)]["reason"]
    assert files[str(twice)]["status"] == "skipped"
    assert "another path" in files[str(twice)]["reason"]
    assert files[str(src / "self.dcm")]["status"] == "failed"
    assert "symbolic link loop" in files[str(src / "self.dcm")]["reason"]
    assert files[str(src / "dangling.dcm")]["status"] == "failed"
    assert "dangling symbolic link" in files[str(src / "dangling.dcm")]["reason"]
    assert len(report["files"]) == 6


def test_walk_order_is_stable_and_links_come_last(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for name in ("b/2", "b/1", "a/x", "top"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"x")
    (src / "0-link").symlink_to(src / "b")  # sorts first, but b is walked as a real folder
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "e").write_bytes(b"x")
    (src / "a" / "ext").symlink_to(tmp_path / "ext")
    walked = list(scan.iter_files([src]))
    expected = ["top", "a/x", "b/1", "b/2", "0-link", "a/ext/e"]
    assert walked == [str(src / p) for p in expected]
    assert list(scan.iter_files([src, src / "b"])) == walked  # a folder given twice: once


def _remove_chain(top: Path, names: list[str]) -> None:
    """Remove a chain of folders bottom up, without recursion (shutil.rmtree recurses)."""
    folders = [str(top)]
    for name in names:
        folders.append(os.path.join(folders[-1], name))
    for folder in reversed(folders[1:]):
        for entry in os.scandir(folder):
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        os.rmdir(folder)


def test_tree_1500_folders_deep(tmp_path: Path) -> None:
    src = tmp_path / "in"
    names = ["d"] * 1500
    folder = str(src)
    os.mkdir(folder)
    for name in names:  # os.makedirs and Path.mkdir(parents=True) recurse per level
        folder = os.path.join(folder, name)
        os.mkdir(folder)
    bottom = Path(folder)
    try:
        deep = _dicom(bottom / "deep.dcm")
        top = _dicom(src / "top.dcm")
        assert list(scan.iter_files([src])) == [str(top), str(deep)]
        code, report = _convert([src], tmp_path / "out")
        assert code == 0
        files = _accounted(report, [deep, top])
        assert files[str(deep)]["status"] == "converted"
    finally:
        _remove_chain(src, names)


def test_path_longer_than_path_max_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = _dicom(src / "good.dcm")
    name = "x" * 200
    data = good.read_bytes()
    fds = [os.open(src, os.O_RDONLY | os.O_DIRECTORY)]
    length = len(str(src))
    first_too_long: str | None = None
    try:
        while length < 4096 + 3 * 201:  # a few folders past PATH_MAX (4096)
            os.mkdir(name, dir_fd=fds[-1])
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
            length += 1 + len(name)
            if first_too_long is None and length >= 4096:
                first_too_long = str(src) + ("/" + name) * (len(fds) - 1)
        fd = os.open("deep.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fds[-1])
        os.write(fd, data)
        os.close(fd)
        code, report = _convert([src], tmp_path / "out")
        assert code == 1
        assert first_too_long is not None
        files = _accounted(report, [good, first_too_long])
        assert files[first_too_long]["status"] == "failed"
        assert "PATH_MAX" in files[first_too_long]["reason"]
    finally:
        if len(fds) > 1:
            os.unlink("deep.dcm", dir_fd=fds[-1])
        while len(fds) > 1:
            os.close(fds.pop())
            os.rmdir(name, dir_fd=fds[-1])
        os.close(fds[0])


def test_folder_that_cannot_be_listed_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root (the test setup) chmod 000 denies nothing: the refusal is simulated.
    src = tmp_path / "in"
    locked = src / "locked"
    locked.mkdir(parents=True)
    good = _dicom(src / "good.dcm")
    real_scandir = os.scandir

    def scandir(path: Any) -> Iterator[os.DirEntry[str]]:
        if os.fspath(path) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert list(scan.iter_files([src])) == [str(good), str(locked)]
    result = scan.read_file(str(locked))
    assert isinstance(result, FileProblem)
    assert result.status is FileStatus.FAILED
    assert result.reason == "folder cannot be read: permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its mode")
def test_folder_without_permission_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "in"
    locked = src / "locked"
    _dicom(locked / "hidden.dcm")
    good = _dicom(src / "good.dcm")
    locked.chmod(0)
    try:
        code, report = _convert([src], tmp_path / "out")
    finally:
        locked.chmod(stat.S_IRWXU)
    assert code == 1
    files = _accounted(report, [good, locked])
    assert files[str(locked)]["reason"] == "folder cannot be read: permission denied"


# --- 13. deep sequences: no recursion limit in the fast parser, a reason from pydicom's ---


@pytest.mark.parametrize("levels", [600, 5000])
@pytest.mark.parametrize("defined", [False, True], ids=["delimited", "defined-length"])
def test_deep_sequences_are_read_by_the_fast_parser(
    tmp_path: Path, levels: int, defined: bool
) -> None:
    path = _deep_sequences(tmp_path / "deep.dcm", levels, defined=defined)
    result = scan.read_file(str(path))
    assert isinstance(result, InstanceRecord), result
    assert result.modality == "OT"


def test_deep_sequences_in_pydicom_fallback_give_a_reason(tmp_path: Path) -> None:
    path = _deep_sequences(tmp_path / "deep.dcm", 600, defined=False, big_endian=True)
    result = scan.read_file(str(path))
    assert isinstance(result, FileProblem)
    assert result.status is FileStatus.FAILED
    assert "sequences nested too deep" in result.reason


def test_deep_sequences_through_convert(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    fast = _deep_sequences(src / "fast.dcm", 5000, defined=False)
    slow = _deep_sequences(src / "slow.dcm", 5000, defined=False, big_endian=True)
    good = _dicom(src / "good.dcm")
    code, report = _convert([src], tmp_path / "out", "-j", "2", "--media")
    assert code == 1
    files = _accounted(report, [fast, slow, good])
    assert files[str(fast)]["status"] == "converted"
    assert files[str(good)]["status"] == "converted"
    assert files[str(slow)]["status"] == "failed"
    assert "sequences nested too deep" in files[str(slow)]["reason"]
