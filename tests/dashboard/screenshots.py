"""Screenshots of the dashboard's main pages for docs/screenshots (not a test).

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.dashboard.screenshots [OUT_DIR]

Builds a scratch database with a few deletion requests at different stages (the pipeline's writes made
through the same domain functions as in tests/dashboard/factory.py, verification plots drawn by
workers.verification.plots from synthetic scores), serves the API on a loopback port and photographs the
pages in headless Chromium. Needs Postgres (LETHE_TEST_ADMIN_URL) and Debian's chromium.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from app.db import reset_engine, session_scope, utcnow
from app.provenance.models import Dataset
from app.registry.models import ModelVersion
from app.registry.service import set_alias, taint_version
from app.requests.models import DeletionRequest
from app.security.keys import create_api_key
from app.security.scopes import ALL_SCOPES, Scope
from app.settings import get_settings
from app.tenancy.service import create_tenant
from tests.api.seeding import Seeded, add_model, add_samples
from tests.conftest import create_scratch_database, drop_scratch_database, run_migrations
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, READ_ONLY_SCOPES, _free_port
from tests.dashboard.factory import Scenario, complete, fail, set_progress, start_job, write_report

REPO = Path(__file__).resolve().parents[2]
WIDTH = 1280
SUBJECTS = (
    "ada@example.com",
    "grace@example.com",
    "alan@example.com",
    "edsger@example.com",
    "barbara@example.com",
)


# The gate's sentence for the completed request, worded as workers.verification.gate.summary_sentence words a
# pass, with the numbers of the plots drawn below.
DONE_SUMMARY = (
    "An attacker cannot tell the forgotten records from never-seen ones: AUC 0.52, where retraining without "
    "them gives 0.52 (the untouched model: 0.91). Held-out perplexity 38.4 against the served model's 38.0, "
    "within what retraining gives."
)


def draw_plots(directory: Path, seed: int) -> list[dict[str, Any]]:
    """Verification figures of a candidate that forgot: close to the retrained reference, unlike the
    served version; answers the report's figures."""
    from workers.verification import plots
    from workers.verification.checks import CheckResult
    from workers.verification.stats import auc_difference, fisher_exposure_pvalue, two_sample_difference

    rng = np.random.default_rng(seed)
    # the candidate scores records much as the retrained reference does, with a little noise of its own
    reference_heldout, reference_forget = rng.normal(0.0, 1.0, 400), rng.normal(0.1, 1.0, 60)
    heldout = {
        "served": rng.normal(0.0, 1.0, 400),
        "candidate": reference_heldout + rng.normal(0.0, 0.3, 400),
        "reference": reference_heldout,
    }
    forget = {
        "served": rng.normal(1.6, 1.0, 60),
        "candidate": reference_forget + rng.normal(0.05, 0.3, 60),
        "reference": reference_forget,
    }
    scores = {role: {"forget": forget[role], "heldout": heldout[role]} for role in forget}
    metrics = {
        f"lira.forget_auc.{role}-reference": auc_difference(
            forget[role], heldout[role], forget["reference"], heldout["reference"], 200
        )
        for role in ("candidate", "served")
    }
    figures = [plots.plot_roc(directory / "roc.png", "lira", scores, metrics)]
    losses = {
        role: {
            "forget": np.exp(rng.normal(shift, 0.5, 60)),
            "retain": np.exp(rng.normal(-1.6, 0.5, 400)),
            "heldout": np.exp(rng.normal(-0.6, 0.6, 400)),
        }
        for role, shift in (("served", -1.7), ("candidate", -0.65), ("reference", -0.6))
    }
    figures.append(plots.plot_loss_hist(directory / "loss_hist.png", losses))
    table = []
    for group, served in (
        ("deleted", 7.5),
        ("deleted", 6.8),
        ("kept", 7.1),
        ("control", 1.2),
        ("control", 0.6),
    ):
        after = served if group == "kept" else float(rng.uniform(0.3, 1.6))
        table.append(
            {
                "group": group,
                "subject": "4f" * 32,
                "served": {"exposure_bits": served, "rank": 1, "candidates": 256},
                "candidate": {"exposure_bits": after, "rank": 1, "candidates": 256},
            }
        )
    canary = CheckResult("canary")  # the canary check's test, as workers.verification.memorization runs it
    for role in ("served", "candidate"):
        deleted = np.array([row[role]["exposure_bits"] for row in table if row["group"] == "deleted"])
        control = np.array([row[role]["exposure_bits"] for row in table if row["group"] == "control"])
        canary.metrics[f"canary.deleted_minus_control_bits.{role}"] = two_sample_difference(deleted, control)
        canary.values[f"canary.deleted_pvalue.{role}"] = fisher_exposure_pvalue(deleted)
    figures.append(
        plots.plot_canaries(directory / "canary_ranks.png", table, ["served", "candidate"], canary)
    )
    return [figure.to_dict() for figure in figures]


def build(client, tenant_id: str, writer: dict[str, str], reports: Path) -> dict[str, Scenario]:
    with session_scope() as session:
        dataset = Dataset(tenant_id=tenant_id, name="support-tickets", kind="text")
        session.add(dataset)
        session.flush()
        samples = {subject: add_samples(session, tenant_id, dataset.id, subject, 4) for subject in SUBJECTS}
        models = {
            name: add_model(session, tenant_id, dataset.id, name) for name in ("bios-lm", "ticket-router")
        }
        for _, version in models.values():
            version.training_set_size = 4 * len(SUBJECTS)
        versions = {name: version.id for name, (_, version) in models.items()}
        for model, version in models.values():
            set_alias(session, model, "prod", version, None, "initial release", "key:registrant")

    scenarios: dict[str, Scenario] = {}
    for label, subject, model, regime in (
        ("done", SUBJECTS[0], "bios-lm", "gdpr"),
        ("running", SUBJECTS[1], "ticket-router", "gdpr"),
        ("late", SUBJECTS[2], "ticket-router", "gdpr"),
        ("ccpa", SUBJECTS[3], "ticket-router", "ccpa"),
        ("failed", SUBJECTS[4], "ticket-router", "gdpr"),
    ):
        answer = client.post(
            "/v1/deletion-requests",
            json={"subject_id": subject, "models": [model], "regime": regime},
            headers=writer,
        )
        assert answer.status_code == 202, answer.text
        seeded = Seeded(
            dataset_id="",
            samples={subject: samples[subject]},
            models={"m1": model},
            versions={"m1": versions[model]},
        )
        scenarios[label] = Scenario(tenant_id, subject, seeded, answer.json()["id"], model)
        time.sleep(0.05)

    done = scenarios["done"]
    start_job(done, progress=20)
    write_report(
        done,
        reports / "done",
        draw=lambda directory: draw_plots(directory, seed=7),
        summary=DONE_SUMMARY,
    )
    complete(done)
    with session_scope() as session:
        served = session.get(ModelVersion, versions["bios-lm"])
        taint_version(
            session, served, f"trained on data forgotten by request {done.request_id[:8]}", "worker:gpu-1"
        )

    running = scenarios["running"]
    start_job(running, progress=5)
    set_progress(running.job_id, 62, stage="unlearning")

    failed = scenarios["failed"]
    start_job(failed, progress=5)
    fail(failed)
    with session_scope() as session:
        late = session.get(DeletionRequest, scenarios["late"].request_id)
        late.received_at -= timedelta(days=40)
        late.due_at = utcnow() - timedelta(days=9)
    return scenarios


def main(out_dir: Path) -> None:
    url = create_scratch_database("lethe_screens")
    os.environ["LETHE_DATABASE_URL"] = url
    os.environ.setdefault("LETHE_OUTBOX_DISPATCH_IN_API", "false")
    os.environ.setdefault("LETHE_LOG_LEVEL", "WARNING")
    os.environ.setdefault("LETHE_CERTIFICATE_SIGNING_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
    get_settings.cache_clear()
    reset_engine()
    try:
        run_migrations(url)
        shoot(out_dir)
    finally:
        reset_engine()
        drop_scratch_database(url)


def shoot(out_dir: Path) -> None:
    import uvicorn
    from fastapi.testclient import TestClient
    from playwright.sync_api import sync_playwright

    from app.main import create_app

    with session_scope() as session:
        tenant = create_tenant(session, f"acme-{uuid.uuid4().hex[:6]}")
        _, writer_key = create_api_key(session, tenant.id, ALL_SCOPES, "pipeline")
        # an officer who may also retry failed requests
        scopes = [*READ_ONLY_SCOPES, Scope.REQUESTS_WRITE]
        _, reader_key = create_api_key(session, tenant.id, scopes, "compliance")
        tenant_id = tenant.id
    app = create_app(get_settings())
    reports = Path(os.environ.get("TMPDIR", "/tmp")) / f"lethe-screens-{uuid.uuid4().hex[:6]}"
    scenarios = build(TestClient(app), tenant_id, {"Authorization": f"Bearer {writer_key}"}, reports)

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(base_url=base, viewport={"width": WIDTH, "height": 900})
            page.goto("/dashboard/login")
            page.get_by_label("API key").fill(reader_key)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url("**/dashboard/requests")
            shots = {
                "requests.png": "/dashboard/requests",
                "request-running.png": f"/dashboard/requests/{scenarios['running'].request_id}",
                "request-completed.png": f"/dashboard/requests/{scenarios['done'].request_id}",
                "request-failed.png": f"/dashboard/requests/{scenarios['failed'].request_id}",
                "certificate.png": f"/dashboard/requests/{scenarios['done'].request_id}/certificate",
                "models.png": "/dashboard/models",
                "audit.png": "/dashboard/audit",
            }
            for name, path in shots.items():
                page.goto(path)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=out_dir / name, full_page=True)
                print(f"wrote {out_dir / name}")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots")
