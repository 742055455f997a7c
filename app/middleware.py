"""ASGI middleware of the API: request context (id, access log, metrics), rate limit, body size limit.

Plain ASGI classes rather than BaseHTTPMiddleware: they add a few microseconds per request, which keeps
intake throughput close to the framework's ceiling.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    REQUEST_ID_HEADER,
    ProblemError,
    internal_error,
    log_unexpected,
    problem_response,
    render_problem,
    route_template,
)
from app.ops.logging import current_request_id
from app.ops.metrics import HttpMetrics
from app.ops.ratelimit import RateLimiter

access_log = logging.getLogger("lethe.access")

_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")
# A client's request id is echoed and logged only when it is short and plain.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
# Probes and scrapes: neither rate limited nor logged at INFO.
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestContextMiddleware:
    """Gives each request an id (the client's X-Request-ID when plain, else a new one), echoes it,
    logs one access line with the route template, records the request in the HTTP metrics, and turns
    an exception nothing else handled into a 500 problem."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_id = _header(scope, _REQUEST_ID_HEADER)
        request_id = raw_id.decode() if raw_id and _SAFE_REQUEST_ID.fullmatch(raw_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (_REQUEST_ID_HEADER, request_id.encode())
        token = current_request_id.set(request_id)
        started = time.perf_counter()
        status = 500
        status_sent: int | None = None  # once the answer has started

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status = status_sent = message["status"]
                headers = list(message.get("headers", ()))
                if not any(name.lower() == _REQUEST_ID_HEADER for name, _ in headers):
                    headers.append(id_header)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Answered and logged here, not raised on: the server would log the exception with its
            # message (which may quote input or SQL parameters) and drop the keep-alive connection.
            log_unexpected(scope, exc)
            if status_sent is None:
                await internal_error(Request(scope))(scope, receive, send_with_id)
            status = 500
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            self.metrics.observe(scope["method"], route, status, seconds)
            level = logging.DEBUG if scope["path"] in OPS_PATHS and status < 500 else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(
                    level,
                    "request",
                    extra={
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                    },
                )
            current_request_id.reset(token)


class RateLimitMiddleware:
    """One token bucket per API key (per client address for requests without one); 429 when empty."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled or scope["path"] in OPS_PATHS:
            await self.app(scope, receive, send)
            return
        wait = await self.limiter.take(_client_identity(scope))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        response = problem_response(
            Request(scope),
            429,
            "Too many requests",
            f"rate limit of {self.limiter.per_minute} requests per minute exceeded; retry in {retry_after} s",
            "rate-limited",
            headers={"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)


class BodySizeLimitMiddleware:
    """413 for bodies over `max_bytes`: at once when Content-Length says so, and while reading a body
    streamed without one (the error surfaces before any handler sees the body, so nothing changes).

    The rest of the body is read and dropped before the answer goes out, however large: a server that
    answers and closes while the client is still sending resets the connection (unread data), and the
    client, busy writing, never reads the 413. A client that asked `Expect: 100-continue` has sent
    nothing yet and is answered at once."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            # The server stops the body at the declared length, so the declaration is all there is to check.
            if declared > self.max_bytes:
                if _header(scope, b"expect") is None:
                    await _discard_body(receive)
                await render_problem(Request(scope), self._too_large_error())(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _discard_body(receive)
                    raise self._too_large_error()
            return message

        await self.app(scope, counting_receive, send)

    def _too_large_error(self) -> ProblemError:
        return ProblemError(
            413,
            "Content too large",
            f"the request body exceeds the limit of {self.max_bytes} bytes",
            "payload-too-large",
        )


async def _discard_body(receive: Receive) -> None:
    """Read the request body to its end (or the client's disconnect), keeping none of it."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _client_identity(scope: Scope) -> str:
    """The bucket key: a digest of the bearer token (the token itself never leaves the request), or the
    client address. A digest of the whole token, not its public key id, so that nobody can drain
    another client's bucket by sending its key id with a wrong secret."""
    authorization = _header(scope, b"authorization")
    if authorization:
        return "key:" + hashlib.blake2b(authorization, digest_size=16).hexdigest()
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")
