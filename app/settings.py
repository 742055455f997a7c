"""Every setting of the service, read once from the environment (prefix LETHE_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path(".lethe")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", env_file=".env", extra="ignore")

    # Postgres in production and tests; the SQLite file is only the embedded default of `make demo`.
    database_url: str = f"sqlite:///{DATA_DIR / 'lethe.db'}"
    broker_url: str = "redis://127.0.0.1:6379/0"
    db_pool_size: int = 10
    db_max_overflow: int = 20
    # Off: a round trip per checkout for a rare event. A connection that died with a database restart
    # fails its request with a 503 (app.errors) and is replaced; the client's retry then succeeds.
    db_pool_pre_ping: bool = False
    # The tests create (and drop) a throwaway database `lethe_test_<random>` through this server URL.
    test_admin_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

    # Keys for the keyed hashes: API keys and data-subject identifiers are stored only as HMACs.
    secret_key: SecretStr = SecretStr("change-me-in-production")
    subject_hmac_key: SecretStr = SecretStr("change-me-subject-key")
    # Ed25519 key that signs deletion certificates: PEM (PKCS#8) or the base64 of the raw 32-byte seed.
    # Unset: each process makes a throwaway key (logged loudly) and its certificates stop verifying
    # against the published public key after a restart.
    certificate_signing_key: SecretStr | None = None
    # Ed25519 key of its own that signs the audit chain's checkpoints, in the same formats. Unset: a
    # throwaway key per process (logged loudly): checkpoints then prove integrity, not who signed them.
    audit_signing_key: SecretStr | None = None
    # Where checkpoints are appended, one JSON Lines file per tenant: a folder the database's writers
    # cannot rewrite (another volume or host, an append-only or WORM-backed mount).
    audit_checkpoint_dir: str = str(DATA_DIR / "audit-checkpoints")
    # How often the workers sign the chain heads that moved; each issued certificate also gets one.
    audit_checkpoint_interval_seconds: float = Field(default=300.0, gt=0)

    api_key_prefix: str = "lethe_"
    # A verified API key is trusted this long per process without another database read: a revoked key
    # keeps working for at most this many seconds (0 = check the database on every request).
    api_key_cache_seconds: float = Field(default=5.0, ge=0)
    max_body_bytes: int = 10 * 1024 * 1024
    max_bulk_samples: int = 100_000
    # Token bucket per API key (per client address without a key): refill rate and burst; 0 turns it off.
    # "auto" shares the buckets of all API processes in Redis at broker_url when that is a Redis URL.
    rate_limit_per_minute: int = 6000
    rate_limit_burst: int = 600
    rate_limit_store: Literal["auto", "redis", "memory"] = "auto"
    default_page_size: int = 50
    max_page_size: int = 500

    # Deletion deadlines per regime.
    gdpr_months: int = 1
    ccpa_days: int = 45

    artifact_root: str = str(DATA_DIR / "artifacts")
    report_root: str = str(DATA_DIR / "reports")
    # Customers' own model folders: a registered artifact_uri that is a path must lie below this folder
    # (shared by the API and the workers, like artifact_root); anything outside it is refused.
    models_root: str = str(DATA_DIR / "models")
    # fsspec protocols an artifact_uri may use besides a path under models_root. Network protocols that
    # reach arbitrary hosts (http, ftp, ...) are left out: registration would make the service fetch them.
    artifact_url_protocols: list[str] = ["s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"]

    # Callback URLs to private or loopback hosts are refused unless allowed (tests, the demo).
    allow_private_callbacks: bool = False
    log_level: str = "INFO"
    log_json: bool = True

    batching_window_seconds: float = Field(default=5.0, ge=0)

    # The outbox dispatcher thread of an API process: sends right after each commit that wrote tasks,
    # and polls on this interval for rows a broker outage left behind. Off where another process sends.
    outbox_dispatch_in_api: bool = True
    outbox_poll_seconds: float = Field(default=1.0, gt=0)

    # --- the pipeline (workers/): jobs, sweeper, purge, webhook delivery, Celery limits ---
    # A running job holds a lease its worker renews every heartbeat; once the lease lapses (worker lost)
    # the sweeper hands the job to another worker, and fails it after job_max_attempts runs.
    job_lease_seconds: float = Field(default=60.0, gt=0)
    job_heartbeat_seconds: float = Field(default=10.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    sweep_interval_seconds: float = Field(default=10.0, gt=0)
    # Artifacts of versions tainted by a deletion are purged this long after the promotion replacing them.
    purge_grace_seconds: float = Field(default=3600.0, ge=0)
    # Celery: limits of the GPU tasks (train, unlearn, verify) and of the others. The Redis visibility
    # timeout must exceed the longest task, or Redis hands a running task to a second worker.
    gpu_task_soft_time_limit_seconds: int = Field(default=6 * 3600, gt=0)
    gpu_task_time_limit_seconds: int = Field(default=6 * 3600 + 300, gt=0)
    task_soft_time_limit_seconds: int = Field(default=300, gt=0)
    task_time_limit_seconds: int = Field(default=360, gt=0)
    broker_visibility_timeout_seconds: int = Field(default=7 * 3600, gt=0)
    # Folder of the filesystem:// broker (the embedded demo: no Redis installed).
    broker_folder: str = str(DATA_DIR / "broker")
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_backoff_seconds: float = Field(default=5.0, gt=0)  # first retry delay, doubling each time


@lru_cache
def get_settings() -> Settings:
    return Settings()
