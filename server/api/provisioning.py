"""The technicians' card provisioning calls (server.services.provisioning says who holds what):
certify a card's key, read a card, reveal its per-card secrets (audited), renew it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from flask import Blueprint, Flask, current_app
from pydantic import AfterValidator, Field, StringConstraints

from server.config import ServerConfig
from server.http.contracts import (
    MAX_CERTIFICATE_B64,
    MAX_REASON,
    Answer,
    Contract,
    DbId,
    Empty,
    Hex32,
)
from server.http.framework import OPTIONAL, Call, endpoint, staff
from server.services import provisioning
from server.services.provisioning import TECHNICIANS, ProvisioningConfig

provisioning_api = Blueprint("provisioning_api", __name__, url_prefix="/api/v1")

TECHNICIAN = staff(*TECHNICIANS)
STAFF_ERRORS = {
    400: "invalid JSON or fields",
    401: "no or unknown bearer token",
    403: "the role may not, or the holder is outside the user's area",
    404: "no such card or resident",
}


def _base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("must be base64") from None
    return value


Base64 = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_CERTIFICATE_B64), AfterValidator(_base64)
]


class CardCertificateRequest(Contract):
    resident_id: DbId
    public_key: Base64 = Field(description="base64 of the card's P-256 SubjectPublicKeyInfo (DER)")
    card_guid: Hex32 | None = Field(
        default=None, description="the GUID already on the card, when provisioning it again"
    )


class CardSecrets(Answer):
    card_guid: str
    management_key: str = Field(description="base64, 16 bytes")
    management_key_type: Literal["aes128"]
    puk: Annotated[str, StringConstraints(pattern=r"^[0-9]{8}$")]


class CardCertificateAnswer(CardSecrets):
    certificate: str = Field(description="base64 DER")
    chuid: str = Field(description="base64 of the signed CHUID object")
    expiry: str = Field(json_schema_extra={"format": "date"})


class CardView(Answer):
    card_guid: str
    resident_id: int
    status: Literal["active", "revoked", "replaced"]
    not_after: str = Field(json_schema_extra={"format": "date-time"})
    issued_at: str = Field(json_schema_extra={"format": "date-time"})


class CardSecretsRequest(Contract):
    purpose: Annotated[str, StringConstraints(min_length=1, max_length=MAX_REASON)]


def init_app(app: Flask, overrides: Mapping[str, Any] | ServerConfig | None = None) -> None:
    """Load the provisioning secrets and register the blueprint."""
    app.extensions[provisioning.EXTENSION_KEY] = provisioning.load_config(overrides)
    app.register_blueprint(provisioning_api)


def _config() -> ProvisioningConfig:
    return current_app.extensions[provisioning.EXTENSION_KEY]  # type: ignore[no-any-return]


@endpoint(
    provisioning_api,
    "POST",
    "/cards/certificates",
    summary="Sign a card's certificate and CHUID for the key it generated; answer its "
    "diversified management key and PUK (records no issuance)",
    auth=TECHNICIAN,
    body=CardCertificateRequest,
    answer=CardCertificateAnswer,
    status=201,
    idempotency=OPTIONAL,
    errors={
        **STAFF_ERRORS,
        409: "a card with this GUID is already issued",
        422: "the Idempotency-Key was used for a different request",
        503: "this server holds no card CA key",
    },
)
def create_card_certificate(call: Call[CardCertificateRequest, None]) -> dict[str, Any]:
    body = call.body
    return provisioning.certify_card(
        call.session,
        call.ctx,
        _config(),
        call.user(),
        body.resident_id,
        base64.b64decode(body.public_key),
        bytes.fromhex(body.card_guid) if body.card_guid else None,
    )


@endpoint(
    provisioning_api,
    "GET",
    "/cards/<hex32:guid>",
    summary="A card's holder (resident id), status and expiry",
    auth=TECHNICIAN,
    answer=CardView,
    errors=STAFF_ERRORS,
)
def show_card(call: Call[None, None], guid: str) -> dict[str, Any]:
    return provisioning.card_view(call.session, call.user(), guid)


@endpoint(
    provisioning_api,
    "POST",
    "/cards/<hex32:guid>/secrets",
    summary="A card's diversified management key and PUK, for a technician holding the card "
    "(audited with its purpose)",
    auth=TECHNICIAN,
    body=CardSecretsRequest,
    answer=CardSecrets,
    errors=STAFF_ERRORS,
)
def reveal_card_secrets(call: Call[CardSecretsRequest, None], guid: str) -> dict[str, Any]:
    return provisioning.card_secrets(
        call.session, call.ctx, _config(), call.user(), guid, call.body.purpose
    )


@endpoint(
    provisioning_api,
    "POST",
    "/cards/<hex32:guid>/renew",
    summary="Renewal: a new certificate and CHUID with a new expiry for an active card's key",
    auth=TECHNICIAN,
    body=Empty,
    answer=CardCertificateAnswer,
    idempotency=OPTIONAL,
    errors={
        **STAFF_ERRORS,
        409: "the card is not active",
        422: "the Idempotency-Key was used for a different request",
        503: "this server holds no card CA key",
    },
)
def renew(call: Call[Empty, None], guid: str) -> dict[str, Any]:
    return provisioning.renew_card(call.session, call.ctx, _config(), call.user(), guid)
