"""Text from elsewhere made safe to show: URLs without secrets, server text without control codes.

Two kinds of text reach people's terminals and logs from outside fhirimg's control:

- URLs the user typed, which may carry credentials (``https://user:PW@pacs/``, ``?access_token=``);
  messages name servers by URL, so every such URL goes through :func:`redact_url` first.
- Text that a server or an input file wrote (OperationOutcome diagnostics, PACS error text, file
  names): an ESC byte in it can clear the screen, retitle the window or hide text, and a C1 control
  (U+0080..U+009F) does the same on terminals that honour 8-bit controls. rich escapes its own markup,
  not these. :func:`clean` removes them (ECMA-48 C0/C1 controls), keeping tab and newline.

:func:`refuse_url_credentials` is the one check that a URL the user gave carries no credential,
used wherever fhirimg takes a server URL (library options and every command's URL options).

This module imports nothing from fhirimg but the exception tree (a leaf): every layer may use it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fhirimg.errors import ConfigError

__all__ = [
    "CREDENTIAL_PARAMS",
    "clean",
    "credential_params",
    "redact_url",
    "redact_urls",
    "refuse_url_credentials",
    "url_credentials",
]

# Query parameters that carry a credential in the wild (OAuth2 RFC 6750 2.3 access_token, API
# keys, signed-URL signatures). Compared case-insensitively.
CREDENTIAL_PARAMS = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "api_key",
        "apikey",
        "key",
        "password",
        "passwd",
        "pwd",
        "secret",
        "client_secret",
        "client_assertion",
        "code",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
    }
)

# ECMA-48: C0 controls but tab and newline, DEL, and the C1 range; plus a whole escape sequence
# (CSI ... final byte, OSC ... BEL/ST) so no half of it is left to show as text.
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, ended by BEL or ST
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
    r"|\x9d[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # 8-bit OSC
    r"|\x1b[@-_]?"  # any other ESC (+ its Fe byte)
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: object) -> str:
    """``text`` as a string without terminal control codes (tab and newline kept).

    >>> clean("refused\\x1b[2J: \\x1b]0;owned\\x07bad\\x9b31m value\\r")
    'refused: bad value'
    >>> clean("Müller\\tok\\n")
    'Müller\\tok\\n'
    """
    return _CONTROLS.sub("", _ESCAPE_SEQUENCE.sub("", str(text)))


def credential_params(url: str) -> list[str]:
    """The names of the query parameters of ``url`` that look like credentials.

    >>> credential_params("https://pacs/wado?access_token=x&StudyDate=2020")
    ['access_token']
    """
    query = urlsplit(url).query
    return [
        k for k, _ in parse_qsl(query, keep_blank_values=True) if k.lower() in CREDENTIAL_PARAMS
    ]


def redact_url(url: str) -> str:
    """``url`` fit to print: no user name or password, credential-like query values hidden.

    >>> redact_url("https://alice:s3cret@pacs.example:8443/dicom-web?access_token=abc&limit=5")
    'https://pacs.example:8443/dicom-web?access_token=***&limit=5'
    >>> redact_url("not a url")
    'not a url'
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return clean(url.rpartition("@")[2])
    if not parts.scheme or not parts.netloc:
        return clean(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    query = parts.query
    if query and credential_params(url):
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in CREDENTIAL_PARAMS else v) for k, v in pairs], safe="*/:"
        )
    return clean(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def redact_urls(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`: the last line of defence
    of a message that names a server (the CLI's ``fail`` applies it to every error line).

    >>> redact_urls("cannot reach 'http://u:pw@fhir.example/r4?token=x': refused")
    "cannot reach 'http://fhir.example/r4?token=***': refused"
    """
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def url_credentials(url: str) -> list[str]:
    """What in ``url`` is a credential: its user name / password, and credential-like query
    parameters (:data:`CREDENTIAL_PARAMS`). Empty when there is none.

    >>> url_credentials("https://alice:s3cret@pacs/dicom-web?access_token=x&limit=5")
    ['a user name and password', 'the query parameter access_token']
    >>> url_credentials("https://pacs.example/dicom-web")
    []
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = []
    if parts.username is not None or parts.password is not None:
        found.append("a user name and password")
    found += [f"the query parameter {name}" for name in credential_params(url)]
    return found


def refuse_url_credentials(url: str | None, option: str, how: str = "") -> None:
    """Raise :class:`~fhirimg.errors.ConfigError` when ``url`` carries a credential.

    A URL is written into bundles (``Endpoint.address``), the journal and messages; a password
    or token in it would be published to every reader. ``option`` names where the URL came from
    (``--dicomweb-url``), ``how`` the proper way to give the credential. The message shows the
    URL redacted.

    >>> refuse_url_credentials("https://pacs.example/dicom-web", "--dicomweb-url")
    >>> refuse_url_credentials("https://u:pw@pacs.example/", "--dicomweb-url")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    fhirimg.errors.ConfigError: --dicomweb-url https://pacs.example/ holds a user name and ...
    """
    if not url:
        return
    found = url_credentials(url)
    if found:
        advice = f"; {how}" if how else ""
        raise ConfigError(
            f"{option} {redact_url(url)} holds {' and '.join(found)}: credentials must not be "
            f"in a URL (it is written into bundles, journals and messages){advice}"
        )
