"""The DIMSE pieces that need no PACS: addresses, AE titles, file names, a missing pynetdicom."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.dimse import PacsAddress, check_ae_title
from fhirimg.dimse.storage import instance_name, write_instance
from fhirimg.errors import ConfigError

runner = CliRunner()


@pytest.mark.parametrize(
    "text", ["", "PACS", "PACS@host", "@host:104", "PACS@:104", "PACS@h:0", "PACS@h:x", "A\\B@h:1"]
)
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        PacsAddress.parse(text)


def test_address_round_trip() -> None:
    address = PacsAddress.parse("MY PACS@10.0.0.1:11112")
    assert (address.aet, address.host, address.port) == ("MY PACS", "10.0.0.1", 11112)
    assert PacsAddress.parse(str(address)) == address
    assert address.url() == "dicom://MY PACS@10.0.0.1:11112"


def test_ae_titles() -> None:
    assert check_ae_title("FHIRIMG") == "FHIRIMG"
    for bad in (" ", "A" * 17, "A\tB", "Ä"):
        with pytest.raises(ConfigError):
            check_ae_title(bad)


def test_received_files_are_named_safely_and_owner_only(tmp_path: Path) -> None:
    path = write_instance(tmp_path / "store", "1.2.3", b"DICM")
    assert path == tmp_path / "store" / "1.2.3.dcm"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700
    hostile = write_instance(tmp_path / "store", "../../x", b"DICM")
    assert hostile.parent == tmp_path / "store"
    assert instance_name("1.2." + "3" * 70).startswith("bad-")  # longer than 64: not a UID


def test_without_pynetdicom_the_message_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def missing(name: str, *args: object) -> object:
        return None if name == "pynetdicom" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    result = runner.invoke(app, ["convert", "--from-pacs", "PACS@h:104", "-o", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "install fhirimg[dimse]" in result.output


def test_help_and_other_commands_do_not_import_pynetdicom() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fhirimg.cli import app\n"
        "for cmd in ([], ['convert'], ['push'], ['verify'], ['validate']):\n"
        "    r = CliRunner().invoke(app, [*cmd, '--help'])\n"
        "    assert r.exit_code == 0, r.output\n"
        "assert 'pynetdicom' not in sys.modules, 'pynetdicom imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
