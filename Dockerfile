# syntax=docker/dockerfile:1
# Two images from one file:
#   api    — FastAPI service; no torch, no ML stack (`pip install .`).
#   worker — Celery worker with the `worker` extra and torch, for GPU machines.
# Build: docker build --target api -t lethe-api .  |  docker build --target worker -t lethe-worker .

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/lethe
RUN useradd --create-home --uid 10001 lethe \
    && mkdir -p /data && chown lethe /data
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations

FROM base AS api
RUN pip install .
USER lethe
EXPOSE 8000
# uvicorn's access log is off: it prints raw paths (which may hold subject ids); the app logs route templates.
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log", "--proxy-headers"]

FROM base AS worker
ARG TORCH_VERSION=2.13.0
# torch first, pinned: PyPI's Linux wheel carries CUDA, which the GPU worker needs.
RUN pip install "torch==${TORCH_VERSION}" \
    && pip install ".[worker]"
USER lethe
CMD ["celery", "--app", "workers.celery_app:app", "worker", "--queues", "gpu", "--concurrency", "1", \
     "--prefetch-multiplier", "1", "--loglevel", "INFO"]
