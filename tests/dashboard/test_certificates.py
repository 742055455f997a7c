"""Deletion certificates: issued on completion, signed with Ed25519, served byte-stable, checked offline."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select

from app.audit.models import AuditEvent
from app.certificates.models import DeletionCertificate
from app.certificates.service import ISSUED_ACTION, issue_certificate
from app.certificates.signing import (
    KeyFormatError,
    SigningKey,
    load_private_key,
    load_public_key,
    public_key_pem,
    sign,
    verify,
)
from app.db import session_scope
from app.requests.models import DeletionRequest
from app.security.scopes import Scope
from app.security.subjects import subject_hmac
from tests.dashboard.conftest import TEST_SEED
from tests.dashboard.factory import Scenario, complete, new_request, start_job, write_report
from workers.cli import main as lethe

pytestmark = pytest.mark.usefixtures("certificates_ready")
URL = "/v1/deletion-requests"


def completed_scenario(client, tenant_id: str, auth: dict[str, str], tmp_path: Path) -> Scenario:
    scenario = new_request(client, tenant_id, auth)
    start_job(scenario)
    write_report(scenario, tmp_path / "report")
    complete(scenario)
    return scenario


@pytest.fixture
def completed(client, tenant_a: str, auth_a: dict[str, str], tmp_path: Path) -> Scenario:
    return completed_scenario(client, tenant_a, auth_a, tmp_path)


def public_key(client):
    answer = client.get("/v1/certificates/public-key")  # no API key: anyone may check a certificate
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/x-pem-file")
    return load_public_key(answer.content)


def test_completed_request_has_a_certificate_that_verifies(client, completed, auth_a) -> None:
    answer = client.get(f"{URL}/{completed.request_id}/certificate", headers=auth_a)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    result = verify(answer.content, public_key(client))
    assert result.ok, result.reason
    assert result.key_supplied

    certificate = result.certificate
    assert certificate is not None
    assert certificate["request_id"] == completed.request_id
    assert certificate["subject_hmac"] == subject_hmac(completed.subject)
    assert completed.subject not in answer.text  # the identifier itself never appears
    assert certificate["regime"] == "gdpr" and certificate["on_time"] is True
    assert certificate["samples"]["count"] == 3
    (model,) = certificate["models"]
    assert model["model"] == completed.model_name
    assert (model["version_before"], model["version_after"]) == (1, 2)
    assert model["method"] == "nabla_tau"
    assert model["verification"]["verdict"] == "pass"
    # key metrics are the candidate's numbers; the served version's own ones are left out
    assert model["verification"]["metrics"]["lira.forget_auc.candidate-reference"]["value"] == 0.012
    assert "lira.forget_auc.served" not in model["verification"]["metrics"]
    assert [rule["rule"] for rule in model["verification"]["rules"]] == [
        "mia_forget_auc",
        "utility_accuracy_test",
    ]

    # Byte-stable: served again, the same bytes.
    assert client.get(f"{URL}/{completed.request_id}/certificate", headers=auth_a).content == answer.content


def test_certificate_names_the_audit_head_at_completion_and_is_itself_audited(
    client, completed, auth_a, tenant_a
) -> None:
    document = client.get(f"{URL}/{completed.request_id}/certificate", headers=auth_a).content
    head = json.loads(document)["certificate"]["audit_head"]
    with session_scope() as session:
        events = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.tenant_id == tenant_a, AuditEvent.entity_id == completed.request_id)
                .order_by(AuditEvent.seq)
            )
        )
    completion = next(e for e in events if e.action == "deletion_request.completed")
    issued = next(e for e in events if e.action == ISSUED_ACTION)
    assert (head["seq"], head["hash"]) == (completion.seq, completion.hash)
    assert issued.seq == completion.seq + 1
    assert issued.data["sha256"] == hashlib.sha256(document).hexdigest()
    assert client.get("/v1/audit/verify", headers=auth_a).json()["ok"] is True


def test_every_changed_byte_fails_verification(client, completed, auth_a) -> None:
    document = client.get(f"{URL}/{completed.request_id}/certificate", headers=auth_a).content
    key = public_key(client)
    assert verify(document, key).ok
    accepted = []
    for position in range(len(document)):
        for flip in (0x01, 0x20):
            tampered = bytearray(document)
            tampered[position] ^= flip
            if verify(bytes(tampered), key).ok:
                accepted.append((position, flip))
    assert accepted == []


def test_a_certificate_signed_by_another_key_fails_against_the_published_key(
    client, completed, auth_a
) -> None:
    document = json.loads(client.get(f"{URL}/{completed.request_id}/certificate", headers=auth_a).content)
    forged = sign(document["certificate"], SigningKey(Ed25519PrivateKey.generate()))
    assert verify(forged).ok  # consistent with the key it embeds...
    result = verify(forged, public_key(client))
    assert not result.ok and "not by the given key" in result.reason  # ...but not the issuer's


def test_cli_checks_a_certificate_offline(client, completed, auth_a, tmp_path, capsys) -> None:
    certificate_file = tmp_path / "certificate.json"
    certificate_file.write_bytes(
        client.get(f"{URL}/{completed.request_id}/certificate", headers=auth_a).content
    )
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(client.get("/v1/certificates/public-key").content)

    assert lethe(["certificate", "verify", str(certificate_file), "--public-key", str(key_file)]) == 0
    output = capsys.readouterr().out
    assert output.startswith("VALID") and completed.request_id in output and "v" in output

    text = certificate_file.read_text()
    certificate_file.write_text(text.replace('"on_time":true', '"on_time":false'))
    assert lethe(["certificate", "verify", str(certificate_file), "--public-key", str(key_file)]) == 1
    assert "INVALID" in capsys.readouterr().err

    other = tmp_path / "other.pem"
    other.write_text(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    certificate_file.write_text(text)
    assert lethe(["certificate", "verify", str(certificate_file), "--public-key", str(other)]) == 1
    assert lethe(["certificate", "verify", str(certificate_file)]) == 0  # embedded key only, with a note
    assert "embedded" in capsys.readouterr().err


def test_no_certificate_before_completion_nor_for_others(
    client, tenant_a, auth_a, auth_b, make_key, tmp_path
) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    open_answer = client.get(f"{URL}/{scenario.request_id}/certificate", headers=auth_a)
    assert open_answer.status_code == 404
    assert open_answer.headers["content-type"] == "application/problem+json"
    assert "resolved" in open_answer.json()["detail"]
    with session_scope() as session, pytest.raises(ValueError, match="issued on completion"):
        issue_certificate(session, session.get(DeletionRequest, scenario.request_id))

    start_job(scenario)
    write_report(scenario, tmp_path / "report")
    complete(scenario)
    assert client.get(f"{URL}/{scenario.request_id}/certificate", headers=auth_a).status_code == 200
    assert client.get(f"{URL}/{scenario.request_id}/certificate", headers=auth_b).status_code == 404
    models_only = make_key(tenant_a, [Scope.MODELS_READ])
    assert client.get(f"{URL}/{scenario.request_id}/certificate", headers=models_only).status_code == 403
    assert client.get(f"{URL}/{scenario.request_id}/certificate").status_code == 401


def test_issuing_again_answers_the_same_certificate(client, completed, tenant_a) -> None:
    with session_scope() as session:
        request = session.get(DeletionRequest, completed.request_id)
        first = issue_certificate(session, request).document
        again = issue_certificate(session, request).document
        issued = session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == tenant_a, AuditEvent.action == ISSUED_ACTION)
        ).all()
    assert first == again
    assert len([e for e in issued if e.entity_id == completed.request_id]) == 1


def test_signing_key_accepts_pem_and_base64_seed() -> None:
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    from_pem, from_seed = load_private_key(pem), load_private_key(base64.b64encode(seed).decode())
    assert public_key_pem(from_pem.public_key()) == public_key_pem(from_seed.public_key())
    for bad in ("not a key", base64.b64encode(b"short").decode()):
        with pytest.raises(KeyFormatError):
            load_private_key(bad)


def test_public_key_is_the_configured_one(client) -> None:
    answer = client.get("/v1/certificates/public-key")
    configured = load_private_key(base64.b64encode(TEST_SEED).decode())
    assert answer.text == public_key_pem(configured.public_key())
    assert answer.headers["lethe-key-id"] == SigningKey(configured).key_id


@pytest.mark.parametrize("key_format", ["pem", "seed"])
def test_generated_keys_are_accepted_as_signing_keys(key_format, capsys) -> None:
    assert lethe(["certificate", "generate-key", "--format", key_format]) == 0
    key = SigningKey(load_private_key(capsys.readouterr().out))
    assert verify(sign({"request_id": "r"}, key), key.public_key).ok


def test_cli_issues_a_missing_certificate(client, completed, auth_a, capsys) -> None:
    """A request completed without its certificate (e.g. before the signing key was configured)."""
    url = f"{URL}/{completed.request_id}/certificate"
    with session_scope() as session:
        session.execute(
            delete(DeletionCertificate).where(DeletionCertificate.request_id == completed.request_id)
        )
    assert client.get(url, headers=auth_a).status_code == 404
    assert lethe(["certificate", "issue", completed.request_id]) == 0
    assert completed.request_id in capsys.readouterr().out
    assert verify(client.get(url, headers=auth_a).content, public_key(client)).ok
    assert lethe(["certificate", "issue", "no-such-request"]) == 1
