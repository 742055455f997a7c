"""Operations as an operator and a client see them: probes, metrics, request ids, logs, limits and the
problem+json answers for errors that no domain handles (unknown routes, oversized bodies, rate limit,
database outage, unexpected exceptions)."""

from __future__ import annotations

import json
import logging
import re
import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import reset_engine, session_scope, utcnow
from app.main import create_app
from app.ops.logging import JsonFormatter, current_request_id
from app.requests.models import DeletionRequest
from app.settings import get_settings

PROBLEM = "application/problem+json"
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "instance", "request_id"}


def closed_port() -> int:
    """A loopback port nothing listens on (bound once to pick it, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_with(**overrides: object) -> FastAPI:
    return create_app(get_settings().model_copy(update=overrides))


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert set(body) >= PROBLEM_MEMBERS
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def count_requests(tenant_id: str) -> int:
    with session_scope() as session:
        return session.scalar(
            select(func.count()).select_from(DeletionRequest).where(DeletionRequest.tenant_id == tenant_id)
        )


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, flags=re.MULTILINE)
    return float(match.group(1)) if match else None


@pytest.fixture
def fresh_client(database_url: str) -> Iterator[TestClient]:
    with TestClient(app_with()) as test_client:
        yield test_client


@pytest.fixture
def database_down(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the engine at a port where no database listens; restore the test database afterwards."""
    monkeypatch.setenv("LETHE_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/lethe")
    get_settings.cache_clear()
    reset_engine()
    yield
    monkeypatch.setenv("LETHE_DATABASE_URL", database_url)
    get_settings.cache_clear()
    reset_engine()


# --- probes -------------------------------------------------------------------------------------------


def test_healthz_answers_ok(client: TestClient):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_database_and_broker_up(client: TestClient):
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_names_the_broker_when_it_is_down(database_url: str):
    with TestClient(app_with(broker_url=f"redis://127.0.0.1:{closed_port()}/0")) as down_client:
        body = assert_problem(down_client.get("/readyz"), 503)
    assert body["checks"] == {"database": "ok", "broker": "down"}
    assert "broker" in body["detail"] and "database" not in body["detail"]


def test_readyz_names_the_database_when_it_is_down(fresh_client: TestClient, database_down: None):
    body = assert_problem(fresh_client.get("/readyz"), 503)
    assert body["checks"] == {"database": "down", "broker": "ok"}
    assert "database" in body["detail"]


# --- database outage ----------------------------------------------------------------------------------


def test_database_outage_answers_503_problem_not_a_stack_trace(
    fresh_client: TestClient, auth_a: dict[str, str], database_down: None
):
    response = fresh_client.get("/v1/deletion-requests", headers=auth_a)
    body = assert_problem(response, 503)
    assert body["type"].endswith("database-unavailable")
    assert int(response.headers["retry-after"]) > 0
    assert "Traceback" not in response.text and "psycopg" not in response.text
    # The scrape still answers and says the database could not be read.
    metrics = fresh_client.get("/metrics")
    assert metrics.status_code == 200
    assert metric_value(metrics.text, "lethe_metrics_database_up") == 0.0


def test_unexpected_error_answers_500_problem_without_details(database_url: str):
    app = app_with()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("internal secret")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.get("/boom", headers={"X-Request-ID": "boom-1"})
    body = assert_problem(response, 500)
    assert body["request_id"] == "boom-1"
    assert "internal secret" not in response.text and "Traceback" not in response.text


# --- metrics -------------------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_template_and_status(
    fresh_client: TestClient, auth_a: dict[str, str]
):
    fresh_client.get("/healthz")
    fresh_client.get("/healthz")
    fresh_client.get(f"/v1/deletion-requests/{uuid.uuid4()}", headers=auth_a)
    fresh_client.get("/no/such/route")
    text = fresh_client.get("/metrics").text
    assert (
        metric_value(text, "lethe_http_requests_total", '{method="GET",route="/healthz",status="200"}') == 2
    )
    # One series per route template, not per id.
    assert (
        metric_value(
            text,
            "lethe_http_requests_total",
            '{method="GET",route="/v1/deletion-requests/{request_id}",status="404"}',
        )
        == 1
    )
    assert (
        metric_value(text, "lethe_http_requests_total", '{method="GET",route="<unmatched>",status="404"}')
        == 1
    )
    assert (
        metric_value(text, "lethe_http_request_duration_seconds_count", '{method="GET",route="/healthz"}')
        == 2
    )
    assert 'lethe_http_request_duration_seconds_bucket{le="0.05",method="GET",route="/healthz"}' in text


def test_metrics_report_deletion_requests_from_the_database(fresh_client: TestClient, make_tenant):
    before = fresh_client.get("/metrics").text
    tenant_id = make_tenant()
    now = utcnow()
    with session_scope() as session:
        for status, age in (
            ("received", timedelta(days=3)),
            ("queued", timedelta(hours=1)),
            ("failed", timedelta(0)),
        ):
            session.add(
                DeletionRequest(
                    tenant_id=tenant_id, status=status, received_at=now - age, due_at=now + timedelta(days=30)
                )
            )
    after = fresh_client.get("/metrics").text

    def delta(status: str) -> float:
        labels = f'{{status="{status}"}}'
        return (metric_value(after, "lethe_deletion_requests", labels) or 0) - (
            metric_value(before, "lethe_deletion_requests", labels) or 0
        )

    assert delta("received") == 1 and delta("queued") == 1 and delta("failed") == 1
    failed_before = metric_value(before, "lethe_deletion_requests_failed_total") or 0
    assert metric_value(after, "lethe_deletion_requests_failed_total") == failed_before + 1
    # The oldest open request is at least the 3-day-old one (other tests' requests may be older).
    assert metric_value(after, "lethe_deletion_request_oldest_open_age_seconds") >= 3 * 86400
    assert metric_value(after, "lethe_metrics_database_up") == 1.0


# --- request id and logs ------------------------------------------------------------------------------


def test_request_id_is_echoed_or_made(client: TestClient):
    assert (
        client.get("/healthz", headers={"X-Request-ID": "trace-42.a"}).headers["x-request-id"] == "trace-42.a"
    )
    made = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    # A value that could forge log lines is replaced, not echoed.
    replaced = client.get("/healthz", headers={"X-Request-ID": "evil\tid " + "x" * 200}).headers[
        "x-request-id"
    ]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)


def test_problem_carries_the_request_id(client: TestClient):
    body = assert_problem(client.get("/v1/nowhere", headers={"X-Request-ID": "abc-123"}), 404)
    assert body["request_id"] == "abc-123"
    assert body["instance"] == "/v1/nowhere"


def test_access_log_names_the_route_template_never_the_subject(
    client: TestClient, auth_a: dict[str, str], caplog: pytest.LogCaptureFixture
):
    subject = f"alice-{uuid.uuid4().hex[:8]}@example.com"
    with caplog.at_level(logging.DEBUG, logger="lethe"):
        client.get(f"/v1/subjects/{subject}", headers={**auth_a, "X-Request-ID": "log-check"})
    access = [r for r in caplog.records if r.name == "lethe.access"]
    line = next(r for r in access if getattr(r, "route", "").startswith("/v1/subjects"))
    assert line.route == "/v1/subjects/{subject_id}"
    # Every service log line (the test client's own httpx lines aside) is free of the identifier.
    service_records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    everything = " ".join(f"{r.getMessage()} {r.__dict__}" for r in service_records)
    assert subject not in everything and subject.split("@")[0] not in everything


def test_json_log_lines_carry_the_request_id():
    token = current_request_id.set("req-7")
    try:
        record = logging.LogRecord("lethe.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
        record.route = "/v1/x"
        line = json.loads(JsonFormatter().format(record))
    finally:
        current_request_id.reset(token)
    assert line["request_id"] == "req-7"
    assert line["msg"] == "hello world" and line["level"] == "INFO" and line["route"] == "/v1/x"


# --- unknown routes -----------------------------------------------------------------------------------


def test_unknown_route_is_a_404_problem(client: TestClient):
    body = assert_problem(client.get("/v1/definitely-not-here"), 404)
    assert body["type"].endswith("not-found")


def test_wrong_method_is_a_405_problem(client: TestClient):
    assert_problem(client.delete("/healthz"), 405)


# --- body size limit ----------------------------------------------------------------------------------

SMALL_LIMIT = 1024


@pytest.fixture
def small_body_client(database_url: str) -> Iterator[TestClient]:
    with TestClient(app_with(max_body_bytes=SMALL_LIMIT)) as test_client:
        yield test_client


def oversized_request_body() -> bytes:
    return json.dumps({"subject_id": "someone@example.com", "padding": "x" * (2 * SMALL_LIMIT)}).encode()


def test_oversized_body_is_413_and_changes_nothing(
    small_body_client: TestClient, auth_a: dict[str, str], tenant_a: str
):
    headers = {**auth_a, "Content-Type": "application/json"}
    response = small_body_client.post(
        "/v1/deletion-requests", content=oversized_request_body(), headers=headers
    )
    body = assert_problem(response, 413)
    assert str(SMALL_LIMIT) in body["detail"]
    assert count_requests(tenant_a) == 0
    # The same endpoint takes a body under the limit: the 413 was about size only.
    accepted = small_body_client.post(
        "/v1/deletion-requests", json={"subject_id": "someone@example.com"}, headers=auth_a
    )
    assert accepted.status_code == 202, accepted.text
    assert count_requests(tenant_a) == 1


def test_oversized_streamed_body_without_content_length_is_413(
    small_body_client: TestClient, auth_a: dict[str, str], tenant_a: str
):
    payload = oversized_request_body()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 256):
            yield payload[start : start + 256]

    response = small_body_client.post(
        "/v1/deletion-requests", content=chunks(), headers={**auth_a, "Content-Type": "application/json"}
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_problem(response, 413)
    assert count_requests(tenant_a) == 0


# --- rate limit ---------------------------------------------------------------------------------------


def exhaust(test_client: TestClient, headers: dict[str, str], allowed: int) -> None:
    for _ in range(allowed):
        assert test_client.get("/v1/deletion-requests", headers=headers).status_code == 200


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_rate_limit_answers_429_with_retry_after(store: str, database_url: str, make_key, tenant_a: str):
    first_key, second_key = make_key(tenant_a), make_key(tenant_a)
    with TestClient(
        app_with(rate_limit_per_minute=60, rate_limit_burst=2, rate_limit_store=store)
    ) as limited:
        exhaust(limited, first_key, 2)
        response = limited.get("/v1/deletion-requests", headers=first_key)
        body = assert_problem(response, 429)
        assert body["type"].endswith("rate-limited")
        assert int(response.headers["retry-after"]) >= 1
        # Another key has its own bucket; probes are never limited.
        assert limited.get("/v1/deletion-requests", headers=second_key).status_code == 200
        assert limited.get("/healthz").status_code == 200


def test_rate_limit_in_redis_is_shared_by_api_processes(database_url: str, make_key, tenant_a: str):
    key = make_key(tenant_a)
    settings = {"rate_limit_per_minute": 60, "rate_limit_burst": 2, "rate_limit_store": "redis"}
    with TestClient(app_with(**settings)) as one, TestClient(app_with(**settings)) as other:
        exhaust(one, key, 1)
        exhaust(other, key, 1)
        assert_problem(one.get("/v1/deletion-requests", headers=key), 429)


def test_rate_limit_falls_back_to_the_process_when_redis_is_down(database_url: str, make_key, tenant_a: str):
    key = make_key(tenant_a)
    app = app_with(
        rate_limit_per_minute=60,
        rate_limit_burst=2,
        rate_limit_store="redis",
        broker_url=f"redis://127.0.0.1:{closed_port()}/0",
    )
    with TestClient(app) as limited:
        exhaust(limited, key, 2)
        assert_problem(limited.get("/v1/deletion-requests", headers=key), 429)
