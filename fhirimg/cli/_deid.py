"""The de-identification options, shared by ``convert --deidentify`` and ``deidentify``: one
option group (:func:`fhirimg.cli._options.option_groups`), one way to get the key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from fhirimg.cli._app import fail
from fhirimg.cli._auth import read_secret_file
from fhirimg.deid.keys import DeidOptions
from fhirimg.errors import ConfigError
from fhirimg.exitcodes import ExitCode

PANEL = "De-identification (docs/deidentify.md)"
KEY_ENV = "FHIRIMG_DEID_KEY"


DeidentifyOpt = Annotated[
    bool,
    typer.Option(
        "--deidentify",
        help="De-identify (PS3.15 Annex E Basic Profile) every header, Binary and rendered "
        "image; needs a key ($FHIRIMG_DEID_KEY or --deid-key-file). See docs/deidentify.md.",
        rich_help_panel=PANEL,
    ),
]


@dataclass(frozen=True)
class Deid:
    """The options of PS3.15 Annex E's profile (their names) and the key."""

    deid_key_file: Annotated[
        Path | None,
        typer.Option(
            "--deid-key-file",
            help=f"Read the de-identification key (16 bytes or more) from the first line of this "
            f"file; else from ${KEY_ENV}. Without a key: exit 2. Never printed or logged.",
            rich_help_panel=PANEL,
        ),
    ] = None
    deid_patient_system: Annotated[
        str | None,
        typer.Option(
            "--deid-patient-system",
            metavar="URI",
            help="Identifier system of the pseudonymous Patient IDs.",
            rich_help_panel=PANEL,
        ),
    ] = None
    retain_modified_dates: Annotated[
        bool,
        typer.Option(
            "--retain-modified-dates/--no-retain-modified-dates",
            help="Retain Longitudinal Temporal Information with Modified Dates: dates shifted "
            "by a keyed offset per patient, so intervals survive (default). Off: the profile's "
            "basic actions (dates removed or emptied).",
            rich_help_panel=PANEL,
        ),
    ] = True
    retain_patient_characteristics: Annotated[
        bool,
        typer.Option(
            "--retain-patient-characteristics",
            help="Retain Patient Characteristics in full (weight, size, ...); by default only "
            "sex and age are kept.",
            rich_help_panel=PANEL,
        ),
    ] = False
    clean_descriptors: Annotated[
        bool,
        typer.Option(
            "--clean-descriptors",
            help="Clean Descriptors: keep free-text descriptions with the patient's name and "
            "id taken out; by default they are removed.",
            rich_help_panel=PANEL,
        ),
    ] = False
    retain_device_identity: Annotated[
        bool,
        typer.Option(
            "--retain-device-identity",
            help="Retain Device Identity (station name, serial numbers); removed by default.",
            rich_help_panel=PANEL,
        ),
    ] = False
    retain_institution_identity: Annotated[
        bool,
        typer.Option(
            "--retain-institution-identity",
            help="Retain Institution Identity (institution, department); removed by default.",
            rich_help_panel=PANEL,
        ),
    ] = False
    keep_private: Annotated[
        list[str] | None,
        typer.Option(
            "--keep-private",
            metavar="GGGGEEEE",
            help="A private attribute to keep, as 8 hex digits (repeatable); every other "
            "private attribute is removed.",
            rich_help_panel=PANEL,
        ),
    ] = None
    reid_map: Annotated[
        Path | None,
        typer.Option(
            "--reid-map",
            metavar="FILE",
            help="Also write the pseudonyms and new UIDs with the originals into FILE (0600; "
            "refused inside --out). Whoever holds it can re-identify the data.",
            rich_help_panel=PANEL,
        ),
    ] = None
    allow_burned_in: Annotated[
        bool,
        typer.Option(
            "--allow-burned-in",
            help="Also put images that may carry burned-in text (Burned In Annotation YES, "
            "ultrasound, secondary captures, documents) into Binaries, rendered images and "
            "de-identified files; by default each is left out and reported.",
            rich_help_panel=PANEL,
        ),
    ] = False

    def checked_reid_map(self, out: Path, deidentify: bool = True) -> Path | None:
        """``--reid-map``, or exit 2: without de-identification, or inside ``out``."""
        if self.reid_map is None:
            return None
        if not deidentify:
            raise fail("--reid-map needs --deidentify", ExitCode.USAGE)
        from fhirimg.deid.files import check_reid_map

        try:
            check_reid_map(self.reid_map, out)
        except ConfigError as exc:
            raise fail(str(exc), ExitCode.USAGE) from None
        return self.reid_map

    def options(self) -> DeidOptions:
        """The :class:`DeidOptions`, with the key from ``--deid-key-file`` or the environment;
        exit 2 without one."""
        if self.deid_key_file is not None:
            key = read_secret_file(self.deid_key_file, "--deid-key-file")
        else:
            key = os.environ.get(KEY_ENV, "")
        if not key:
            raise fail(
                f"de-identification needs a key: --deid-key-file FILE or ${KEY_ENV}",
                ExitCode.USAGE,
            )
        private: list[int] = []
        for text in self.keep_private or ():
            tag = text.strip("() ").replace(",", "")
            if len(tag) != 8 or not all(c in "0123456789abcdefABCDEF" for c in tag):
                raise fail(f"--keep-private takes 8 hex digits, not {text!r}", ExitCode.USAGE)
            private.append(int(tag, 16))
        try:
            return DeidOptions(
                key=key.encode("utf-8"),
                patient_system=self.deid_patient_system,
                retain_modified_dates=self.retain_modified_dates,
                retain_patient_characteristics=self.retain_patient_characteristics,
                clean_descriptors=self.clean_descriptors,
                retain_device_identity=self.retain_device_identity,
                retain_institution_identity=self.retain_institution_identity,
                keep_private=tuple(sorted(private)),
                allow_burned_in=self.allow_burned_in,
            )
        except ConfigError as exc:
            raise fail(str(exc), ExitCode.USAGE) from None
