"""Before the first bundle is sent: is the base URL a FHIR server, and does it speak the FHIR
release the bundles are written in? (issue 11 items 14 and 15)

``GET [base]/metadata`` must answer a CapabilityStatement with its ``fhirVersion`` (FHIR R4/R5
capabilitystatement.html: ``CapabilityStatement.fhirVersion`` 1..1; http.html "capabilities":
every server answers it). A 404, an HTML page, JSON of another kind, or a statement without
``fhirVersion`` mean a wrong base URL (a missing ``/fhir``, a proxy's login page): sending every
bundle there would only collect one refusal per bundle, so it is fatal before anything is sent.
``push --no-capability-check`` (``PushOptions.check_server=False``) skips this request for the
servers that do not answer it; each bundle then tells.

**Which release a bundle is.** fhirimg writes R4 (4.0.1) or R5 (5.0.0), and says so in
``report.json`` (``fhirVersion``), but a bundle travels without its report (copied, pushed from
another folder), so the bundle itself decides, by the elements that differ between the releases
(:func:`fhirimg.fhir.detect.detect_version`): an R5-only resource (ImagingSelection),
``ImagingStudy.modality`` and ``series.modality`` as CodeableConcept (``{"coding": [...]}``; R4: a
Coding), R5 ``DocumentReference`` and ``Endpoint`` shapes, or a ``meta.profile`` under
``/R5/``. Every fhirimg bundle of a study holds its ImagingStudy with a modality, so this is
never a guess for them; a bundle with nothing release-specific counts as R4, fhirimg's default.

**Which bundles a server takes.** ``fhirVersion`` 4.x (4.0.x R4, 4.3.x R4B: the imaging
resources fhirimg writes are the same in both) takes R4 bundles; 5.x takes R5 bundles. Any
other pairing is refused, naming the server, its ``fhirVersion`` and the bundles' release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhirimg.errors import AuthError, PushError, ServerUnreachableError
from fhirimg.http.fhir import FhirClient
from fhirimg.safetext import clean

__all__ = [
    "RELEASE_NAMES",
    "Capabilities",
    "check_release",
    "check_server",
    "conditional_create_types",
    "read_capabilities",
    "server_release",
    "server_version",
]

RELEASE_NAMES = {"r4": "FHIR R4 (4.0.1)", "r5": "FHIR R5 (5.0.0)"}
"""How messages name the releases fhirimg writes."""

_SKIP = "--no-capability-check pushes without this check"


def server_release(fhir_version: str) -> str | None:
    """The release of bundles a server of ``fhir_version`` takes: ``r4``, ``r5`` or None.

    >>> [server_release(v) for v in ("4.0.1", "4.3.0", "5.0.0", "3.0.2", "6.0.0-ballot2")]
    ['r4', 'r4', 'r5', None, None]
    """
    return {"4": "r4", "5": "r5"}.get(fhir_version.strip().split(".", 1)[0])


def check_server(client: FhirClient, releases: Mapping[str, str]) -> str:
    """Read the server's CapabilityStatement and check that it takes a release of ``releases``
    (release -> what is of that release, for the message: ``"2 bundle(s), e.g. study-1.json"``,
    ``"convert --fhir-version r5"``). Return the server's ``fhirVersion``; bundles of another
    release than the server's (when ``releases`` holds several) are the caller's to refuse.

    Raises :class:`~fhirimg.errors.AuthError` when the credentials are refused,
    :class:`~fhirimg.errors.ServerUnreachableError` when there is no answer, and
    :class:`~fhirimg.errors.PushError` when the answer is no CapabilityStatement with a
    ``fhirVersion`` or the release does not match; every message names the server (its URL
    without credentials).
    """
    version = server_version(client)
    check_release(client, version, releases)
    return version


def server_version(client: FhirClient) -> str:
    """The ``fhirVersion`` of the server's CapabilityStatement (``GET [base]/metadata``), the
    first half of :func:`check_server`: push reads it before the first bundle and matches the
    bundles' releases as it finds them (:func:`check_release`). Raises as :func:`check_server`.
    """
    return read_capabilities(client).fhir_version


@dataclass(frozen=True)
class Capabilities:
    """What push uses of a server's CapabilityStatement: its ``fhirVersion``, and the resource
    types whose ``rest.resource.conditionalCreate`` is true (the server honours
    ``Bundle.entry.request.ifNoneExist`` for them, FHIR R4/R5 http.html "Conditional create")."""

    fhir_version: str
    conditional_create: frozenset[str] = frozenset()


def conditional_create_types(statement: Mapping[str, Any]) -> frozenset[str]:
    """The resource types a CapabilityStatement declares conditional create for (its
    ``rest`` of ``mode`` server); anything of another shape declares nothing.

    >>> sorted(conditional_create_types({"rest": [{"mode": "server", "resource": [
    ...     {"type": "ImagingStudy", "conditionalCreate": True},
    ...     {"type": "Binary", "conditionalCreate": False}, {"type": "Patient"}, "odd"]}]}))
    ['ImagingStudy']
    >>> conditional_create_types({"rest": "odd"})
    frozenset()
    """
    found: set[str] = set()
    rest = statement.get("rest")
    for part in rest if isinstance(rest, list) else []:
        if not isinstance(part, dict) or part.get("mode") != "server":
            continue
        resources = part.get("resource")
        for resource in resources if isinstance(resources, list) else []:
            if isinstance(resource, dict) and resource.get("conditionalCreate") is True:
                if isinstance(resource.get("type"), str):
                    found.add(resource["type"])
    return frozenset(found)


def read_capabilities(client: FhirClient) -> Capabilities:
    """The server's :class:`Capabilities` from one ``GET [base]/metadata``; raises as
    :func:`check_server` when it is no CapabilityStatement with a ``fhirVersion``."""
    where = f"the FHIR server {client.server}"
    try:
        statement = client.capabilities()
    except (AuthError, ServerUnreachableError):
        raise
    except PushError as exc:
        raise PushError(
            f"{where}: {clean(exc)}: no CapabilityStatement there; "
            f"is {client.server} the FHIR base URL? ({_SKIP})",
            status=exc.status,
            outcome=exc.outcome,
        ) from None
    kind = statement.get("resourceType")
    if kind != "CapabilityStatement":
        shown = clean(repr(kind))[:60] if kind is not None else "JSON without a resourceType"
        raise PushError(
            f"{where} answered GET metadata with {shown}, not a CapabilityStatement; is "
            f"{client.server} the FHIR base URL? ({_SKIP})"
        )
    version = statement.get("fhirVersion")
    if not isinstance(version, str) or not version.strip():
        raise PushError(
            f"{where} sent a CapabilityStatement without fhirVersion, so the FHIR release of "
            f"the server is unknown ({_SKIP})"
        )
    return Capabilities(clean(version.strip())[:40], conditional_create_types(statement))


def check_release(client: FhirClient, version: str, releases: Mapping[str, str]) -> None:
    """:class:`~fhirimg.errors.PushError` unless a server of ``version`` takes a release of
    ``releases`` (release -> what is of it, for the message), the second half of
    :func:`check_server`. Nothing to push (``releases`` empty) passes."""
    where = f"the FHIR server {client.server}"
    takes = server_release(version)
    if takes in releases:
        # Some bundles are of the server's release: those are pushed; any of another release
        # (a folder that mixes them) are refused one by one by the caller, named in the report.
        return
    for release, what in sorted(releases.items()):
        if release != takes:
            want = RELEASE_NAMES.get(release, release)
            hint = (
                f"; convert them with --fhir-version {takes}"
                if takes is not None
                else "; fhirimg writes R4 (for 4.x servers) and R5 (for 5.x servers)"
            )
            raise PushError(
                f"{where} speaks FHIR {version}, and the bundles to push are {want} ({what}): "
                f"nothing was sent{hint}, or push them to a FHIR {release.upper()} server"
            )
