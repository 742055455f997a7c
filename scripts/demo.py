"""`make demo`: Lethe on a fresh machine with no server installed.

Builds a SQLite database with the real migrations, creates an API key with the operator CLI, starts the
API in a uvicorn process on a loopback port, and then acts as a client would over HTTP: registers a
dataset with its samples, a model and a version trained on it, sends a deletion request for one data
subject and reads it back. Everything lives under .lethe/demo (made anew on each run).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".lethe" / "demo"
# No broker server on a fresh machine: the API accepts and records requests; the outbox keeps the work
# until a worker's broker is there.
DEMO_BROKER_URL = "memory://"
SUBJECTS = ("alice@example.com", "bob@example.com", "carol@example.com")
FORGOTTEN_SUBJECT = SUBJECTS[0]


def demo_env() -> dict[str, str]:
    return {
        **os.environ,
        "LETHE_DATABASE_URL": f"sqlite:///{DEMO_DIR / 'lethe.db'}",
        "LETHE_BROKER_URL": DEMO_BROKER_URL,
        "LETHE_ARTIFACT_ROOT": str(DEMO_DIR / "artifacts"),
        "LETHE_REPORT_ROOT": str(DEMO_DIR / "reports"),
        "LETHE_ALLOW_PRIVATE_CALLBACKS": "true",
        "LETHE_LOG_JSON": "true",
        # One certificate-signing key for every process of the demo (API and workers).
        "LETHE_CERTIFICATE_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def show(response: httpx.Response, full: bool = False) -> dict[str, Any]:
    """Print an answer as a client sees it: one line, or the whole document with `full`."""
    body = response.json()
    print(f"{response.request.method} {response.request.url.path} -> {response.status_code}")
    text = json.dumps(body, indent=2) if full else json.dumps(body)
    print(text if full or len(text) <= 300 else text[:300] + " ...")
    if response.is_error:
        raise SystemExit(f"demo stopped: {response.request.method} {response.request.url.path} failed")
    return body


def migrate(env: dict[str, str]) -> None:
    step("database: alembic upgrade head (SQLite)")
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True)


def create_key(env: dict[str, str]) -> str:
    step("operator: lethe keys create --tenant demo --scope all")
    result = subprocess.run(
        [sys.executable, "-m", "workers.cli", "keys", "create", "--tenant", "demo", "--scope", "all"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key = result.stdout.strip().splitlines()[-1]
    print(f"key {key[:18]}... (printed once; kept by the client)")
    return key


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_api(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    step(f"API: uvicorn app.main:app on 127.0.0.1:{port} (log in {DEMO_DIR / 'api.log'})")
    log = (DEMO_DIR / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
        + ["--no-access-log"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API exited; see {DEMO_DIR / 'api.log'}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    stop_api(process)
    raise SystemExit("the API did not start within 60 s")


def stop_api(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def register_training_data(api: httpx.Client) -> None:
    step("data pipeline: register a dataset, its samples, a model and the version trained on them")
    show(api.post("/v1/datasets", json={"name": "bios", "kind": "text"}))
    samples = [
        {
            "external_id": f"bio-{index}-{line}",
            "subject_id": subject,
            "text": f"{subject.split('@')[0].title()} wrote biography line {line}.",
        }
        for index, subject in enumerate(SUBJECTS)
        for line in range(2)
    ]
    show(api.post("/v1/datasets/bios/samples", json=samples))
    show(api.post("/v1/models", json={"name": "bios-lm", "task": "causal-lm"}))
    show(
        api.post(
            "/v1/models/bios-lm/versions",
            json={
                "artifact_uri": f"file://{DEMO_DIR / 'artifacts' / 'bios-lm-v1'}",
                "training_set": {"dataset": "bios"},
            },
        )
    )


def send_deletion_request(api: httpx.Client) -> dict[str, Any]:
    step(f"app: a deletion request for {FORGOTTEN_SUBJECT}")
    show(api.get(f"/v1/subjects/{FORGOTTEN_SUBJECT}"))
    created = show(
        api.post(
            "/v1/deletion-requests",
            json={"subject_id": FORGOTTEN_SUBJECT, "regime": "gdpr"},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    )
    step("dashboard: the request as recorded")
    return show(api.get(f"/v1/deletion-requests/{created['id']}"), full=True)


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(parents=True)
    env = demo_env()
    migrate(env)
    key = create_key(env)
    process, url = start_api(env)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as api:
            register_training_data(api)
            request = send_deletion_request(api)
    finally:
        stop_api(process)
    step("done")
    print(f"deletion request {request['id']}: {request['status']}, due {request['due_at']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
