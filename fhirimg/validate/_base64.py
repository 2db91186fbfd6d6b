"""One decode of a base64 element for the layers that need it: the schema layer checks it is
well-formed, the imaging layer checks ``Attachment.size`` and ``hash`` against its bytes.

A rendered image's ``Attachment.data`` (a few hundred KB of base64) was decoded once by each of
them, after the model layer's own decode (profile of ``convert --media``: five decodes a Media,
~1.4 ms each). The last long string decoded is kept with its bytes, recognised by identity (strings
are immutable: the same object holds the same text), so the second layer reuses the first's.
Short ones are not kept: the schema layer decodes ``Attachment.hash`` (28 characters) between
the two decodes of ``data``, and keeping it threw the image's bytes away (the second decode
was never saved).
"""

from __future__ import annotations

import binascii

_last: tuple[str, bytes] | None = None
_KEEP = 4096  # characters: shorter texts decode in microseconds


def strict_decode(text: str) -> bytes | None:
    """The bytes of ``text`` when it is well-formed base64 (RFC 4648, padded), else None.

    >>> strict_decode("aGk="), strict_decode("aGk"), strict_decode("é")
    (b'hi', None, None)
    """
    global _last
    if _last is not None and _last[0] is text:
        return _last[1]
    if not text.isascii():
        return None  # binascii raises ValueError, not binascii.Error, on other characters
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return None
    if len(text) >= _KEEP:
        _last = (text, raw)
    return raw
