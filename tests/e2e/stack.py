"""The processes an end-to-end test runs: a Redis server of its own, the API (uvicorn) and Celery workers.

Each is a real subprocess in its own session (process group), so a test can stop Redis, or SIGKILL a
worker together with its pool process, without touching anything else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll `check` until it answers something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Process:
    """A subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_since_start(self) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a worker and its pool processes)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """A graceful stop: SIGTERM to the main process, which ends its children; SIGKILL after 30 s."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        self.kill(signal.SIGKILL)


class RedisServer(Process):
    def __init__(self, port: int, log_dir: Path) -> None:
        command = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        super().__init__(f"redis-{port}", command, dict(os.environ), log_dir)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        super().start()
        wait_for("redis to answer", self._answers, 20, 0.1)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class Api(Process):
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        super().__init__("api", command + ["--no-access-log"], env, log_dir)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        wait_for("the API to answer /healthz", self._healthy, 60, 0.2)

    def _healthy(self) -> bool:
        if not self.running:
            raise AssertionError(f"the API exited:\n{self.log_since_start()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False


class Worker(Process):
    """`celery --app workers.celery_app:app worker` on some queues, supervised as deployed: a worker that
    exits on its own is started again (compose's `restart: unless-stopped`). A worker whose Redis connection
    breaks while it holds an unacknowledged message can exit inside kombu; production restarts it, and so
    does this harness. Stopping or killing it on purpose ends the supervision until the next start."""

    def __init__(
        self, name: str, queues: str, env: dict[str, str], log_dir: Path, concurrency: int = 1
    ) -> None:
        command = [
            sys.executable, "-m", "celery", "--app", "workers.celery_app:app", "worker",
            "--queues", queues, "--concurrency", str(concurrency), "--prefetch-multiplier", "1",
            "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        ]  # fmt: skip
        super().__init__(name, command, env, log_dir)
        self.supervised = False
        self.restarts = 0
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        wait_for(f"worker {self.name} to be ready", self._ready, 90, 0.2)
        self.supervised = True
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name=f"supervise-{self.name}", daemon=True)
            self._watcher.start()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.supervised = False
        super().kill(sig)

    def stop(self) -> None:
        self.supervised = False
        super().stop()

    def _ready(self) -> bool:
        if not self.running:
            raise AssertionError(f"worker {self.name} exited:\n{self.log_since_start()[-3000:]}")
        return " ready." in self.log_since_start()

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            if self.supervised and not self.running:
                self.restarts += 1
                with self.log_path.open("a") as log:
                    log.write(f"\n--- harness: worker exited, restart #{self.restarts} ---\n")
                self.start()


class WebhookReceiver:
    """An HTTP endpoint on a free loopback port that records every POST (headers, body); it answers 500 to
    the first `failures` POSTs, 204 afterwards."""

    def __init__(self, failures: int = 0) -> None:
        import http.server
        import threading

        received: list[tuple[dict[str, str], bytes]] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if len(received) <= failures else 204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(body) for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
