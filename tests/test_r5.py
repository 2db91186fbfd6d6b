"""--fhir-version r5: the same inputs as R5 (ImagingStudy R5 form, Endpoint.payload,
DocumentReference for rendered images), validated with the R5 models and the validator."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from fhirimg import ConvertOptions, MapOptions, convert
from fhirimg.cli import app
from fhirimg.cli._app import load_commands
from fhirimg.images.binary import EXTENSION_URL, BinaryMode
from fhirimg.images.rendered import MediaOptions
from fhirimg.validate import resource_errors
from tests.helpers import REPO, SAMPLE, load, resources, study_by_uid
from tests.test_binary import all_bundles, errors_of
from tests.test_convert import STUDY_A

DCM = "http://dicom.nema.org/resources/ontology/DCM"


@pytest.fixture(scope="module")
def r5_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("r5")
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        convert(
            ["sample_data/dicom"],
            ConvertOptions(
                out_dir=out,
                jobs=1,
                fhir_version="r5",
                binary=BinaryMode.INLINE,
                media=MediaOptions(),
                mapping=MapOptions(dicomweb_url="http://pacs.example.org/dicom-web"),
            ),
        )
    finally:
        os.chdir(cwd)
    return out


def test_r5_bundles_validate(r5_out: Path) -> None:
    bundles = all_bundles(r5_out)
    assert len(bundles) == 5
    for name, bundle in bundles.items():
        assert resource_errors(bundle, "r5") == [], name
        assert errors_of(bundle, "r5", name=name) == [], name
    assert load(r5_out / "report.json")["fhirVersion"] == "5.0.0"


def test_r5_imaging_study_form(r5_out: Path) -> None:
    bundle = study_by_uid(r5_out, STUDY_A)
    (study,) = resources(bundle, "ImagingStudy")
    assert study["modality"] == [{"coding": [{"system": DCM, "code": "CT"}]}]
    assert study["series"][1]["modality"] == {"coding": [{"system": DCM, "code": "CT"}]}
    assert study["series"][1]["bodySite"]["concept"]["coding"][0]["code"] == "43799004"
    # accession in basedOn (a ServiceRequest identifier), not in identifier
    (based_on,) = study["basedOn"]
    assert based_on["type"] == "ServiceRequest"
    assert based_on["identifier"]["value"] == "ACC-A-0001"
    assert based_on["identifier"]["type"]["coding"][0]["code"] == "ACSN"
    assert all(i.get("value") != "ACC-A-0001" for i in study["identifier"])
    assert "procedure" in study
    assert all("concept" in p for p in study["procedure"])
    assert not {"procedureCode", "reasonCode", "interpreter"} & set(study)
    for series in study["series"]:
        for inst in series["instance"]:
            assert inst["extension"][0]["url"] == EXTENSION_URL


def test_r5_endpoint_payload(r5_out: Path) -> None:
    (endpoint,) = resources(study_by_uid(r5_out, STUDY_A), "Endpoint")
    assert endpoint["connectionType"][0]["coding"][0]["code"] == "dicom-wado-rs"
    assert endpoint["payload"] == [
        {"type": [{"text": "DICOM WADO-RS"}], "mimeType": ["application/dicom"]}
    ]
    assert "payloadType" not in endpoint


def test_r5_document_reference_instead_of_media(r5_out: Path) -> None:
    docs: list[dict[str, Any]] = []
    for bundle in all_bundles(r5_out).values():
        assert resources(bundle, "Media") == []
        study_url = next(
            e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
        )
        for e in bundle["entry"]:
            doc = e["resource"]
            if doc["resourceType"] != "DocumentReference":
                continue
            docs.append(doc)
            assert e["request"]["url"].startswith("DocumentReference?identifier=")
            assert doc["event"] == [{"reference": {"reference": study_url}}]
            att = doc["content"][0]["attachment"]
            data = base64.b64decode(att["data"])
            assert att["size"] == str(len(data))  # integer64: a JSON string in R5
            assert att["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
            assert Image.open(io.BytesIO(data)).size == (att["width"], att["height"])
    assert len(docs) == 18


def test_cli_r5_and_help_texts(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["convert", str(SAMPLE), "-o", str(tmp_path), "--fhir-version", "r5", "-j", "1", "-q"]
    )
    assert result.exit_code == 1, result.output  # the truncated sample file
    for bundle in all_bundles(tmp_path).values():
        assert resource_errors(bundle, "r5") == []
    bad = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(tmp_path), "--fhir-version", "r6"])
    assert bad.exit_code == 2, bad.output


def test_every_convert_option_has_help_and_docs() -> None:
    """Every convert option has help text, and the pixel options are explained in docs."""
    import typer.main

    load_commands()

    command = typer.main.get_command(app).commands["convert"]  # type: ignore[attr-defined]
    docs = (REPO / "docs" / "choosing.md").read_text()
    for param in command.params:
        if param.param_type_name != "option":
            continue
        assert param.help, param.name
        long = next(o for o in param.opts if o.startswith("--"))
        if long in (
            "--binary",
            "--max-entries",
            "--max-bundle-mb",
            "--media",
            "--media-per",
            "--media-format",
            "--media-size",
            "--media-frame",
            "--media-content",
            "--fhir-version",
            "--dicomweb-url",
        ):
            assert long in docs, f"{long} is not in docs/choosing.md"
