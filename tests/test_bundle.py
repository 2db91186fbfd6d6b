"""bundle: one study becomes one transaction Bundle in a fixed entry order, streamed into parts.

The streaming writer promises the bytes ``jsonio.dumps`` would give for the same bundle, and part
names that ``push`` finds again (``<stem>.part-N.json``); both are checked here without a server.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fhirimg import ids, jsonio
from fhirimg.bundle import (
    DATA_PLACEHOLDER,
    EncodedEntry,
    SplitWriter,
    encode_entry,
    part_name,
    remove_stale_parts,
    study_bundle,
)
from fhirimg.fhir import release
from fhirimg.mapping import MapOptions
from fhirimg.model import InstanceRecord

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.9.7704.42"
PACS = "https://pacs.example/dicom-web"


def records() -> list[InstanceRecord]:
    """Two series of three instances, listed in no useful order."""
    return [
        InstanceRecord(
            path=f"{s}-{n}.dcm",
            size=1,
            sop_class_uid=CT,
            sop_instance_uid=f"{STUDY}.{s}.{n}",
            study_instance_uid=STUDY,
            series_instance_uid=f"{STUDY}.{s}",
            series_number=str(s),
            instance_number=str(n),
            modality="CT",
            patient_id="MRN7",
        )
        for s in (2, 1)
        for n in (3, 1, 2)
    ]


def resource_types(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["resourceType"] for e in bundle["entry"]]


def test_entry_order_and_requests() -> None:
    options = MapOptions(dicomweb_url=PACS, patient_id_system="urn:oid:1.2.3")
    bundle, _ = study_bundle(records(), options, release("r4"))
    assert list(bundle) == ["resourceType", "type", "entry"]
    assert bundle["type"] == "transaction"
    assert resource_types(bundle) == ["Patient", "Endpoint", "ImagingStudy"]
    for entry in bundle["entry"]:
        assert list(entry) == ["fullUrl", "resource", "request"]  # FHIR's element order
    patient, endpoint, study = bundle["entry"]
    assert patient["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": "identifier=urn:oid:1.2.3|MRN7",
    }
    assert patient["fullUrl"] == ids.full_url("Patient", "urn:oid:1.2.3", "MRN7")
    assert endpoint["request"]["ifNoneExist"] == f"identifier=urn:ietf:rfc:3986|{PACS}"
    assert study["fullUrl"] == ids.full_url("ImagingStudy", STUDY)
    assert study["request"] == {
        "method": "PUT",
        "url": f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{STUDY}",
    }
    assert study["resource"]["subject"]["reference"] == patient["fullUrl"]
    assert study["resource"]["endpoint"] == [{"reference": endpoint["fullUrl"]}]
    series = study["resource"]["series"]
    assert [s["uid"] for s in series] == [f"{STUDY}.1", f"{STUDY}.2"]
    assert [i["number"] for i in series[0]["instance"]] == [1, 2, 3]


def test_no_endpoint_without_dicomweb_url_and_put_for_unmatched_patient() -> None:
    """Without an identifier system the Patient cannot be matched: it is PUT under an id
    derived from the study's patient key, so a re-push updates it instead of adding another."""
    bundle, notes = study_bundle(records(), MapOptions(), release("r4"))
    assert resource_types(bundle) == ["Patient", "ImagingStudy"]
    patient = bundle["entry"][0]
    assert list(patient["resource"])[:2] == ["resourceType", "id"]
    assert patient["request"] == {"method": "PUT", "url": f"Patient/{patient['resource']['id']}"}
    assert patient["fullUrl"] == f"urn:uuid:{patient['resource']['id']}"
    assert any("no issuer system" in n for n in notes.items)
    assert "endpoint" not in bundle["entry"][1]["resource"]


@pytest.mark.parametrize("version", ["r4", "r5"])
def test_same_bytes_whatever_the_record_order(version: str) -> None:
    recs = records()
    expected = jsonio.dumps(study_bundle(recs, MapOptions(dicomweb_url=PACS), release(version))[0])
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(recs)
        bundle, _ = study_bundle(recs, MapOptions(dicomweb_url=PACS), release(version))
        assert jsonio.dumps(bundle) == expected


# --------------------------------------------------------------------------- streaming writer
@dataclass(frozen=True)
class Bytes:
    """A :class:`fhirimg.bundle.DataSource` over bytes, in uneven chunks (base64 must not pad
    between chunks)."""

    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)

    def chunks(self) -> Iterator[bytes]:
        for start in range(0, len(self.data), 7):
            yield self.data[start : start + 7]


def binary_entry(n: int, data: bytes | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Binary", "id": f"b{n}"}
    resource["contentType"] = "application/dicom"
    resource["data"] = DATA_PLACEHOLDER if data is not None else "AAAA"
    return {
        "fullUrl": f"urn:uuid:b{n}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"Binary/b{n}"},
    }


def streamed(n: int, data: bytes) -> Callable[[bool], EncodedEntry]:
    """A builder for :meth:`SplitWriter.place`: Binary ``n`` with ``data`` streamed in."""
    return lambda _in_first: encode_entry(binary_entry(n, data), Bytes(data))


def head_entries() -> list[dict[str, Any]]:
    bundle, _ = study_bundle(records(), MapOptions(dicomweb_url=PACS), release("r4"))
    entries: list[dict[str, Any]] = bundle["entry"]
    return entries


def test_streamed_bundle_is_byte_identical_to_dumps(tmp_path: Path) -> None:
    """Binary.data streamed as base64 from a source gives exactly ``jsonio.dumps`` of the
    bundle with the data inline."""
    payloads = [bytes(range(256)) * 3 + b"x" * n for n in range(3)]  # lengths mod 3: 0, 1, 2
    writer = SplitWriter(tmp_path, "study-x.json", max_entries=None, max_bytes=None)
    heads = head_entries()
    for head in heads:
        writer.add_head(encode_entry(head))
    for n, data in enumerate(payloads):
        writer.place(streamed(n, data))
    assert writer.commit() == ["study-x.json"]
    inline = [binary_entry(n, data) for n, data in enumerate(payloads)]
    for entry, data in zip(inline, payloads, strict=True):
        entry["resource"]["data"] = base64.b64encode(data).decode()
    expected = {"resourceType": "Bundle", "type": "transaction", "entry": heads + inline}
    assert (tmp_path / "study-x.json").read_bytes() == jsonio.dumps(expected)


def test_split_into_named_parts(tmp_path: Path) -> None:
    """Past ``max_entries`` the entries go to ``<stem>.part-2.json`` and on; entries in later
    parts are built with ``in_first=False`` (they cannot point at urn:uuids of the first part)."""
    writer = SplitWriter(tmp_path, "study-x.json", max_entries=4, max_bytes=None)
    for head in head_entries():
        writer.add_head(encode_entry(head))
    built: list[tuple[int, bool]] = []

    def build(n: int) -> Callable[[bool], EncodedEntry]:
        def make(in_first: bool) -> EncodedEntry:
            built.append((n, in_first))
            return encode_entry(binary_entry(n))

        return make

    for n in range(6):
        writer.place(build(n))
    names = writer.commit()
    assert names == ["study-x.json", "study-x.part-2.json", "study-x.part-3.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temp files left
    parts = [jsonio.loads((tmp_path / name).read_bytes()) for name in names]
    assert [len(p["entry"]) for p in parts] == [4, 4, 1]
    assert resource_types(parts[0]) == ["Patient", "Endpoint", "ImagingStudy", "Binary"]
    binaries = [
        e["resource"]["id"]
        for p in parts
        for e in p["entry"]
        if e["resource"]["resourceType"] == "Binary"
    ]
    assert binaries == [f"b{n}" for n in range(6)]
    # Binary 1 was first built for the first part, did not fit, and was rebuilt for part 2.
    assert built[:3] == [(0, True), (1, True), (1, False)]
    assert all(not first for n, first in built if n >= 2)


def test_entry_over_the_size_limit_gets_a_part_and_a_note(tmp_path: Path) -> None:
    writer = SplitWriter(tmp_path, "study-x.json", max_entries=None, max_bytes=2000)
    writer.add_head(encode_entry(head_entries()[0]))
    big = b"\0" * 3000
    writer.place(streamed(1, big))
    assert writer.commit() == ["study-x.json", "study-x.part-2.json"]
    assert len(writer.notes) == 1
    assert writer.notes[0].startswith("study-x.part-2.json: one entry of ")
    part = jsonio.loads((tmp_path / "study-x.part-2.json").read_bytes())
    assert base64.b64decode(part["entry"][0]["resource"]["data"]) == big


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    writer = SplitWriter(tmp_path, "study-x.json", max_entries=1, max_bytes=None)
    writer.add_head(encode_entry(head_entries()[0]))
    writer.place(lambda _first: encode_entry(binary_entry(1)))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_part_names() -> None:
    assert part_name("study-x.json", 1) == "study-x.json"
    assert part_name("study-x.json", 12) == "study-x.part-12.json"


def test_remove_stale_parts(tmp_path: Path) -> None:
    names = [
        "study-x.json",
        "study-x.part-2.json",
        "study-x.part-3.json",
        "study-x.part-10.json",
        "study-x.part-notes.json",  # not a part number: not ours to delete
        "study-xy.part-5.json",  # another study
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"{}\n")
    remove_stale_parts(tmp_path, "study-x.json", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["study-x.json", "study-x.part-2.json", "study-x.part-notes.json", "study-xy.part-5.json"]
    )
    remove_stale_parts(tmp_path, "study-x.json")
    assert not (tmp_path / "study-x.part-2.json").exists()
    assert (tmp_path / "study-x.json").exists()


def test_commit_removes_parts_of_an_earlier_longer_run(tmp_path: Path) -> None:
    for name in ("study-x.part-2.json", "study-x.part-3.json"):
        (tmp_path / name).write_bytes(b"stale\n")
    writer = SplitWriter(tmp_path, "study-x.json", max_entries=None, max_bytes=None)
    writer.add_head(encode_entry(head_entries()[0]))
    assert writer.commit() == ["study-x.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["study-x.json"]
