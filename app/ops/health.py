"""Readiness checks: can this process reach the database and the broker right now?"""

from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy import Engine, text

BROKER_TIMEOUT_SECONDS = 1.0


def check_database(engine: Engine) -> None:
    """Raises when the database does not answer a trivial query."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def check_broker(url: str) -> None:
    """Raises when the Celery broker at `url` cannot be reached."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        import redis

        client = redis.Redis.from_url(
            url, socket_connect_timeout=BROKER_TIMEOUT_SECONDS, socket_timeout=BROKER_TIMEOUT_SECONDS
        )
        try:
            client.ping()
        finally:
            client.close()
        return
    # Other transports (memory, filesystem for the embedded demo, AMQP) through kombu, which Celery uses.
    from kombu import Connection

    with Connection(url, connect_timeout=BROKER_TIMEOUT_SECONDS) as conn:
        conn.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS
        )
