"""Ed25519 signatures over canonical JSON: signing deletion certificates and checking them offline.

A signed certificate is the canonical JSON (sorted keys, no spaces, UTF-8) of
`{"certificate": {...}, "signature": {"algorithm", "key_id", "public_key", "value"}}`, where `value` is
the hex Ed25519 signature of the canonical JSON of `certificate`. The verifier accepts only that exact
serialisation, so any changed byte of a file either breaks the JSON, breaks the canonical form, or
changes what the signature covers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.audit.service import canonical_json
from app.settings import get_settings

log = logging.getLogger(__name__)

ALGORITHM = "Ed25519"
SEED_BYTES = 32
KEY_ID_HEX = 32  # 128 bits of the public key's sha256: a fingerprint to compare by eye or script
_SIGNATURE_HEX = re.compile(r"[0-9a-f]{128}")
_KEY_ID = re.compile(rf"[0-9a-f]{{{KEY_ID_HEX}}}")
DOCUMENT_FIELDS = frozenset({"certificate", "signature"})
SIGNATURE_FIELDS = frozenset({"algorithm", "key_id", "public_key", "value"})


class KeyFormatError(ValueError):
    pass


def canonical_bytes(value: Any) -> bytes:
    """The one serialisation that is signed and served (the audit chain hashes the same form)."""
    return canonical_json(value).encode("utf-8")


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public_key: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:KEY_ID_HEX]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_private_key(text: str) -> Ed25519PrivateKey:
    """A PKCS#8 PEM private key, or the base64 of a raw 32-byte seed."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError("the certificate signing key must be an Ed25519 key")
        return key
    try:
        seed = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise KeyFormatError("the certificate signing key is neither PEM nor base64") from exc
    if len(seed) != SEED_BYTES:
        raise KeyFormatError(f"a base64 Ed25519 seed decodes to {SEED_BYTES} bytes, not {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed)


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError("the public key is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class SigningKey:
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)


@lru_cache(maxsize=1)
def signing_key() -> SigningKey:
    """The configured key (settings.certificate_signing_key); a throwaway one, loudly, when unset."""
    configured = get_settings().certificate_signing_key
    if configured is not None and configured.get_secret_value().strip():
        return SigningKey(load_private_key(configured.get_secret_value()))
    key = SigningKey(Ed25519PrivateKey.generate())
    log.warning(
        "LETHE_CERTIFICATE_SIGNING_KEY is not set: deletion certificates are signed with a throwaway key "
        "(key id %s) that dies with this process; set a persistent Ed25519 key in production",
        key.key_id,
    )
    return key


def sign(certificate: dict[str, Any], key: SigningKey) -> bytes:
    """The signed document's bytes."""
    signature = key.private_key.sign(canonical_bytes(certificate))
    document = {
        "certificate": certificate,
        "signature": {
            "algorithm": ALGORITHM,
            "key_id": key.key_id,
            "public_key": base64.b64encode(_raw_public(key.public_key)).decode(),
            "value": signature.hex(),
        },
    }
    return canonical_bytes(document)


@dataclass(frozen=True)
class Verification:
    ok: bool
    reason: str
    key_id: str | None = None
    # True when checked against a key the verifier supplied, False when only against the embedded one.
    key_supplied: bool = False
    certificate: dict[str, Any] | None = None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate member name")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def _embedded_key(encoded: Any) -> Ed25519PublicKey | None:
    if not isinstance(encoded, str):
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return None
    # Only the canonical base64 spelling: otherwise unused padding bits could change without effect.
    if len(raw) != SEED_BYTES or base64.b64encode(raw).decode() != encoded:
        return None
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(data: bytes, public_key: Ed25519PublicKey | None = None) -> Verification:
    """Check a signed certificate's bytes; against `public_key` when given (the issuer's published key),
    else only against the key it embeds (which proves integrity, not who signed it)."""
    # A file saved by an editor may end with one newline; nothing else outside the canonical bytes.
    body = data[:-1] if data.endswith(b"\n") else data
    try:
        document = _parse(body)
    except (UnicodeDecodeError, ValueError) as exc:
        return Verification(False, f"not a JSON document: {exc}")
    if not isinstance(document, dict) or set(document) != DOCUMENT_FIELDS:
        return Verification(False, "expected exactly the members certificate and signature")
    certificate, signature = document["certificate"], document["signature"]
    if not isinstance(certificate, dict) or not isinstance(signature, dict):
        return Verification(False, "certificate and signature must be objects")
    if set(signature) != SIGNATURE_FIELDS:
        return Verification(False, f"the signature needs exactly {', '.join(sorted(SIGNATURE_FIELDS))}")
    if canonical_bytes(document) != body:
        return Verification(False, "the file is not in canonical form: it was edited after signing")
    if signature["algorithm"] != ALGORITHM:
        return Verification(False, f"unsupported signature algorithm {signature['algorithm']!r}")
    key_id, value = signature["key_id"], signature["value"]
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        return Verification(False, "malformed key id")
    if not isinstance(value, str) or not _SIGNATURE_HEX.fullmatch(value):
        return Verification(False, "malformed signature value")
    embedded = _embedded_key(signature["public_key"])
    if embedded is None or key_id_of(embedded) != key_id:
        return Verification(False, "the embedded public key does not match the key id")
    if public_key is not None and _raw_public(public_key) != _raw_public(embedded):
        return Verification(
            False, f"signed by key {key_id}, not by the given key {key_id_of(public_key)}", key_id, True
        )
    try:
        embedded.verify(bytes.fromhex(value), canonical_bytes(certificate))
    except InvalidSignature:
        return Verification(
            False, "the signature does not match the certificate", key_id, public_key is not None
        )
    return Verification(True, "signature valid", key_id, public_key is not None, certificate)


# ----------------------------------------------------------------------------------------- JWS

# The same certificate as a compact JWS (RFC 7515) signed with EdDSA over Ed25519 (RFC 8037), so any JOSE
# library checks it with the issuer's public key (PEM or JWK). The payload is the certificate's canonical
# JSON, the very bytes the detached signature covers. Ed25519 signatures are deterministic (RFC 8032):
# made again from the stored certificate with the key that issued it, the token is the same every time.
JWS_ALGORITHM = "EdDSA"
JWS_TYPE = "JWT"  # the payload is a JSON object; "JWT" is the type JOSE libraries accept by default
_JWS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")


class KeyMismatch(ValueError):
    """The certificate was signed with another key than the one this process holds."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Strict: the unpadded base64url of RFC 7515, and only its canonical spelling."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if b64url(raw) == text else None


def jwk_of(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The public key as a JWK (RFC 8037: kty OKP, crv Ed25519)."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(_raw_public(public_key)),
        "kid": key_id_of(public_key),
        "alg": JWS_ALGORITHM,
        "use": "sig",
    }


def sign_jws(certificate: dict[str, Any], key: SigningKey) -> str:
    header = {"alg": JWS_ALGORITHM, "kid": key.key_id, "typ": JWS_TYPE}
    signing_input = f"{b64url(canonical_bytes(header))}.{b64url(canonical_bytes(certificate))}"
    return f"{signing_input}.{b64url(key.private_key.sign(signing_input.encode('ascii')))}"


def jws_of_document(document: bytes, key: SigningKey) -> str:
    """The JWS form of a signed document (as stored), signed with `key`, which must be the key that signed
    the document (KeyMismatch otherwise: another key would make a new statement, not the same one)."""
    parsed = json.loads(document)
    signer = parsed["signature"]["key_id"]
    if signer != key.key_id:
        raise KeyMismatch(f"the certificate was signed by key {signer}; this service signs with {key.key_id}")
    return sign_jws(parsed["certificate"], key)


def is_jws(data: bytes) -> bool:
    return _JWS.fullmatch(data.strip().decode("ascii", errors="replace")) is not None


def verify_jws(data: bytes, public_key: Ed25519PublicKey) -> Verification:
    """Check a compact JWS certificate against the issuer's public key (a JWS carries no key of its own)."""
    match = _JWS.fullmatch(data.strip().decode("ascii", errors="replace"))
    if match is None:
        return Verification(False, "not a compact JWS (three base64url parts joined by dots)")
    parts = [_b64url_decode(part) for part in match.groups()]
    if any(part is None for part in parts):
        return Verification(False, "a part of the JWS is not canonical unpadded base64url")
    raw_header, raw_payload, signature = parts
    try:
        header, certificate = _parse(raw_header), _parse(raw_payload)  # type: ignore[arg-type]
    except (UnicodeDecodeError, ValueError) as exc:
        return Verification(False, f"the JWS header or payload is not JSON: {exc}")
    if not isinstance(header, dict) or header.get("alg") != JWS_ALGORITHM or "crit" in header:
        return Verification(False, f"the JWS header must name alg {JWS_ALGORITHM} (and no crit): {header}")
    if not isinstance(certificate, dict):
        return Verification(False, "the JWS payload is not a JSON object")
    key_id = key_id_of(public_key)
    try:
        public_key.verify(signature, f"{match.group(1)}.{match.group(2)}".encode("ascii"))  # type: ignore[arg-type]
    except InvalidSignature:
        signer = header.get("kid")
        return Verification(
            False, f"the signature does not verify with key {key_id} (kid {signer})", key_id, True
        )
    return Verification(True, "signature valid", key_id, True, certificate)
