"""The dashboard in headless Chromium, as a compliance officer uses it: sign in with a key, find a request,
watch its job progress, read the verdict plots, download the certificate and the CSV; see a failed
request as action needed and retry it, see which serving version still holds data to delete, read and
export the audit trail."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from app.certificates.signing import load_public_key, verify
from app.db import session_scope
from app.outbox.celery_client import PLAN_TASK
from app.outbox.models import OutboxMessage
from app.security.scopes import Scope
from tests.dashboard.conftest import READ_ONLY_SCOPES
from tests.dashboard.factory import complete, fail, new_request, set_progress, start_job, write_report
from workers.cli import main as lethe

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("certificates_ready")]
TIMEOUT_MS = 15_000


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    context.close()


def sign_in(page, key: str) -> None:
    page.goto("/dashboard/requests")
    assert page.url.endswith("/dashboard/login?next=%2Fdashboard%2Frequests")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/dashboard/requests")


def test_officer_follows_a_deletion_to_its_certificate(
    page, client, make_key, tenant_a, auth_a, tmp_path: Path, live_server: str
) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    new_request(client, tenant_a, auth_a)  # someone else's request, also on the list
    job_id = start_job(scenario, progress=10)
    key = make_key(tenant_a, READ_ONLY_SCOPES)["Authorization"].removeprefix("Bearer ")

    sign_in(page, key)
    session_cookie = next(c for c in page.context.cookies() if c["name"] == "lethe_dashboard")
    assert session_cookie["httpOnly"] and session_cookie["secure"] and session_cookie["sameSite"] == "Strict"
    assert key not in session_cookie["value"]

    # Find the request by the data subject's identifier: hashed on the server, never shown back.
    page.get_by_label("Find a request by its id, or the requests of a data subject").fill(scenario.subject)
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r".*/dashboard/requests\?subject=[0-9a-f]{64}$"))
    rows = page.locator("#request-rows tr")
    assert rows.count() == 1
    assert scenario.subject not in page.content() and scenario.subject not in page.url

    page.get_by_role("link", name=f"Request {scenario.request_id}").click()
    page.wait_for_url(f"**/dashboard/requests/{scenario.request_id}")
    progress = page.get_by_role("progressbar", name="Job progress")
    assert progress.get_attribute("value") == "10"

    # The job advances while the page is open: the page follows without a reload.
    page.evaluate("window.stillTheSamePage = true")
    set_progress(job_id, 55, stage="unlearning")
    expect(progress).to_have_js_property("value", 55)
    status = page.locator("[data-role=progress-text]")
    assert status.inner_text() == "unlearning: 55 %" and status.get_attribute("aria-live") == "polite"
    assert page.evaluate("window.stillTheSamePage") is True

    # Verification and completion change the page's structure: it redraws by itself.
    write_report(scenario, tmp_path / "report")
    complete(scenario)
    page.get_by_role("heading", name="Verification").wait_for()
    page.get_by_text("signature valid").wait_for()
    for plot in ("roc", "loss_hist", "canary_ranks"):
        image = page.locator(f"img[data-plot={plot}]")
        image.scroll_into_view_if_needed()
        expect(image).to_have_js_property("complete", True)
        assert image.evaluate("img => img.naturalWidth") > 0  # served and decoded, not a broken image
        assert image.get_attribute("alt")  # described for screen readers

    with page.expect_download() as certificate_download:
        page.get_by_role("link", name="Download the certificate (JSON)").click()
    certificate_file = tmp_path / certificate_download.value.suggested_filename
    certificate_download.value.save_as(certificate_file)
    public_key = page.request.get(f"{live_server}/v1/certificates/public-key").body()
    assert verify(certificate_file.read_bytes(), load_public_key(public_key)).ok
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(public_key)
    assert lethe(["certificate", "verify", str(certificate_file), "--public-key", str(key_file)]) == 0

    page.get_by_role("link", name="View the printable certificate").click()
    page.get_by_role("heading", name="Certificate of deletion").wait_for()
    page.emulate_media(media="print")
    assert not page.locator(".site-header").is_visible()  # the printout carries the certificate only
    page.emulate_media(media="screen")

    page.goto("/dashboard/requests")
    with page.expect_download() as csv_download:
        page.get_by_role("link", name="Download these requests as CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(csv_download.value.path()).read_text())))
    ours = next(row for row in rows if row["request_id"] == scenario.request_id)
    assert (ours["status"], ours["verdict"], ours["models"]) == ("completed", "pass", scenario.model_name)


def test_keyboard_only_sign_in_and_navigation(page, make_key, tenant_a) -> None:
    key = make_key(tenant_a, [Scope.REQUESTS_READ])["Authorization"].removeprefix("Bearer ")
    page.goto("/dashboard/login")
    assert page.evaluate("document.activeElement.id") == "key"  # the key field has the focus
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    page.wait_for_url("**/dashboard/requests")

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "q"  # straight to the search field
    page.keyboard.type("no such subject")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*subject=.*"))
    assert page.get_by_text("No request matches.").is_visible()
    assert (
        page.get_by_role("navigation", name="Main")
        .get_by_role("link", name="Requests")
        .get_attribute("aria-current")
        == "page"
    )


def test_request_list_follows_running_work(page, client, make_key, tenant_a, auth_a) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    job_id = start_job(scenario, progress=15)
    sign_in(page, make_key(tenant_a, READ_ONLY_SCOPES)["Authorization"].removeprefix("Bearer "))
    row = page.locator(f"tr[data-request-id='{scenario.request_id}']")
    expect(row).to_contain_text("(unlearning, 15 %)")
    page.evaluate("window.stillTheSamePage = true")
    set_progress(job_id, 77)
    expect(row).to_contain_text("(unlearning, 77 %)", timeout=TIMEOUT_MS)
    assert page.evaluate("window.stillTheSamePage") is True


def test_a_failed_request_reads_action_needed_and_can_be_retried(
    page, client, make_key, tenant_a, auth_a
) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    start_job(scenario, progress=5)
    fail(scenario)  # the worker could not read the served model's files
    key = make_key(tenant_a, [*READ_ONLY_SCOPES, Scope.REQUESTS_WRITE])
    sign_in(page, key["Authorization"].removeprefix("Bearer "))

    row = page.locator(f"tr[data-request-id='{scenario.request_id}']")
    expect(row).to_contain_text("action needed")
    expect(row).to_contain_text("days")  # the deadline still counts down, not "closed"
    page.get_by_role("link", name="Show it").click()  # the list's banner: one request needs action
    assert page.get_by_label("Action needed only").is_checked()
    assert page.locator("#request-rows tr").count() == 1

    page.get_by_role("link", name=f"Request {scenario.request_id}").click()
    main = page.locator("main")
    page.get_by_role("heading", name="Action needed").wait_for()
    shown = main.inner_text()
    assert "could not be read from the artifact store" in shown
    assert f"{scenario.model_name} v1 keeps serving and still holds the subject's data" in shown
    assert "The deadline keeps running" in shown and "Next step:" in shown
    assert "stopped: the job failed" in shown.lower()
    for technical in ("/srv/lethe", "FileNotFoundError", "Errno"):  # not in the main view
        assert technical not in shown
    assert "done: 5 %" not in shown and "Runs" not in shown and "none yet" not in shown
    assert not page.get_by_role("progressbar").count()

    page.get_by_text("Technical detail", exact=True).click()
    detail = page.locator("details.technical").first.inner_text()
    assert "FileNotFoundError" in detail and "…/model.safetensors" in detail and "/srv/lethe" not in detail

    page.get_by_role("button", name="Retry the deletion").click()
    page.get_by_text("Retry started").wait_for()
    assert page.locator("dl.facts").first.get_by_text("resolved").is_visible()
    assert not page.get_by_role("heading", name="Action needed").count()
    with session_scope() as session:
        plans = session.scalars(select(OutboxMessage.payload).where(OutboxMessage.task_name == PLAN_TASK))
        assert sum(scenario.request_id in p.get("request_ids", []) for p in plans) == 2  # intake + retry


def test_a_read_only_officer_sees_how_to_retry_but_no_button(
    page, client, make_key, tenant_a, auth_a
) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    start_job(scenario)
    fail(scenario)
    sign_in(page, make_key(tenant_a, READ_ONLY_SCOPES)["Authorization"].removeprefix("Bearer "))
    page.goto(f"/dashboard/requests/{scenario.request_id}")
    page.get_by_role("heading", name="Action needed").wait_for()
    assert not page.get_by_role("button", name="Retry the deletion").count()
    assert f"POST /v1/deletion-requests/{scenario.request_id}:retry" in page.locator("main").inner_text()


def test_models_page_warns_that_the_serving_version_holds_data_to_delete(
    page, client, make_key, tenant_a, auth_a
) -> None:
    failed = new_request(client, tenant_a, auth_a)
    start_job(failed)
    fail(failed)
    sign_in(page, make_key(tenant_a, READ_ONLY_SCOPES)["Authorization"].removeprefix("Bearer "))
    page.goto("/dashboard/models")

    warning = page.locator("[data-holding-version='1']")
    expect(warning).to_contain_text("v1, served by prod, still holds data that must be deleted")
    expect(warning).to_contain_text("the data of 1 deletion request that failed (action needed)")
    warning.get_by_role("link", name=f"Request {failed.request_id}").click()
    page.wait_for_url(f"**/dashboard/requests/{failed.request_id}")

    # once a version without the data serves, the warning is gone
    done = new_request(client, tenant_a, auth_a)
    start_job(done)
    complete(done)
    page.goto("/dashboard/models")
    versions = page.locator("table.versions").filter(has_text=done.model_name)
    expect(versions.locator("tr", has_text="v2")).to_contain_text("no")
    assert not page.locator(f"section:has-text('{done.model_name}') [data-holding-version]").count()


def test_audit_page_names_what_changed_and_exports_the_trail(
    page, client, make_key, tenant_a, auth_a, tmp_path: Path
) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    start_job(scenario)
    write_report(scenario, tmp_path / "report")
    complete(scenario)  # a new version, the alias moved, the request completed
    sign_in(page, make_key(tenant_a, READ_ONLY_SCOPES)["Authorization"].removeprefix("Bearer "))
    page.goto("/dashboard/audit")

    entities = page.locator("td[data-role=entity]").all_inner_texts()
    assert any(f"{scenario.model_name} v2" in text for text in entities)
    assert any(f"{scenario.model_name} alias prod" in text for text in entities)
    assert any(scenario.request_id in text for text in entities)
    assert not any(re.fullmatch(r"\w+ [0-9a-f]{8}", text.split("\n")[0]) for text in entities)
    completed = page.locator("tr", has=page.get_by_role("rowheader", name="deletion_request.completed"))
    expect(completed.locator("td[data-role=detail]")).to_contain_text("verifying → completed")

    # filters are choices, not free text
    page.get_by_label("Entity").select_option(label="model version")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r".*entity_type=model_version.*"))
    assert set(page.locator("tbody th[scope=row]").all_inner_texts()) <= {
        "model_version.registered",
        "model_version.derived",
        "model_version.tainted",
        "model_version.status_changed",
    }
    actions = page.get_by_label("Action").locator("option").all_inner_texts()
    assert "model_version.derived" in actions and "alias.moved" not in actions
    page.get_by_role("link", name="Clear").click()

    with page.expect_download() as download:
        page.get_by_role("link", name="Download the audit trail as CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [int(row["seq"]) for row in rows] == list(range(1, len(rows) + 1))  # the whole trail, in order
    assert all(row["prev_hash"] == before["hash"] for before, row in itertools.pairwise(rows))
    derived = next(row for row in rows if row["action"] == "model_version.derived")
    assert derived["entity"] == f"{scenario.model_name} v2" and json.loads(derived["data"])["version"] == 2
