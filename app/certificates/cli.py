"""`lethe certificate ...`: check deletion certificates offline, and manage the signing key."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.certificates.signing import (
    KeyFormatError,
    Verification,
    is_jws,
    load_public_key,
    public_key_pem,
    verify,
    verify_jws,
)
from app.commands import command_group

EXIT_INVALID = 1
EXIT_USAGE = 2

cli = command_group("certificate", "Deletion certificates.")


def _summary(certificate: dict[str, Any]) -> list[str]:
    timing = "on time" if certificate.get("on_time") else "LATE"
    lines = [
        f"deletion request {certificate.get('request_id')} ({certificate.get('regime')})",
        f"received {certificate.get('received_at')}, due {certificate.get('due_at')}, "
        f"completed {certificate.get('completed_at')} ({timing})",
    ]
    for model in certificate.get("models") or []:
        verdict = (model.get("verification") or {}).get("verdict")
        lines.append(
            f"  {model.get('model')}: version {model.get('version_before')} -> {model.get('version_after')}"
            f" by {model.get('method')}, verdict {verdict}"
        )
    head = certificate.get("audit_head") or {}
    lines.append(f"audit chain head at completion: seq {head.get('seq')} {head.get('hash')}")
    return lines


def report_verification(result: Verification) -> int:
    if not result.ok:
        print(f"INVALID: {result.reason}", file=sys.stderr)
        return EXIT_INVALID
    assert result.certificate is not None
    print(f"VALID: signed by key {result.key_id}")
    for line in _summary(result.certificate):
        print(line)
    if not result.key_supplied:
        print(
            "note: checked against the key embedded in the certificate only; compare the key id with the "
            "issuer's published key, or pass --public-key",
            file=sys.stderr,
        )
    return 0


@cli.command("verify")
def verify_command(
    file: Annotated[Path, typer.Argument(help="the certificate as downloaded: JSON, or JWS (?format=jws)")],
    public_key_file: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="the issuer's public key (PEM, from GET /v1/certificates/public-key); without it only the "
            "key embedded in the certificate is checked, which proves integrity but not who signed",
        ),
    ] = None,
) -> int:
    """Check a certificate's signature offline (exit 0 valid, 1 invalid)."""
    try:
        data = file.read_bytes()
        public_key = load_public_key(public_key_file.read_bytes()) if public_key_file else None
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyFormatError, ValueError) as exc:
        print(f"error: the public key is not an Ed25519 PEM key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if is_jws(data):
        if public_key is None:
            print(
                "error: a JWS certificate is checked against the issuer's key: pass --public-key",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return report_verification(verify_jws(data, public_key))
    return report_verification(verify(data, public_key))


@cli.command("public-key")
def public_key_command() -> int:
    """Print the configured signing key's public key (PEM)."""
    from app.certificates.signing import signing_key
    from app.settings import get_settings

    if get_settings().certificate_signing_key is None:
        print(
            "error: LETHE_CERTIFICATE_SIGNING_KEY is not set (certificates use a throwaway key)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(public_key_pem(signing_key().public_key), end="")
    return 0


@cli.command("generate-key")
def generate_key_command(
    key_format: Annotated[
        Literal["pem", "seed"],
        typer.Option(
            "--format", help="pem (PKCS#8), or seed: the base64 of the raw 32 bytes, one line for .env files"
        ),
    ] = "pem",
) -> int:
    """Print a new Ed25519 private key for LETHE_CERTIFICATE_SIGNING_KEY."""
    key = Ed25519PrivateKey.generate()
    if key_format == "seed":
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        print(base64.b64encode(raw).decode())
        return 0
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    print(pem.decode(), end="")
    return 0


@cli.command("issue")
def issue_command(request_id: Annotated[str, typer.Argument(help="the deletion request's id")]) -> int:
    """Issue the certificate of a completed request that has none."""
    from app.certificates.service import issue_certificate
    from app.db import session_scope
    from app.requests.models import DeletionRequest

    with session_scope() as session:
        request = session.get(DeletionRequest, request_id, with_for_update=True)
        if request is None:
            print(f"error: no deletion request {request_id}", file=sys.stderr)
            return EXIT_INVALID
        try:
            certificate = issue_certificate(session, request, actor="cli")
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INVALID
        digest = certificate.sha256
    print(f"certificate of {request_id}: sha256 {digest}")
    return 0
