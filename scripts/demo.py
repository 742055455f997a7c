"""`make demo`: a whole deletion on a fresh machine with no server installed.

Embedded mode: SQLite (built by the real migrations) and a filesystem broker (message files under
.lethe/demo/broker), with the API (uvicorn) and one Celery worker started here as subprocesses. The script
then acts as the apps would, over HTTP only:
1. a data pipeline registers the `bios` workload (small): fictitious people's records, as a text dataset
   with its data subjects, and a causal language model;
2. it has the workers train version 1 with full provenance (subject-aligned block checkpoints, first-epoch
   gradients) and points the alias `production` at it;
3. an app sends deletion requests for two people, each with a secret PIN the model memorised;
4. a dashboard polls the requests and the job, with a live progress line;
5. the end: the gate's verdict, key metrics with their 95 % intervals, the promoted version, where the
   report and plots are, and the dashboard's URL.
On a terminal the API and the worker then keep running, for the dashboard, until Ctrl-C; elsewhere (CI, a
pipe), or with DEMO_EXIT=1 or --exit, the demo stops them and ends. Everything lives under .lethe/demo
(made anew on each run); the processes' logs are there too.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
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
MODEL = "bios-lm"
FORGET_PEOPLE = 2
# The demo's gate: two subject-half references, two seed replicas and fewer bootstrap draws keep a CPU run
# short (too few references for the exact-retrain nulls: an approximate candidate is inconclusive and the
# chain goes on to an exact method, whose utility the replicas' spread judges).
POLICY = {
    "probes": {"workload": "bios", "size": "small"},
    "gate": {"lira_references": 2, "seed_replicas": 2, "n_boot": 300},
}
TRAIN_TIMEOUT = 900
DELETION_TIMEOUT = 900
# The API's port when it is free (else any free port), so the dashboard's URL is the usual one.
PREFERRED_PORT = 8000


def demo_env() -> dict[str, str]:
    return {
        **os.environ,
        "LETHE_DATABASE_URL": f"sqlite:///{DEMO_DIR / 'lethe.db'}",
        # No broker server on a fresh machine: message files in a folder; the worker sends the outbox.
        "LETHE_BROKER_URL": "filesystem://",
        "LETHE_BROKER_FOLDER": str(DEMO_DIR / "broker"),
        "LETHE_OUTBOX_DISPATCH_IN_API": "false",
        "LETHE_OUTBOX_POLL_SECONDS": "0.5",
        "LETHE_ARTIFACT_ROOT": str(DEMO_DIR / "artifacts"),
        "LETHE_REPORT_ROOT": str(DEMO_DIR / "reports"),
        "LETHE_BATCHING_WINDOW_SECONDS": "2",
        "LETHE_SWEEP_INTERVAL_SECONDS": "2",
        "LETHE_PURGE_GRACE_SECONDS": "5",
        "LETHE_ALLOW_PRIVATE_CALLBACKS": "true",
        "LETHE_LOG_JSON": "false",
        # One certificate-signing key for every process of the demo (API and worker).
        "LETHE_CERTIFICATE_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }


# ----------------------------------------------------------------------------------------- display


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


class ProgressLine:
    """The job's stage, method and progress: one line redrawn in place on a terminal, else a new line at
    each change of stage or method and every 10 %."""

    def __init__(self) -> None:
        self.live = sys.stdout.isatty()
        self.last: tuple[str, int] | None = None

    def show(self, label: str, job: dict[str, Any], started: float) -> None:
        width = 30
        filled = int(width * job["progress"] / 100)
        bar = "#" * filled + "-" * (width - filled)
        what = f"{job['stage'] or job['status']}" + (f" ({job['method']})" if job.get("method") else "")
        text = f"{label} [{bar}] {job['progress']:3d}%  {what:<34} {time.monotonic() - started:5.0f} s"
        if self.live:
            print("\r" + text, end="", flush=True)
            return
        state = (f"{label}{what}", job["progress"] // 10)
        if state != self.last:
            print(text, flush=True)
            self.last = state

    def end(self) -> None:
        if self.live:
            print()


# ----------------------------------------------------------------------------------------- processes


def api_port() -> int:
    for port in (PREFERRED_PORT, 0):
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port))
            return probe.getsockname()[1]
    raise SystemExit("no free TCP port on 127.0.0.1")


def start(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (DEMO_DIR / f"{name}.log").open("wb")
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the main process (it ends its children), SIGKILL to the group after 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until(what: str, check: Any, process: subprocess.Popen[bytes], log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what}: the process exited; see {DEMO_DIR / log}")
        if check():
            return
        time.sleep(0.3)
    raise SystemExit(f"{what}: not within {timeout:.0f} s; see {DEMO_DIR / log}")


def start_api(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = api_port()
    step(f"API: uvicorn app.main:app on 127.0.0.1:{port} (log: {DEMO_DIR / 'api.log'})")
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    process = start("api", command + ["--no-access-log"], env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until("the API", healthy, process, "api.log", 60)
    return process, url


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = DEMO_DIR / "worker.log"
    step(f"worker: celery --app workers.celery_app:app worker --queues gpu,default (log: {log})")
    command = [
        sys.executable, "-m", "celery", "--app", "workers.celery_app:app", "worker",
        "--queues", "gpu,default", "--concurrency", "1", "--prefetch-multiplier", "1",
        "--hostname", "demo@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ]  # fmt: skip
    process = start("worker", command, env)
    wait_until("the worker", lambda: " ready." in log.read_text(errors="replace"), process, "worker.log", 120)
    return process


# ----------------------------------------------------------------------------------------- the story


def migrate(env: dict[str, str]) -> None:
    step("database: alembic upgrade head (SQLite)")
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True)


def create_key(env: dict[str, str]) -> str:
    step("operator: lethe keys create --tenant demo --scope all (the key is printed once)")
    result = subprocess.run(
        [sys.executable, "-m", "workers.cli", "keys", "create", "--tenant", "demo", "--scope", "all"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key = result.stdout.strip().splitlines()[-1]
    print(f"API key: {key}")
    print("(the apps below send it as `Authorization: Bearer ...`; the dashboard signs in with it)")
    return key


def register_bios(api: httpx.Client) -> Any:
    sys.path.insert(0, str(ROOT))  # the reference workloads ship with the repository
    from workers.workloads import load_workload

    workload = load_workload("bios", "small")
    step(
        f"data pipeline: dataset `bios` ({len(workload.train)} training records of {len(workload.subjects)} "
        f"people, {len(workload.heldout)} held-out records) and model `{MODEL}`"
    )
    show(api.post("/v1/datasets", json={"name": "bios", "kind": "text"}))
    rows = [{"external_id": s.sample_id, "subject_id": s.subject, "text": s.text} for s in workload.train]
    rows += [{"external_id": s.sample_id, "subject_id": s.subject, "text": s.text} for s in workload.heldout]
    show(api.post("/v1/datasets/bios/samples", json=rows))
    show(api.post("/v1/models", json={"name": MODEL, "task": "causal-lm", "policy": POLICY}))
    return workload


def follow_job(api: httpx.Client, job_id: str, label: str, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    line = ProgressLine()
    while time.monotonic() - started < timeout:
        job = api.get(f"/v1/jobs/{job_id}").json()
        line.show(label, job, started)
        if job["status"] in ("succeeded", "failed", "canceled"):
            line.end()
            return job
        time.sleep(0.5)
    raise SystemExit(f"\njob {job_id} did not end within {timeout:.0f} s; see {DEMO_DIR / 'worker.log'}")


def train_version(api: httpx.Client, workload: Any) -> None:
    step("data pipeline: POST /v1/models/bios-lm/versions:train (the workers train with full provenance)")
    body = {
        "training_set": {"dataset": "bios", "external_ids": [s.sample_id for s in workload.train]},
        "params": {"workload": "bios", "size": "small"},
    }
    job = show(api.post(f"/v1/models/{MODEL}/versions:train", json=body))
    done = follow_job(api, job["id"], "training", TRAIN_TIMEOUT)
    if done["status"] != "succeeded":
        raise SystemExit(f"training {done['status']}: {done.get('error')}")
    show(api.get(f"/v1/models/{MODEL}/versions/1"))
    step("ops: PUT /v1/models/bios-lm/aliases/production -> version 1")
    show(api.put(f"/v1/models/{MODEL}/aliases/production", json={"version": 1, "reason": "first release"}))


def send_deletion_requests(api: httpx.Client, workload: Any) -> list[dict[str, Any]]:
    people = workload.forget_subjects(FORGET_PEOPLE)  # people with a secret PIN planted in their records
    step(f"app: deletion requests for {len(people)} people (GDPR), as the app's users asked")
    created = []
    for person in people:
        show(api.get(f"/v1/subjects/{person}"))
        body = {"subject_id": person, "regime": "gdpr"}
        created.append(
            show(api.post("/v1/deletion-requests", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}))
        )
    return created


def follow_deletion(api: httpx.Client, created: list[dict[str, Any]]) -> list[dict[str, Any]]:
    step("dashboard: polling the requests and their job")
    started = time.monotonic()
    line = ProgressLine()
    while time.monotonic() - started < DELETION_TIMEOUT:
        requests = [api.get(f"/v1/deletion-requests/{c['id']}").json() for c in created]
        job_ids = sorted({m["job_id"] for r in requests for m in r["models"] if m["job_id"]})
        statuses = "/".join(sorted({r["status"] for r in requests}))
        for job_id in job_ids:
            line.show(f"{statuses:<10} job {job_id[:8]}", api.get(f"/v1/jobs/{job_id}").json(), started)
        if all(r["status"] in ("completed", "failed", "canceled") for r in requests):
            line.end()
            return requests
        time.sleep(0.5)
    raise SystemExit(f"\nthe deletion did not end within {DELETION_TIMEOUT} s; see {DEMO_DIR / 'worker.log'}")


def metric(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    """An estimate of the report by its full name: value, ci95 [low, high], n."""
    for check in report.get("checks", {}).values():
        if name in check.get("metrics", {}):
            return check["metrics"][name]
    return None


def described(estimate: dict[str, Any]) -> str:
    low, high = (estimate.get("ci95") or [None, None])[:2]
    if low is None or high is None:
        return f"{estimate['value']:.2f}"
    return f"{estimate['value']:.2f} [{low:.2f}, {high:.2f}]"


# What the served version and the promoted one are compared on, by the gate's metric names; a name the
# report lacks (another model kind, a check turned off) is left out.
KEY_METRICS = (
    ("perplexity, retained records", "utility.perplexity_retain"),
    ("perplexity, held-out people", "utility.perplexity_heldout"),
    ("forgotten PINs' exposure (bits)", "canary.exposure_deleted_bits"),
    ("never-inserted PINs' exposure (bits)", "canary.exposure_control_bits"),
    ("loss attack AUC, forgotten vs held-out", "loss.forget_auc"),
    ("LiRA attack AUC, forgotten vs held-out", "lira.forget_auc"),
)


def key_metric_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for label, name in KEY_METRICS:
        served, candidate = metric(report, f"{name}.served"), metric(report, f"{name}.candidate")
        if served is not None and candidate is not None:
            lines.append(f"  {label:<40} {described(served)} -> {described(candidate)}")
    return lines or ["  (the report compares none of them: see report.json)"]


def print_verdict(report: dict[str, Any], job: dict[str, Any]) -> None:
    print(f"verdict: {report['verdict'].upper()}  {report.get('label') or ''}")
    for reason in report["reasons"][:3]:
        print(f"  because {reason}")
    for attempt in job["method_attempts"]:
        outcome = f"{attempt['method']} -> {attempt['verdict']}"
        print(f"  attempt {attempt['attempt']}: {outcome} ({attempt['seconds']:.0f} s)")
    print("key metrics (the version that served -> the promoted one; 95 % intervals):")
    print("\n".join(key_metric_lines(report)))
    timings = report["timings"]
    unlearning, verification = (
        timings.get("unlearning_seconds", 0.0),
        timings.get("verification_seconds", 0.0),
    )
    print(f"timings: unlearning {unlearning:.1f} s, verification {verification:.1f} s")


def print_where(url: str, job: dict[str, Any], report: dict[str, Any], request: dict[str, Any]) -> None:
    """Files on disk, and the URLs that serve them while the demo's API runs."""
    files = DEMO_DIR / "reports" / job["id"]
    print(f"report: {next(files.glob('*/report.json'))}  ({url}{job['report_url']})")
    for plot in report.get("plots", []):
        print(f"plot:   {next(files.glob('*/' + plot))}  ({url}{job['report_url']}/{plot})")
    print(f"certificate: {url}{request['certificate_url']}  (JWS: ?format=jws)")
    print(f"dashboard: {url}/dashboard/requests/{request['id']}  (sign in with the API key above)")
    print(f"logs: {DEMO_DIR}/*.log")


def print_outcome(api: httpx.Client, url: str, requests: list[dict[str, Any]]) -> int:
    step("the outcome")
    for request in requests:
        print(f"request {request['id']}: {request['status']} (verdict {request['verdict']})")
    if any(r["status"] != "completed" for r in requests):
        print(f"failure: {[r['failure_reason'] for r in requests]}")
        return 1
    progress = requests[0]["models"][0]
    job = api.get(f"/v1/jobs/{progress['job_id']}").json()
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    print_verdict(report, job)
    promoted = api.get(f"/v1/models/{MODEL}/versions/{progress['to_version']}").json()
    before = api.get(f"/v1/models/{MODEL}/versions/{progress['from_version']}").json()
    alias = api.get(f"/v1/models/{MODEL}/aliases/production").json()
    how = f"{promoted['status']}, method {promoted['method']}, exact {promoted['exact']}"
    print(f"promoted: {MODEL} version {promoted['version']} ({how}); alias production -> {alias['version']}")
    print(f"version {before['version']}: tainted={before['tainted']} (trained on the forgotten records)")
    print_where(url, job, report, requests[0])
    return 0


def stays_open(argv: list[str] | None) -> bool:
    """Whether to keep the API and the worker up for the dashboard: on a terminal, unless asked not to."""
    parser = argparse.ArgumentParser(description="make demo: a whole deletion on an embedded stack")
    parser.add_argument("--exit", action="store_true", help="stop the API and worker at the end (as in CI)")
    args = parser.parse_args(argv)
    asked_to_exit = args.exit or os.environ.get("DEMO_EXIT", "") not in ("", "0")
    return not asked_to_exit and sys.stdin.isatty() and sys.stdout.isatty()


def serve_until_interrupted(url: str, processes: list[subprocess.Popen[bytes]]) -> None:
    step(f"the dashboard: {url}/dashboard (sign in with the API key above); Ctrl-C stops the demo")
    with contextlib.suppress(KeyboardInterrupt):
        while all(process.poll() is None for process in processes):
            time.sleep(1)
        print(f"a process of the demo exited; see {DEMO_DIR}/*.log")


def main(argv: list[str] | None = None) -> int:
    keep_open = stays_open(argv)
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(parents=True)
    env = demo_env()
    migrate(env)
    key = create_key(env)
    api_process, url = start_api(env)
    worker = None
    try:
        worker = start_worker(env)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as api:
            workload = register_bios(api)
            train_version(api, workload)
            created = send_deletion_requests(api, workload)
            requests = follow_deletion(api, created)
            outcome = print_outcome(api, url, requests)
        if keep_open:
            serve_until_interrupted(url, [api_process, worker])
        return outcome
    finally:
        if worker is not None:
            stop(worker)
        stop(api_process)


if __name__ == "__main__":
    sys.exit(main())
