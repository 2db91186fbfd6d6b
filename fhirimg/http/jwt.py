"""Signed client assertions for SMART Backend Services (``private_key_jwt``, RFC 7523).

An EHR-hosted FHIR server admits a backend service by OAuth2 ``client_credentials`` where the
client proves who it is with a short-lived JWT signed by its private key, whose public half the
EHR holds in the client's registered JWKS (SMART App Launch 2.x, "Backend Services"). The JWT's
header names the algorithm (``RS384`` or ``ES384``, the two every SMART server supports) and the
key id ``kid`` of the JWKS entry; its claims are ``iss`` = ``sub`` = the client id, ``aud`` = the
token URL, ``exp`` at most five minutes ahead, and a ``jti`` never used before.

Only ``cryptography`` is needed (already a dependency through httpx's TLS stack and trustme):
a JWS with one fixed header shape is a few lines, no JWT library.

>>> from cryptography.hazmat.primitives.asymmetric import ec
>>> key = SigningKey.from_private_key(ec.generate_private_key(ec.SECP384R1()), kid="k1")
>>> key.alg, key.kid
('ES384', 'k1')
>>> header, claims, _ = client_assertion(key, "app", "https://ehr/token", now=1000).split(".")
>>> sorted(json.loads(b64url_decode(claims)))
['aud', 'exp', 'iat', 'iss', 'jti', 'sub']
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from fhirimg.errors import ConfigError

__all__ = ["ASSERTION_TYPE", "SigningKey", "b64url_decode", "client_assertion", "load_signing_key"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
"""``client_assertion_type`` of a JWT client assertion (RFC 7523 section 2.2)."""

LIFETIME_S = 300
"""Seconds a client assertion is valid: SMART asks for no more than five minutes."""

_ES384_SIZE = 48  # bytes of r and of s for P-384 (RFC 7518 section 3.4)


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2).

    >>> b64url(b"\\xfb\\xff")
    '-_8'
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The bytes of a base64url text with or without padding."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def _from_int(text: Any) -> int:
    if not isinstance(text, str):
        raise ConfigError("a JWK number is not a base64url string")
    return int.from_bytes(b64url_decode(text), "big")


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    """A private key that signs client assertions, its JWS algorithm and its ``kid``.

    ``repr`` shows neither the key nor its numbers.
    """

    key: PrivateKey
    alg: str
    kid: str

    def __repr__(self) -> str:
        return f"SigningKey(alg={self.alg!r}, kid={self.kid!r}, key=***)"

    @classmethod
    def from_private_key(cls, key: Any, kid: str | None = None) -> SigningKey:
        """RSA (2048 bits or more) signs RS384, an EC key on P-384 ES384; ``kid`` defaults to
        the key's RFC 7638 thumbprint. :class:`ConfigError` for any other key."""
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 2048:
                raise ConfigError(f"an RSA key of {key.key_size} bits is too small (2048 at least)")
            alg = "RS384"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            if not isinstance(key.curve, ec.SECP384R1):
                raise ConfigError(
                    f"an EC key on {key.curve.name}: ES384 needs P-384 (secp384r1); SMART servers "
                    "take RS384 or ES384"
                )
            alg = "ES384"
        else:
            raise ConfigError("not an RSA or EC private key (SMART takes RS384 or ES384)")
        made = cls(key, alg, "")
        return cls(key, alg, kid or made.thumbprint())

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (what the client registers in its JWKS), with ``kid``/``alg``.

        Members in RFC 7638's order, so that :meth:`thumbprint` is over the required ones.
        """
        if isinstance(self.key, rsa.RSAPrivateKey):
            numbers = self.key.public_key().public_numbers()
            jwk = {"e": _int(numbers.e), "kty": "RSA", "n": _int(numbers.n)}
        else:
            point = self.key.public_key().public_numbers()
            jwk = {
                "crv": "P-384",
                "kty": "EC",
                "x": b64url(point.x.to_bytes(_ES384_SIZE, "big")),
                "y": b64url(point.y.to_bytes(_ES384_SIZE, "big")),
            }
        return {**jwk, "alg": self.alg, "kid": self.kid} if self.kid else jwk

    def thumbprint(self) -> str:
        """The RFC 7638 JWK thumbprint (SHA-256) of the public key, the usual default ``kid``."""
        required = {k: v for k, v in self.public_jwk().items() if k not in ("alg", "kid")}
        canonical = json.dumps(required, separators=(",", ":"), sort_keys=True)
        return b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def sign(self, data: bytes) -> bytes:
        """The JWS signature of ``data`` (RS384: PKCS#1 v1.5; ES384: raw r || s)."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA384())
        r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(hashes.SHA384())))
        return r.to_bytes(_ES384_SIZE, "big") + s.to_bytes(_ES384_SIZE, "big")


def _jwk_private(jwk: dict[str, Any]) -> PrivateKey:
    kty = jwk.get("kty")
    if kty == "RSA":
        n, e = _from_int(jwk.get("n")), _from_int(jwk.get("e"))
        p, q, d = (_from_int(jwk.get(k)) for k in ("p", "q", "d"))
        numbers = rsa.RSAPrivateNumbers(
            p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
            rsa.RSAPublicNumbers(e, n),
        )  # fmt: skip
        return numbers.private_key()
    if kty == "EC":
        if jwk.get("crv") != "P-384":
            raise ConfigError(f"a JWK on curve {jwk.get('crv')!r}: ES384 needs P-384")
        x, y, d = (_from_int(jwk.get(k)) for k in ("x", "y", "d"))
        public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1())
        return ec.EllipticCurvePrivateNumbers(d, public).private_key()
    raise ConfigError(f"a JWK of kty {kty!r}: RSA or EC wanted")


def load_signing_key(data: bytes, kid: str | None = None) -> SigningKey:
    """The signing key in ``data``: a PEM private key (PKCS#8 or traditional, unencrypted), a
    private JWK, or a JWKS holding one private key. ``kid`` given wins; else the JWK's own
    ``kid``; else the RFC 7638 thumbprint. :class:`ConfigError` saying why when unusable
    (never quoting the key).
    """
    text = data.strip()
    if text.startswith(b"{"):
        try:
            doc = json.loads(text)
        except ValueError:
            raise ConfigError("the key file is neither PEM nor JSON (a JWK)") from None
        jwks = doc.get("keys") if isinstance(doc, dict) else None
        candidates = jwks if isinstance(jwks, list) else [doc]
        private = [k for k in candidates if isinstance(k, dict) and "d" in k]
        if len(private) != 1:
            raise ConfigError(f"the JWK file holds {len(private)} private keys, not one")
        jwk = private[0]
        try:
            key = _jwk_private(jwk)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"the JWK is not a usable private key: {exc}") from None
        own = jwk.get("kid")
        return SigningKey.from_private_key(key, kid or (own if isinstance(own, str) else None))
    try:
        pem = serialization.load_pem_private_key(text, password=None)
    except (ValueError, TypeError) as exc:
        reason = "it is encrypted" if "encrypted" in str(exc).lower() else "not a PEM private key"
        raise ConfigError(f"cannot load the private key: {reason}") from None
    return SigningKey.from_private_key(pem, kid)


def client_assertion(
    key: SigningKey, client_id: str, token_url: str, now: float | None = None
) -> str:
    """A signed client assertion for one token request: ``iss`` = ``sub`` = ``client_id``,
    ``aud`` = ``token_url``, ``exp`` :data:`LIFETIME_S` ahead, a fresh random ``jti``."""
    issued = int(time.time() if now is None else now)
    header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": issued + LIFETIME_S,
        "iat": issued,
        "jti": str(uuid.uuid4()),
    }
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode("utf-8")) for part in (header, claims)
    )
    signature = key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(signature)}"
