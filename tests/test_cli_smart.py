"""SMART Backend Services: ``--token-url`` with a ``--jwt-key`` client assertion (RS384, ES384)
against a local token endpoint that verifies the assertion (tests/servers/smart_token.py), and the
token it issues required by the fault proxy in front of the real FHIR test server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.http import PrivateKeyJwtAuth
from fhirimg.http.jwt import SigningKey, b64url
from tests.conftest import count
from tests.helpers import SAMPLE
from tests.servers.faultproxy import FaultProxy
from tests.servers.fhir_server import FhirTestServer
from tests.servers.smart_token import SmartTokenEndpoint

runner = CliRunner()
TOKEN = "tok-SMART-backend-7"
CLIENT = "fhirimg-backend"


def _pem(key: Any, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    # The EC key as a private JWK with its own kid, as a JWKS generator writes it.
    numbers = ec_key.private_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-384",
        "kid": "ec-key-from-jwk",
        "x": b64url(numbers.public_numbers.x.to_bytes(48, "big")),
        "y": b64url(numbers.public_numbers.y.to_bytes(48, "big")),
        "d": b64url(numbers.private_value.to_bytes(48, "big")),
    }
    jwk_file = folder / "ec.jwk.json"
    jwk_file.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    jwk_file.chmod(0o600)
    return {
        "rsa": rsa_key,
        "ec": ec_key,
        "rsa_pem": _pem(rsa_key, folder / "rsa.pem"),
        "ec_jwk": jwk_file,
        "p256_pem": _pem(ec.generate_private_key(ec.SECP256R1()), folder / "p256.pem"),
        "folder": folder,
    }


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smart") / "out"
    result = runner.invoke(
        app, ["convert", str(SAMPLE / "study_b_mr"), "-o", str(out), "-q", "-j", "1"]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def proxy(clean_fhir: FhirTestServer) -> Iterator[FaultProxy]:
    with FaultProxy(clean_fhir.base_url) as running:
        running.require_bearer(TOKEN)
        yield running


@pytest.mark.server
@pytest.mark.parametrize(
    ("which", "alg", "kid"),
    [("rsa", "RS384", "rsa-kid-1"), ("ec", "ES384", "ec-key-from-jwk")],
)
def test_a_signed_assertion_gets_a_token_the_server_takes(
    keys: dict[str, Any],
    bundles: Path,
    proxy: FaultProxy,
    clean_fhir: FhirTestServer,
    which: str,
    alg: str,
    kid: str,
) -> None:
    jwks = {kid: keys[which].public_key()}
    with SmartTokenEndpoint(CLIENT, jwks, TOKEN) as idp:
        args = ["push", str(bundles), "--server", proxy.base_url, "-q", "--retries", "0"]
        env = {}
        if which == "rsa":  # options on the command line, the kid given
            args += ["--token-url", idp.url, "--client-id", CLIENT, "--jwt-key"]
            args += [str(keys["rsa_pem"]), "--jwt-kid", kid, "--scope", "system/*.write"]
        else:  # from the environment, the kid the JWK file holds
            env = {
                "FHIRIMG_TOKEN_URL": idp.url,
                "FHIRIMG_CLIENT_ID": CLIENT,
                "FHIRIMG_JWT_KEY": str(keys["ec_jwk"]),
            }
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert idp.refusals == []
        assert idp.accepted == 1  # one token for the whole run
        header = idp.assertions[0]["header"]
        assert (header["alg"], header["kid"], header["typ"]) == (alg, kid, "JWT")
    assert count(clean_fhir.base_url, "ImagingStudy") == 1
    assert proxy.log
    assert all(s.authorization == f"Bearer {TOKEN}" for s in proxy.log)


@pytest.mark.server
def test_a_key_the_server_does_not_know_is_refused(
    keys: dict[str, Any], bundles: Path, proxy: FaultProxy, clean_fhir: FhirTestServer
) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    # Same kid, another public key registered: the signature does not verify.
    with SmartTokenEndpoint(CLIENT, {"ec-key-from-jwk": other.public_key()}, TOKEN) as idp:
        args = ["push", str(bundles), "--server", proxy.base_url, "--retries", "0", "-q"]
        args += ["--token-url", idp.url, "--client-id", CLIENT, "--jwt-key", str(keys["ec_jwk"])]
        result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "refused the client credentials" in result.output
    assert idp.refusals == ["bad signature"]
    assert count(clean_fhir.base_url, "ImagingStudy") == 0


def test_every_token_request_has_a_fresh_assertion(keys: dict[str, Any]) -> None:
    key = SigningKey.from_private_key(keys["rsa"])
    jwks = {key.kid: keys["rsa"].public_key()}  # the default kid: the RFC 7638 thumbprint
    with SmartTokenEndpoint(CLIENT, jwks, TOKEN) as idp, httpx.Client() as client:
        auth = PrivateKeyJwtAuth(idp.url, CLIENT, key, "system/*.read")
        for _ in range(2):
            answer = client.send(auth._token_request())
            assert answer.status_code == 200, idp.refusals
            assert answer.json()["access_token"] == TOKEN
        replay = client.post(idp.url, content=auth._token_request().read())
        replay_again = client.post(idp.url, content=replay.request.content)
    assert idp.accepted == 3
    assert replay_again.status_code == 401
    assert idp.refusals == ["jti replayed"]
    claims = [a["claims"] for a in idp.assertions]
    assert len({c["jti"] for c in claims}) == 3
    assert all(c["exp"] - c["iat"] <= 300 for c in claims)
    assert "PRIVATE" not in repr(auth)
    assert key.kid in repr(auth)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--jwt-key", "{rsa_pem}"], "--jwt-key needs --token-url"),
        (["--token-url", "http://127.0.0.1:9/t", "--jwt-key", "{rsa_pem}"], "needs --client-id"),
        (
            ["--token-url", "http://127.0.0.1:9/t", "--client-id", "c", "--jwt-key", "{rsa_pem}"]
            + ["--client-secret-file", "{rsa_pem}"],
            "not both",
        ),
        (["--jwt-kid", "k"], "--jwt-kid needs --jwt-key"),
        (
            ["--token-url", "http://127.0.0.1:9/t", "--client-id", "c", "--jwt-key", "{p256}"],
            "ES384 needs P-384",
        ),
        (
            ["--token-url", "http://127.0.0.1:9/t", "--client-id", "c", "--jwt-key", "{junk}"],
            "not a PEM private key",
        ),
    ],
)
def test_key_options_that_cannot_work_are_usage_errors(
    keys: dict[str, Any], bundles: Path, extra: list[str], words: str
) -> None:
    junk = keys["folder"] / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n", encoding="utf-8")
    values = {"rsa_pem": keys["rsa_pem"], "p256": keys["p256_pem"], "junk": junk}
    args = [a.format(**values) for a in extra]
    result = runner.invoke(app, ["push", str(bundles), "--server", "http://127.0.0.1:9/f", *args])
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert "BEGIN" not in result.output
