"""GET /v1/deletion-requests/export.csv: the record of processing activities."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from app.certificates.models import DeletionCertificate
from app.db import session_scope
from app.security.scopes import Scope
from tests.dashboard.factory import complete, new_request, start_job, write_report

pytestmark = pytest.mark.usefixtures("certificates_ready")
URL = "/v1/deletion-requests/export.csv"


def rows_of(answer) -> list[dict[str, str]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(answer.text)))


def test_export_lists_the_tenants_requests_oldest_first(
    client, make_tenant, make_key, auth_b, tenant_b, tmp_path: Path
) -> None:
    tenant = make_tenant()
    writer = make_key(tenant)
    done = new_request(client, tenant, writer)
    start_job(done)
    write_report(done, tmp_path / "report")
    complete(done)
    waiting = new_request(client, tenant, writer)
    theirs = new_request(client, tenant_b, auth_b)

    answer = client.get(URL, headers=make_key(tenant, [Scope.REQUESTS_READ]))
    assert answer.headers["content-disposition"].startswith("attachment; filename=")
    rows = rows_of(answer)
    assert [row["request_id"] for row in rows] == [done.request_id, waiting.request_id]
    assert theirs.request_id not in answer.text
    first, second = rows
    with session_scope() as session:
        digest = session.get(DeletionCertificate, done.request_id).sha256
    assert first == {
        **first,
        "regime": "gdpr",
        "status": "completed",
        "models": done.model_name,
        "method": "nabla_tau",
        "verdict": "pass",
        "certificate_sha256": digest,
    }
    assert first["received_at"] < first["completed_at"] and first["due_at"]
    assert second["status"] == "resolved" and second["method"] == "auto" and second["verdict"] == ""
    assert second["completed_at"] == "" and second["certificate_sha256"] == ""


def test_export_filters_and_scopes(client, make_tenant, make_key) -> None:
    tenant = make_tenant()
    writer = make_key(tenant)
    new_request(client, tenant, writer)
    assert rows_of(client.get(URL, params={"status": "completed"}, headers=writer)) == []
    assert len(rows_of(client.get(URL, params={"status": "resolved", "regime": "gdpr"}, headers=writer))) == 1
    assert client.get(URL, params={"status": "nonsense"}, headers=writer).status_code == 422
    assert client.get(URL, headers=make_key(tenant, [Scope.MODELS_READ])).status_code == 403
    assert client.get(URL).status_code == 401


def test_export_spans_many_pages(client, make_tenant, make_key, monkeypatch) -> None:
    monkeypatch.setattr("app.dashboard.export.BATCH", 2)
    tenant = make_tenant()
    writer = make_key(tenant)
    made = [new_request(client, tenant, writer).request_id for _ in range(5)]
    assert [row["request_id"] for row in rows_of(client.get(URL, headers=writer))] == made


AUDIT_URL = "/v1/audit/export.csv"


def test_audit_export_is_the_tenants_trail_with_names(
    client, make_tenant, make_key, tenant_b, auth_b
) -> None:
    tenant = make_tenant()
    writer = make_key(tenant)
    scenario = new_request(client, tenant, writer)
    start_job(scenario)
    complete(scenario)
    new_request(client, tenant_b, auth_b)  # another tenant's events stay out

    auditor = make_key(tenant, [Scope.AUDIT_READ])
    answer = client.get(AUDIT_URL, headers=auditor)
    assert answer.headers["content-disposition"].startswith('attachment; filename="audit-trail-')
    rows = rows_of(answer)
    listed = client.get("/v1/audit", params={"limit": 200}, headers=auditor).json()["items"]
    assert [int(row["seq"]) for row in rows] == [event["seq"] for event in listed]
    assert [row["hash"] for row in rows] == [event["hash"] for event in listed]
    names = {(row["entity_type"], row["entity"]) for row in rows}
    assert ("model_version", f"{scenario.model_name} v2") in names
    assert ("deletion_request", scenario.request_id) in names

    only_requests = rows_of(
        client.get(AUDIT_URL, params={"entity_type": "deletion_request"}, headers=auditor)
    )
    assert only_requests and {row["entity_type"] for row in only_requests} == {"deletion_request"}
    statuses = [row["detail"] for row in only_requests if row["action"] == "deletion_request.completed"]
    assert statuses == ["unlearning → completed"]


def test_audit_export_needs_audit_read(client, make_key, tenant_a) -> None:
    answer = client.get(AUDIT_URL, headers=make_key(tenant_a, [Scope.REQUESTS_READ]))
    assert answer.status_code == 403 and answer.headers["content-type"].startswith("application/problem+json")
    assert client.get(AUDIT_URL).status_code == 401
