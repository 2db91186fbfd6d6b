"""A SMART Backend Services token endpoint for tests: a real HTTP server on loopback that admits a
client only with a valid ``private_key_jwt`` client assertion (RFC 7523, SMART App Launch 2.x).

It checks what an EHR's authorization server checks: ``grant_type`` and
``client_assertion_type``; the JWT's header (``alg`` RS384 or ES384, ``typ``, a ``kid`` of the
registered JWKS) and signature with that public key; ``iss`` and ``sub`` equal to the registered
client id; ``aud`` equal to this endpoint's URL; ``exp`` in the future and at most five minutes
ahead; a ``jti`` never seen before. Each refusal is a 401 ``invalid_client`` and its reason is kept
in ``refusals``; an accepted assertion gets ``token`` (what the FHIR side then requires).

    with SmartTokenEndpoint("fhirimg", {"k1": public_key}, token="tok-x") as idp:
        ... --token-url idp.url --client-id fhirimg --jwt-key key.pem
        assert idp.accepted == 1

The verifying code is written against the specs, not against fhirimg's signer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Refused(Exception):
    """Why an assertion is not accepted."""


class SmartTokenEndpoint:
    """The token endpoint; ``url`` is what ``--token-url`` names (and the expected ``aud``)."""

    def __init__(self, client_id: str, jwks: dict[str, PublicKey], token: str) -> None:
        self.client_id = client_id
        self.jwks = jwks
        self.token = token
        self.accepted = 0
        self.refusals: list[str] = []
        self.assertions: list[dict[str, Any]] = []
        self._jti: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/auth/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SmartTokenEndpoint:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def check(self, form: dict[str, list[str]]) -> None:
        """Raise :class:`Refused` unless ``form`` is a valid client-credentials request."""

        def one(name: str) -> str:
            values = form.get(name, [])
            if len(values) != 1:
                raise Refused(f"{name} missing or repeated")
            return values[0]

        if one("grant_type") != "client_credentials":
            raise Refused("grant_type")
        if one("client_assertion_type") != ASSERTION_TYPE:
            raise Refused("client_assertion_type")
        parts = one("client_assertion").split(".")
        if len(parts) != 3:
            raise Refused("not a JWS compact serialisation")
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        self.assertions.append({"header": header, "claims": claims})
        key = self.jwks.get(header.get("kid"))
        if key is None:
            raise Refused(f"unknown kid {header.get('kid')!r}")
        if header.get("typ") != "JWT":
            raise Refused("typ")
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        signature = _unb64(parts[2])
        try:
            if header.get("alg") == "RS384" and isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA384())
            elif header.get("alg") == "ES384" and isinstance(key, ec.EllipticCurvePublicKey):
                if len(signature) != 96:
                    raise Refused("ES384 signature is not 96 bytes")
                r = int.from_bytes(signature[:48], "big")
                s = int.from_bytes(signature[48:], "big")
                key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA384()))
            else:
                raise Refused(f"alg {header.get('alg')!r} for this key")
        except InvalidSignature:
            raise Refused("bad signature") from None
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            raise Refused("iss/sub")
        if claims.get("aud") != self.url:
            raise Refused("aud")
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= now or exp > now + 300 + 5:
            raise Refused("exp")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise Refused("jti missing")
        with self._lock:
            if jti in self._jti:
                raise Refused("jti replayed")
            self._jti.add(jti)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode("utf-8"))
                if self.path != "/auth/token":
                    self._send(404, {"error": "not_found"})
                    return
                if self.headers.get("Authorization"):
                    endpoint.refusals.append("a secret sent besides the assertion")
                    self._send(400, {"error": "invalid_request"})
                    return
                try:
                    endpoint.check(form)
                except (Refused, ValueError, KeyError) as exc:
                    endpoint.refusals.append(str(exc))
                    self._send(401, {"error": "invalid_client"})
                    return
                endpoint.accepted += 1
                scope = form.get("scope", [""])[0]
                self._send(
                    200,
                    {
                        "access_token": endpoint.token,
                        "token_type": "bearer",
                        "expires_in": 300,
                        "scope": scope,
                    },
                )

        return Handler
