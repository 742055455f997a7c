"""The hash-chained audit trail: appends, listing, and detection of altered or removed rows."""

from __future__ import annotations

import hashlib
import json
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, select, update

from app.audit.models import AuditEvent
from app.audit.service import canonical_json, event_hash, normalized_data, record
from app.db import session_scope
from tests.api.provenance_factory import add_samples, assert_problem, create_dataset, text_samples


def append(tenant_id: str, count: int, entity_type: str = "thing") -> None:
    with session_scope() as session:
        for index in range(count):
            record(
                session, tenant_id, entity_type, f"id-{index}", f"{entity_type}.touched", {"n": index}, "test"
            )


def verify(client, auth) -> dict:
    """The chain check alone: these chains have no checkpoint (test_audit_checkpoints has those)."""
    response = client.get("/v1/audit/verify", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.pop("checkpoint") is None
    return body


def test_an_untouched_chain_verifies(client, tenant_a, auth_a) -> None:
    assert verify(client, auth_a) == {"ok": True, "checked": 0, "broken_at": None, "reason": None}
    append(tenant_a, 5)
    assert verify(client, auth_a) == {"ok": True, "checked": 5, "broken_at": None, "reason": None}


def test_each_event_hashes_its_predecessor(client, tenant_a, db_session) -> None:
    append(tenant_a, 3)
    events = db_session.scalars(
        select(AuditEvent).where(AuditEvent.tenant_id == tenant_a).order_by(AuditEvent.seq)
    )
    events = list(events)
    assert [event.seq for event in events] == [1, 2, 3]
    assert events[0].prev_hash == "0" * 64
    for previous, event in zip(events, events[1:], strict=False):
        assert event.prev_hash == previous.hash
    body = {
        "tenant_id": tenant_a,
        "seq": 2,
        "entity_type": "thing",
        "entity_id": "id-1",
        "action": "thing.touched",
        "data": {"n": 1},
        "actor": "test",
        "created_at": events[1].created_at.isoformat(),
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert events[1].hash == hashlib.sha256((events[0].hash + canonical).encode()).hexdigest()


def test_an_altered_row_is_found(client, tenant_a, auth_a, tenant_b, auth_b) -> None:
    append(tenant_a, 4)
    append(tenant_b, 2)
    with session_scope() as session:
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_a, AuditEvent.seq == 2)
            .values(data={"n": 99})
        )
    assert verify(client, auth_a) == {"ok": False, "checked": 1, "broken_at": 2, "reason": "event altered"}
    assert verify(client, auth_b)["ok"] is True  # chains are per tenant


def test_an_altered_row_with_a_recomputed_hash_breaks_the_next_link(client, tenant_a, auth_a) -> None:
    append(tenant_a, 4)
    with session_scope() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == tenant_a, AuditEvent.seq == 2)
        ).one()
        event.action = "thing.forged"
        event.hash = event_hash(event.prev_hash, event)
    assert verify(client, auth_a)["broken_at"] == 3


def test_a_deleted_row_is_found(client, tenant_a, auth_a) -> None:
    append(tenant_a, 4)
    with session_scope() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.tenant_id == tenant_a, AuditEvent.seq == 3))
    assert verify(client, auth_a) == {"ok": False, "checked": 2, "broken_at": 3, "reason": "event missing"}


def test_a_deleted_last_row_is_found(client, tenant_a, auth_a) -> None:
    append(tenant_a, 3)
    with session_scope() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.tenant_id == tenant_a, AuditEvent.seq == 3))
    assert verify(client, auth_a) == {"ok": False, "checked": 2, "broken_at": 3, "reason": "event missing"}


def test_concurrent_appends_keep_one_gap_free_chain(client, tenant_a, auth_a) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda _: append(tenant_a, 8), range(3)))
    assert verify(client, auth_a) == {"ok": True, "checked": 24, "broken_at": None, "reason": None}


def test_list_filters_and_pages(client, tenant_a, auth_a, auth_b) -> None:
    append(tenant_a, 3, "alpha")
    append(tenant_a, 2, "beta")
    everything = client.get("/v1/audit", headers=auth_a).json()
    assert [event["seq"] for event in everything["items"]] == [1, 2, 3, 4, 5]
    betas = client.get("/v1/audit?entity_type=beta", headers=auth_a).json()["items"]
    assert [event["seq"] for event in betas] == [4, 5]
    one = client.get("/v1/audit", params={"entity_type": "alpha", "entity_id": "id-1"}, headers=auth_a).json()
    assert [event["seq"] for event in one["items"]] == [2]
    assert client.get("/v1/audit?action=beta.touched", headers=auth_a).json()["items"][0]["seq"] == 4
    page = client.get("/v1/audit?limit=2", headers=auth_a).json()
    page2 = client.get(f"/v1/audit?limit=2&cursor={page['next_cursor']}", headers=auth_a).json()
    assert [e["seq"] for e in page["items"] + page2["items"]] == [1, 2, 3, 4]
    future = (datetime.now().astimezone() + timedelta(hours=1)).isoformat()
    assert client.get("/v1/audit", params={"since": future}, headers=auth_a).json()["items"] == []
    assert len(client.get("/v1/audit", params={"until": future}, headers=auth_a).json()["items"]) == 5
    assert client.get("/v1/audit", headers=auth_b).json()["items"] == []
    assert_problem(client.get("/v1/audit?since=soon", headers=auth_a), 422)
    assert_problem(client.get("/v1/audit?limit=0", headers=auth_a), 422)


def test_audit_needs_its_scope(client, make_key, tenant_a) -> None:
    key = make_key(tenant_a, ["requests:read", "models:read"])
    assert_problem(client.get("/v1/audit", headers=key), 403)
    assert_problem(client.get("/v1/audit/verify", headers=key), 403)


def test_subject_identifiers_never_reach_the_audit_trail(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    subject = "quinn.private@example.com"
    add_samples(client, auth_a, dataset, text_samples({subject: 2}))
    client.get(f"/v1/subjects/{subject}", headers=auth_a)
    dump = json.dumps(client.get("/v1/audit?limit=500", headers=auth_a).json()).lower()
    assert "samples.registered" in dump
    assert subject not in dump


def _canonical_by_definition(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _random_text(rng: random.Random) -> str:
    ranges = [(0, 0x80), (0x80, 0x800), (0x800, 0xD800), (0xE000, 0x110000)]
    return "".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(rng.randrange(6)))


class _Status(StrEnum):
    ODD = "odd\u2028\u00e9\x1f"


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    scalars = [
        lambda: _random_text(rng),
        lambda: rng.randrange(-(2**70), 2**70),  # past 64 bits too
        lambda: rng.choice([True, False, None]),
        lambda: _Status.ODD,
        lambda: rng.random() * 10 ** rng.randrange(-20, 20),
        lambda: (1, "tuple"),
    ]
    if kind < len(scalars):
        return scalars[kind]()
    if kind < 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_random_text(rng): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_event_text_and_data_are_what_the_json_definition_gives() -> None:
    """Every stored hash is over canonical_json; its fast path must write exactly what json.dumps
    writes, for any value (strings of every plane, big ints, floats, enums, tuples)."""
    rng = random.Random(17)
    for index in range(5000):
        value = {"data": _random_value(rng)}
        if index % 10 == 0:
            value["at"] = datetime(2026, 12, 2, 4, 40, 21, 277585)
        assert canonical_json(value) == _canonical_by_definition(value)
        data = {"x": _random_value(rng)}
        assert normalized_data(data) == json.loads(_canonical_by_definition(data))
