"""Deletion certificates: the signed document issued when a request completes, kept byte for byte."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class DeletionCertificate(Base):
    __tablename__ = "deletion_certificates"

    request_id: Mapped[str] = mapped_column(
        ForeignKey("deletion_requests.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Fingerprint of the public key that verifies `document` (see app.certificates.signing.key_id_of).
    key_id: Mapped[str] = mapped_column(String(64))
    # sha256 of `document`, also written to the audit trail when the certificate is issued.
    sha256: Mapped[str] = mapped_column(String(64))
    # The canonical JSON served as is: re-serialising could change bytes and break the signature check.
    document: Mapped[str] = mapped_column(Text)
