"""What "the same request" means for an Idempotency-Key: same method, path, query and body.

A JSON body is compared by content (key order and white space do not matter, as a client library may
serialise the same object differently on a retry); any other body (NDJSON) byte for byte.
"""

from __future__ import annotations

import hashlib
import json


def canonical_body(body: bytes) -> bytes:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_hash(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), query.encode()):
        digest.update(part)
        digest.update(b"\0")
    digest.update(canonical_body(body))
    return digest.hexdigest()
