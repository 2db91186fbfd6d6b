"""The strict FHIR test server rejects what a real server rejects (tools/fhir-test-server).

If these pass against a server that accepted anything, the push tests built on it would prove
nothing; so each strictness rule is checked here against the running server.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers.fhir_server import FhirTestServer, start_fhir_server

pytestmark = pytest.mark.server

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
DCM = "http://dicom.nema.org/resources/ontology/DCM"


@pytest.fixture(scope="module")
def server() -> Iterator[FhirTestServer]:
    with start_fhir_server() as running:
        yield running


@pytest.fixture(scope="module")
def strict_server() -> Iterator[FhirTestServer]:
    with start_fhir_server(max_strict_entries=8) as running:
        yield running


@pytest.fixture
def client(server: FhirTestServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=FHIR_JSON, timeout=60) as c:
        yield c


def base(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def patient(mrn: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:fhirimg:test:mrn", "value": mrn}],
        "gender": "female",
    }


def study(uid: str, subject: str, description: str = "CT HEAD") -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": "available",
        "subject": {"reference": subject},
        "description": description,
        "series": [
            {
                "uid": f"{uid}.1",
                "modality": {"system": DCM, "code": "CT"},
                "instance": [
                    {
                        "uid": f"{uid}.1.1",
                        "sopClass": {
                            "system": "urn:ietf:rfc:3986",
                            "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2",
                        },
                    }
                ],
            }
        ],
    }


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def post_entry(
    resource: dict[str, Any], full_url: str, if_none_exist: str | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"fullUrl": full_url, "resource": resource, "request": request}


def total(client: httpx.Client, query: str) -> int:
    # Appended by hand: httpx's params= would replace the query string, not extend it.
    r = client.get(query + ("&" if "?" in query else "?") + "_summary=count")
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def assert_outcome(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert any(i["severity"] in ("error", "fatal") for i in body["issue"]), body
    return body


def test_metadata(client: httpx.Client) -> None:
    r = client.get("/metadata")
    assert r.status_code == 200, r.text
    cap = r.json()
    assert cap["resourceType"] == "CapabilityStatement"
    assert cap["fhirVersion"] == "4.0.1"
    rest = cap["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    by_type = {r["type"]: r for r in rest["resource"]}
    assert {"Patient", "ImagingStudy", "Endpoint", "Media", "Binary"} <= set(by_type)
    assert "create" in {i["code"] for i in by_type["ImagingStudy"]["interaction"]}
    assert "identifier" in {p["name"] for p in by_type["Media"]["searchParam"]}


def test_create_then_read(client: httpx.Client) -> None:
    r = client.post("/Patient", json=patient("create-read"))
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["Location"].startswith(f"{base(client)}/Patient/{created['id']}/_history/")
    assert r.headers["ETag"] == f'W/"{created["meta"]["versionId"]}"'
    read = client.get(f"/Patient/{created['id']}")
    assert read.status_code == 200
    assert read.json() == created


def test_search_by_identifier_with_total(client: httpx.Client) -> None:
    mrn = f"search-{uuid.uuid4()}"
    client.post("/Patient", json=patient(mrn)).raise_for_status()
    r = client.get(
        "/Patient", params={"identifier": f"urn:fhirimg:test:mrn|{mrn}", "_total": "accurate"}
    )
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 1
    assert bundle["entry"][0]["fullUrl"].startswith(f"{base(client)}/Patient/")
    assert total(client, f"/Patient?identifier=urn:fhirimg:test:mrn|{mrn}") == 1


def test_unknown_search_parameter_is_rejected(client: httpx.Client) -> None:
    assert_outcome(client.get("/Patient", params={"no-such-param": "x"}), 400)


def test_conditional_create_in_transaction_is_idempotent(client: httpx.Client) -> None:
    mrn = f"cc-{uuid.uuid4()}"
    query = f"identifier=urn:fhirimg:test:mrn|{mrn}"
    statuses = []
    for _ in range(2):
        r = client.post("", json=transaction(post_entry(patient(mrn), urn(), if_none_exist=query)))
        assert r.status_code == 200, r.text
        response = r.json()
        assert response["type"] == "transaction-response"
        statuses.append(response["entry"][0]["response"]["status"])
    assert statuses[0].startswith("201")
    assert statuses[1].startswith("200")
    assert total(client, f"/Patient?{query}") == 1


def test_conditional_create_by_header(client: httpx.Client) -> None:
    mrn = f"cch-{uuid.uuid4()}"
    headers = {"If-None-Exist": f"identifier=urn:fhirimg:test:mrn|{mrn}"}
    first = client.post("/Patient", json=patient(mrn), headers=headers)
    second = client.post("/Patient", json=patient(mrn), headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]


def test_conditional_update_by_identifier(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient("cu")).json()["id"]
    uid = new_uid()
    url = f"/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}"
    first = client.put(url, json=study(uid, f"Patient/{pid}", "first"))
    assert first.status_code == 201, first.text
    second = client.put(url, json=study(uid, f"Patient/{pid}", "second"))
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert total(client, url) == 1
    assert client.get(f"/ImagingStudy/{first.json()['id']}").json()["description"] == "second"


def test_unchanged_update_keeps_version(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient("noop")).json()["id"]
    uid = new_uid()
    url = f"/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}"
    first = client.put(url, json=study(uid, f"Patient/{pid}")).json()
    again = client.put(url, json=study(uid, f"Patient/{pid}")).json()
    assert again["meta"]["versionId"] == first["meta"]["versionId"]


def test_transaction_links_urn_uuid_references(client: httpx.Client) -> None:
    mrn = f"tx-{uuid.uuid4()}"
    uid = new_uid()
    patient_urn = urn()
    bundle = transaction(
        # The study comes first on purpose: references are resolved over the whole transaction.
        {
            "fullUrl": urn(),
            "resource": study(uid, patient_urn),
            "request": {
                "method": "PUT",
                "url": f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}",
            },
        },
        post_entry(
            patient(mrn), patient_urn, if_none_exist=f"identifier=urn:fhirimg:test:mrn|{mrn}"
        ),
    )
    r = client.post("", json=bundle)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    study_ref = entries[0]["resource"]["subject"]["reference"]
    assert study_ref == entries[1]["response"]["location"].split("/_history/")[0]


def test_transaction_is_all_or_nothing(client: httpx.Client) -> None:
    mrn = f"rollback-{uuid.uuid4()}"
    uid = new_uid()
    bad_study = study(uid, "Patient/x")
    del bad_study["subject"]  # ImagingStudy.subject is 1..1
    patient_urn = urn()
    bundle = transaction(
        post_entry(patient(mrn), patient_urn),
        post_entry({**patient(mrn + "-2")}, urn()),
        post_entry(bad_study, urn()),
    )
    body = assert_outcome(client.post("", json=bundle), 400)
    assert "ImagingStudy.subject" in str(body)
    assert total(client, f"/Patient?identifier=urn:fhirimg:test:mrn|{mrn}") == 0
    assert total(client, f"/Patient?identifier=urn:fhirimg:test:mrn|{mrn}-2") == 0
    assert total(client, f"/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}") == 0


def test_transaction_rollback_restores_updated_resource(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient("restore")).json()["id"]
    uid = new_uid()
    url = f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}"
    before = client.put(f"/{url}", json=study(uid, f"Patient/{pid}", "before")).json()
    bundle = transaction(
        {
            "fullUrl": urn(),
            "resource": study(uid, f"Patient/{pid}", "after"),
            "request": {"method": "PUT", "url": url},
        },
        post_entry({"resourceType": "Patient", "gender": "bogus"}, urn()),
    )
    assert_outcome(client.post("", json=bundle), 400)
    assert client.get(f"/ImagingStudy/{before['id']}").json() == before


def test_dangling_urn_uuid_reference_is_rejected(client: httpx.Client) -> None:
    uid = new_uid()
    body = assert_outcome(
        client.post("", json=transaction(post_entry(study(uid, urn()), urn()))), 400
    )
    assert "urn:uuid:" in str(body)
    assert total(client, f"/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}") == 0


def test_reference_to_missing_resource_is_rejected(client: httpx.Client) -> None:
    assert_outcome(
        client.post("/ImagingStudy", json=study(new_uid(), f"Patient/{uuid.uuid4()}")), 400
    )


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        pytest.param(
            {"resourceType": "Patient", "gender": "bogus"}, "Patient.gender", id="gender-binding"
        ),
        pytest.param(
            {"resourceType": "ImagingStudy", "status": "available"},
            "ImagingStudy.subject",
            id="no-subject",
        ),
        pytest.param({"resourceType": "Patient", "name": []}, "Patient.name", id="empty-array"),
        pytest.param({"resourceType": "Patient", "foo": 1}, "Patient.foo", id="unknown-element"),
        pytest.param(
            {"resourceType": "Media", "status": "completed", "content": {"data": "AAAA"}},
            "Media.content.contentType",
            id="att-1",
        ),
    ],
)
def test_invalid_resource_is_rejected(
    client: httpx.Client, resource: dict[str, Any], expression: str
) -> None:
    body = assert_outcome(client.post(f"/{resource['resourceType']}", json=resource), 400)
    assert expression in str(body)


def test_invalid_series_uid_is_rejected(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient("bad-uid")).json()["id"]
    bad = study(new_uid(), f"Patient/{pid}")
    bad["series"][0]["uid"] = "urn:oid:1.2.3"  # series.uid is an id: the bare UID
    assert_outcome(client.post("/ImagingStudy", json=bad), 400)


def test_validate_operation(client: httpx.Client) -> None:
    ok = client.post("/Patient/$validate", json=patient("v"))
    assert ok.status_code == 200
    assert all(i["severity"] == "information" for i in ok.json()["issue"])
    bad = client.post(
        "/Bundle/$validate", json=transaction(post_entry(study(new_uid(), urn()), urn()))
    )
    assert bad.status_code == 200
    assert any(i["severity"] == "error" for i in bad.json()["issue"])


def test_raw_binary_round_trip(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient("binary")).json()["id"]
    data = os.urandom(3 * 1024 * 1024 + 1)
    binary_id = hashlib.sha1(data).hexdigest()
    headers = {"Content-Type": "application/dicom", "X-Security-Context": f"Patient/{pid}"}
    first = client.put(f"/Binary/{binary_id}", content=data, headers=headers)
    assert first.status_code == 201, first.text  # update as create
    again = client.put(f"/Binary/{binary_id}", content=data, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["meta"]["versionId"] == first.json()["meta"]["versionId"]

    raw = client.get(f"/Binary/{binary_id}", headers={"Accept": "application/dicom"})
    assert raw.status_code == 200
    assert raw.headers["Content-Type"] == "application/dicom"
    assert raw.content == data

    as_json = client.get(f"/Binary/{binary_id}").json()
    assert as_json["resourceType"] == "Binary"
    assert as_json["contentType"] == "application/dicom"
    assert as_json["securityContext"] == {"reference": f"Patient/{pid}"}
    assert "data" in as_json


def test_put_with_new_id_in_transaction_is_created(client: httpx.Client) -> None:
    binary_id = str(uuid.uuid4())
    entry = {
        "fullUrl": f"{base(client)}/Binary/{binary_id}",
        "resource": {
            "resourceType": "Binary",
            "id": binary_id,
            "contentType": "text/plain",
            "data": "aGk=",
        },
        "request": {"method": "PUT", "url": f"Binary/{binary_id}"},
    }
    statuses = [
        client.post("", json=transaction(entry)).json()["entry"][0]["response"]["status"]
        for _ in range(2)
    ]
    assert statuses == ["201 Created", "200 OK"]


def test_raw_binary_post_creates_resource(client: httpx.Client) -> None:
    r = client.post("/Binary", content=b"\x00DICM", headers={"Content-Type": "application/dicom"})
    assert r.status_code == 201, r.text
    assert client.get(f"/Binary/{r.json()['id']}", headers={"Accept": "*/*"}).content == b"\x00DICM"


def test_long_strict_transaction_is_accepted_by_default(client: httpx.Client) -> None:
    entries = [
        post_entry(
            patient(f"many-{i}-{uuid.uuid4()}"),
            urn(),
            if_none_exist=f"identifier=urn:x|{uuid.uuid4()}",
        )
        for i in range(60)
    ]
    r = client.post("", json=transaction(*entries))
    assert r.status_code == 200, r.text
    assert len(r.json()["entry"]) == 60


def strict_transaction(n: int) -> dict[str, Any]:
    mrns = [f"strict-{i}-{uuid.uuid4()}" for i in range(n)]
    return transaction(
        *(
            post_entry(patient(m), urn(), if_none_exist=f"identifier=urn:fhirimg:test:mrn|{m}")
            for m in mrns
        )
    )


def test_max_strict_entries_mode(strict_server: FhirTestServer) -> None:
    with httpx.Client(base_url=strict_server.base_url, headers=FHIR_JSON, timeout=60) as c:
        too_many = strict_transaction(9)
        body = assert_outcome(c.post("", json=too_many), 400)
        assert "too many entries" in str(body)
        first_mrn = too_many["entry"][0]["resource"]["identifier"][0]["value"]
        assert total(c, f"/Patient?identifier=urn:fhirimg:test:mrn|{first_mrn}") == 0
        assert c.post("", json=strict_transaction(8)).status_code == 200
        # Without a conditional entry there is no limit.
        plain = transaction(*(post_entry(patient(f"plain-{i}"), urn()) for i in range(20)))
        assert c.post("", json=plain).status_code == 200


def test_reset_empties_store(strict_server: FhirTestServer) -> None:
    with httpx.Client(base_url=strict_server.base_url, headers=FHIR_JSON, timeout=60) as c:
        c.post("/Patient", json=patient("reset")).raise_for_status()
        strict_server.reset()
        assert total(c, "/Patient") == 0
