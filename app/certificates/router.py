"""/v1 endpoints of deletion certificates: a completed request's signed certificate and the public key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from app.certificates.service import get_certificate
from app.certificates.signing import public_key_pem, signing_key
from app.db import SessionDep
from app.security.auth import Principal, require_scope
from app.security.scopes import Scope

router = APIRouter(tags=["certificates"])
Reader = Annotated[Principal, Depends(require_scope(Scope.REQUESTS_READ))]
PEM_MEDIA_TYPE = "application/x-pem-file"
KEY_ID_HEADER = "Lethe-Key-Id"


@router.get(
    "/v1/deletion-requests/{request_id}/certificate",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}}, "description": "the signed certificate (canonical JSON)"},
        404: {"description": "unknown request, or not completed yet"},
    },
    summary="The signed deletion certificate of a completed request",
)
def get_deletion_certificate(request_id: str, session: SessionDep, principal: Reader) -> Response:
    """Canonical JSON `{certificate, signature}` signed with Ed25519, served byte for byte as issued;
    check it offline with `lethe certificate verify FILE --public-key KEY.pem`."""
    certificate = get_certificate(session, principal.tenant_id, request_id)
    return Response(
        certificate.document.encode("utf-8"),
        media_type="application/json",
        headers={KEY_ID_HEADER: certificate.key_id},
    )


@router.get(
    "/v1/certificates/public-key",
    response_class=Response,
    responses={200: {"content": {PEM_MEDIA_TYPE: {}}, "description": "PEM (SubjectPublicKeyInfo)"}},
    summary="The Ed25519 public key that verifies deletion certificates",
)
def get_public_key() -> Response:
    """Public: whoever holds a certificate can check it without an API key."""
    key = signing_key()
    return Response(
        public_key_pem(key.public_key), media_type=PEM_MEDIA_TYPE, headers={KEY_ID_HEADER: key.key_id}
    )
