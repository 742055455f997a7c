"""Which URLs Lethe may call back, and the addresses a delivery may connect to.

A callback or webhook URL is chosen by the client, so without a check Lethe could be made to POST into
its own network (SSRF): loopback, private ranges, link-local cloud metadata, or an IPv6 address that
carries one of those IPv4 addresses inside it (NAT64, 6to4, Teredo, IPv4-mapped and -compatible forms,
which a tunnel or translator on the path turns back into IPv4). Those are refused unless
settings.allow_private_callbacks (tests, the demo).

The API checks the URL as written (`validate_callback_url`, no DNS lookup on the intake path). The
deliverer resolves the host once (`resolve_target`), checks every address, and connects to those
addresses only (app.webhooks.delivery): a name that answers differently the second time it is asked
(DNS rebinding) is never asked a second time.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# Names that only ever mean this machine or the local network.
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
LOCAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".home.arpa")

# RFC 3986 characters only (unreserved, reserved, percent escapes): no whitespace, no control characters,
# no backslash or other characters that URL parsers disagree on.
_URL_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
# DNS labels (underscores admitted: some real names carry them) or a dotted IPv4 address.
_HOST_NAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?)*"
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges whose addresses embed an IPv4 address: refused whole, whatever the embedded address.
EMBEDDED_IPV4_NETWORKS = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        "::ffff:0:0/96",  # IPv4-mapped
        "::/96",  # IPv4-compatible (deprecated; also holds :: and ::1)
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b::/96",  # NAT64, well-known prefix
        "64:ff9b:1::/48",  # NAT64, local-use prefix
        "2002::/16",  # 6to4
        "2001::/32",  # Teredo
    )
)
# ISATAP interface identifiers (RFC 5214): ::0:5efe:a.b.c.d and ::200:5efe:a.b.c.d under any prefix.
_ISATAP_IDENTIFIERS = frozenset({0x00005EFE, 0x02005EFE})


class CallbackURLError(ValueError):
    """The URL may not be used as a callback or webhook target."""


@dataclass(frozen=True)
class CallbackURL:
    """A URL that passed the checks, in the parts a delivery needs."""

    scheme: str
    host: str  # lower case, without brackets or a trailing dot
    port: int
    target: str  # path and query, as written
    host_header: str  # host[:port] as the URL names it (brackets kept for IPv6)


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


def embeds_ipv4(address: ipaddress.IPv6Address) -> bool:
    """Whether an IPv6 address is one of the forms that carry an IPv4 address."""
    if any(address in network for network in EMBEDDED_IPV4_NETWORKS):
        return True
    return (int(address) >> 32) & 0xFFFFFFFF in _ISATAP_IDENTIFIERS


def is_public_address(address: IPAddress) -> bool:
    """Globally routable unicast, and not an IPv6 form with an IPv4 address inside."""
    if isinstance(address, ipaddress.IPv6Address) and (embeds_ipv4(address) or address.is_site_local):
        return False
    return address.is_global and not (address.is_multicast or address.is_reserved)


def _is_local_name(host: str) -> bool:
    return host in LOCAL_NAMES or host.endswith(LOCAL_SUFFIXES) or "." not in host


def parse_callback_url(url: str) -> CallbackURL:
    """The URL's parts when it is well formed (http or https, a host, no credentials, a valid port,
    RFC 3986 characters only); CallbackURLError with the reason otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackURLError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not _URL_CHARACTERS.fullmatch(url):
        raise CallbackURLError(
            "the URL has characters a URL may not carry (whitespace, control characters, non-ASCII: "
            "percent-encode them, and write international host names in punycode)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise CallbackURLError("the URL is malformed") from exc
    if parts.scheme not in ALLOWED_SCHEMES:
        raise CallbackURLError("the URL must use http or https")
    if "@" in parts.netloc:
        raise CallbackURLError("the URL must not carry credentials")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise CallbackURLError("the URL has no host")
    if port == 0:
        raise CallbackURLError("the URL has an invalid port")
    bracketed = parts.netloc.startswith("[")
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise CallbackURLError("the URL's bracketed host is not an IPv6 address") from exc
        if "%" in host:  # a zone id names an interface of this machine
            raise CallbackURLError("the URL's IPv6 address carries a zone id")
    elif not _HOST_NAME.fullmatch(host):
        raise CallbackURLError("the URL's host is not a valid host name or IPv4 address")
    host_header = f"[{host}]" if bracketed else host
    if port is not None:
        host_header += f":{port}"
    return CallbackURL(
        scheme=parts.scheme,
        host=host,
        port=port if port is not None else DEFAULT_PORTS[parts.scheme],
        target=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        host_header=host_header,
    )


def validate_callback_url(url: str, *, allow_private: bool) -> str:
    """The URL unchanged when it may be called; CallbackURLError with the reason otherwise."""
    parsed = parse_callback_url(url)
    if allow_private:
        return url
    address = _literal_address(parsed.host)
    if address is not None:
        if not is_public_address(address):
            raise CallbackURLError("the URL points to a private, loopback, link-local or reserved address")
    elif _is_local_name(parsed.host):
        raise CallbackURLError("the URL points to a local host name")
    return url


Resolver = Callable[..., Sequence[tuple[Any, ...]]]


@dataclass(frozen=True)
class ResolvedTarget:
    url: CallbackURL
    addresses: tuple[IPAddress, ...]  # every one checked; a delivery connects to these and no others


def resolve_target(url: str, *, allow_private: bool, resolve: Resolver | None = None) -> ResolvedTarget:
    """Resolve the URL's host once and check every address it answers (unless private targets are
    allowed); `resolve` is socket.getaddrinfo unless given."""
    validate_callback_url(url, allow_private=allow_private)
    parsed = parse_callback_url(url)
    literal = _literal_address(parsed.host)
    if literal is not None:
        addresses: tuple[IPAddress, ...] = (literal,)
    else:
        lookup = resolve or socket.getaddrinfo
        try:
            infos = lookup(parsed.host, parsed.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise CallbackURLError(f"the host does not resolve: {exc}") from exc
        found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        addresses = tuple(dict.fromkeys(found))
        if not addresses:
            raise CallbackURLError("the host does not resolve to any address")
    if not allow_private and not all(is_public_address(address) for address in addresses):
        raise CallbackURLError("the host resolves to a private, loopback, link-local or reserved address")
    return ResolvedTarget(parsed, addresses)
