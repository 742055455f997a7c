"""Audit checkpoints: the chain head signed into an append-only store outside the database, and the
tampering a database writer can do without breaking the hash chain (truncating its tail, deleting a
tenant's chain, editing an event and recomputing every later hash) found against the latest checkpoint."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr
from sqlalchemy import delete, select, update

from app.audit import checkpoints
from app.audit.checkpoints import (
    CheckpointStore,
    check_all,
    checkpoint_moved_heads,
    checkpoint_tenants,
    parse_checkpoint,
    sign_checkpoint,
)
from app.audit.models import GENESIS_HASH, AuditEvent, AuditHead
from app.audit.service import event_hash, record
from app.certificates.signing import SigningKey
from app.db import session_scope, utcnow
from app.outbox.celery_client import AUDIT_CHECKPOINT_TASK
from app.outbox.models import OutboxMessage
from app.settings import get_settings
from app.webhooks.models import WebhookDelivery
from tests.dashboard.factory import complete, new_request, start_job

AUDIT_KEY_SEED = bytes(range(100, 132))


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CheckpointStore]:
    """Checkpoints in a folder of the test's own, signed with a configured audit key."""
    settings = get_settings()
    monkeypatch.setattr(settings, "audit_checkpoint_dir", str(tmp_path / "checkpoints"))
    monkeypatch.setattr(settings, "audit_signing_key", SecretStr(base64.b64encode(AUDIT_KEY_SEED).decode()))
    checkpoints.audit_signing_key.cache_clear()
    yield CheckpointStore(tmp_path / "checkpoints")
    checkpoints.audit_signing_key.cache_clear()


def append(tenant_id: str, count: int) -> None:
    with session_scope() as session:
        for index in range(count):
            record(session, tenant_id, "thing", f"id-{index}", "thing.touched", {"n": index}, "test")


def verify(client, auth) -> dict:
    answer = client.get("/v1/audit/verify", headers=auth)
    assert answer.status_code == 200, answer.text
    return answer.json()


def move_head(tenant_id: str, seq: int) -> None:
    """What a database writer covering their tracks does: the head names the last event left."""
    with session_scope() as session:
        last = session.scalar(
            select(AuditEvent.hash).where(AuditEvent.tenant_id == tenant_id, AuditEvent.seq == seq)
        )
        session.execute(
            update(AuditHead)
            .where(AuditHead.tenant_id == tenant_id)
            .values(seq=seq, hash=last or GENESIS_HASH)
        )


def test_a_checkpoint_signs_the_head_and_verification_reports_against_it(
    client, tenant_a, auth_a, store
) -> None:
    append(tenant_a, 3)
    [signed] = checkpoint_tenants([tenant_a])
    assert signed.checkpoint is not None and signed.checkpoint.seq == 3
    with session_scope() as session:
        head = session.get(AuditHead, tenant_a)
        assert head is not None and signed.checkpoint.head_hash == head.hash

    # One line in the tenant's file, verifying against the configured audit key only.
    [line] = store.lines(tenant_a)
    audit_key = SigningKey(Ed25519PrivateKey.from_private_bytes(AUDIT_KEY_SEED))
    assert parse_checkpoint(line, audit_key.public_key).seq == 3
    with pytest.raises(checkpoints.CheckpointError, match="not by the audit key"):
        parse_checkpoint(line, Ed25519PrivateKey.generate().public_key())

    body = verify(client, auth_a)
    assert body["ok"] is True and body["checked"] == 3
    assert body["checkpoint"]["seq"] == 3 and body["checkpoint"]["key_id"] == audit_key.key_id
    assert body["checkpoint"]["key_trusted"] is True

    # Nothing moved: nothing more is signed.
    assert checkpoint_tenants([tenant_a])[0].checkpoint is None and len(store.lines(tenant_a)) == 1


def test_each_checkpoint_names_the_one_before_it(tenant_a, store) -> None:
    append(tenant_a, 2)
    first = checkpoint_tenants([tenant_a])[0].checkpoint
    append(tenant_a, 2)
    second = checkpoint_tenants([tenant_a])[0].checkpoint
    assert first is not None and second is not None
    assert (first.previous, second.previous, second.seq) == (None, first.digest, 4)
    assert [parse_checkpoint(line).seq for line in store.lines(tenant_a)] == [2, 4]


def test_a_truncated_tail_is_found_against_the_checkpoint(client, tenant_a, auth_a, store) -> None:
    append(tenant_a, 5)
    checkpoint_tenants([tenant_a])
    with session_scope() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.tenant_id == tenant_a, AuditEvent.seq > 3))
    move_head(tenant_a, 3)

    body = verify(client, auth_a)
    assert body["checked"] == 3  # the chain alone verifies ...
    assert body["ok"] is False and body["broken_at"] == 4  # ... but not against its checkpoint
    assert body["reason"].startswith("the chain was truncated: it ends at event 3")


def test_a_deleted_tenant_chain_is_found_against_the_checkpoint(client, tenant_a, auth_a, store) -> None:
    append(tenant_a, 4)
    checkpoint_tenants([tenant_a])
    with session_scope() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.tenant_id == tenant_a))
        session.execute(delete(AuditHead).where(AuditHead.tenant_id == tenant_a))

    body = verify(client, auth_a)
    assert body["checked"] == 0 and body["ok"] is False and body["broken_at"] == 1
    assert body["reason"].startswith("the chain was deleted")
    # Operators check every tenant the store knows, whether or not the database still does.
    with session_scope() as session:
        assert check_all(session)[tenant_a].reason == body["reason"]


def test_a_recomputed_chain_is_found_against_the_checkpoint(client, tenant_a, auth_a, store) -> None:
    append(tenant_a, 5)
    checkpoint_tenants([tenant_a])
    with session_scope() as session:  # edit event 2, then hash it and every later event again
        events = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.tenant_id == tenant_a).order_by(AuditEvent.seq)
            )
        )
        events[1].data = {"n": 99}
        prev_hash = events[0].hash
        for event in events[1:]:
            event.prev_hash, event.hash = prev_hash, event_hash(prev_hash, event)
            prev_hash = event.hash
        session.execute(update(AuditHead).where(AuditHead.tenant_id == tenant_a).values(hash=prev_hash))

    body = verify(client, auth_a)
    assert body["checked"] == 5 and body["ok"] is False and body["broken_at"] == 5
    assert body["reason"].startswith("the chain was rewritten: event 5")


def test_no_checkpoint_is_signed_over_a_chain_that_no_longer_extends_the_last_one(
    client, tenant_a, auth_a, store
) -> None:
    append(tenant_a, 4)
    checkpoint_tenants([tenant_a])
    # Truncate to 2 and append two new events: the head is at seq 4 again, with another hash.
    with session_scope() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.tenant_id == tenant_a, AuditEvent.seq > 2))
    move_head(tenant_a, 2)
    append(tenant_a, 2)

    [refused] = checkpoint_tenants([tenant_a])
    assert (
        refused.checkpoint is None
        and refused.refused == "event 4 no longer has the hash the last checkpoint signed"
    )
    assert len(store.lines(tenant_a)) == 1  # the forged head is not anchored
    assert verify(client, auth_a)["reason"].startswith("the chain was rewritten: event 4")


def test_a_checkpoint_edited_in_the_store_does_not_verify(client, tenant_a, auth_a, store) -> None:
    append(tenant_a, 3)
    checkpoint_tenants([tenant_a])
    path = store.path(tenant_a)
    path.write_bytes(path.read_bytes().replace(b'"seq":3', b'"seq":2'))
    body = verify(client, auth_a)
    assert body["ok"] is False and body["checkpoint"] is None
    assert (
        body["reason"] == "the latest checkpoint does not verify: the signature does not match the checkpoint"
    )


def test_a_line_torn_by_a_crash_is_passed_over(tenant_a, store) -> None:
    append(tenant_a, 2)
    first = checkpoint_tenants([tenant_a])[0].checkpoint
    assert first is not None
    with store.path(tenant_a).open("ab") as handle:
        handle.write(b'{"checkpoint":{"format":"lethe.au')  # the process died mid-write
    assert store.latest(tenant_a) == first.line
    append(tenant_a, 1)
    second = checkpoint_tenants([tenant_a])[0].checkpoint
    assert second is not None and second.previous == first.digest and store.latest(tenant_a) == second.line


def test_the_interval_pass_signs_only_heads_that_moved(tenant_a, tenant_b, store) -> None:
    append(tenant_a, 2)
    append(tenant_b, 1)
    signed = {result.tenant_id: result.checkpoint for result in checkpoint_moved_heads()}
    assert signed[tenant_a] is not None and signed[tenant_b] is not None
    append(tenant_a, 1)
    again = {result.tenant_id: result.checkpoint for result in checkpoint_moved_heads()}
    assert tenant_b not in again and again[tenant_a] is not None and again[tenant_a].seq == 3


def test_subscribers_receive_each_checkpoint_as_a_webhook_event(client, tenant_a, auth_a, store) -> None:
    hook = client.post(
        "/v1/webhooks",
        json={"url": "https://ops.example.com/audit", "events": ["audit.checkpoint"]},
        headers=auth_a,
    )
    assert hook.status_code == 201, hook.text
    append(tenant_a, 2)
    checkpoint = checkpoint_tenants([tenant_a])[0].checkpoint
    assert checkpoint is not None
    with session_scope() as session:
        [delivery] = session.scalars(select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_a))
        assert delivery.event_type == "audit.checkpoint"
        # The receiver holds the signed line itself, and can check it without Lethe.
        sent = json.dumps(delivery.payload["data"], sort_keys=True, separators=(",", ":")).encode()
        assert parse_checkpoint(sent).line == checkpoint.line


def test_an_issued_certificate_queues_a_checkpoint_of_its_head(client, tenant_a, auth_a, store) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    start_job(scenario)
    complete(scenario)  # completion and certificate, one transaction
    with session_scope() as session:
        tasks = session.scalars(select(OutboxMessage).where(OutboxMessage.task_name == AUDIT_CHECKPOINT_TASK))
        assert {"tenant_id": tenant_a} in [task.payload for task in tasks]
        issued = session.scalars(
            select(AuditEvent.seq).where(
                AuditEvent.tenant_id == tenant_a, AuditEvent.action == "deletion_request.certificate_issued"
            )
        ).one()

    from workers.tasks import audit_checkpoint  # what the worker runs for the task

    audit_checkpoint(tenant_id=tenant_a)
    latest = parse_checkpoint(store.latest(tenant_a) or b"")
    assert latest.seq >= issued


def test_a_checkpoint_with_a_stale_head_hash_is_not_mistaken_for_the_chain(
    client, tenant_a, auth_a, store
) -> None:
    # A checkpoint that signed a head the chain never had (a bug or a forged store) is reported, not trusted.
    append(tenant_a, 2)
    key = checkpoints.audit_signing_key()
    forged = sign_checkpoint(key, tenant_a, 2, "f" * 64, None, utcnow())
    with store.locked(tenant_a) as handle:
        store.append(handle, forged.line)
    assert verify(client, auth_a)["reason"].startswith("the chain was rewritten: event 2")
