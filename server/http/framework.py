"""The request framework: one declared endpoint per call.

A view is written as

    @endpoint(kiosk_api, "POST", "/authorizations", auth=device("kiosk"),
              body=AuthorizeRequest, answer=AuthorizeAnswer, idempotency=REQUIRED)
    def create_authorization(call: Call[AuthorizeRequest, None]) -> dict[str, Any]:
        return services.authorize(call.session, call.ctx, call.device.id, ...)

and the framework does the rest, in this order, the same for every call:
1. authentication: a device's signed request (`device(kind)`: signature, clock, nonce; see
   services.devices) before its body is even parsed, or a staff member (`staff(*roles)`), whose
   user id is taken and whose lookup transaction is closed; or none (`PUBLIC`);
2. the Idempotency-Key header (REQUIRED for every device POST, OPTIONAL for staff calls);
3. the body and the query, validated by their contracts (server.http.contracts): any failure,
   from malformed JSON and hostile nesting to a number out of range, is a 400 problem document
   with a stable code and the field's path, never a 500;
4. the view, run in the request's transaction once per Idempotency-Key
   (services.run_idempotent), its answer committed with its effects and the request's nonce.

A device request that fails after authentication still spends its nonce (`spend_nonce_anyway`).
Every answer carries `X-Content-Type-Options: nosniff`; every JSON API answer carries
`Cache-Control: no-store` (answers hold personal and health data).

The OpenAPI document (server.http.openapi) is generated from the `Endpoint` each view carries.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from flask import Blueprint, Flask, Request, Response, current_app, g, request
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from werkzeug.routing import BaseConverter
from werkzeug.routing import ValidationError as RouteMismatch

from cardsvc import requestsig
from server import services
from server.errors import Forbidden, InvalidJson, InvalidRequest, Unauthenticated
from server.http.contracts import IDEMPOTENCY_KEY_PATTERN, MAX_ID, Contract, Query
from server.store.db import db
from server.store.models import Role, StaffUser

log = logging.getLogger(__name__)

CONTEXT_KEY = "onecard_context"
# server.web installs here a callable answering the signed-in staff member's id (or None).
STAFF_SESSION_HOOK = "onecard_staff_session"
NONCE_PRUNE_EVERY = 1000
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
# U+0000 written as a JSON escape that is not itself escaped (PostgreSQL text cannot hold it).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

B = TypeVar("B", bound=Contract | None)
Q = TypeVar("Q", bound=Query | None)


def context_of(app: Flask) -> services.Context:
    return app.extensions[CONTEXT_KEY]  # type: ignore[no-any-return]


def ctx() -> services.Context:
    return context_of(current_app)


# --- who may call --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceAuth:
    """A request signed by a registered, enabled device; `kind` narrows it to kiosks or stations."""

    kind: str | None = None


@dataclass(frozen=True)
class StaffAuth:
    """A staff member with one of `roles` (any role when empty)."""

    roles: tuple[Role, ...] = ()


PUBLIC = None
Auth = DeviceAuth | StaffAuth | None


def device(kind: str | None = None) -> DeviceAuth:
    return DeviceAuth(kind)


def staff(*roles: Role) -> StaffAuth:
    return StaffAuth(tuple(roles))


def authenticate_staff_request(session: Session, roles: tuple[Role, ...]) -> StaffUser:
    """The staff member behind this request, with one of `roles` (401/403 otherwise)."""
    header = request.headers.get("Authorization")
    signed_in = current_app.extensions.get(STAFF_SESSION_HOOK)
    if header is None and signed_in is not None:
        # A staff page of this server (the station desk) calling with its session cookie:
        # server.web.base checks the session and, for a POST, the CSRF header.
        user_id = signed_in()
        user = session.get(StaffUser, user_id) if user_id is not None else None
        if user is not None and user.active:
            services.require_role(user, roles)
            return user
    return services.authenticate_staff(session, ctx(), header, *roles)


# --- idempotency ---------------------------------------------------------------------------------

REQUIRED = "required"
OPTIONAL = "optional"


def idempotency_key(req: Request, policy: str | None) -> str | None:
    if policy is None:
        return None
    key = req.headers.get(requestsig.HEADER_IDEMPOTENCY)
    if key is None:
        if policy == REQUIRED:
            raise InvalidRequest(
                "every kiosk POST needs an Idempotency-Key header", code="idempotency_key_missing"
            )
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
            code="idempotency_key_invalid",
        )
    return key


# --- the declared endpoint -----------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """What a view declares; the framework enforces it and the OpenAPI document shows it."""

    method: str
    rule: str
    summary: str
    auth: Auth
    answer: type[BaseModel] | None
    body: type[Contract] | None = None
    query: type[Query] | None = None
    status: int = 200
    idempotency: str | None = None
    look_first: bool = True
    errors: dict[int, str] = field(default_factory=dict)
    # Problem codes per object field name, for defects inside it (a malformed proof).
    field_codes: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Call(Generic[B, Q]):
    """One validated request, handed to the view."""

    body: B
    query: Q
    session: Session
    ctx: services.Context
    device: services.AuthenticatedDevice | None = None
    user_id: int | None = None

    def user(self) -> StaffUser:
        """The signed-in staff member, read in the view's own transaction."""
        user = self.session.get(StaffUser, self.user_id)
        if user is None:  # deleted between authentication and now
            raise Unauthenticated("the staff user no longer exists", code="token_invalid")
        return user

    @property
    def device_id(self) -> str:
        assert self.device is not None
        return self.device.id


def endpoint(
    blueprint: Blueprint,
    method: str,
    rule: str,
    *,
    summary: str,
    auth: Auth,
    answer: type[BaseModel] | None,
    body: type[Contract] | None = None,
    query: type[Query] | None = None,
    status: int = 200,
    idempotency: str | None = None,
    look_first: bool = True,
    errors: dict[int, str] | None = None,
    field_codes: dict[str, str] | None = None,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., Any]]:
    """Declare a JSON call on `blueprint` (see the module docstring)."""
    spec = Endpoint(
        method=method,
        rule=(blueprint.url_prefix or "") + rule,
        summary=summary,
        auth=auth,
        answer=answer,
        body=body,
        query=query,
        status=status,
        idempotency=idempotency,
        look_first=look_first,
        errors=errors or {},
        field_codes=field_codes or {},
    )

    def register(view: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
        @functools.wraps(view)
        def handle(**path: Any) -> tuple[Response, int]:
            return _handle(spec, view, on_answer, path)

        handle.endpoint_spec = spec  # type: ignore[attr-defined]
        blueprint.add_url_rule(rule, view.__name__, handle, methods=[method])
        declared_on(blueprint).append(spec)
        return handle

    return register


def declared_on(blueprint: Blueprint) -> list[Endpoint]:
    """The endpoints declared on `blueprint`, in declaration order."""
    if not hasattr(blueprint, "endpoint_specs"):
        blueprint.endpoint_specs = []  # type: ignore[attr-defined]
    return blueprint.endpoint_specs  # type: ignore[attr-defined,no-any-return]


def _handle(
    spec: Endpoint,
    view: Callable[..., dict[str, Any]],
    on_answer: Callable[[dict[str, Any]], None] | None,
    path: dict[str, Any],
) -> tuple[Response, int]:
    # The request, `g`, the app and its session are looked up once here and handed down:
    # each look-up through Flask's context-local proxies costs every kiosk call.
    here = _Here(
        request._get_current_object(),  # type: ignore[attr-defined]
        g._get_current_object(),  # type: ignore[attr-defined]
        current_app._get_current_object(),  # type: ignore[attr-defined]
    )
    session = here.session = db.session
    context = here.context = context_of(here.app)
    call: Call[Any, Any] = Call(body=None, query=None, session=session, ctx=context)
    if isinstance(spec.auth, DeviceAuth):
        call.device = authenticated_device(here, spec.auth.kind)
        scope = f"kiosk:{call.device.id}"
    elif isinstance(spec.auth, StaffAuth):
        call.user_id = authenticate_staff_request(session, spec.auth.roles).id
        session.rollback()
        scope = f"user:{call.user_id}"
    else:
        scope = "public"
    key = idempotency_key(here.request, spec.idempotency)
    if spec.body is not None:
        call.body = parse_body(here.request, spec.body, spec.field_codes)
    if spec.query is not None:
        call.query = parse_query(spec.query)
    return answer_once(
        here,
        scope,
        key,
        lambda: (spec.status, view(call, **path)),
        look_first=spec.look_first,
        answered=on_answer,
    )


@dataclass
class _Here:
    """What one call's handling looks up once (see _handle)."""

    request: Request
    g: Any
    app: Flask
    session: Session = field(init=False)
    context: services.Context = field(init=False)


# --- parsing -------------------------------------------------------------------------------------


def parse_body(
    req: Request, model: type[Contract], field_codes: dict[str, str] | None = None
) -> Any:
    raw = req.get_data(cache=True)
    if b"\\u0000" in raw and _JSON_NUL.search(raw):  # the substring test is the cheap one
        raise InvalidRequest("text must not contain the NUL character (U+0000)", code="text_invalid")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc, field_codes or {}) from None


def parse_query(model: type[Query]) -> Any:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise _invalid(exc, {}) from None


def _invalid(exc: ValidationError, field_codes: dict[str, str]) -> InvalidRequest:
    errors = exc.errors(include_url=False, include_input=False)
    # A defect of a field itself before one inside an object field (a slot before a proof).
    first = min(errors, key=lambda error: len(error["loc"]) > 1)
    kind, location = first["type"], [str(part) for part in first["loc"]]
    if kind == "json_invalid":
        return InvalidJson(f"the body is not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}")
    if not location:
        return InvalidRequest("the body must be a JSON object")
    name = ".".join(location)
    # A field with a code of its own (a proof, at any depth) has it for defects inside it, not
    # for its absence or its type.
    inner = next((field_codes[p] for p in location[:-1] if p in field_codes), None)
    code = inner or ("field_missing" if kind == "missing" else "field_invalid")
    message = first["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"{name}: {message}", code=code, field=location[0])


# --- devices and nonces --------------------------------------------------------------------------


def signed_path(req: Request) -> str:
    """The path and query a device signed (docs/interfaces.md)."""
    path = req.script_root + req.path
    if req.query_string:
        path += "?" + req.query_string.decode("latin-1")
    return path


def authenticated_device(here: _Here, kind: str | None) -> services.AuthenticatedDevice:
    req = here.request
    headers = req.headers
    nonce = headers.get(requestsig.HEADER_NONCE)
    device = services.authenticate_kiosk(
        here.session,
        here.context,
        services.SignedRequest(
            kiosk_id=headers.get(requestsig.HEADER_KIOSK),
            timestamp=headers.get(requestsig.HEADER_TIMESTAMP),
            nonce=nonce,
            signature=headers.get(requestsig.HEADER_SIGNATURE),
            method=req.method,
            path=signed_path(req),
            body=req.get_data(cache=True),
        ),
    )
    # Committed with the request's own transaction; if that never commits, spend_nonce_anyway.
    here.g.unspent_nonce = (device.id, nonce)
    if kind is not None and device.kind != kind:
        raise Forbidden(
            f"this call is for a {kind}, and {device.id} is a {device.kind}", code="wrong_device"
        )
    return device


def spend_nonce_anyway(app: Flask, g_: Any) -> None:
    """A signed request that failed after authentication still uses up its nonce; and every
    NONCE_PRUNE_EVERY requests of this process, spent nonces past the clock window are pruned
    (server.http.serving runs this after every request)."""
    unspent = g_.pop("unspent_nonce", None)
    if unspent is not None:
        session = db.session
        session.rollback()
        services.spend_nonce(session, context_of(app), *unspent)
    counter = app.extensions.setdefault("onecard_nonce_counter", [0])
    counter[0] += 1
    if counter[0] % NONCE_PRUNE_EVERY == 0:
        session = db.session
        session.rollback()
        try:
            services.prune_nonces(session, context_of(app))
            session.commit()
        except SQLAlchemyError:  # housekeeping must never fail the answer; the next try will do
            session.rollback()
            log.warning("pruning spent nonces failed", exc_info=True)


# --- running a call once -------------------------------------------------------------------------


def answer_once(
    here: _Here,
    scope: str,
    key: str | None,
    operation: Callable[[], tuple[int, dict[str, Any]]],
    *,
    look_first: bool,
    answered: Callable[[dict[str, Any]], None] | None,
) -> tuple[Response, int]:
    session = here.session
    if key is None:
        try:
            status, body = operation()
            session.commit()
        except BaseException:
            session.rollback()
            raise
        here.g.pop("unspent_nonce", None)
        if answered is not None:
            answered(body)
        return _json(here.app, body), status
    req = here.request
    fingerprint = services.request_hash(req.method, signed_path(req), req.get_data(cache=True))
    stored = services.run_idempotent(
        session, here.context, scope, key, fingerprint, operation, look_first=look_first
    )
    if stored.committed:
        here.g.pop("unspent_nonce", None)
    if answered is not None and not stored.replayed:
        answered(stored.body)
    return Response(stored.text, stored.status, mimetype="application/json"), stored.status


def _json(app: Flask, body: dict[str, Any]) -> Response:
    """`jsonify(body)` without looking the app up again."""
    return cast(Response, app.json.response(body))


# --- path values ---------------------------------------------------------------------------------


class DbIdConverter(BaseConverter):
    """A database id in a path: ASCII digits within the id column's range (else no route: 404)."""

    regex = r"[0-9]{1,10}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if not 1 <= number <= MAX_ID:
            raise RouteMismatch()
        return number

    def to_url(self, value: int) -> str:
        return str(value)


class Hex32Converter(BaseConverter):
    """A card GUID in a path: 32 hex digits, so `/cards/certificates` is never a GUID."""

    regex = r"[0-9a-fA-F]{32}"


# --- wiring --------------------------------------------------------------------------------------


class DeviceAwareSessions(SecureCookieSessionInterface):
    """A device's signed request never has a browser session: none is read from a cookie or
    written back (no cookie parsing and signing on the kiosk hot path, no `Vary: Cookie`)."""

    def open_session(self, app: Flask, request: Any) -> SessionMixin | None:
        if requestsig.HEADER_SIGNATURE in request.headers:
            return self.make_null_session(app)
        return super().open_session(app, request)


NO_STORE_PREFIXES = ("/api/", "/staff/")
# Added to every answer of the JSON API and the staff pages (held personal and health data).
_NO_STORE = (("Cache-Control", "no-store"), ("Referrer-Policy", "no-referrer"))


def hygiene(response: Response, path: str) -> None:
    """`nosniff` on every answer; `no-store` and no referrer on the JSON API and staff pages."""
    headers = response.headers
    headers["X-Content-Type-Options"] = "nosniff"
    if path.startswith(NO_STORE_PREFIXES):
        for name, value in _NO_STORE:
            headers[name] = value


def refuse_nul_in_query(query_string: bytes) -> None:
    """PostgreSQL text cannot hold U+0000: a query carrying one (raw or %-escaped) is a 400."""
    if query_string and (b"\x00" in query_string or b"%00" in query_string) and any(
        "\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)
    ):
        raise InvalidRequest(
            "the query must not contain the NUL character (U+0000)", code="text_invalid"
        )


def init_app(app: Flask, context: services.Context) -> None:
    """The context, the session interface and the path converters. The per-request steps
    (NUL check, nonce, hygiene) are run by server.http.serving's two hooks."""
    app.extensions[CONTEXT_KEY] = context
    app.session_interface = DeviceAwareSessions()
    app.url_map.converters["dbid"] = DbIdConverter
    app.url_map.converters["hex32"] = Hex32Converter
