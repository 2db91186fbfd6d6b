"""jsonio: the one serialisation of every file fhirimg writes, and writes that are all or nothing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhirimg import jsonio

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def test_canonical_bytes() -> None:
    """Insertion order kept (resourceType first, not sorted), two-space indent, UTF-8 text rather
    than \\u escapes, one final newline: golden files and re-runs depend on these exact bytes."""
    resource = {"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Zoë"]}]}
    expected = (
        "{\n"
        '  "resourceType": "Patient",\n'
        '  "name": [\n'
        "    {\n"
        '      "family": "Müller",\n'
        '      "given": [\n'
        '        "Zoë"\n'
        "      ]\n"
        "    }\n"
        "  ]\n"
        "}\n"
    ).encode()
    assert jsonio.dumps(resource) == expected
    assert jsonio.dumps({"b": 1, "a": 2}) != jsonio.dumps({"a": 2, "b": 1})


@given(value=JSON_VALUES)
def test_round_trip_and_stable(value: object) -> None:
    data = jsonio.dumps(value)
    assert data.endswith(b"\n")
    assert not data.endswith(b"\n\n")
    assert jsonio.loads(data) == value
    assert jsonio.loads(data.decode()) == value
    assert jsonio.dumps(jsonio.loads(data)) == data


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "bundle.json"  # the folder is created
    jsonio.atomic_write(path, b"old\n")
    with jsonio.atomic_writer(path) as fh:
        fh.write(b"new, ")
        assert path.read_bytes() == b"old\n"  # readers still see the old file mid-write
        fh.write(b"complete\n")
    assert path.read_bytes() == b"new, complete\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["bundle.json"]  # no temp left


def write_then_fail(path: Path, error: BaseException, durable: bool = False) -> None:
    """Start an atomic write and fail in the middle of it (an error, or Ctrl-C)."""
    with jsonio.atomic_writer(path, durable) as fh:
        fh.write(b"half")
        raise error


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    jsonio.atomic_write(path, b"old\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        write_then_fail(path, RuntimeError("interrupted"))
    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle.json"]


def test_failed_first_write_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    with pytest.raises(KeyboardInterrupt):
        write_then_fail(path, KeyboardInterrupt(), durable=True)
    assert list(tmp_path.iterdir()) == []


def test_written_file_is_owner_only(tmp_path: Path) -> None:
    """Output holds patient data: 0600 whatever the umask (mkstemp's mode, kept), 0640 when
    asked for group-readable output; folders made on the way 0700 / 0750."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "new" / "bundle.json"
        jsonio.atomic_write(path, b"{}\n", durable=True)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        shared = tmp_path / "shared" / "bundle.json"
        jsonio.atomic_write(shared, b"{}\n", mode=jsonio.GROUP_READABLE)
        assert stat.S_IMODE(shared.stat().st_mode) == 0o640
        assert stat.S_IMODE(shared.parent.stat().st_mode) == 0o750
    finally:
        os.umask(old)
    assert path.read_bytes() == b"{}\n"
