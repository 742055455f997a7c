"""Time to forget: from a deletion request's acceptance (its received_at) to its completion (a verified
version without the subject's samples serves: completed_at), on the production path.

    python -m bench.pipeline [--requests 100] [--window 2] [--json out.json]

(`run(quick)` is what `python -m bench` calls: quick = 20 requests instead of 100.)

One run starts its own stack: a scratch Postgres database built by the migrations, a Redis server on a free
port, the API (uvicorn) and two Celery workers as deployed (`gpu`: concurrency 1, `default`: 2). It
registers the digits workload (small) through the API, has the workers train a model with provenance, and
then measures three scenarios, each on a model of its own registered on that artifact (method `auto`, i.e.
DeepObliviate's exact restart, with the gate's verification):
1. one request alone;
2. N requests (one subject each) sent together: they coalesce into batches;
3. the same N subjects sent one at a time, each once the previous one completed.
Batching window: --window seconds for all three. Everything runs on this machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
INTAKE_THREADS = 8
FULL_REQUESTS = 100
QUICK_REQUESTS = 20
DEFAULT_WINDOW = 2.0


def seconds_to_forget(request: dict[str, Any]) -> float:
    received = datetime.fromisoformat(request["received_at"])
    completed = datetime.fromisoformat(request["completed_at"])
    return (completed - received).total_seconds()


def summary(times: list[float], wall: float, jobs: int) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "requests": len(times),
        "jobs": jobs,
        "wall_seconds": round(wall, 1),
        "mean_seconds": round(statistics.fmean(times), 1),
        "p50_seconds": round(statistics.median(times), 1),
        "max_seconds": round(ordered[-1], 1),
        "requests_per_minute": round(60 * len(times) / wall, 1) if wall > 0 else None,
    }


def delete(http: httpx.Client, model: str, subject: str) -> dict[str, Any]:
    from tests.e2e.client import ok

    body = {"subject_id": subject, "models": [model]}
    return ok(
        http.post("/v1/deletion-requests", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}), 202
    )


def finished(http: httpx.Client, created: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from tests.e2e.client import wait_request

    return [wait_request(http, request["id"]) for request in created]


def job_count(requests: list[dict[str, Any]]) -> int:
    return len({model["job_id"] for request in requests for model in request["models"]})


def alone(http: httpx.Client, model: str, subject: str) -> dict[str, Any]:
    started = time.monotonic()
    done = finished(http, [delete(http, model, subject)])
    return summary([seconds_to_forget(r) for r in done], time.monotonic() - started, job_count(done))


def together(http: httpx.Client, model: str, subjects: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    with ThreadPoolExecutor(INTAKE_THREADS) as pool:
        created = list(pool.map(lambda subject: delete(http, model, subject), subjects))
    sent = time.monotonic() - started
    done = finished(http, created)
    result = summary([seconds_to_forget(r) for r in done], time.monotonic() - started, job_count(done))
    return {**result, "sending_seconds": round(sent, 1)}


def one_at_a_time(http: httpx.Client, model: str, subjects: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    done = []
    for index, subject in enumerate(subjects, 1):
        done += finished(http, [delete(http, model, subject)])
        print(f"  one at a time: {index}/{len(subjects)}", file=sys.stderr, flush=True)
    return summary([seconds_to_forget(r) for r in done], time.monotonic() - started, job_count(done))


def machine() -> dict[str, Any]:
    """What the run ran on: the numbers depend on it (CPU only unless CUDA is present)."""
    import platform

    import torch

    return {
        "cpus": os.cpu_count(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "load_average_1m_at_start": round(os.getloadavg()[0], 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def stack_env(database_url: str, broker_url: str, workdir: Path, window: float) -> dict[str, str]:
    import base64

    return {
        **os.environ,
        "LETHE_DATABASE_URL": database_url,
        "LETHE_BROKER_URL": broker_url,
        "LETHE_ARTIFACT_ROOT": str(workdir / "artifacts"),
        "LETHE_REPORT_ROOT": str(workdir / "reports"),
        "LETHE_BATCHING_WINDOW_SECONDS": str(window),
        "LETHE_OUTBOX_DISPATCH_IN_API": "true",
        "LETHE_RATE_LIMIT_PER_MINUTE": "0",
        "LETHE_LOG_JSON": "false",
        "LETHE_CERTIFICATE_SIGNING_KEY": base64.b64encode(os.urandom(32)).decode(),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def create_key(database_url: str) -> str:
    from app.db import reset_engine, session_scope
    from app.security.keys import create_api_key
    from app.security.scopes import ALL_SCOPES
    from app.settings import get_settings
    from app.tenancy.service import create_tenant

    os.environ["LETHE_DATABASE_URL"] = database_url
    get_settings.cache_clear()
    reset_engine()
    with session_scope() as session:
        tenant = create_tenant(session, "bench-pipeline")
        _, key = create_api_key(session, tenant.id, ALL_SCOPES, name="bench")
    reset_engine()
    return key


def run(quick: bool = False, requests: int | None = None, window: float = DEFAULT_WINDOW) -> dict[str, Any]:
    """The three scenarios on a fresh stack; the report (JSON-able) with its "markdown" table."""
    count = requests or (QUICK_REQUESTS if quick else FULL_REQUESTS)
    report = measure(count, window)
    report["markdown"] = markdown(report)
    return report


def measure(count: int, window: float) -> dict[str, Any]:
    from tests.conftest import create_scratch_database, drop_scratch_database, run_migrations
    from tests.e2e.client import DIGITS_POLICY, new_model, register_digits
    from tests.e2e.stack import Api, RedisServer, Worker, free_port

    database_url = create_scratch_database("lethe_bench_pipeline")
    workdir = Path(tempfile.mkdtemp(prefix="lethe-bench-pipeline-"))
    processes: list[Any] = []
    try:
        run_migrations(database_url)
        key = create_key(database_url)
        redis = RedisServer(free_port(), workdir)
        redis.start()
        processes.append(redis)
        env = stack_env(database_url, redis.url, workdir, window)
        api = Api(env, workdir)
        default = Worker("default", "default", env, workdir, concurrency=2)
        gpu = Worker("gpu", "gpu", env, workdir)
        for process in (api, default, gpu):
            process.start()
            processes.append(process)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=api.url, headers=headers, timeout=60) as http:
            print("registering digits and training a model with provenance ...", file=sys.stderr, flush=True)
            source = register_digits(http)
            subjects = sorted(source.workload.subjects)[:count]
            report: dict[str, Any] = {
                "workload": "digits/small",
                "window_seconds": window,
                "machine": machine(),
            }
            print("1 request alone ...", file=sys.stderr, flush=True)
            report["one_request"] = alone(http, new_model(http, source, DIGITS_POLICY), subjects[0])
            print(f"{len(subjects)} requests together ...", file=sys.stderr, flush=True)
            report["batched"] = together(http, new_model(http, source, DIGITS_POLICY), subjects)
            print(f"{len(subjects)} requests one at a time ...", file=sys.stderr, flush=True)
            report["one_at_a_time"] = one_at_a_time(http, new_model(http, source, DIGITS_POLICY), subjects)
        shutil.rmtree(workdir, ignore_errors=True)  # kept (with the processes' logs) when a run fails
        return report
    finally:
        for process in reversed(processes):
            process.stop()
        drop_scratch_database(database_url)


SCENARIOS = (
    ("one_request", "1 request alone"),
    ("batched", "N requests sent together"),
    ("one_at_a_time", "N requests one at a time"),
)


def markdown(report: dict[str, Any]) -> str:
    """The table for docs/benchmarks.md, with the command that produced it."""
    requests = report["batched"]["requests"]
    lines = [
        f"Time to forget (request accepted -> verified version serving), digits (small), N = {requests}, "
        f"batching window {report['window_seconds']:g} s; `python -m bench.pipeline --requests {requests}`; "
        f"{report['machine']['cpus']} CPUs ({report['machine']['device']}), load average "
        f"{report['machine']['load_average_1m_at_start']} at the start.",
        "",
        "| scenario | requests | jobs | wall (s) | time to forget: mean (s) | p50 (s) | max (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in SCENARIOS:
        row = report[key]
        lines.append(
            f"| {label} | {row['requests']} | {row['jobs']} | {row['wall_seconds']} | {row['mean_seconds']} "
            f"| {row['p50_seconds']} | {row['max_seconds']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=100, help="requests in the batched and sequential runs"
    )
    parser.add_argument("--window", type=float, default=2.0, help="batching window (seconds)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = run(requests=args.requests, window=args.window)
    print(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2))
    print(report["markdown"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
