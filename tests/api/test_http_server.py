"""The API behind a real uvicorn server, spoken to over raw sockets: an oversized body gets its 413 and the
connection stays usable, however large the body and however slowly it comes; a request that breaks the
input rule or fails inside the service is answered without dropping the keep-alive connection; and a
failure logs the route template, never the identifier in the path or the statement's parameters."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from sqlalchemy import text

from app.provenance import service as provenance_service
from app.settings import get_settings

MAX_BODY_BYTES = 1024 * 1024
MEGABYTE = 1024 * 1024


@pytest.fixture(scope="module", params=["h11", "httptools"])
def server(request: pytest.FixtureRequest, database_url: str) -> Iterator[tuple[str, int]]:
    """The app under uvicorn (each of its HTTP implementations) on a free loopback port, in a thread of
    this process (so it shares the test database and monkeypatches)."""
    from app.main import create_app

    settings = get_settings().model_copy(
        update={"outbox_dispatch_in_api": False, "max_body_bytes": MAX_BODY_BYTES}
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # As deployed (Dockerfile): no uvicorn access log (it prints raw paths); the app's logging stands.
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        http=request.param,
        access_log=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{request.param}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=10)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (what the API sends) from the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before answering: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of its answer"
        body += chunk
    return int(status_line.split()[1]), headers, body


def request_bytes(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: lethe.test",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def still_usable(sock: socket.socket) -> None:
    """The same connection serves another request."""
    sock.sendall(request_bytes("GET", "/healthz"))
    status, _, body = read_response(sock)
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def send_oversized(sock: socket.socket, total: int, connection: str) -> None:
    sock.sendall(
        f"POST /v1/datasets HTTP/1.1\r\nHost: lethe.test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {total}\r\nConnection: {connection}\r\n\r\n".encode()
    )
    chunk = b"x" * (64 * 1024)
    for _ in range(total // len(chunk)):
        sock.sendall(chunk)  # a server that answered and closed while we send resets the connection here


def test_a_30_mb_body_gets_its_413_then_the_connection_closes_cleanly(server) -> None:
    with socket.create_connection(server, timeout=30) as sock:
        send_oversized(sock, 30 * MEGABYTE, "close")
        status, headers, body = read_response(sock)
        assert status == 413 and headers["content-type"].startswith("application/problem+json")
        assert json.loads(body)["type"].endswith("payload-too-large")
        assert sock.recv(1) == b""  # an orderly close, not a reset


def test_a_30_mb_body_gets_its_413_and_a_kept_alive_connection_stays_usable(server) -> None:
    with socket.create_connection(server, timeout=30) as sock:
        send_oversized(sock, 30 * MEGABYTE, "keep-alive")
        status, _, body = read_response(sock)
        assert status == 413 and json.loads(body)["status"] == 413
        still_usable(sock)


def test_a_streamed_oversized_body_gets_its_413_and_the_connection_stays_usable(server) -> None:
    with socket.create_connection(server, timeout=30) as sock:
        sock.sendall(
            b"POST /v1/datasets HTTP/1.1\r\nHost: lethe.test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * (256 * 1024)
        for _ in range(12):  # 3 MB
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 413 and json.loads(body)["status"] == 413
        still_usable(sock)


def test_a_bad_ndjson_line_is_answered_and_the_connection_kept(server, make_key, tenant_a) -> None:
    auth = make_key(tenant_a)
    with socket.create_connection(server, timeout=30) as sock:
        body = b'{"name": "ds-http", "kind": "text"}'
        sock.sendall(
            request_bytes("POST", "/v1/datasets", {**auth, "Content-Type": "application/json"}, body)
        )
        assert read_response(sock)[0] == 201
        line = json.dumps({"external_id": "e-1", "subject_id": "s", "text": "x\x00y"}).encode()
        ndjson = {**auth, "Content-Type": "application/x-ndjson"}
        sock.sendall(request_bytes("POST", "/v1/datasets/ds-http/samples", ndjson, line))
        status, _, answer = read_response(sock)
        assert status == 422 and json.loads(answer)["errors"][0]["loc"] == ["body", 0, "text"]
        still_usable(sock)


@pytest.mark.parametrize("failure", ["database", "python"])
def test_a_500_logs_the_route_template_and_no_identifier(
    server,
    make_key,
    tenant_a,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    subject = "alice.unique-7731@example.org"

    def failing_lookup(session, tenant_id: str, subject_id: str):
        if failure == "database":  # a statement whose error message and parameters carry the identifier
            session.execute(text("SELECT CAST(:value AS integer)"), {"value": subject_id})
        raise RuntimeError(f"lookup of {subject_id} went wrong")

    monkeypatch.setattr(provenance_service, "subject_provenance", failing_lookup)
    auth = make_key(tenant_a)
    caplog.set_level(logging.INFO)
    with socket.create_connection(server, timeout=30) as sock:
        sock.sendall(request_bytes("GET", f"/v1/subjects/{subject}", auth))
        status, headers, body = read_response(sock)
        assert status == 500 and headers["content-type"].startswith("application/problem+json")
        assert subject not in json.loads(body)["detail"]
        still_usable(sock)

    logged = [(record, record.getMessage()) for record in caplog.records]
    errors = [message for record, message in logged if record.name == "lethe.errors"]
    assert len(errors) == 1 and "GET /v1/subjects/{subject_id}" in errors[0]
    assert ("DataError (SQLSTATE 22P02)" if failure == "database" else "RuntimeError") in errors[0]
    assert "Traceback (most recent call last)" in errors[0] and "failing_lookup" in errors[0]
    for record, message in logged:
        assert subject not in message and subject not in str(record.__dict__), record.name
    assert not [r for r, m in logged if "Exception in ASGI application" in m]  # nothing reached the server
