# syntax=docker/dockerfile:1
# Two images from one file:
#   api    — FastAPI service and the operator's `lethe` commands; no torch, no ML stack.
#   worker — Celery worker with the `worker` extra and torch (CUDA build by default; see TORCH_INDEX_URL).
# Build: docker build --target api -t lethe-api .  |  docker build --target worker -t lethe-worker .
#
# Layers go from what changes least to what changes most: torch, then the dependencies named in
# pyproject.toml (installed from that file alone), then the code. A code change rebuilds only the last two
# layers (copy, and an install of the project without its dependencies); torch is never reinstalled.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/lethe
RUN useradd --create-home --uid 10001 lethe \
    && mkdir -p /data && chown lethe /data
COPY scripts/project_requirements.py /usr/local/bin/

FROM base AS api
COPY pyproject.toml ./
RUN python /usr/local/bin/project_requirements.py > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY app ./app
COPY workers ./workers
RUN pip install --no-deps .
USER lethe
EXPOSE 8000
# uvicorn's access log is off: it prints raw paths (which may hold subject ids); the app logs route templates.
CMD ["lethe", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
ARG TORCH_VERSION=2.13.0
# Empty: PyPI, whose Linux x86_64 wheel carries CUDA (what a GPU worker needs). A CPU-only image is much
# smaller with PyTorch's CPU wheel index, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_URL=
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
COPY pyproject.toml ./
# The pinned torch above already meets the worker extra's torch range: nothing downloads it again.
RUN python /usr/local/bin/project_requirements.py worker > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "torch==${TORCH_VERSION}"
COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY app ./app
COPY workers ./workers
RUN pip install --no-deps .
USER lethe
CMD ["lethe", "worker", "--queues", "gpu", "--concurrency", "1", "--prefetch-multiplier", "1"]
