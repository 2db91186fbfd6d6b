"""folderlock: one writer at a time per output folder, released however the holder ends."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhirimg.folderlock import LOCK_NAME, STATE_DIR, FolderLock, FolderLockedError

# A holder in another process: takes the lock, says so, holds it for argv[2] seconds.
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from fhirimg.folderlock import FolderLock

    with FolderLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding the lock of ``tmp_path / "out"`` for a minute (or until killed)."""
    proc = _start_holder(tmp_path / "out", 60)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()


def _start_holder(out: Path, seconds: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out), str(seconds)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"locked\n"
    return proc


def test_second_process_fails_at_once(tmp_path: Path, holder: subprocess.Popen[bytes]) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    with pytest.raises(FolderLockedError) as info:
        FolderLock(out).acquire()
    assert time.monotonic() - started < 2
    message = str(info.value)
    assert str(out) in message
    assert f"PID {holder.pid}" in message
    assert info.value.folder == out
    assert info.value.holder is not None
    assert info.value.holder.pid == holder.pid


def test_second_process_fails_after_the_wait(
    tmp_path: Path, holder: subprocess.Popen[bytes]
) -> None:
    started = time.monotonic()
    with pytest.raises(FolderLockedError, match=r"after waiting 0\.6 s"):
        FolderLock(tmp_path / "out", wait=0.6).acquire()
    assert time.monotonic() - started >= 0.6


def test_waiter_gets_the_lock_when_the_holder_ends(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _start_holder(out, 0.5)
    try:
        with FolderLock(out, wait=60) as lock:
            assert lock.held
            assert proc.wait(timeout=30) == 0  # the holder had finished
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


def test_released_after_kill_9(tmp_path: Path, holder: subprocess.Popen[bytes]) -> None:
    out = tmp_path / "out"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    with FolderLock(out) as lock:  # at once: the OS dropped the dead holder's lock
        assert lock.held
        # The lock file now names this process, not the dead one.
        assert str(os.getpid()).encode() in lock.path.read_bytes()


def test_one_lock_per_folder_in_one_process_too(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with FolderLock(out):
        with pytest.raises(FolderLockedError):
            FolderLock(out).acquire()
        with FolderLock(tmp_path / "another"):  # other folders are independent
            pass
    with FolderLock(out):  # released on leaving the block
        pass


def test_release_is_idempotent_and_empties_the_file(tmp_path: Path) -> None:
    lock = FolderLock(tmp_path / "out").acquire()
    assert lock.acquire() is lock  # already held: nothing more
    path = lock.path
    lock.release()
    lock.release()
    assert not lock.held
    assert path.read_bytes() == b""


def test_lock_file_is_private(tmp_path: Path) -> None:
    with FolderLock(tmp_path / "out") as lock:
        assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(lock.path.parent.stat().st_mode) == 0o700


def test_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / STATE_DIR).mkdir(parents=True)
    target = tmp_path / "victim"
    target.write_bytes(b"keep me")
    (out / STATE_DIR / LOCK_NAME).symlink_to(target)
    with pytest.raises(OSError, match="symbolic link"):
        FolderLock(out).acquire()
    assert target.read_bytes() == b"keep me"


def test_bad_wait() -> None:
    with pytest.raises(ValueError, match="wait"):
        FolderLock("out", wait=-1)
