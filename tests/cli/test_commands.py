"""`lethe` as an operator and an app developer use it, against a live API (`lethe serve`: real uvicorn on
the suite's Postgres). The API, `migrate`, `worker`, `keys create` and `requests wait` run in subprocesses
where the worker extra's packages cannot be imported (as on the API image); the first test shows every
other base command loads there too, and the rest run in-process to keep the suite quick. Requests move
through their life the way the pipeline moves them (its own functions) while `lethe requests wait` follows
them over HTTP."""

from __future__ import annotations

import io
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from rich.console import Console
from sqlalchemy import create_engine, text

from app.db import session_scope
from app.jobs.models import Job
from app.security.keys import parse_api_key
from tests.api.seeding import seed, unique_subject
from tests.conftest import create_scratch_database, drop_scratch_database
from tests.dashboard.factory import Scenario, complete, new_request, set_progress, start_job, write_report
from tests.e2e.stack import REPO_ROOT, Process, free_port, wait_for
from workers import client_cli
from workers.cli import COMMANDS, main
from workers.pipeline.jobs import fail_job
from workers.unlearning.cli import EXIT_USAGE

RUNNER = [sys.executable, "-m", "tests.cli.without_ml"]


def lethe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNNER, *args],
        cwd=REPO_ROOT,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def live_api(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`lethe serve` without the ML packages; revoked keys stop working at once (no key cache)."""
    port = free_port()
    env = {**os.environ, "LETHE_API_KEY_CACHE_SECONDS": "0", "LETHE_OUTBOX_DISPATCH_IN_API": "false"}
    api = Process("api", [*RUNNER, "serve", "--port", str(port)], env, tmp_path_factory.mktemp("api"))
    api.start()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert api.running, api.log_since_start()
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for("the API", healthy, 60)
    yield url
    api.stop()


def as_client(url: str, key: str) -> dict[str, str]:
    return {**os.environ, "LETHE_API_URL": url, "LETHE_API_KEY": key}


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """`lethe ARGS...` in this process, optionally as a client of `api` with `key`."""

    def invoke(*args: str, api: str | None = None, key: str | None = None) -> Ran:
        if api is not None:
            monkeypatch.setenv("LETHE_API_URL", api)
        if key is not None:
            monkeypatch.setenv("LETHE_API_KEY", key)
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return invoke


def bare_key(auth: dict[str, str]) -> str:
    return auth["Authorization"].removeprefix("Bearer ")


class Lines:
    """The output of a running command, line by line, to wait for what it prints."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self.lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)

    def expect(self, text: str, timeout: float = 60) -> str:
        while True:
            for line in self.seen:
                if text in line:
                    return line
            try:
                self.seen.append(self.lines.get(timeout=timeout))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} in {self.seen}") from None


def wait_command(request_id: str, env: dict[str, str], *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RUNNER, "requests", "wait", request_id, "--interval", "0.2", *options],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def waiting_on_a_new_request(
    api: str, tenant_id: str, auth: dict[str, str]
) -> tuple[Scenario, subprocess.Popen[str], Lines]:
    """A resolved request (sent over HTTP) and `lethe requests wait` following it."""
    with httpx.Client(base_url=api) as http:
        scenario = new_request(http, tenant_id, auth)  # type: ignore[arg-type]
    waiting = wait_command(scenario.request_id, as_client(api, bare_key(auth)), "--timeout", "120")
    output = Lines(waiting)
    output.expect("resolved")
    return scenario, waiting, output


def test_every_command_is_listed_and_the_base_ones_load_without_the_ml_packages() -> None:
    listed = lethe("--help")
    assert listed.returncode == 0, listed.stderr
    for name in COMMANDS:
        assert name in listed.stdout

    probe = (
        "from tests.cli.without_ml import block_worker_extra; block_worker_extra()\n"
        "import json, sys\n"
        "from workers.cli import COMMANDS, load_command\n"
        "commands = {name: load_command(name) for name in COMMANDS}\n"
        "loaded = {n: [p.name for p in c.params] + list(getattr(c, 'commands', {}))\n"
        "          for n, c in commands.items()}\n"
        "print(json.dumps({'loaded': loaded, 'ml': sorted({'torch', 'numpy'} & set(sys.modules))}))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert answer.returncode == 0, answer.stderr
    result = json.loads(answer.stdout)
    assert result["ml"] == []
    for name, entry in COMMANDS.items():
        if entry.needs_worker_extra:
            assert result["loaded"][name] == [], name  # the placeholder that explains
        else:
            assert result["loaded"][name], f"lethe {name} has neither options nor subcommands"

    refused = lethe("unlearn", "--workload", "digits", "--method", "nabla_tau")
    assert refused.returncode == 3
    assert "needs the ML packages of the worker extra" in refused.stderr


def test_operator_creates_lists_and_revokes_a_key(live_api: str, run: Callable[..., Ran]) -> None:
    tenant = f"cli-{unique_subject()}"
    created = lethe(
        "keys", "create", "--tenant", tenant, "--scope", "models:read,requests:read", "--name", "ci"
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("lethe_") and "\n" not in key and f"created tenant {tenant}" in created.stderr
    models = run("models", "list", "--json", api=live_api, key=key)
    assert models.returncode == 0, models.stderr
    assert json.loads(models.stdout) == []

    key_id = parse_api_key(key).key_id  # type: ignore[union-attr]
    listed = run("keys", "list", "--tenant", tenant, "--json")
    assert [(k["key_id"], k["name"], k["scopes"]) for k in json.loads(listed.stdout)] == [
        (key_id, "ci", ["models:read", "requests:read"])
    ]
    assert key.rsplit("_", 1)[-1] not in listed.stdout
    table = run("keys", "list", "--tenant", tenant)
    assert key_id in table.stdout and "models:read" in table.stdout

    assert run("keys", "revoke", key_id).returncode == 0
    refused = run("models", "list")
    assert refused.returncode == 4 and "HTTP 401" in refused.stderr
    assert json.loads(run("keys", "list", "--tenant", tenant, "--json").stdout) == []
    revoked = json.loads(run("keys", "list", "--tenant", tenant, "--revoked", "--json").stdout)
    assert revoked[0]["key_id"] == key_id and revoked[0]["revoked_at"]


def test_app_creates_gets_and_lists_requests(
    live_api: str, run: Callable[..., Ran], make_tenant, make_key
) -> None:
    tenant = make_tenant()
    subject = unique_subject()
    seeded = seed(tenant, {subject: 3})
    model = seeded.models["m1"]

    created = run(
        "requests", "create", "--subject", subject, "--json", api=live_api, key=bare_key(make_key(tenant))
    )
    assert created.returncode == 0, created.stderr
    request = json.loads(created.stdout)
    assert request["status"] == "resolved" and request["sample_count"] == 3
    assert [m["model"] for m in request["models"]] == [model]

    shown = run("requests", "get", request["id"])
    assert shown.returncode == 0, shown.stderr
    assert request["id"] in shown.stdout and model in shown.stdout and "resolved" in shown.stdout
    assert json.loads(run("requests", "get", request["id"], "--json").stdout)["id"] == request["id"]

    resolved = json.loads(run("requests", "list", "--status", "resolved", "--json").stdout)
    assert [r["id"] for r in resolved] == [request["id"]]
    assert json.loads(run("requests", "list", "--status", "completed", "--json").stdout) == []
    assert request["id"] in run("requests", "list").stdout

    # Bad input: a clear refusal, and nothing recorded.
    both = run("requests", "create", "--subject", subject, "--sample-id", "1")
    assert both.returncode == 2 and "exactly one of --subject and --sample-id" in both.stderr
    unknown = run("requests", "create", "--subject", subject, "--method", "forget-harder")
    assert unknown.returncode == 4 and "HTTP 422" in unknown.stderr and "body.method" in unknown.stderr
    assert len(json.loads(run("requests", "list", "--json").stdout)) == 1

    listed = json.loads(run("models", "list", "--json").stdout)
    assert [m["name"] for m in listed] == [model]


def test_wait_follows_progress_and_exits_nonzero_when_the_request_fails(
    live_api: str, tenant_a: str, auth_a: dict[str, str]
) -> None:
    scenario, waiting, output = waiting_on_a_new_request(live_api, tenant_a, auth_a)
    job_id = start_job(scenario)
    set_progress(job_id, 40, "unlearning")
    assert scenario.model_name in output.expect("40%")

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        fail_job(session, job, "the unlearning run ran out of GPU memory")
    assert waiting.wait(timeout=60) == 1
    assert waiting.stderr is not None
    assert "failed: the unlearning run ran out of GPU memory" in waiting.stderr.read()


def test_wait_exits_zero_once_completed_and_names_the_certificate(
    live_api: str,
    run: Callable[..., Ran],
    tenant_a: str,
    auth_a: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario, waiting, output = waiting_on_a_new_request(live_api, tenant_a, auth_a)
    start_job(scenario)
    write_report(scenario, tmp_path / "report")
    complete(scenario)
    assert waiting.wait(timeout=60) == 0
    output.expect("completed: verdict pass")
    assert f"/v1/deletion-requests/{scenario.request_id}/certificate" in output.expect("certificate:")

    models = json.loads(run("models", "list", "--json", api=live_api, key=bare_key(auth_a)).stdout)
    assert {m["name"]: m["aliases"] for m in models}[scenario.model_name] == {"prod": 2}

    # On a terminal: a bar per model, redrawn in place.
    screen = io.StringIO()
    monkeypatch.setattr(client_cli, "out", Console(file=screen, force_terminal=True, width=120))
    assert run("requests", "wait", scenario.request_id).returncode == 0
    assert f"request {scenario.request_id}: completed" in screen.getvalue()
    assert f"{scenario.model_name}: done (nabla_tau)" in screen.getvalue() and "100%" in screen.getvalue()


def test_wait_gives_up_at_its_timeout_and_when_the_api_is_unreachable(
    live_api: str, run: Callable[..., Ran], tenant_a: str, auth_a: dict[str, str]
) -> None:
    with httpx.Client(base_url=live_api) as http:
        scenario = new_request(http, tenant_a, auth_a)  # type: ignore[arg-type]
    key = bare_key(auth_a)
    gave_up = run(
        "requests", "wait", scenario.request_id, "--timeout", "1", "--interval", "0.2", api=live_api, key=key
    )
    assert gave_up.returncode == 5 and "still resolved" in gave_up.stderr

    unreachable = run("requests", "wait", scenario.request_id, api=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 4 and "cannot reach the API" in unreachable.stderr
    unknown = run("requests", "get", "no-such-request", api=live_api)
    assert unknown.returncode == 4 and "HTTP 404" in unknown.stderr


@pytest.fixture
def empty_database() -> Iterator[str]:
    url = create_scratch_database("lethe_cli")
    yield url
    drop_scratch_database(url)


def test_migrate_then_a_worker_on_the_new_schema(empty_database: str, tmp_path: Path) -> None:
    env = {**os.environ, "LETHE_DATABASE_URL": empty_database}
    migrated = lethe("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    head = ScriptDirectory.from_config(Config(str(REPO_ROOT / "alembic.ini"))).get_current_head()
    engine = create_engine(empty_database)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    engine.dispose()
    assert lethe("keys", "create", "--tenant", "first", "--scope", "all", env=env).stdout.startswith("lethe_")

    # The default queue's worker (planning, promotion, webhooks) needs no ML package either; its own
    # broker folder, so it takes no other test's work.
    broker = {"LETHE_BROKER_URL": "filesystem://", "LETHE_BROKER_FOLDER": str(tmp_path / "broker")}
    command = [*RUNNER, "worker", "--queues", "default", "--hostname", "cli-test@%h"]
    worker = Process("worker", command, {**env, **broker}, tmp_path)
    worker.start()
    try:
        wait_for(
            "the worker",
            lambda: "cli-test@" in worker.log_since_start() and " ready." in worker.log_since_start(),
            90,
        )
        assert ".> default" in worker.log_since_start()
    finally:
        worker.stop()


def test_unlearn_and_verify_on_a_registered_model_say_what_is_not_there(
    make_tenant: Callable[..., str], run: Callable[..., Ran]
) -> None:
    tenant = f"cli-{unique_subject()}"
    subject, stranger = unique_subject(), unique_subject()
    seeded = seed(make_tenant(tenant), {subject: 2})
    model = seeded.models["m1"]

    def refused(command: str, *options: str) -> str:
        ran = run(command, *options)
        assert ran.returncode == EXIT_USAGE, (ran.stdout, ran.stderr)
        return ran.stderr

    target = ("--model", model, "--tenant", tenant, "--subject", subject)
    for command in ("unlearn", "verify"):
        assert "exactly one of --workload and --model" in refused(command, "--method", "finetune")
        both = refused(command, "--workload", "digits", *target, "--method", "finetune")
        assert "exactly one of --workload and --model" in both
        alone = refused(command, "--model", model, "--tenant", tenant, "--method", "finetune")
        assert "--model needs --tenant and at least one --subject" in alone
        nameless = refused(command, *target[:2], "--tenant", "nobody", *target[4:], "--method", "finetune")
        assert "error: no tenant 'nobody'" in nameless
        unknown = refused(command, "--model", "nope", *target[2:], "--method", "finetune")
        assert f"error: tenant '{tenant}' has no model 'nope'" in unknown
        missing = refused(command, *target, "--version", "7", "--method", "finetune")
        assert f"error: model '{model}' has no version 7" in missing
        stranger_out = refused(command, *target[:4], "--subject", stranger, "--method", "finetune")
        assert f"error: subject '{stranger}' has no sample in {model} v1" in stranger_out
        assert "unknown unlearning method 'forget_all'" in refused(command, *target, "--method", "forget_all")
        # the seeded version points at no real files
        unloadable = refused(command, *target, "--method", "finetune")
        assert f"error: {model} v1 has no loadable artifact" in unloadable
