"""What the staff pages' forms share: field patterns, a form that is one button, knowing which
of several forms on a page was sent, and a service's refusal shown next to its field."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import request
from flask_wtf import FlaskForm
from wtforms.fields.choices import SelectChoice

from server.errors import ApiError
from server.web.i18n import _l

REGION_CODE = r"^[A-Za-z0-9_.-]{0,40}$"
ID_NUMBER = r"^[0-9A-Za-z -]{6,32}$"
# A full number, or a masked one: the first 6 and last 4 around stars, or the last 4.
ID_NUMBER_OR_MASKED = r"^[0-9A-Za-z *\uff0a-]{4,32}$"
PHONE = r"^\+?[0-9 -]{5,20}$"

# Words for the services' stable refusal codes (server.errors `code`s).
REFUSALS: dict[str, Any] = {
    "out_of_scope": _l("This is outside your area."),
    "region_unknown": _l("There is no region with this code."),
    "user_exists": _l("A user with this name exists."),
    "password_too_short": _l("At least 10 characters."),
    "password_is_name": _l("The password must not be the user name."),
    "self_disable": _l("You cannot disable yourself."),
    "resident_exists": _l("This ID number is already enrolled."),
    "resident_unknown": _l("Nobody in your area has this ID number."),
    "id_number_mask_unknown": _l("The full number, or as masked: 110105********1234 or ****1234."),
    "id_number_needs_more": _l(
        "With only the last 4, give the full name, the date of birth or the phone too."
    ),
    "birth_date_needs_last4": _l("The date of birth is used with the last 4 of the ID number."),
    "category_unknown": _l("There is no category with this code."),
    "slot_taken": _l("This time is full."),
    "slot_invalid": _l("The station does not take appointments at this time."),
    "not_eligible": _l("Not eligible for this exam on that day."),
    "category_exists": _l("This code is taken."),
    "product_exists": _l("This code is taken."),
    "programme_exists": _l("This code is taken."),
    "kiosk_exists": _l("This id is registered elsewhere."),
    "public_key_invalid": _l("The key must be base64 of 32 bytes (Ed25519)."),
    "sku_unknown": _l("There is no product with this SKU."),
}


def options(pairs: Iterable[tuple[str, Any]]) -> list[SelectChoice]:
    """(value, label) pairs as a select field's choices."""
    return [SelectChoice(value, label) for value, label in pairs]


class ButtonForm(FlaskForm):  # type: ignore[misc]
    """A button that changes something: its CSRF token only."""


def submitted(form: FlaskForm, action: str) -> bool:
    """This form (of several on the page, told apart by the button's name=action value) was
    sent, and it is valid."""
    return request.form.get("action") == action and bool(form.validate_on_submit())


def put_error(form: FlaskForm, exc: ApiError, default_field: str | None = None) -> None:
    """A service's refusal shown next to the field it concerns, else above the form."""
    words = REFUSALS.get(exc.code, exc.detail)
    name = exc.extra.get("field") or default_field
    if exc.code.startswith("password_"):
        name = "password"
    target = getattr(form, name, None) if name else None
    if target is not None:
        target.errors = [*list(target.errors or []), words]
    else:
        form.form_errors.append(words)
