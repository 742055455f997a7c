# Lethe: `make demo` and `make test` are the two set-up commands; both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Installed before the project so that the `worker` extra's torch range is already met by this build
# (on a CPU machine the wheel on disk; a plain `torch` would pull a multi-GB CUDA build).
TORCH_VERSION ?= 2.13.0
# Keep test runs polite on small machines; tests that need more threads set them themselves.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PYTEST_ARGS ?=
COMPOSE ?= docker compose
COMPOSE_ENV := .lethe/compose.env

.PHONY: venv install test demo screenshots bench lint format migrate up down clean distclean

venv install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -e '.[worker,dev]'
	touch $@

# The dashboard's browser tests drive Debian's Chromium (a browser download of its own is not possible here).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends chromium

test: $(VENV)/.installed $(CHROMIUM)
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(TEST_ENV) $(PY) scripts/demo.py

# Regenerates docs/screenshots/*.png from this checkout: a scratch database, the API on a loopback port,
# headless Chromium (needs Postgres, as `make test` does).
screenshots: $(VENV)/.installed $(CHROMIUM)
	$(TEST_ENV) $(PY) -m tests.dashboard.screenshots docs/screenshots

# Regenerates docs/benchmarks.md, its plots and bench/results/<mode>.json (BENCH_ARGS=--medium or --full).
BENCH_ARGS ?= --quick
# The intake benchmark's load generator, from Debian's packages.
WRK ?= /usr/bin/wrk

$(WRK):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends wrk

bench: $(VENV)/.installed $(WRK)
	$(PY) -m bench $(BENCH_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Applies the migrations to LETHE_DATABASE_URL (default: the demo's SQLite file).
migrate: $(VENV)/.installed
	mkdir -p .lethe
	$(VENV)/bin/alembic upgrade head

# Production-like stack: Postgres, Redis, migrations, the API and workers (needs a Docker engine).
# PROFILE=cpu (default): one worker on the CPU, any machine; PROFILE=gpu: a worker on a reserved NVIDIA GPU
# and one for the short tasks. While the database holds no API key, `make up` creates the first one
# (tenant `default`, every scope) and prints it once; more: docker compose exec api lethe keys create ...
PROFILE ?= cpu
STACK := $(COMPOSE) --env-file $(COMPOSE_ENV)

up: $(COMPOSE_ENV)
	$(STACK) --profile $(PROFILE) up --build -d
	@if [ "$$($(STACK) exec -T api lethe keys list --json)" = "[]" ]; then \
	  echo "first API key (tenant default, every scope), shown once: store it now"; \
	  $(STACK) exec -T api lethe keys create --tenant default --scope all --name first; fi
	@echo "API: http://127.0.0.1:8000, dashboard: http://127.0.0.1:8000/dashboard"

down:
	$(STACK) --profile cpu --profile gpu down

# Secrets for the compose stack, made once and kept out of git (.lethe/ is ignored).
$(COMPOSE_ENV):
	mkdir -p .lethe
	umask 077; $(PYTHON) -c "import base64, secrets; \
	print('LETHE_SECRET_KEY=' + secrets.token_hex(32)); \
	print('LETHE_SUBJECT_HMAC_KEY=' + secrets.token_hex(32)); \
	print('LETHE_CERTIFICATE_SIGNING_KEY=' + base64.b64encode(secrets.token_bytes(32)).decode()); \
	print('POSTGRES_PASSWORD=' + secrets.token_hex(16))" > $@

clean:
	rm -rf .lethe/demo build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .lethe .cache
