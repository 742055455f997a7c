"""The dashboard in headless Chromium, as a compliance officer uses it: sign in with a key, find a request,
watch its job progress, read the verdict plots, download the certificate and the CSV."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app.certificates.signing import load_public_key, verify
from app.security.scopes import Scope
from tests.dashboard.conftest import READ_ONLY_SCOPES
from tests.dashboard.factory import complete, new_request, set_progress, start_job, write_report
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
