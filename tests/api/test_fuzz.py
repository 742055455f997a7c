"""A bounded property-based fuzz of the whole API from its own OpenAPI document (schemathesis): valid and
invalid requests to every operation, against the API under uvicorn on the test Postgres, with a fixed
seed. No answer may be a 5xx, and every answer must be one its operation declares, with the declared
media type and schema."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from schemathesis.config import SchemathesisConfig

from app.db import session_scope
from app.main import create_app
from app.security.keys import create_api_key
from app.security.scopes import ALL_SCOPES
from app.settings import get_settings
from app.tenancy.service import create_tenant
from tests.api.provenance_factory import unique

SEED = 17
MAX_EXAMPLES = 25
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]


@pytest.fixture(scope="module")
def fuzz_server(database_url: str) -> Iterator[str]:
    """The API under uvicorn on a free loopback port, as deployed (no uvicorn access log)."""
    # The fuzz sends thousands of requests from one key: no rate limit (its 429 is tested elsewhere).
    settings = get_settings().model_copy(update={"outbox_dispatch_in_api": False, "rate_limit_per_minute": 0})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, access_log=False, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-fuzz", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def fuzz_auth(database_url: str) -> dict[str, str]:
    """Every scope on a tenant of the fuzz's own."""
    with session_scope() as session:
        tenant_id = create_tenant(session, unique("fuzz")).id
        _, plaintext = create_api_key(session, tenant_id, ALL_SCOPES, name="fuzz")
    return {"Authorization": f"Bearer {plaintext}"}


def fuzz_config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "allow-x00": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )


# Sample batches also come as NDJSON: sent as the text the document describes.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")

# The document the server serves, built from the same code (cases are sent to the server below).
schema = schemathesis.openapi.from_dict(create_app().openapi(), config=fuzz_config())


@schema.parametrize()
def test_no_request_gets_a_5xx_or_an_undeclared_answer(
    case, fuzz_server: str, fuzz_auth: dict[str, str]
) -> None:
    case.call_and_validate(base_url=fuzz_server, headers=fuzz_auth)
