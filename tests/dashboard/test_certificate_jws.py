"""Deletion certificates as a standard JWS (RFC 7515, EdDSA): checked here with PyJWT, a JOSE library that
is not Lethe's code, against the published key as PEM and as a JWK Set."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.certificates import service
from app.certificates.signing import SigningKey, public_key_pem
from tests.dashboard.factory import Scenario
from tests.dashboard.test_certificates import URL, completed_scenario
from workers.cli import main as lethe

pytestmark = pytest.mark.usefixtures("certificates_ready")


@pytest.fixture
def completed(client, tenant_a: str, auth_a: dict[str, str], tmp_path: Path) -> Scenario:
    return completed_scenario(client, tenant_a, auth_a, tmp_path)


def jws_of(client, scenario: Scenario, auth: dict[str, str]) -> str:
    answer = client.get(f"{URL}/{scenario.request_id}/certificate", params={"format": "jws"}, headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/jwt")
    return answer.text


def test_a_jose_library_verifies_the_jws_certificate(client, completed, auth_a) -> None:
    token = jws_of(client, completed, auth_a)
    pem = client.get("/v1/certificates/public-key").content  # public, as for the JSON form
    claims = jwt.decode(token, pem, algorithms=["EdDSA"])
    issued = json.loads(client.get(f"{URL}/{completed.request_id}/certificate", headers=auth_a).content)
    assert claims == issued["certificate"]  # the same statement as the JSON form
    assert claims["request_id"] == completed.request_id

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["kid"] == issued["signature"]["key_id"]
    jwks = client.get("/v1/certificates/jwks.json").json()
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    assert jwt.decode(token, key.key, algorithms=["EdDSA"]) == claims

    assert jws_of(client, completed, auth_a) == token  # Ed25519 is deterministic: the same token again


def test_a_changed_token_or_another_key_fails(client, completed, auth_a) -> None:
    token = jws_of(client, completed, auth_a)
    pem = client.get("/v1/certificates/public-key").content
    head, payload, signature = token.split(".")
    claims = jwt.decode(token, pem, algorithms=["EdDSA"])
    forged_payload = jwt.utils.base64url_encode(
        json.dumps({**claims, "on_time": not claims["on_time"]}).encode()
    )
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{head}.{forged_payload.decode()}.{signature}", pem, algorithms=["EdDSA"])
    other = public_key_pem(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other, algorithms=["EdDSA"])
    # A verifier that insists on another algorithm refuses it rather than guessing.
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, pem, algorithms=["ES256"])


def test_lethe_checks_a_jws_certificate_offline(client, completed, auth_a, tmp_path, capsys) -> None:
    token_file = tmp_path / "certificate.jws"
    token_file.write_text(jws_of(client, completed, auth_a))
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(client.get("/v1/certificates/public-key").content)
    assert lethe(["certificate", "verify", str(token_file), "--public-key", str(key_file)]) == 0
    output = capsys.readouterr().out
    assert output.startswith("VALID") and completed.request_id in output

    head, payload, signature = token_file.read_text().split(".")
    flipped = signature[:-2] + ("AA" if not signature.endswith("AA") else "BA")
    token_file.write_text(f"{head}.{payload}.{flipped}")
    assert lethe(["certificate", "verify", str(token_file), "--public-key", str(key_file)]) == 1
    assert "INVALID" in capsys.readouterr().err
    assert lethe(["certificate", "verify", str(token_file)]) == 2  # a JWS carries no key to check against
    assert "--public-key" in capsys.readouterr().err


def test_no_jws_from_a_key_that_did_not_sign_it(client, completed, auth_a, monkeypatch) -> None:
    monkeypatch.setattr(service, "signing_key", lambda: SigningKey(Ed25519PrivateKey.generate()))
    answer = client.get(f"{URL}/{completed.request_id}/certificate?format=jws", headers=auth_a)
    assert answer.status_code == 409
    assert answer.headers["content-type"] == "application/problem+json"
    assert "fetch the JSON form" in answer.json()["detail"]
    assert client.get(f"{URL}/{completed.request_id}/certificate", headers=auth_a).status_code == 200
    assert (
        client.get(f"{URL}/{completed.request_id}/certificate?format=xml", headers=auth_a).status_code == 422
    )
