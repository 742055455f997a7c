"""API keys (keyed hash, scopes, revocation, the CLI) and subject identifier hashing."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.security.keys import hash_api_key, parse_api_key
from app.security.models import ApiKey
from app.security.subjects import normalize_subject_id, subject_hmac
from app.settings import get_settings
from app.tenancy.models import Tenant
from tests.api.provenance_factory import assert_problem, unique
from workers.cli import main as lethe


def test_keys_are_stored_only_as_a_keyed_hash(auth_a, db_session) -> None:
    plaintext = auth_a["Authorization"].removeprefix("Bearer ")
    parsed = parse_api_key(plaintext)
    assert parsed is not None and plaintext.startswith("lethe_")
    stored = db_session.scalars(select(ApiKey).where(ApiKey.key_id == parsed.key_id)).one()
    assert stored.key_hash == hash_api_key(plaintext) != plaintext
    assert parsed.secret not in stored.key_hash


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer lethe_nope", "Basic dXNlcjpwYXNz", "Bearer lethe_0123456789abcdef_wrongsecret"],
)
def test_missing_or_invalid_keys_are_401(client, header) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.get("/v1/models", headers=headers)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_key_with_a_changed_secret_is_refused(client, auth_a) -> None:
    tampered = auth_a["Authorization"][:-2] + ("AA" if not auth_a["Authorization"].endswith("AA") else "BB")
    assert_problem(client.get("/v1/models", headers={"Authorization": tampered}), 401)
    assert client.get("/v1/models", headers=auth_a).status_code == 200


def test_cli_creates_a_tenant_and_a_key_printed_once(client, capsys) -> None:
    tenant = unique("cli-tenant")
    assert (
        lethe(["keys", "create", "--tenant", tenant, "--scope", "models:read,audit:read", "--name", "ci"])
        == 0
    )
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("lethe_") and f"created tenant {tenant}" in out.err
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    assert_problem(client.get("/v1/datasets", headers=headers), 403)

    # A second key for the same tenant sees the same data; `all` grants every scope.
    assert lethe(["keys", "create", "--tenant", tenant, "--scope", "all"]) == 0
    second = {"Authorization": f"Bearer {capsys.readouterr().out.strip()}"}
    created = client.post("/v1/models", json={"name": "shared", "task": "causal-lm"}, headers=second)
    assert created.status_code == 201
    assert [m["name"] for m in client.get("/v1/models", headers=headers).json()["items"]] == ["shared"]

    key_id = parse_api_key(key).key_id
    assert lethe(["keys", "revoke", key_id]) == 0
    assert_problem(client.get("/v1/models", headers=headers), 401)
    assert client.get("/v1/models", headers=second).status_code == 200


def test_cli_refuses_unknown_scopes(database_url, db_session, capsys) -> None:
    tenant = unique("cli-tenant")
    assert lethe(["keys", "create", "--tenant", tenant, "--scope", "models:everything"]) == 2
    assert "unknown scope" in capsys.readouterr().err
    assert db_session.scalars(select(Tenant).where(Tenant.name == tenant)).one_or_none() is None


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("  Alice@Example.COM\t", "alice@example.com"),
        ("ＡＬＩＣＥ", "alice"),  # fullwidth letters (NFKC)
        ("Straße", "strasse"),  # full case folding, not lower()
        ("ﬁle", "file"),  # ligature
    ],
)
def test_subject_ids_are_normalised(spelling, canonical) -> None:
    assert normalize_subject_id(spelling) == canonical
    assert subject_hmac(spelling) == subject_hmac(canonical)


def test_subject_hmac_depends_on_the_secret_key(monkeypatch) -> None:
    before = subject_hmac("alice")
    assert len(before) == 64 and "alice" not in before
    assert subject_hmac("alicia") != before
    monkeypatch.setattr(
        get_settings(), "subject_hmac_key", type(get_settings().subject_hmac_key)("other-key")
    )
    assert subject_hmac("alice") != before
