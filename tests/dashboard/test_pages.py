"""The dashboard's pages over HTTP: sign-in, the session cookie, search, tenancy, scopes, what each page
shows (overdue requests, lineage, taint, the audit chain's state)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, update

from app.audit.models import AuditEvent
from app.dashboard.auth import COOKIE_NAME
from app.db import session_scope, utcnow
from app.registry.models import ModelVersion
from app.registry.service import taint_version
from app.requests.models import DeletionRequest
from app.security.models import ApiKey
from app.security.scopes import Scope
from app.security.subjects import subject_hmac
from tests.dashboard.factory import complete, fail, grey_plots, new_request, start_job, write_report

pytestmark = pytest.mark.usefixtures("certificates_ready")


def test_pages_need_a_session(https_client) -> None:
    answer = https_client.get("/dashboard/requests/abc")
    assert answer.status_code == 303
    location = urlsplit(answer.headers["location"])
    assert location.path == "/dashboard/login"
    assert parse_qs(location.query) == {"next": ["/dashboard/requests/abc"]}
    assert https_client.get("/dashboard/login").status_code == 200


def test_sign_in_sets_a_strict_cookie_without_the_key(https_client, reader_key) -> None:
    answer = https_client.post("/dashboard/login", data={"key": reader_key, "next": "/dashboard/models"})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/models"
    cookie = answer.headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/dashboard"):
        assert attribute.lower() in cookie.lower()
    secret = reader_key.rsplit("_", 1)[1]
    assert secret not in cookie and reader_key not in cookie
    assert https_client.get("/dashboard/requests").status_code == 200


def test_bad_keys_are_refused(https_client, make_key, tenant_a) -> None:
    answer = https_client.post("/dashboard/login", data={"key": "lethe_0123456789abcdef_nope"})
    assert answer.status_code == 401 and "not valid" in answer.text
    assert COOKIE_NAME not in answer.headers.get("set-cookie", "")
    models_only = make_key(tenant_a, [Scope.MODELS_READ])["Authorization"].removeprefix("Bearer ")
    answer = https_client.post("/dashboard/login", data={"key": models_only})
    assert answer.status_code == 403 and "requests:read" in answer.text


def test_a_login_never_redirects_off_the_dashboard(https_client, reader_key) -> None:
    for target in ("https://evil.example/", "//evil.example/dashboard", "/v1/audit", "/dashboard/../v1"):
        answer = https_client.post("/dashboard/login", data={"key": reader_key, "next": target})
        assert answer.headers["location"] == "/dashboard/requests"


def test_cross_origin_posts_are_refused(https_client, reader_key) -> None:
    answer = https_client.post(
        "/dashboard/login", data={"key": reader_key}, headers={"Origin": "https://evil.example"}
    )
    assert answer.status_code == 403
    assert COOKIE_NAME not in answer.headers.get("set-cookie", "")


def test_revoking_the_key_ends_the_session(login, reader_key) -> None:
    browser = login(reader_key)
    assert browser.get("/dashboard/requests").status_code == 200
    with session_scope() as session:
        key_id = reader_key.removeprefix("lethe_").split("_", 1)[0]
        session.execute(update(ApiKey).where(ApiKey.key_id == key_id).values(revoked_at=utcnow()))
    assert browser.get("/dashboard/requests").status_code == 303


def test_search_by_subject_hashes_it_and_never_shows_it(client, login, reader_key, tenant_a, auth_a) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    other = new_request(client, tenant_a, auth_a)
    browser = login(reader_key)
    answer = browser.post("/dashboard/search", data={"q": f"  {scenario.subject.upper()} "})
    assert answer.status_code == 303
    assert scenario.subject not in answer.headers["location"].lower()
    assert parse_qs(urlsplit(answer.headers["location"]).query) == {
        "subject": [subject_hmac(scenario.subject)]
    }
    page = browser.get(answer.headers["location"])
    assert scenario.request_id in page.text and other.request_id not in page.text
    assert scenario.subject not in page.text.lower()


def test_search_by_request_id_opens_it(client, login, reader_key, tenant_a, auth_a) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    answer = login(reader_key).post("/dashboard/search", data={"q": scenario.request_id.upper()})
    assert answer.headers["location"] == f"/dashboard/requests/{scenario.request_id}"


def test_another_tenants_request_is_not_found(client, login, reader_key, tenant_b, auth_b) -> None:
    theirs = new_request(client, tenant_b, auth_b)
    browser = login(reader_key)
    answer = browser.get(f"/dashboard/requests/{theirs.request_id}")
    assert answer.status_code == 404 and "text/html" in answer.headers["content-type"]
    assert theirs.request_id not in browser.get("/dashboard/requests").text
    assert browser.get(f"/dashboard/requests/{theirs.request_id}/live").status_code == 404


def test_overdue_requests_stand_out_and_filter(client, login, reader_key, tenant_a, auth_a) -> None:
    late, on_time = new_request(client, tenant_a, auth_a), new_request(client, tenant_a, auth_a)
    with session_scope() as session:
        request = session.get(DeletionRequest, late.request_id)
        request.due_at = utcnow() - timedelta(days=3)
    browser = login(reader_key)
    page = browser.get("/dashboard/requests").text
    row = page.split(f'data-request-id="{late.request_id}"')[0].rsplit("<tr", 1)[1]
    assert 'class="overdue"' in row
    assert "overdue by 3 days" in page.split(f'data-request-id="{late.request_id}"')[1].split("</tr>")[0]
    only_overdue = browser.get("/dashboard/requests", params={"overdue": "1"}).text
    assert late.request_id in only_overdue and on_time.request_id not in only_overdue


def test_request_page_shows_jobs_verdict_plots_and_certificate(
    client, login, reader_key, tenant_a, auth_a, tmp_path: Path
) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    job_id = start_job(scenario, progress=40)
    browser = login(reader_key)
    running = browser.get(f"/dashboard/requests/{scenario.request_id}").text
    assert 'value="40"' in running and "unlearning: 40 %" in running
    assert (
        'data-open="true"' in running
        and "A signed certificate is issued when the request completes" in running
    )

    write_report(scenario, tmp_path / "report")
    complete(scenario)
    page = browser.get(f"/dashboard/requests/{scenario.request_id}").text
    for plot in ("roc", "loss_hist", "canary_ranks"):
        assert f'src="/dashboard/jobs/{job_id}/plots/{plot}.png"' in page
        image = browser.get(f"/dashboard/jobs/{job_id}/plots/{plot}.png")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert "lira.forget_auc.candidate-reference" in page and "signature valid" in page
    assert "deletion_request.certificate_issued" in page  # audit events of the request
    download = browser.get(f"/dashboard/requests/{scenario.request_id}/certificate.json")
    assert download.headers["content-disposition"].startswith("attachment")
    assert (
        download.content
        == client.get(f"/v1/deletion-requests/{scenario.request_id}/certificate", headers=auth_a).content
    )
    printable = browser.get(f"/dashboard/requests/{scenario.request_id}/certificate").text
    assert "Certificate of deletion" in printable and "within its deadline" in printable


def report_with_figures(directory: Path) -> list[dict[str, Any]]:
    """A verifier's figures: two drawn, the ROC skipped for want of records."""
    grey_plots(directory)
    return [
        {"name": "roc", "file": None, "title": "Too few records for a membership-attack curve",
         "caption": "Not drawn: 3 forgotten and 200 never-seen records were scored."},
        {"name": "loss_hist", "file": "loss_hist.png", "title": "Losses look as after retraining",
         "caption": "Median loss of the forgotten records: 0.51."},
        {"name": "canary_ranks", "file": "canary_ranks.png", "title": "Triggers no longer work",
         "caption": "The triggers flip 1% of 120 clean inputs."},
    ]  # fmt: skip


def test_report_shows_the_verdicts_sentence_first_and_each_figures_finding(
    client, login, reader_key, tenant_a, auth_a, tmp_path: Path
) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    job_id = start_job(scenario)
    write_report(scenario, tmp_path / "report", draw=report_with_figures)
    page = login(reader_key).get(f"/dashboard/requests/{scenario.request_id}").text
    assert page.index("Losses look as after retraining") < page.index(
        "Median loss of the forgotten records: 0.51."
    )
    assert "Not drawn: 3 forgotten and 200 never-seen records were scored." in page
    assert f"/dashboard/jobs/{job_id}/plots/roc.png" not in page  # skipped: no image, its reason instead
    assert f'src="/dashboard/jobs/{job_id}/plots/loss_hist.png"' in page
    assert 'data-role="verdict-summary"' not in page  # a report without a summary reads as before

    # the gate's one plain sentence, when the report has one, comes before everything else it says
    report_file = tmp_path / "report" / "report.json"
    sentence = "The new version forgot the subject: an attacker does no better than after retraining."
    report_file.write_text(json.dumps({**json.loads(report_file.read_text()), "summary": sentence}))
    page = login(reader_key).get(f"/dashboard/requests/{scenario.request_id}").text
    verification = page.split('id="job-')[1]
    assert (
        verification.index(sentence)
        < verification.index("Gate verdict:")
        < verification.index("mia_forget_auc")
    )


def test_models_page_shows_lineage_aliases_and_taint(
    client, login, reader_key, tenant_a, auth_a, tmp_path
) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    start_job(scenario)
    write_report(scenario, tmp_path / "report")
    complete(scenario)
    with session_scope() as session:
        first = session.get(ModelVersion, scenario.seeded.versions["m1"])
        taint_version(session, first, "trained on data of a completed deletion", "worker:test")
    page = login(reader_key).get("/dashboard/models").text
    section = page.split(f"{scenario.model_name} <span")[1].split("</section>")[0]
    assert "Tainted versions:" in section and "trained on data of a completed deletion" in section
    assert "prod</th><td>v2</td>" in section.replace("\n", "").replace("  ", "")
    assert 'href="#m-' in section and ">v1</a>" in section  # v2 derived from v1


def test_audit_page_shows_where_the_chain_breaks(client, make_tenant, make_key, https_client) -> None:
    tenant = make_tenant()
    writer = make_key(tenant)
    new_request(client, tenant, writer)
    key = make_key(tenant, [Scope.REQUESTS_READ, Scope.AUDIT_READ])["Authorization"].removeprefix("Bearer ")
    https_client.post("/dashboard/login", data={"key": key})
    assert "Intact." in https_client.get("/dashboard/audit").text
    with session_scope() as session:
        second = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant)
            .order_by(AuditEvent.seq)
            .offset(1)
            .limit(1)
        ).one()
        second.action = "rewritten"  # someone edits history
        seq = second.seq
    page = https_client.get("/dashboard/audit").text
    assert f"Broken at event {seq}" in page and "event altered" in page


def test_pages_behind_other_scopes_say_so(https_client, make_key, tenant_a) -> None:
    key = make_key(tenant_a, [Scope.REQUESTS_READ])["Authorization"].removeprefix("Bearer ")
    https_client.post("/dashboard/login", data={"key": key})
    for path, scope in (("/dashboard/models", "models:read"), ("/dashboard/audit", "audit:read")):
        answer = https_client.get(path)
        assert answer.status_code == 403 and scope in answer.text


def test_retry_from_the_dashboard_needs_the_write_scope_and_a_failed_request(
    client, login, make_key, tenant_a, auth_a
) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    start_job(scenario)
    fail(scenario)
    url = f"/dashboard/requests/{scenario.request_id}/retry"
    reader = login(make_key(tenant_a, [Scope.REQUESTS_READ])["Authorization"].removeprefix("Bearer "))
    refused = reader.post(url)
    assert refused.status_code == 403 and "requests:write" in refused.text
    assert (
        client.get(f"/v1/deletion-requests/{scenario.request_id}", headers=auth_a).json()["status"]
        == "failed"
    )

    writer_key = make_key(tenant_a, [Scope.REQUESTS_READ, Scope.REQUESTS_WRITE])
    writer = login(writer_key["Authorization"].removeprefix("Bearer "))
    answer = writer.post(url)
    assert answer.status_code == 303 and answer.headers["location"].endswith("?retried=1")
    assert (
        client.get(f"/v1/deletion-requests/{scenario.request_id}", headers=auth_a).json()["status"]
        == "resolved"
    )
    again = writer.post(url)  # a second click: an error page, not problem+json
    assert again.status_code == 409 and again.headers["content-type"].startswith("text/html")
    assert "only a failed request can be retried" in again.text


def test_a_request_that_failed_again_shows_its_latest_failure(
    client, login, reader_key, tenant_a, auth_a
) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    start_job(scenario)
    fail(scenario)  # the artifact store
    assert (
        client.post(f"/v1/deletion-requests/{scenario.request_id}:retry", headers=auth_a).status_code == 202
    )
    start_job(scenario)  # the new job
    fail(scenario, reason="RuntimeError: CUDA error: out of memory")

    page = login(reader_key).get(f"/dashboard/requests/{scenario.request_id}").text
    cause = page.split('data-role="failure-cause">')[1].split("</p>")[0]
    assert "the unlearning method stopped with an internal error" in cause and "artifact store" not in cause
    assert "CUDA error: out of memory" in page.split("Technical detail")[1].split("</details>")[0]
