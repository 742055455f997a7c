"""Data-subject identifiers: kept only as a keyed HMAC of their normalised form."""

from __future__ import annotations

import hmac
import unicodedata
from functools import lru_cache

from app.settings import get_settings


def normalize_subject_id(subject_id: str) -> str:
    """One spelling per person: " Alice@Example.COM " and "alice@example.com" are the same subject.
    NFKC runs again after casefolding because casefolding can leave non-normalised sequences."""
    folded = unicodedata.normalize("NFKC", subject_id).casefold()
    return unicodedata.normalize("NFKC", folded).strip()


@lru_cache(maxsize=4)
def _subject_key(raw_key: str) -> bytes:
    return raw_key.encode()


def subject_hmac(subject_id: str) -> str:
    """Hex HMAC-SHA256 of the normalised subject id under settings.subject_hmac_key."""
    key = _subject_key(get_settings().subject_hmac_key.get_secret_value())
    return hmac.digest(key, normalize_subject_id(subject_id).encode(), "sha256").hex()
