"""Webhook delivery without a network: a target that resolves to a private address is refused at delivery
time (the host is checked again before each POST), retried with backoff, and failed after the last try;
the POST goes to the address that was checked (a rebinding name cannot redirect it), still naming the
URL's host (Host header, TLS server name, certificate), and redirects are not followed."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.db import session_scope, utcnow
from app.settings import get_settings
from app.webhooks.delivery import post_checked
from app.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription
from workers.pipeline.webhooks import deliver


@pytest.fixture
def delivery_to(make_tenant: Callable[[], str]) -> Callable[[str], str]:
    def factory(url: str) -> str:
        tenant_id = make_tenant()
        with session_scope() as session:
            subscription = WebhookSubscription(
                tenant_id=tenant_id, url=url, events=["model.promoted"], secret="whsec_" + "A" * 43 + "="
            )
            session.add(subscription)
            session.flush()
            delivery = WebhookDelivery(
                tenant_id=tenant_id,
                subscription_id=subscription.id,
                url=url,
                event_type="model.promoted",
                payload={"type": "model.promoted", "data": {}},
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=utcnow(),
            )
            session.add(delivery)
            session.flush()
            return delivery.id

    return factory


def test_a_private_target_is_refused_retried_with_backoff_then_failed(
    delivery_to: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()
    monkeypatch.setattr(settings, "allow_private_callbacks", False)
    monkeypatch.setattr(settings, "webhook_max_attempts", 2)
    delivery_id = delivery_to("http://127.0.0.1:9/hook")

    assert deliver(delivery_id) == DeliveryStatus.PENDING
    with session_scope() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and row.attempts == 1 and (row.last_error or "").startswith("refused")
        assert row.next_attempt_at is not None and row.next_attempt_at > utcnow()

    assert deliver(delivery_id) == DeliveryStatus.FAILED
    assert deliver(delivery_id) is None  # a finished delivery is never sent again
    with session_scope() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and row.attempts == 2 and row.delivered_at is None


# ---------------------------------------------------------------- connecting to the checked address


class Receiver:
    """A loopback HTTP(S) server that records each POST's Host header, the TLS server name the client
    asked for, and the path; answers 204."""

    def __init__(self, tls_host: str | None = None) -> None:
        self.received: list[dict[str, str | None]] = []
        self.server_names: list[str | None] = []
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append({"host": self.headers.get("host"), "path": self.path})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.client_context: ssl.SSLContext | None = None
        if tls_host is not None:
            certificate_pem, key_pem = _self_signed(tls_host)
            server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as folder:
                cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
                cert_file.write_bytes(certificate_pem)
                key_file.write_bytes(key_pem)
                server_context.load_cert_chain(cert_file, key_file)
            server_context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self.server.socket = server_context.wrap_socket(self.server.socket, server_side=True)
            self.client_context = ssl.create_default_context(cadata=certificate_pem.decode())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _self_signed(host: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


PUBLIC_ADDRESS = "93.184.215.14"  # globally routable; the test never lets a packet leave for it
real_getaddrinfo = socket.getaddrinfo


def rebinding_resolver(name: str, answers: list[str]) -> tuple[Callable[..., Any], list[str]]:
    """A resolver that answers `name` with answers[0] the first time, answers[1] after that (other names
    as the system would); also answers the list of lookups of `name`."""
    lookups: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host != name:
            return real_getaddrinfo(host, port, *args, **kwargs)
        address = answers[min(len(lookups), len(answers) - 1)]
        lookups.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    return getaddrinfo, lookups


def test_a_rebinding_name_cannot_make_a_delivery_reach_loopback(
    delivery_to: Callable[[str], str], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()
    monkeypatch.setattr(settings, "allow_private_callbacks", False)
    monkeypatch.setattr(settings, "webhook_max_attempts", 3)
    resolver, lookups = rebinding_resolver("rebind.example.com", [PUBLIC_ADDRESS, "127.0.0.1"])
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    # The machine's network, closed: every connection but to loopback is refused.
    dialed: list[str] = []
    real_connect = socket.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        host, port = address
        resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]  # as the stdlib does
        dialed.append(resolved)
        if not ipaddress.ip_address(resolved).is_loopback:
            raise ConnectionRefusedError(111, "Connection refused")
        return real_connect((resolved, port), *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    delivery_id = delivery_to(f"http://rebind.example.com:{receiver.port}/hook")

    assert deliver(delivery_id) == DeliveryStatus.PENDING  # the checked public address refused us
    assert lookups == [PUBLIC_ADDRESS] and dialed == [PUBLIC_ADDRESS]
    # The retry resolves again, gets loopback, and refuses it before connecting anywhere.
    assert deliver(delivery_id) == DeliveryStatus.PENDING
    assert lookups == [PUBLIC_ADDRESS, "127.0.0.1"] and dialed == [PUBLIC_ADDRESS]
    with session_scope() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and (row.last_error or "").startswith(
            "refused: the host resolves to a private"
        )
    assert receiver.received == []


def test_a_delivery_names_the_host_it_was_given_while_connecting_to_the_checked_address(
    delivery_to: Callable[[str], str], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Private targets allowed (tests, the demo): the pinned connection still carries the name.
    monkeypatch.setattr(get_settings(), "allow_private_callbacks", True)
    resolver, lookups = rebinding_resolver("hooks.example.test", ["127.0.0.1"])
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    delivery_id = delivery_to(f"http://hooks.example.test:{receiver.port}/hook?tenant=a")

    assert deliver(delivery_id) == DeliveryStatus.DELIVERED
    assert lookups == ["127.0.0.1"]
    assert receiver.received == [{"host": f"hooks.example.test:{receiver.port}", "path": "/hook?tenant=a"}]


def test_tls_to_the_checked_address_uses_the_url_host_as_server_name_and_for_the_certificate() -> None:
    server = Receiver(tls_host="hooks.example.test")
    try:
        resolver, _ = rebinding_resolver("hooks.example.test", ["127.0.0.1"])
        attempt = post_checked(
            f"https://hooks.example.test:{server.port}/hook",
            b"{}",
            {"content-type": "application/json"},
            allow_private=True,
            timeout=5,
            resolve=resolver,
            ssl_context=server.client_context,
        )
        assert attempt.delivered, attempt
        assert server.server_names == ["hooks.example.test"]
        assert server.received == [{"host": f"hooks.example.test:{server.port}", "path": "/hook"}]

        # A certificate for another name fails the handshake: nothing is sent.
        other, _ = rebinding_resolver("other.example.test", ["127.0.0.1"])
        refused = post_checked(
            f"https://other.example.test:{server.port}/hook",
            b"{}",
            {},
            allow_private=True,
            timeout=5,
            resolve=other,
            ssl_context=server.client_context,
        )
        assert refused.status_code is None and "ConnectError" in (refused.error or "")
        assert len(server.received) == 1
    finally:
        server.close()


def test_redirects_are_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    hops: list[str] = []

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            hops.append(self.path)
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        attempt = post_checked(
            f"http://127.0.0.1:{server.server_address[1]}/hook", b"{}", {}, allow_private=True, timeout=5
        )
    finally:
        server.shutdown()
        server.server_close()
    assert attempt.status_code == 307 and not attempt.delivered
    assert hops == ["/hook"]
