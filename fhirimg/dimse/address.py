"""DIMSE peers as ``AET@HOST:PORT``, AE titles, and the check that pynetdicom is installed.

Nothing here imports pynetdicom: the CLI checks options (and says what to install) before any
DIMSE work starts.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from fhirimg.errors import ConfigError

INSTALL_HINT = "DIMSE needs pynetdicom: install fhirimg[dimse] (pip install 'fhirimg[dimse]')"


def require_pynetdicom() -> None:
    """Raise :class:`ConfigError` with :data:`INSTALL_HINT` when pynetdicom is not installed."""
    if importlib.util.find_spec("pynetdicom") is None:
        raise ConfigError(INSTALL_HINT)


def check_ae_title(value: str, what: str = "AE title") -> str:
    """An Application Entity title (VR AE, PS3.5 6.2): 1-16 characters, no backslash and no
    control characters, not only spaces. Returns it without surrounding spaces.

    >>> check_ae_title(" FHIRIMG ")
    'FHIRIMG'
    >>> check_ae_title("A" * 17)
    Traceback (most recent call last):
    fhirimg.errors.ConfigError: AE title 'AAAAAAAAAAAAAAAAA' is longer than 16 characters
    """
    title = value.strip(" ")
    if not title:
        raise ConfigError(f"{what} is empty")
    if len(title) > 16:
        raise ConfigError(f"{what} {title!r} is longer than 16 characters")
    if "\\" in title or not title.isprintable() or not title.isascii():
        raise ConfigError(f"{what} {title!r}: only printable ASCII without backslash")
    return title


@dataclass(frozen=True)
class PacsAddress:
    """A DIMSE peer: its AE title (the *called* AE title of an association), host and port.

    >>> PacsAddress.parse("ORTHANC@pacs.example:4242")
    PacsAddress(aet='ORTHANC', host='pacs.example', port=4242)
    >>> str(PacsAddress.parse("PACS@[::1]:104"))
    'PACS@[::1]:104'
    """

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> PacsAddress:
        """``AET@HOST:PORT`` (an IPv6 host in brackets); :class:`ConfigError` otherwise."""
        aet, sep, rest = text.rpartition("@")
        host, colon, port_text = rest.rpartition(":")
        if not sep or not colon or not host or not port_text.isdigit():
            raise ConfigError(f"not AET@HOST:PORT: {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = int(port_text)
        if not 0 < port < 65536:
            raise ConfigError(f"port out of range in {text!r}")
        return cls(check_ae_title(aet, "the PACS AE title"), host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"

    def url(self) -> str:
        """The peer as a URL-like name for report.json paths: ``dicom://AET@HOST:PORT``."""
        return f"dicom://{self}"


__all__ = ["INSTALL_HINT", "PacsAddress", "check_ae_title", "require_pynetdicom"]
