"""The deployment files say what the README promises: the compose services with their commands,
dependencies, profiles (a CPU one that reserves no GPU, a GPU one that does) and settings; the Dockerfile's
API image without torch, and its layers in an order where a code change reinstalls no dependency; every
setting documented. (No Docker engine runs here: the files are parsed.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from app.settings import Settings
from scripts.project_requirements import requirements
from workers.cli import main

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
    command = SERVICES[service].get("command") or []
    return command if isinstance(command, list) else command.split()


def profiles_of(service: str) -> set[str]:
    return set(SERVICES[service].get("profiles") or [])


def reserves_gpu(service: str) -> bool:
    devices = ((SERVICES[service].get("deploy") or {}).get("resources") or {}).get("reservations", {})
    return any("gpu" in device.get("capabilities", []) for device in devices.get("devices") or [])


def services_in(profile: str) -> set[str]:
    """What `docker compose --profile PROFILE up` starts: services without profiles, and the profile's."""
    return {name for name in SERVICES if not profiles_of(name) or profile in profiles_of(name)}


def test_compose_has_the_stack():
    assert {"postgres", "redis", "migrate", "api"} <= services_in("cpu") & services_in("gpu")
    for profile in ("cpu", "gpu"):
        queues = {
            queue
            for name in services_in(profile)
            if command_of(name)[:2] == ["lethe", "worker"]
            for queue in option(command_of(name), "--queues").split(",")
        }
        assert queues == {"gpu", "default"}, f"the {profile} profile's workers take {queues}"


def test_the_cpu_profile_reserves_no_gpu_and_the_gpu_profile_does():
    assert not any(reserves_gpu(name) for name in services_in("cpu"))
    assert SERVICES["worker-cpu"]["environment"]["CUDA_VISIBLE_DEVICES"] == ""
    assert [name for name in services_in("gpu") if reserves_gpu(name)] == ["worker"]
    # `make up` is the CPU profile (any laptop); the GPU one is asked for.
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^PROFILE \?= cpu$", makefile, flags=re.MULTILINE)
    assert "--profile $(PROFILE) up" in makefile


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_api_image_installs_no_torch_and_worker_image_does():
    assert {"api", "worker"} <= set(STAGES)
    api_runs = " ".join(run_lines("api"))
    assert "torch" not in api_runs and "[worker" not in api_runs
    worker_runs = " ".join(run_lines("worker"))
    assert re.search(r"torch==\$\{?TORCH_VERSION", worker_runs)
    assert "project_requirements.py worker" in worker_runs
    # What the API image installs must not bring torch either: the base dependencies alone.
    api_requirements = requirements(ROOT / "pyproject.toml", [])
    assert not [r for r in api_requirements if re.match(r"torch\b", r)]
    assert any(r.startswith("typer") for r in api_requirements)  # the `lethe` command line
    assert any(r.startswith("torch") for r in requirements(ROOT / "pyproject.toml", ["worker"]))


def instructions(stage: str) -> list[tuple[str, str]]:
    """The instructions that build `stage`, from its first ancestor on."""
    return [step for name in reversed(stage_chain(stage)) for step in STAGES[name]["instructions"]]


@pytest.mark.parametrize("stage", ["api", "worker"])
def test_code_is_copied_after_the_dependencies_are_installed(stage: str):
    steps = instructions(stage)
    copies_code = [
        i
        for i, (keyword, args) in enumerate(steps)
        if keyword == "COPY" and re.match(r"(app|workers)\b", args)
    ]
    installs = [i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and "pip install" in args]
    copies_pyproject = [
        i for i, (keyword, args) in enumerate(steps) if keyword == "COPY" and "pyproject.toml" in args
    ]
    assert copies_code and installs and copies_pyproject
    # Dependencies from pyproject.toml alone, then the code, then only the project itself.
    dependencies = next(i for i in installs if i > copies_pyproject[0])
    assert dependencies < copies_code[0]
    after_code = [steps[i][1] for i in installs if i > copies_code[0]]
    assert after_code and all("--no-deps" in args for args in after_code), after_code
    if stage == "worker":
        torch = [i for i in installs if "torch==" in steps[i][1]]
        # torch first: a change of pyproject.toml's dependencies does not reinstall it either.
        assert torch[0] < copies_pyproject[0]


def test_services_build_the_right_targets():
    for service in ("migrate", "api"):
        assert SERVICES[service]["build"]["target"] == "api", service
    for service in ("worker", "worker-default", "worker-cpu"):
        assert SERVICES[service]["build"]["target"] == "worker", service
    for service in SERVICES.values():
        if "build" in service:
            assert service["build"]["target"] in STAGES


def test_migrate_runs_first_and_the_app_waits_for_it():
    assert command_of("migrate") == ["lethe", "migrate"]
    for service in ("api", "worker", "worker-default", "worker-cpu"):
        depends = SERVICES[service]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_api_serves_the_app_without_access_log(monkeypatch):
    command = command_of("api")
    assert command[:2] == ["lethe", "serve"] and option(command, "--host") == "0.0.0.0"
    assert "/readyz" in " ".join(SERVICES["api"]["healthcheck"]["test"])
    # `lethe serve` runs uvicorn with its access log off: it prints raw paths, which can hold subject ids.
    import uvicorn

    started: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append({"app": app, **options}))
    assert main(command[1:]) == 0
    assert started == [
        {
            "app": "app.main:app",
            "host": "0.0.0.0",
            "port": 8000,
            "access_log": False,
            "proxy_headers": True,
            "forwarded_allow_ips": None,
            "log_level": "info",
        }
    ]


def test_gpu_worker_is_one_process_on_one_reserved_gpu():
    worker = SERVICES["worker"]
    command = command_of("worker")
    assert command[:2] == ["lethe", "worker"]
    assert option(command, "--queues") == "gpu"
    assert option(command, "--concurrency") == "1"
    assert option(command, "--prefetch-multiplier") == "1"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and "gpu" in devices[0]["capabilities"]
    assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_cpu_worker_takes_one_task_at_a_time():
    command = command_of("worker-cpu")
    assert option(command, "--concurrency") == "1" and option(command, "--prefetch-multiplier") == "1"


@pytest.mark.parametrize("service", ["postgres", "redis", "api", "worker", "worker-default", "worker-cpu"])
def test_long_running_services_have_healthchecks(service):
    assert SERVICES[service]["healthcheck"]["test"]


def test_app_services_share_the_database_and_broker():
    urls = {
        (s["environment"]["LETHE_DATABASE_URL"], s["environment"]["LETHE_BROKER_URL"])
        for name, s in SERVICES.items()
        if name in ("migrate", "api", "worker", "worker-default", "worker-cpu")
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


def test_worker_healthchecks_ping_the_node_their_command_names():
    for name, service in SERVICES.items():
        if command_of(name)[:2] != ["lethe", "worker"]:
            continue
        node = option(command_of(name), "--hostname").split("@")[0]
        check = " ".join(service["healthcheck"]["test"])
        assert "workers.celery_app:app" in check and f"--destination {node}@$$HOSTNAME" in check, name
    assert re.search(r"^app\b.*=", (ROOT / "workers" / "celery_app.py").read_text(), flags=re.MULTILINE)


def test_api_and_workers_sign_certificates_with_one_configured_key():
    for name in ("api", "worker", "worker-default", "worker-cpu"):
        assert "LETHE_CERTIFICATE_SIGNING_KEY" in SERVICES[name]["environment"], name
