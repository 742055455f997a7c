"""/healthz, /readyz and /metrics: for the orchestrator's probes and the Prometheus scraper."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from app.db import get_engine
from app.errors import ProblemError
from app.ops.health import check_broker, check_database

log = logging.getLogger("lethe.ops")

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    """Liveness: answers while the process serves requests; checks nothing else."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The database and the broker are reachable",
    responses={503: {"description": "A dependency is down (problem+json naming it in `checks`)."}},
)
def readyz(request: Request) -> Readiness:
    """Readiness: the database and the broker answer; 503 naming the one that does not."""
    checks = {
        "database": _run_check("database", lambda: check_database(get_engine())),
        "broker": _run_check("broker", lambda: check_broker(request.app.state.settings.broker_url)),
    }
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        raise ProblemError(
            503,
            "Service unavailable",
            f"not ready: {' and '.join(down)} unreachable",
            "not-ready",
            extensions={"checks": checks},
        )
    return Readiness(status="ready", checks=checks)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics of HTTP requests, deletion requests and jobs (text exposition format)."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _run_check(name: str, check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as exc:
        log.warning("readiness check failed: %s (%s)", name, type(exc).__name__)
        return "down"
    return "ok"
