"""`lethe serve`, `lethe worker`, `lethe migrate`: the service's processes and its schema.

Each runs in the calling process (uvicorn, Celery, Alembic), so a supervisor or a container's signals
reach it directly. Only `worker` needs the Celery app; none of them imports the ML stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.commands import command_app

REPOSITORY = Path(__file__).resolve().parent.parent
ALEMBIC_INI = "alembic.ini"

serve = command_app()
worker = command_app()
migrate = command_app()


@serve.command("serve")
def run_api(
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 in a container)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    proxy_headers: Annotated[
        bool, typer.Option(help="trust X-Forwarded-* from --forwarded-allow-ips (behind a proxy)")
    ] = True,
    forwarded_allow_ips: Annotated[
        str | None, typer.Option(help="proxies trusted for X-Forwarded-* (uvicorn's default: 127.0.0.1)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's own log level")] = "info",
) -> None:
    """Run the API: one uvicorn process, without uvicorn's access log.

    uvicorn's access lines carry raw paths, and a path such as /v1/subjects/{subject_id} holds a
    data-subject identifier; Lethe writes its own access line with the route template instead.
    To scale, run more processes behind a load balancer (one per container or host).
    """
    import uvicorn

    uvicorn.run(
        "app.main:app",
        host=host,
        port=port,
        access_log=False,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level=log_level,
    )


@worker.command("worker")
def run_worker(
    queues: Annotated[
        str, typer.Option(help="comma-separated: gpu (train, unlearn, verify), default (the rest)")
    ] = "gpu,default",
    concurrency: Annotated[int, typer.Option(help="tasks at once; keep 1 on a gpu queue (one per GPU)")] = 1,
    prefetch_multiplier: Annotated[int, typer.Option(help="messages reserved per process")] = 1,
    hostname: Annotated[str | None, typer.Option(help="node name, e.g. gpu@%h")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery's log level")] = "INFO",
) -> None:
    """Run a Celery worker on the given queues (the sweeper and outbox passes run in its main process).

    One process per GPU: `lethe worker --queues gpu` with CUDA_VISIBLE_DEVICES set; the short tasks:
    `lethe worker --queues default --concurrency 2`. A CPU machine can run both queues in one worker
    (the default).
    """
    from workers.celery_app import app

    argv = ["worker", "--queues", queues, "--concurrency", str(concurrency)]
    argv += ["--prefetch-multiplier", str(prefetch_multiplier), "--loglevel", loglevel]
    if hostname:
        argv += ["--hostname", hostname]
    app.worker_main(argv)


def alembic_ini() -> Path:
    """alembic.ini of the working directory (the images' /srv/lethe), else of this source tree."""
    for folder in (Path.cwd(), REPOSITORY):
        if (folder / ALEMBIC_INI).is_file():
            return folder / ALEMBIC_INI
    raise typer.BadParameter(
        f"no {ALEMBIC_INI} in {Path.cwd()} or {REPOSITORY}: run from the directory that holds migrations/"
    )


@migrate.command("migrate")
def run_migrations(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Upgrade the database at LETHE_DATABASE_URL to a revision (default: the newest)."""
    from alembic import command
    from alembic.config import Config

    from app.settings import get_settings

    config = Config(str(alembic_ini()))
    typer.echo(f"migrating {_redacted(get_settings().database_url)} to {revision}", err=True)
    command.upgrade(config, revision)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
