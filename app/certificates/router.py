"""/v1 endpoints of deletion certificates: a completed request's signed certificate and the public key."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response

from app.certificates.service import get_certificate, get_certificate_jws
from app.certificates.signing import jwk_of, public_key_pem, signing_key
from app.db import SessionDep
from app.security.auth import Principal, require_scope
from app.security.scopes import Scope

router = APIRouter(tags=["certificates"])
Reader = Annotated[Principal, Depends(require_scope(Scope.REQUESTS_READ))]
PEM_MEDIA_TYPE = "application/x-pem-file"
JWT_MEDIA_TYPE = "application/jwt"  # RFC 7519: a compact JWS whose payload is a JSON object
KEY_ID_HEADER = "Lethe-Key-Id"


@router.get(
    "/v1/deletion-requests/{request_id}/certificate",
    response_class=Response,
    responses={
        200: {
            "content": {"application/json": {}, JWT_MEDIA_TYPE: {}},
            "description": "the signed certificate: canonical JSON, or with ?format=jws a compact JWS",
        },
        404: {"description": "unknown request, or not completed yet"},
        409: {"description": "?format=jws: the certificate was signed by a key this service no longer holds"},
    },
    summary="The signed deletion certificate of a completed request",
)
def get_deletion_certificate(
    request_id: str,
    session: SessionDep,
    principal: Reader,
    certificate_format: Annotated[
        Literal["json", "jws"],
        Query(
            alias="format",
            description="json: `{certificate, signature}` as issued; jws: the same certificate as a JWS",
        ),
    ] = "json",
) -> Response:
    """`json` (default): canonical JSON `{certificate, signature}` signed with Ed25519, served byte for byte
    as issued; check it offline with `lethe certificate verify FILE --public-key KEY.pem`.

    `jws`: the same certificate as a compact JWS (RFC 7515; alg EdDSA, RFC 8037; kid = the key id), whose
    payload is the certificate's canonical JSON. Any JOSE library verifies it with the key from
    /v1/certificates/public-key (PEM) or /v1/certificates/jwks.json (JWK Set)."""
    if certificate_format == "jws":
        certificate, token = get_certificate_jws(session, principal.tenant_id, request_id)
        return Response(token, media_type=JWT_MEDIA_TYPE, headers={KEY_ID_HEADER: certificate.key_id})
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


@router.get(
    "/v1/certificates/jwks.json",
    summary="The certificates' verification key as a JWK Set (RFC 7517)",
    responses={200: {"description": "`{keys: [{kty: OKP, crv: Ed25519, x, kid, alg: EdDSA, use: sig}]}`"}},
)
def get_jwks() -> JSONResponse:
    """Public, like the PEM key: for JOSE libraries that take their keys from a JWK Set."""
    return JSONResponse({"keys": [jwk_of(signing_key().public_key)]})
