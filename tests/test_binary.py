"""--binary: one Binary per instance, inline or beside, linked from ImagingStudy.series.instance,
bytes that round-trip exactly, deterministic ids, streamed and split bundles."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from fhirimg import ConvertOptions, convert, ids, jsonio
from fhirimg.images.binary import EXTENSION_URL, BinaryMode, binary_id
from fhirimg.push import binaries_beside
from fhirimg.validate import ALL_LAYERS, resource_errors, validate_resource
from tests.helpers import REPO, SAMPLE, load, resources

LEGACY = "sample_data/dicom/study_c_mixed/legacy_no_meta.dcm"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def all_bundles(out: Path) -> dict[str, Any]:
    """Every bundle file, parts included."""
    return {p.name: load(p) for p in sorted(out.glob("study-*.json"))}


def converted_sources(out: Path) -> dict[str, str]:
    """SOP Instance UID -> source path of every converted file (from report.json + headers)."""
    from fhirimg.scan import read_file

    found = {}
    for item in load(out / "report.json")["files"]:
        if item["status"] == "converted":
            rec = read_file(str(REPO / item["path"]))
            found[rec.sop_instance_uid] = str(REPO / item["path"])  # type: ignore[union-attr]
    return found


def errors_of(
    bundle: dict[str, Any], version: str, beside: Path | None = None, name: str = "study.json"
) -> list[str]:
    """Every error the validator finds with all its layers."""
    found = validate_resource(
        bundle, fhir_version=version, layers=ALL_LAYERS, source=name, beside=beside
    )
    return [f"{f.location}: {f.message}" for f in found if f.severity == "error"]


def run(tmp: Path, **kw: Any) -> Path:
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        convert(["sample_data/dicom"], ConvertOptions(out_dir=tmp, jobs=1, **kw))
    finally:
        os.chdir(cwd)
    return tmp


@pytest.fixture(scope="module")
def inline_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("inline"), binary=BinaryMode.INLINE)


@pytest.fixture(scope="module")
def beside_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("beside"), binary=BinaryMode.BESIDE)


def test_inline_bytes_round_trip(inline_out: Path) -> None:
    sources = converted_sources(inline_out)
    seen = set()
    for bundle in all_bundles(inline_out).values():
        for e in bundle["entry"]:
            res = e["resource"]
            if res["resourceType"] != "Binary":
                continue
            data = base64.b64decode(res["data"], validate=True)
            sop = next(s for s in sources if binary_id(s) == res["id"])
            source = Path(sources[sop]).read_bytes()
            if sources[sop].endswith(LEGACY):
                # no preamble / File Meta: a PS3.10 header in front, the dataset bytes unchanged
                assert data[128:132] == b"DICM"
                assert data.endswith(source)
            else:
                assert sha256(data) == sha256(source), sources[sop]
            assert res["contentType"] == "application/dicom"
            assert e["request"] == {"method": "PUT", "url": f"Binary/{res['id']}"}
            assert e["fullUrl"] == f"urn:uuid:{res['id']}"
            seen.add(sop)
    assert seen == set(sources)


def test_inline_links_resolve_to_binary_entries(inline_out: Path) -> None:
    for bundle in all_bundles(inline_out).values():
        by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
        (patient_url,) = [
            e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
        ]
        (study,) = resources(bundle, "ImagingStudy")
        for series in study["series"]:
            for inst in series["instance"]:
                (ext,) = inst["extension"]
                assert ext["url"] == EXTENSION_URL
                ref = ext["valueReference"]["reference"]
                target = by_url[ref]
                assert target["resourceType"] == "Binary"
                assert target["id"] == ids.resource_uuid("Binary", inst["uid"])
                assert target["securityContext"] == {"reference": patient_url}


def test_entry_order(inline_out: Path) -> None:
    for bundle in all_bundles(inline_out).values():
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
        head = [k for k in kinds if k != "Binary"]
        assert head in (["Patient", "ImagingStudy"], ["Patient", "Endpoint", "ImagingStudy"])
        assert kinds[: len(head)] == head


def test_streamed_file_is_the_canonical_serialisation(inline_out: Path) -> None:
    """The streaming writer gives the bytes jsonio.dumps gives for the same bundle."""
    for path in sorted(inline_out.glob("study-*.json")):
        data = path.read_bytes()
        assert jsonio.dumps(jsonio.loads(data)) == data, path.name


def test_inline_bundles_validate(inline_out: Path) -> None:
    for name, bundle in all_bundles(inline_out).items():
        assert resource_errors(bundle, "r4") == [], name
        assert errors_of(bundle, "r4") == [], name


def test_beside_bytes_and_links(beside_out: Path) -> None:
    sources = converted_sources(beside_out)
    linked = set()
    for path in sorted(beside_out.glob("study-*.json")):
        bundle = load(path)
        assert resources(bundle, "Binary") == []  # bytes are beside, not inside
        folder = beside_out / f"{path.stem}.binaries"
        (study,) = resources(bundle, "ImagingStudy")
        for series in study["series"]:
            for inst in series["instance"]:
                (ext,) = inst["extension"]
                bid = binary_id(inst["uid"])
                assert ext == {
                    "url": EXTENSION_URL,
                    "valueReference": {"reference": f"Binary/{bid}"},
                }
                data = (folder / f"{bid}.dcm").read_bytes()
                if not sources[inst["uid"]].endswith(LEGACY):
                    assert sha256(data) == sha256(Path(sources[inst["uid"]]).read_bytes())
                linked.add(inst["uid"])
        # the push command finds every file it must upload first
        pairs = binaries_beside(path, bundle)
        assert len(pairs) == sum(len(s["instance"]) for s in study["series"])
        assert all(p.is_file() for _, p in pairs)
        assert errors_of(bundle, "r4", beside=beside_out, name=path.name) == []
    assert linked == set(sources)


def test_deterministic(tmp_path: Path) -> None:
    def snapshot(out: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(out)): p.read_bytes()
            for p in sorted(out.rglob("*"))
            # report.json and the catalog (.fhirimg/) hold run times; the bundles may not
            if p.is_file() and p.name != "report.json" and ".fhirimg" not in p.parts
        }

    a = snapshot(run(tmp_path / "a", binary=BinaryMode.BESIDE, max_entries=3))
    b = snapshot(run(tmp_path / "b", binary=BinaryMode.BESIDE, max_entries=3))
    assert a == b
    c = snapshot(run(tmp_path / "c", binary=BinaryMode.INLINE, max_bundle_mb=0.02))
    d = snapshot(run(tmp_path / "d", binary=BinaryMode.INLINE, max_bundle_mb=0.02))
    assert c == d


def test_split_by_entries(tmp_path: Path) -> None:
    out = run(tmp_path, binary=BinaryMode.INLINE, max_entries=4)
    report = load(out / "report.json")
    sources = converted_sources(out)
    binaries: set[str] = set()
    for study in report["studies"]:
        names = [study["bundle"], *study.get("parts", [])]
        first = load(out / names[0])
        kinds = [e["resource"]["resourceType"] for e in first["entry"]]
        assert "ImagingStudy" in kinds
        (st,) = resources(first, "ImagingStudy")
        pat_request = first["entry"][0]["request"]
        for n, name in enumerate(names):
            assert name == (names[0] if n == 0 else names[0][:-5] + f".part-{n + 1}.json")
            bundle = load(out / name)
            assert len(bundle["entry"]) <= 4
            for e in bundle["entry"]:
                res = e["resource"]
                if res["resourceType"] != "Binary":
                    continue
                binaries.add(res["id"])
                ctx = res["securityContext"]["reference"]
                if n == 0:
                    assert ctx == first["entry"][0]["fullUrl"]
                else:
                    # conditional reference: resolves on the server once the first part is in
                    assert ctx == f"Patient?{pat_request['ifNoneExist']}"
            if n:
                assert errors_of(bundle, "r4") == []
        # links are Binary/<id> whenever a split limit is set (the Binary may be in any part)
        for series in st["series"]:
            for inst in series["instance"]:
                ref = inst["extension"][0]["valueReference"]["reference"]
                assert ref == f"Binary/{binary_id(inst['uid'])}"
    assert binaries == {binary_id(s) for s in sources}
    assert any(s.get("parts") for s in report["studies"])


def test_split_by_size(tmp_path: Path) -> None:
    limit = 20_000
    out = run(tmp_path, binary=BinaryMode.INLINE, max_bundle_mb=limit / 1_000_000)
    files = sorted(out.glob("study-*.json"))
    assert any(".part-" in p.name for p in files)
    for path in files:
        if path.stat().st_size > limit:
            # only a single entry over the limit on its own may exceed it
            binaries = resources(load(path), "Binary")
            assert len(binaries) <= 1, path.name


def test_stale_parts_removed(tmp_path: Path) -> None:
    run(tmp_path, binary=BinaryMode.INLINE, max_entries=3)
    assert list(tmp_path.glob("*.part-*.json"))
    run(tmp_path, binary=BinaryMode.INLINE)
    assert not list(tmp_path.glob("*.part-*.json"))
    run(tmp_path, binary=BinaryMode.INLINE, max_entries=3)
    run(tmp_path)  # the default output too
    assert not list(tmp_path.glob("*.part-*.json"))


def test_cli_binary_beside(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fhirimg.cli import app

    result = CliRunner().invoke(
        app, ["convert", str(SAMPLE), "-o", str(tmp_path), "--binary", "beside", "-j", "1", "-q"]
    )
    assert result.exit_code == 1, result.output  # 1: sample_data has a truncated file
    assert len(list(tmp_path.glob("*.binaries/*.dcm"))) == 20
    assert load(tmp_path / "report.json")["summary"]["binaries"] == 20
