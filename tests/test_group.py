"""group: records become studies through a SQLite spill, whatever order the files were read in."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fhirimg.group import PackedRecord, StudyIndex, unpack
from fhirimg.model import FileProblem, FileStatus, InstanceRecord

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def rec(path: str, study: str, series: str, sop: str, sop_class: str = CT) -> InstanceRecord:
    return InstanceRecord(
        path=path,
        size=1,
        sop_class_uid=sop_class,
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=series,
        patient_name="Doe^Jane",
    )


# Two studies; "b/dup.dcm" repeats a/1.dcm exactly (a DUPLICATE), "c/conflict.dcm" reuses the SOP
# Instance UID of a/2.dcm in another series (a FAILED conflict). Paths sort a < b < c, so the
# first-by-path rule keeps the a/ files whatever the reading order.
RECORDS = [
    rec("a/1.dcm", "1.1", "1.1.1", "1.1.1.1"),
    rec("a/2.dcm", "1.1", "1.1.1", "1.1.1.2"),
    rec("a/3.dcm", "1.1", "1.1.2", "1.1.2.1", MR),
    rec("b/dup.dcm", "1.1", "1.1.1", "1.1.1.1"),
    rec("c/conflict.dcm", "1.1", "1.1.9", "1.1.1.2"),
    rec("d/other.dcm", "2.2", "2.2.1", "2.2.1.1"),
]
PROBLEM = FileProblem("e/notes.txt", FileStatus.SKIPPED, "not DICOM")


def grouped(items: list[InstanceRecord | PackedRecord | FileProblem]) -> dict[str, object]:
    """Everything a run reads back from the index, after duplicates are resolved."""
    with StudyIndex() as index:
        index.add_many(items)
        dropped = index.resolve_duplicates()
        return {
            "dropped": dropped,
            "studies": {uid: index.records(uid) for uid in index.study_uids()},
            "problems": list(index.file_outcomes()),
            "counts": index.counts(),
        }


def test_groups_by_study_and_resolves_duplicates_and_conflicts() -> None:
    got = grouped([*RECORDS, PROBLEM])
    assert got["dropped"] == 2
    studies = got["studies"]
    assert isinstance(studies, dict)
    assert list(studies) == ["1.1", "2.2"]
    assert [r.path for r in studies["1.1"]] == ["a/1.dcm", "a/2.dcm", "a/3.dcm"]
    assert studies["2.2"] == [RECORDS[5]]
    assert got["problems"] == [
        (  # the paths are not files here: compared by UIDs only, and the reason says so
            "b/dup.dcm",
            "duplicate",
            "same SOP Instance UID, study, series and SOP class as a/1.dcm (content not "
            "compared: cannot read a/1.dcm: No such file or directory)",
        ),
        (
            "c/conflict.dcm",
            "failed",
            "SOP Instance UID conflict: also in a/2.dcm with a different study, series or SOP "
            "class; a/2.dcm is kept (the first by path)",
        ),
        ("e/notes.txt", "skipped", "not DICOM"),
    ]
    assert got["counts"] == {"converted": 0, "skipped": 1, "duplicate": 1, "failed": 1}


def test_records_round_trip_unchanged() -> None:
    """What goes in (as a record or pre-packed by a worker) comes out equal, every field kept."""
    with StudyIndex() as index:
        index.add(RECORDS[0])
        index.add(PackedRecord.of(RECORDS[1]))
        assert index.records("1.1") == RECORDS[:2]
        assert unpack(index.blobs("1.1")) == RECORDS[:2]


@settings(max_examples=40, deadline=None)
@given(order=st.permutations([*RECORDS, PROBLEM]), packed=st.lists(st.booleans(), min_size=7))
def test_grouping_is_independent_of_input_order(
    order: list[InstanceRecord | FileProblem], packed: list[bool]
) -> None:
    """Workers finish in any order: the studies, the winner of each duplicate and the problems
    must not depend on it (deterministic output starts here)."""
    items: list[InstanceRecord | PackedRecord | FileProblem] = [
        PackedRecord.of(item) if isinstance(item, InstanceRecord) and pack else item
        for item, pack in zip(order, packed, strict=False)
    ]
    assert grouped(items) == grouped([*RECORDS, PROBLEM])


def test_records_spill_to_a_sqlite_file_removed_at_close(tmp_path: Path) -> None:
    """The records live in a file under ``workdir``, not in memory, and the file goes at close.

    About 6 MB of records against SQLite's default page cache of 2 MB: most of them can only be in
    the file, so its size shows they spilled.
    """
    index = StudyIndex(workdir=tmp_path)
    filler = "x" * 2000
    index.add_many(
        InstanceRecord(
            path=f"s/{i:05d}.dcm",
            size=1,
            sop_class_uid=CT,
            sop_instance_uid=f"9.9.1.{i}",
            study_instance_uid="9.9",
            series_instance_uid="9.9.1",
            series_description=filler,
        )
        for i in range(3000)
    )
    (spill,) = tmp_path.glob("fhirimg-*/index.sqlite")
    assert spill.stat().st_size > 4_000_000
    assert len(index.study_paths("9.9")) == 3000
    index.close()
    assert list(tmp_path.iterdir()) == []
