"""Declared contracts: the named limits of the API and the base of every request and answer model.

Each request body, query and answer of `/api/v1` and `/staff/v1` is a pydantic v2 model declared
once, beside its view in `server/api/`. The same declaration validates at the boundary
(`server.http.framework`) and becomes the OpenAPI 3.1 document (`server.http.openapi`). Why
pydantic and not msgspec is measured and written down in docs/api-contracts.md.

Request models are strict: a JSON number is never taken from a string, `true` is not an integer,
and every limit below is part of the schema a client reads. Query models are the one place where
text is turned into numbers, by ASCII-digit patterns only (`²` is not a digit here). Unknown
fields are ignored, so an older server accepts a newer kiosk's body.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# --- named limits: the only place these numbers are written ------------------------------------

MAX_ID = 2**31 - 1  # database ids are 32-bit integers on PostgreSQL
U32 = 2**32 - 1  # board transaction ids
U64 = 2**64 - 1  # tap counters and times in ms
MAX_SLOT = 10_000
MAX_QUANTITY = 100
MAX_STOCK = 100_000
MAX_SYNC_ITEMS = 500
MAX_TELEMETRY_EVENTS = 100
MAX_TELEMETRY_DETAIL_KEYS = 32
MAX_PAGE = 500
MAX_RESERVATION_PAGE = 1_000
MAX_RULE_UNITS = 10_000
MAX_PERIOD_DAYS = 3_660
MAX_AGE_YEARS = 150
MAX_NAME = 200
MAX_REASON = 64
MAX_CODE = 40
MAX_DEVICE_ID = 64
MAX_STAFF_NAME = 120
MAX_CERTIFICATE_B64 = 16_384
MAX_REVOCATION_VERSION = 10**18 - 1
# Dates a person can mean: birth dates, appointments, report years. Beyond them date arithmetic
# (a day's slots, a time zone shift) would leave the calendar.
EARLIEST_DATE = dt.date(1900, 1, 1)
LATEST_DATE = dt.date(2199, 12, 31)
EARLIEST_YEAR = 2000
LATEST_YEAR = 2100

ID_NUMBER_PATTERN = r"^[0-9A-Za-z -]{6,32}$"
PHONE_PATTERN = r"^\+?[0-9 -]{5,20}$"
HEX32_PATTERN = r"^[0-9a-fA-F]{32}$"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"


class Contract(BaseModel):
    """A request body: strict types, unknown fields ignored, frozen once parsed."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Query(BaseModel):
    """A query string: values arrive as text; numbers are declared with ASCII-digit patterns."""

    model_config = ConfigDict(strict=False, extra="ignore", frozen=True)


class Answer(BaseModel):
    """An answer body. Services return plain dicts; the model is the schema clients read, and the
    tests and the schema fuzz check every answer against it."""

    model_config = ConfigDict(extra="allow")


def _within_calendar(value: dt.date) -> dt.date:
    day = value.date() if isinstance(value, dt.datetime) else value
    if not EARLIEST_DATE <= day <= LATEST_DATE:
        raise ValueError(f"must lie between {EARLIEST_DATE} and {LATEST_DATE}")
    return value


def _aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("must carry its UTC offset")
    try:
        value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("lies outside the calendar once shifted to UTC") from None
    _within_calendar(value)
    return value


# --- field types used across the contracts -----------------------------------------------------

DbId = Annotated[int, Field(ge=1, le=MAX_ID)]
Slot = Annotated[int, Field(ge=0, le=MAX_SLOT)]
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY)]
BoardTxn = Annotated[int, Field(ge=0, le=U32)]
Count = Annotated[int, Field(ge=0)]
Hex32 = Annotated[str, StringConstraints(pattern=HEX32_PATTERN)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CODE)]
DeviceId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_DEVICE_ID)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REASON)]
Day = Annotated[dt.date, AfterValidator(_within_calendar)]
Moment = Annotated[dt.datetime, AfterValidator(_aware)]
Remaining = dict[str, Count]


class Proof(Contract):
    """A card's tap proof (docs/interfaces.md): the challenge fields and the card's signature."""

    kiosk_id: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    counter: Annotated[int, Field(ge=0, le=U64)]
    time_ms: Annotated[int, Field(ge=0, le=U64)]
    nonce: Hex32
    card_guid: Hex32
    signature: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        description="base64 of DER ECDSA P-256"
    )

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


class Problem(Answer):
    """An error answer (RFC 9457, server.http.problems)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    field: str | None = None


class Empty(Contract):
    """A body with nothing in it (`{}`)."""
