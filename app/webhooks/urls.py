"""Which URLs Lethe may call back.

A callback or webhook URL is chosen by the client, so without a check Lethe could be made to POST into
its own network (SSRF): loopback, private ranges, link-local cloud metadata. Those are refused unless
settings.allow_private_callbacks (tests, the demo). The API checks the URL as written (no DNS lookup on
the intake path); the deliverer checks again with `check_resolved_host` right before each delivery,
since a name may resolve elsewhere later.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = frozenset({"http", "https"})
# Names that only ever mean this machine or the local network.
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
LOCAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".home.arpa")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackURLError(ValueError):
    """The URL may not be used as a callback or webhook target."""


def _literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, including the legacy IPv4 spellings (`2130706433`,
    `0x7f.1`, `127.1`) that HTTP clients resolve to addresses; None for a DNS name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(char.isalnum() or char == "." for char in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_public_address(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _is_local_name(host: str) -> bool:
    return host in LOCAL_NAMES or host.endswith(LOCAL_SUFFIXES) or "." not in host


def validate_callback_url(url: str, *, allow_private: bool) -> str:
    """The URL unchanged when it may be called; CallbackURLError with the reason otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackURLError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise CallbackURLError("the URL is malformed") from exc
    if parts.scheme not in ALLOWED_SCHEMES:
        raise CallbackURLError("the URL must use http or https")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise CallbackURLError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise CallbackURLError("the URL must not carry credentials")
    if port == 0:
        raise CallbackURLError("the URL has an invalid port")
    if allow_private:
        return url
    address = _literal_address(host)
    if address is not None:
        if not is_public_address(address):
            raise CallbackURLError("the URL points to a private, loopback or link-local address")
    elif _is_local_name(host):
        raise CallbackURLError("the URL points to a local host name")
    return url


def check_resolved_host(url: str, *, allow_private: bool) -> None:
    """Before a delivery: every address the host resolves to must be public (unless allowed)."""
    validate_callback_url(url, allow_private=allow_private)
    if allow_private:
        return
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise CallbackURLError(f"the host does not resolve: {exc.strerror}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not is_public_address(address):
            raise CallbackURLError("the host resolves to a private, loopback or link-local address")
