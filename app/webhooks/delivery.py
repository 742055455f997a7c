"""One signed POST to a callback or webhook URL, over a connection to an address that was checked.

The host is resolved once (app.webhooks.urls.resolve_target) and the connection pool dials those
addresses only, whatever the name would resolve to by the time the connection opens; the request still
names the host as the URL wrote it (Host header, TLS server name and certificate check), so virtual
hosting and HTTPS work as usual. Redirects are not followed (httpcore never follows them): a 3xx is a
failed attempt like any other non-2xx. Environment proxies are not used, since a proxy would connect on
the delivery's behalf to an address nobody checked. The answer's body is never read.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass

import httpcore

from app.webhooks.urls import CallbackURLError, IPAddress, Resolver, resolve_target

# Transport failures of one attempt (httpcore has no common base class for them).
TRANSPORT_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)


class PinnedBackend(httpcore.NetworkBackend):
    """Opens TCP connections to the given addresses in turn, ignoring the host it is asked for."""

    def __init__(self, addresses: Iterable[IPAddress]) -> None:
        self.addresses = tuple(addresses)
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, *args: object, **kwargs: object) -> httpcore.NetworkStream:
        failure: Exception = httpcore.ConnectError("no address to connect to")
        for address in self.addresses:
            try:
                return self._backend.connect_tcp(str(address), port, *args, **kwargs)  # type: ignore[arg-type]
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    def connect_unix_socket(self, *args: object, **kwargs: object) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("deliveries go over TCP only")


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt came to: the receiver's status, or why there was none."""

    status_code: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post_checked(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    timeout: float,
    resolve: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Attempt:
    """POST `body` to `url` if its host resolves to addresses that may be called, connecting to those
    addresses only. `resolve` (socket.getaddrinfo by default) and `ssl_context` are for tests."""
    try:
        target = resolve_target(url, allow_private=allow_private, resolve=resolve)
    except CallbackURLError as refused:
        return Attempt(None, f"refused: {refused}")
    parsed = target.url
    request_url = httpcore.URL(
        scheme=parsed.scheme.encode("ascii"),
        host=parsed.host.encode("ascii"),
        port=parsed.port,
        target=parsed.target.encode("ascii"),
    )
    request_headers = [("Host", parsed.host_header), *headers.items()]
    timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    with httpcore.ConnectionPool(
        ssl_context=ssl_context, network_backend=PinnedBackend(target.addresses), max_connections=1
    ) as pool:
        try:
            with pool.stream(
                "POST", request_url, headers=request_headers, content=body, extensions={"timeout": timeouts}
            ) as response:
                return Attempt(response.status)
        except TRANSPORT_ERRORS as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}")
