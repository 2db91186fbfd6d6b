"""ids: every fullUrl, resource id and bundle name is a UUIDv5 of DICOM UIDs, the same forever.

A changed namespace or key format would silently give every re-pushed study new ids (duplicates on
the server instead of updates) and rename every bundle, so the values are pinned here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

from hypothesis import given
from hypothesis import strategies as st

from fhirimg import ids
from tests.helpers import GOLDEN, REPO

STUDY_A = "2.25.85155649098386921766494752360926339228"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
UIDS = st.from_regex(r"[1-9][0-9]{0,5}(\.(0|[1-9][0-9]{0,8})){1,6}", fullmatch=True)


def test_namespace_is_pinned() -> None:
    assert ids.NAMESPACE == uuid.UUID("591b5cfe-c159-5598-be18-5784509dd8c2")
    assert uuid.uuid5(uuid.NAMESPACE_URL, "https://fhirimg.dev/ns/v1") == ids.NAMESPACE


def test_known_values() -> None:
    assert ids.resource_uuid("Binary", "1.2.3.4") == "f319fa5a-94e9-5948-a2ef-22180220ceee"
    assert (
        ids.full_url("Patient", "urn:oid:1.2", "MRN1")
        == "urn:uuid:1868d18b-72e1-5295-b408-4461065a906b"
    )
    # The golden sample bundle of study A carries this name: the two must agree.
    name = ids.bundle_name(STUDY_A)
    assert name == "study-bffef726-fbb9-5312-83c1-eebbae7bf952.json"
    assert (GOLDEN / "sample" / name).is_file()


def test_same_ids_in_another_process() -> None:
    """No per-process state (hash randomisation, a random namespace) leaks into the ids."""
    code = "from fhirimg import ids; print(ids.resource_uuid('ImagingStudy', '1.2.3'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ids.resource_uuid("ImagingStudy", "1.2.3")


@given(kind=st.sampled_from(["Patient", "ImagingStudy", "Binary", "Media"]), uid=UIDS)
def test_uuid5_valid_fhir_id_and_deterministic(kind: str, uid: str) -> None:
    value = ids.resource_uuid(kind, uid)
    parsed = uuid.UUID(value)
    assert parsed.version == 5
    assert parsed.variant == uuid.RFC_4122
    assert FHIR_ID.fullmatch(value)
    assert value == ids.resource_uuid(kind, uid)
    assert ids.full_url(kind, uid) == f"urn:uuid:{value}"


@given(uid=UIDS, other=UIDS)
def test_kind_and_parts_are_part_of_the_key(uid: str, other: str) -> None:
    """A Patient and a study keyed by the same text, or two parts swapped, never share an id."""
    assert ids.resource_uuid("Patient", uid) != ids.resource_uuid("ImagingStudy", uid)
    if uid != other:
        assert ids.resource_uuid("Binary", uid, other) != ids.resource_uuid("Binary", other, uid)
        assert ids.bundle_name(uid) != ids.bundle_name(other)


@given(uid=UIDS)
def test_bundle_name_hides_the_uid(uid: str) -> None:
    """File names never carry tag text (a UID can be identifying): a hash of it instead."""
    name = ids.bundle_name(uid)
    assert re.fullmatch(r"study-[0-9a-f-]{36}\.json", name)
    assert uid not in name
    assert name == f"study-{ids.resource_uuid('ImagingStudy', uid)}.json"
