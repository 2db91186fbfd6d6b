"""Golden folders for whole ``fhirimg convert`` runs over sample_data: R5, and R4 with pixels.

``tests/golden/sample`` (in test_convert.py) pins the default R4 run. These pin two more, through
the CLI, so that a field silently dropped by a model, a release module or an image writer fails a
test instead of passing:

* ``r5``: ``--fhir-version r5 --dicomweb-url ... --media --media-per series`` (R5 ImagingStudy,
  Endpoint, DocumentReference);
* ``binary-inline-media``: ``--binary inline --media`` (R4 Binary with the DICOM bytes, Media).

Rendered PNG bytes depend on the zlib that Pillow was built with (its wheels have changed zlib
implementations), not only on fhirimg, so the comparison does not pin them: each rendered image's
``data`` is replaced by a digest of its *decoded pixels* (mode, size, SHA-256 of the pixel bytes),
and its ``size`` and ``hash`` are checked against the actual bytes, then replaced by a marker. The
golden files store that form. Binary ``data`` (the DICOM files' own bytes) is kept as is; the whole
sample's inline golden is about 250 kB.

Regenerate with ``FHIRIMG_UPDATE_GOLDEN=1`` after a deliberate change, and read the diff.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from fhirimg import jsonio
from fhirimg.cli import app
from fhirimg.folderlock import STATE_DIR
from tests.helpers import GOLDEN, REPO, load, report_bytes

DICOMWEB = "http://pacs.example.org/dicom-web"
RUNS = {
    "r5": [
        "--fhir-version",
        "r5",
        "--dicomweb-url",
        DICOMWEB,
        "--media",
        "--media-per",
        "series",
    ],
    "binary-inline-media": ["--binary", "inline", "--media"],
}


def pixels_digest(data: bytes) -> str:
    """What a rendered image shows, independent of how it was compressed."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        pixels = hashlib.sha256(image.tobytes()).hexdigest()
        return f"{image.format} {image.mode} {image.width}x{image.height} pixels-sha256:{pixels}"


def stable(value: Any) -> Any:
    """``value`` with every rendered image attachment (contentType image/*, inline data) in its
    compression-independent form; ``size`` and ``hash`` must match the data they replace."""
    if isinstance(value, list):
        return [stable(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: stable(v) for k, v in value.items()}
    if str(out.get("contentType", "")).startswith("image/") and "data" in out:
        raw = base64.b64decode(out["data"])
        if "size" in out:
            assert int(out["size"]) == len(raw), "Attachment.size is not the size of data"
            out["size"] = "<len(data): checked>"
        if "hash" in out:
            sha1 = base64.b64encode(hashlib.sha1(raw).digest()).decode()
            assert out["hash"] == sha1, "Attachment.hash is not the SHA-1 of data"
            out["hash"] = "<sha1(data): checked>"
        out["data"] = pixels_digest(raw)
    return out


def run(out: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Convert sample_data with ``args``; the output files in their stable form, by name."""
    monkeypatch.chdir(REPO)  # relative input paths keep report.json free of the checkout path
    result = CliRunner().invoke(
        app, ["convert", "sample_data/dicom", "-o", str(out), "-j", "1", "-q", *args]
    )
    # 1: sample_data holds a truncated file on purpose (reported as failed).
    assert result.exit_code == 1, result.output
    got = {
        p.name: jsonio.dumps(stable(load(p))) for p in sorted(out.iterdir()) if p.suffix == ".json"
    }
    got["report.json"] = report_bytes(out)
    folders = [p for p in out.iterdir() if p.is_dir() and p.name != STATE_DIR]  # STATE_DIR: catalog
    assert not folders, "a folder of Binaries beside: not pinned"
    return got


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = run(tmp_path / name, RUNS[name], monkeypatch)
    target = GOLDEN / name
    if os.environ.get("FHIRIMG_UPDATE_GOLDEN"):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for file_name, data in got.items():
            (target / file_name).write_bytes(data)
    expected = {p.name: p.read_bytes() for p in sorted(target.iterdir())}
    assert sorted(got) == sorted(expected)
    for file_name, data in got.items():
        assert data == expected[file_name], f"{file_name} differs from tests/golden/{name}/"


def test_golden_runs_cover_what_they_claim() -> None:
    """The golden folders hold the resources they are there to pin (a regenerated folder that
    lost them would otherwise pass)."""
    kinds: dict[str, set[str]] = {}
    for name in RUNS:
        kinds[name] = {
            entry["resource"]["resourceType"]
            for path in (GOLDEN / name).glob("study-*.json")
            for entry in load(path)["entry"]
        }
    assert kinds["r5"] == {"Patient", "Endpoint", "ImagingStudy", "DocumentReference"}
    assert kinds["binary-inline-media"] == {"Patient", "ImagingStudy", "Binary", "Media"}
    digests = [
        e["resource"]["content"]["data"]
        for p in (GOLDEN / "binary-inline-media").glob("study-*.json")
        for e in load(p)["entry"]
        if e["resource"]["resourceType"] == "Media"
    ]
    assert digests
    assert all(" pixels-sha256:" in d for d in digests)


def test_stable_form_ignores_compression_but_not_pixels() -> None:
    """Two PNG encodings of the same pixels compare equal; one changed pixel does not."""
    image = Image.new("L", (4, 3), 7)
    encoded = []
    for level in (0, 9):
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=level)
        encoded.append(buf.getvalue())
    assert encoded[0] != encoded[1]
    image.putpixel((1, 1), 8)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    encoded.append(buf.getvalue())

    def attachment(data: bytes) -> dict[str, Any]:
        return {
            "contentType": "image/png",
            "data": base64.b64encode(data).decode(),
            "size": len(data),
            "hash": base64.b64encode(hashlib.sha1(data).digest()).decode(),
        }

    forms = [stable({"content": attachment(data)}) for data in encoded]
    assert forms[0] == forms[1]
    assert forms[0] != forms[2]
    wrong = attachment(encoded[0]) | {"size": 1}
    with pytest.raises(AssertionError, match="Attachment.size"):
        stable(wrong)
