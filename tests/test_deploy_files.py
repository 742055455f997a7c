"""The deployment files say what the README promises: the compose services with their commands,
dependencies, GPU reservation and settings; the Dockerfile's API image without torch; every setting
documented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def dockerfile_stages(text: str) -> dict[str, dict[str, object]]:
    """Stage name -> {"parent": base image or stage, "instructions": [(keyword, arguments), ...]}."""
    joined = re.sub(r"\\\n", " ", text)  # line continuations
    stages: dict[str, dict[str, object]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", arguments.strip(), flags=re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = []
            stages[match.group(2)] = {"parent": match.group(1), "instructions": current}
        else:
            assert current is not None, f"instruction before FROM: {line}"
            current.append((keyword, arguments))
    return stages


STAGES = dockerfile_stages(DOCKERFILE)


def stage_chain(name: str) -> list[str]:
    """The stage and the stages it builds on, nearest first."""
    chain = [name]
    while STAGES[chain[-1]]["parent"] in STAGES:
        chain.append(STAGES[chain[-1]]["parent"])
    return chain


def run_lines(stage: str) -> list[str]:
    return [
        args
        for name in stage_chain(stage)
        for keyword, args in STAGES[name]["instructions"]
        if keyword == "RUN"
    ]


def command_of(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return command if isinstance(command, list) else command.split()


def test_compose_has_the_stack():
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(SERVICES)


def test_api_image_installs_no_torch_and_worker_image_does():
    assert {"api", "worker"} <= set(STAGES)
    api_runs = " ".join(run_lines("api"))
    assert "torch" not in api_runs and "[worker" not in api_runs
    assert "pip install ." in api_runs
    worker_runs = " ".join(run_lines("worker"))
    assert re.search(r"torch==\$\{?TORCH_VERSION", worker_runs)
    assert ".[worker]" in worker_runs
    # What `pip install .` pulls in must not bring torch either.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if re.match(r"torch\b", dep)]
    assert any(dep.startswith("torch") for dep in project["optional-dependencies"]["worker"])


def test_services_build_the_right_targets():
    for service in ("migrate", "api"):
        assert SERVICES[service]["build"]["target"] == "api", service
    assert SERVICES["worker"]["build"]["target"] == "worker"
    for service in SERVICES.values():
        if "build" in service:
            assert service["build"]["target"] in STAGES


def test_migrate_runs_alembic_and_the_app_waits_for_it():
    assert command_of("migrate")[:3] == ["alembic", "upgrade", "head"]
    for service in ("api", "worker"):
        depends = SERVICES[service]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_api_serves_the_app_without_access_log():
    command = command_of("api")
    assert command[:2] == ["uvicorn", "app.main:app"]
    # uvicorn's access log prints raw paths, which can hold data-subject identifiers.
    assert "--no-access-log" in command
    assert "/readyz" in " ".join(SERVICES["api"]["healthcheck"]["test"])


def test_gpu_worker_is_one_process_on_one_reserved_gpu():
    worker = SERVICES["worker"]
    command = command_of("worker")
    assert command[0] == "celery" and "worker" in command
    assert command[command.index("--queues") + 1] == "gpu"
    assert command[command.index("--concurrency") + 1] == "1"
    assert command[command.index("--prefetch-multiplier") + 1] == "1"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and "gpu" in devices[0]["capabilities"]
    assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"


@pytest.mark.parametrize("service", ["postgres", "redis", "api", "worker"])
def test_long_running_services_have_healthchecks(service):
    assert SERVICES[service]["healthcheck"]["test"]


def test_app_services_share_the_database_and_broker():
    urls = {
        (s["environment"]["LETHE_DATABASE_URL"], s["environment"]["LETHE_BROKER_URL"])
        for name, s in SERVICES.items()
        if name in ("migrate", "api", "worker")
    }
    assert len(urls) == 1
    database_url, broker_url = urls.pop()
    assert database_url.startswith("postgresql+psycopg://") and "@postgres:5432/" in database_url
    assert broker_url.startswith("redis://redis:6379")


def test_compose_sets_only_real_settings():
    known = {f"LETHE_{name.upper()}" for name in Settings.model_fields}
    for name, service in SERVICES.items():
        for variable in service.get("environment") or {}:
            if variable.startswith("LETHE_"):
                assert variable in known, f"{name} sets unknown {variable}"


def readme_setting_rows() -> dict[str, str]:
    """`LETHE_X` -> the default column of its row in README.md's configuration table."""
    readme = (ROOT / "README.md").read_text()
    return dict(re.findall(r"^\| `(LETHE_[A-Z0-9_]+)` \| ([^|]+?) \|", readme, flags=re.MULTILINE))


def documented_default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def test_every_setting_is_documented_in_the_readme_with_its_default():
    rows = readme_setting_rows()
    for name, field in Settings.model_fields.items():
        variable = f"LETHE_{name.upper()}"
        assert variable in rows, f"README.md has no row for {variable}"
        if isinstance(field.default, SecretStr):
            continue
        assert rows[variable] == documented_default(field.default), f"README.md default of {variable}"


def test_worker_commands_name_the_celery_app_that_exists():
    for name, service in SERVICES.items():
        command = command_of(name) if "command" in service else []
        if command[:1] != ["celery"]:
            continue
        module, _, attribute = command[command.index("--app") + 1].partition(":")
        source = ROOT / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{name}: no {source}"
        assert re.search(rf"^{attribute or 'app'}\b.*=", source.read_text(), flags=re.MULTILINE), name
    assert "workers.celery_app:app" in DOCKERFILE


def test_api_and_workers_sign_certificates_with_one_configured_key():
    for name in ("api", "worker"):
        assert "LETHE_CERTIFICATE_SIGNING_KEY" in SERVICES[name]["environment"], name
