"""Provenance benchmark: bulk sample registration (samples/s, JSON array and NDJSON) through
POST /v1/datasets/{dataset}/samples on Postgres, then subject lookups (GET /v1/subjects/{id}) at that size.

    python -m bench.provenance [--samples 200000] [--batch 10000] [--concurrency 2]

The API runs in its own uvicorn process on a scratch Postgres database built by the migrations (dropped
at the end). Request bodies are serialised before the clock starts, so the figure is the server's:
parsing, validation, subject HMACs, content hashes, COPY and the set-based insert, and the commit. After
the loads a model version trained on every sample is registered, so each lookup also resolves the
versions trained on the subject's samples. With --samples 1000000 the tenant holds a million samples.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.intake import BENCH_MODEL_FOLDER, Server, create_key, models_root

SAMPLES_PER_SUBJECT = 5
LOOKUPS = 300
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    name: str
    samples: int
    seconds: float
    samples_per_second: float
    batches: int
    batch_p50_ms: float
    batch_max_ms: float
    # CPU time spent per sample by the API process and by the Postgres backends of the bench database:
    # unlike the wall-clock rate, it does not depend on what else the machine is running.
    api_cpu_us_per_sample: float
    postgres_cpu_us_per_sample: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU used by the API server process and by the Postgres backends serving the bench database."""

    def __init__(self, api_pid: int, database_url: str) -> None:
        from sqlalchemy import create_engine

        self.api_pid = api_pid
        self.database = database_url.rsplit("/", 1)[1]
        self.engine = create_engine(database_url, pool_size=1)

    def backends(self) -> list[int]:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            rows = connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"),
                {"db": self.database},
            )
            return [pid for (pid,) in rows]

    def snapshot(self) -> tuple[float, dict[int, float]]:
        return cpu_seconds(self.api_pid), {pid: cpu_seconds(pid) for pid in self.backends()}

    def since(self, before: tuple[float, dict[int, float]]) -> tuple[float, float]:
        api_after, backends_after = self.snapshot()
        backend_cpu = sum(after - before[1].get(pid, 0.0) for pid, after in backends_after.items())
        return api_after - before[0], backend_cpu

    def close(self) -> None:
        self.engine.dispose()


def make_samples(prefix: str, count: int) -> list[dict[str, str]]:
    return [
        {
            "external_id": f"{prefix}-{index}",
            "subject_id": f"Subject-{index // SAMPLES_PER_SUBJECT}@Example.com",
            "text": f"record {index}: the quick brown fox jumps over the lazy dog, sample of subject "
            f"{index // SAMPLES_PER_SUBJECT}",
        }
        for index in range(count)
    ]


def encode(samples: list[dict[str, str]], media_type: str) -> bytes:
    if media_type == "application/x-ndjson":
        return "\n".join(json.dumps(sample) for sample in samples).encode()
    return json.dumps(samples).encode()


def load(
    api: httpx.Client,
    meter: CpuMeter,
    dataset: str,
    media_type: str,
    count: int,
    batch: int,
    concurrency: int,
) -> LoadResult:
    assert api.post("/v1/datasets", json={"name": dataset, "kind": "text"}).status_code == 201
    samples = make_samples(dataset, count)
    bodies = [encode(samples[start : start + batch], media_type) for start in range(0, count, batch)]
    headers = {"Content-Type": media_type}

    def send(body: bytes) -> float:
        started = time.perf_counter()
        response = api.post(f"/v1/datasets/{dataset}/samples", content=body, headers=headers)
        assert response.status_code == 200, response.text
        return time.perf_counter() - started

    cpu_before = meter.snapshot()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        durations = list(pool.map(send, bodies))
    seconds = time.perf_counter() - started
    api_cpu, postgres_cpu = meter.since(cpu_before)
    created = api.get(f"/v1/datasets/{dataset}").json()["sample_count"]
    assert created == count, f"{created} of {count} samples stored"
    return LoadResult(
        name=f"bulk {media_type}",
        samples=count,
        seconds=round(seconds, 2),
        samples_per_second=round(count / seconds),
        batches=len(bodies),
        batch_p50_ms=round(statistics.median(durations) * 1000, 1),
        batch_max_ms=round(max(durations) * 1000, 1),
        api_cpu_us_per_sample=round(api_cpu / count * 1e6, 1),
        postgres_cpu_us_per_sample=round(postgres_cpu / count * 1e6, 1),
    )


def lookups(api: httpx.Client, subjects: int, datasets: list[str]) -> dict[str, float]:
    assert api.post("/v1/models", json={"name": "bench-model", "task": "causal-lm"}).status_code == 201
    for dataset in datasets:
        body = {"artifact_uri": BENCH_MODEL_FOLDER, "training_set": {"dataset": dataset}}
        assert api.post("/v1/models/bench-model/versions", json=body).status_code == 201
    rng = random.Random(0)
    durations = []
    for _ in range(LOOKUPS):
        subject = f"subject-{rng.randrange(subjects)}@example.com"
        started = time.perf_counter()
        response = api.get(f"/v1/subjects/{subject}")
        durations.append(time.perf_counter() - started)
        body = response.json()
        assert response.status_code == 200 and len(body["samples"]) == SAMPLES_PER_SUBJECT * len(datasets)
        assert len(body["model_versions"]) == len(datasets)
    durations.sort()
    return {
        "lookups": LOOKUPS,
        "p50_ms": round(durations[len(durations) // 2] * 1000, 2),
        "p99_ms": round(durations[int(len(durations) * 0.99)] * 1000, 2),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    from tests.conftest import create_scratch_database, drop_scratch_database, run_migrations

    database_url = create_scratch_database("lethe_bench")
    server = meter = None
    try:
        run_migrations(database_url)
        token = create_key(database_url)
        env = {
            **os.environ,
            "LETHE_DATABASE_URL": database_url,
            "LETHE_OUTBOX_DISPATCH_IN_API": "false",
            "LETHE_RATE_LIMIT_STORE": "memory",
            "LETHE_RATE_LIMIT_PER_MINUTE": str(10**9),
            "LETHE_RATE_LIMIT_BURST": str(10**9),
            "LETHE_MAX_BULK_SAMPLES": str(max(args.batch, 1)),
            "LETHE_MODELS_ROOT": str(models_root(Path(tempfile.mkdtemp(prefix="lethe-bench-models-")))),
            "OMP_NUM_THREADS": "1",
        }
        server = Server("app.main:app", env, workers=1)
        server.wait_ready("/healthz")
        meter = CpuMeter(server.process.pid, database_url)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=300) as api:
            half = args.samples // 2
            results = [
                load(api, meter, "bench-json", "application/json", half, args.batch, args.concurrency),
                load(
                    api,
                    meter,
                    "bench-ndjson",
                    "application/x-ndjson",
                    args.samples - half,
                    args.batch,
                    args.concurrency,
                ),  # fmt: skip
            ]
            subjects = min(half, args.samples - half) // SAMPLES_PER_SUBJECT
            lookup = lookups(api, subjects, ["bench-json", "bench-ndjson"])
    finally:
        if meter is not None:
            meter.close()
        if server is not None:
            server.stop()
        drop_scratch_database(database_url)

    total = sum(result.samples for result in results)
    cpu_us = (
        sum((r.api_cpu_us_per_sample + r.postgres_cpu_us_per_sample) * r.samples for r in results) / total
    )
    return {
        "config": {**vars(args), "cpu_count": os.cpu_count()},
        "results": [asdict(result) for result in results],
        "samples_per_second": round(total / sum(result.seconds for result in results)),
        "cpu_us_per_sample": round(cpu_us, 1),
        # What the CPU cost allows when API and Postgres have the machine's cores to themselves.
        "cpu_bound_samples_per_second": round(min(2, os.cpu_count() or 1) / cpu_us * 1e6),
        "subject_lookup_at_size": {"tenant_samples": total, **lookup},
    }


def print_report(report: dict[str, object]) -> None:
    header = f"{'load':28} {'samples':>9} {'seconds':>8} {'samples/s':>10} {'batch p50 ms':>13}"
    print(f"{header} {'cpu us/sample':>18}")
    for result in report["results"]:
        cpu = f"{result['api_cpu_us_per_sample']} + {result['postgres_cpu_us_per_sample']}"
        print(
            f"{result['name']:28} {result['samples']:>9} {result['seconds']:>8} "
            f"{result['samples_per_second']:>10} {result['batch_p50_ms']:>13} {cpu:>18}"
        )
    print(
        f"overall: {report['samples_per_second']} samples/s (wall clock, on a machine shared with other work)"
    )
    print(
        f"CPU per sample (API + Postgres): {report['cpu_us_per_sample']} us -> "
        f"{report['cpu_bound_samples_per_second']} samples/s when two cores are free for them"
    )
    lookup = report["subject_lookup_at_size"]
    print(
        f"GET /v1/subjects/{{id}} with {lookup['tenant_samples']} samples in the tenant: "
        f"p50 {lookup['p50_ms']} ms, p99 {lookup['p99_ms']} ms ({lookup['lookups']} lookups)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=200_000, help="samples registered in all")
    parser.add_argument("--batch", type=int, default=10_000, help="samples per request")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else "", end="")
    if not args.json:
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
