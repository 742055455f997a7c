"""Fixtures of the dashboard and certificate tests: a fixed signing key, an HTTPS test client (the
session cookie is Secure), read-only keys, and a live server for the browser."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.certificates.signing import signing_key
from app.security.scopes import Scope
from app.settings import get_settings

# One fixed test key for the session, set before any certificate is signed.
TEST_SEED = bytes(range(32))
os.environ.setdefault("LETHE_CERTIFICATE_SIGNING_KEY", base64.b64encode(TEST_SEED).decode())

READ_ONLY_SCOPES = (Scope.REQUESTS_READ, Scope.MODELS_READ, Scope.AUDIT_READ)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium against a live server")


@pytest.fixture(scope="session")
def certificates_ready(database_url: str) -> None:
    """Certificates signed with the test key set above, whatever was cached before this session."""
    get_settings.cache_clear()
    signing_key.cache_clear()


@pytest.fixture
def https_client(api_app: FastAPI, certificates_ready: None) -> TestClient:
    """A client on https://testserver: the dashboard's session cookie is Secure. No lifespan: no outbox
    dispatcher thread."""
    return TestClient(api_app, base_url="https://testserver", follow_redirects=False)


@pytest.fixture
def reader_key(make_key, tenant_a: str) -> str:
    """A read-only key of tenant A (what a compliance officer gets), as the bare key."""
    return make_key(tenant_a, READ_ONLY_SCOPES)["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def login(https_client: TestClient) -> Callable[[str], TestClient]:
    def sign_in(key: str) -> TestClient:
        answer = https_client.post("/dashboard/login", data={"key": key, "next": "/dashboard/requests"})
        assert answer.status_code == 303, answer.text
        return https_client

    return sign_in


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def live_server(database_url: str, certificates_ready: None) -> Iterator[str]:
    """The API under uvicorn on a free loopback port, against the test database (in a thread of this
    process, so it shares the settings); answers its base URL."""
    from app.main import create_app

    settings = get_settings().model_copy(update={"outbox_dispatch_in_api": False, "log_level": "WARNING"})
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="dashboard-live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def browser(live_server: str) -> Iterator[object]:
    if not CHROMIUM.exists():  # `make test` installs it
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
