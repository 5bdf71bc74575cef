"""The OpenAPI document is generated from the declared contracts and matches the code: every route
is documented and nothing else, real answers validate against their documented schemas (JSON
Schema 2020-12, by jsonschema), and a schema-driven fuzz (schemathesis strategies from the
generated document, valid and invalid requests alike) sent with each role's credentials and with
signed device requests never finds a 5xx or an answer that breaks its schema.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any
from urllib.parse import urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from schemathesis.generation import GenerationMode

from server import services
from server.api.provisioning import provisioning_api
from server.app import API_BLUEPRINTS
from server.http.openapi import build, endpoints_declared
from server.store.models import Role
from tests.fixtures.database import ServerWorld, TestKiosk

DOC = build(endpoints_declared([*API_BLUEPRINTS, provisioning_api]))
SCHEMA = schemathesis.openapi.from_dict(DOC)
OPERATIONS = sorted((path, method) for path, ops in DOC["paths"].items() for method in ops)


def schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """What in `value` does not match `schema` (whose references point into DOC)."""
    validator = Draft202012Validator({**schema, "components": DOC["components"]})
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


def template_of(path: str) -> str:
    path = path.split("?")[0]
    for template in DOC["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path):
            return template
    raise AssertionError(f"{path} is not documented")


def check_answer(method: str, path: str, response: Any) -> None:
    """The response is one the document lists for this operation, with a matching body."""
    if response.status_code == 404 and response.get_json(silent=True, force=True).get("code") == "not_found":
        return  # no route matched (an id out of range is no resource): the generic problem
    operation = DOC["paths"][template_of(path)][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method} {path} answered {status}, not documented"
    content = operation["responses"][status]["content"]
    assert response.mimetype in content, f"{response.mimetype} not documented for {status}"
    problems = schema_errors(response.get_json(force=True), content[response.mimetype]["schema"])
    assert problems == [], problems


def test_every_route_is_documented_and_nothing_else(server_world: ServerWorld) -> None:
    routes = set()
    for rule in server_world.app.url_map.iter_rules():
        if rule.rule.startswith(("/api/v1", "/staff/v1")):
            template = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:  # type: ignore[operator]
                routes.add((template, method.lower()))
    assert routes == set(OPERATIONS)


def test_served_document_is_this_document(server_world: ServerWorld) -> None:
    response = server_world.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == json.loads(json.dumps(DOC))
    assert response.get_json()["openapi"] == "3.1.0"


def test_the_document_states_the_limits_the_code_enforces() -> None:
    schemas = DOC["components"]["schemas"]
    sync = schemas["SyncRequest"]["properties"]["transactions"]
    assert (sync["minItems"], sync["maxItems"]) == (1, 500)
    events = schemas["TelemetryRequest"]["properties"]["events"]
    assert events["maxItems"] == 100
    enrol = schemas["EnrolRequest"]["properties"]
    assert "pattern" in enrol["id_number"] and "pattern" in json.dumps(enrol["phone"])
    # one upper bound for a resident id wherever one is taken
    bounds = {
        json.dumps(schemas[name]["properties"]["resident_id"])
        for name in ("CardRequest", "CardCertificateRequest", "AppointmentRequest")
    }
    assert len(bounds) == 1


def test_real_answers_match_their_schemas(server_world: ServerWorld) -> None:
    w = server_world
    check_answer("GET", "/api/v1/health", w.client.get("/api/v1/health"))
    approved = w.authorize()
    check_answer("POST", "/api/v1/authorizations", approved)
    a = approved.get_json()["authorization_id"]
    path = f"/api/v1/authorizations/{a}"
    check_answer("POST", path + "/capture", w.capture(a))
    check_answer("POST", path + "/void", w.void(a))  # 409 problem
    b = w.authorize().get_json()["authorization_id"]
    check_answer("POST", f"/api/v1/authorizations/{b}/void", w.void(b))
    check_answer("POST", "/api/v1/authorizations", w.post("/api/v1/authorizations", b"{"))
    check_answer("POST", "/api/v1/authorizations", w.authorize(timestamp=0))
    auth = {"Authorization": f"Bearer {w.token}"}
    check_answer("GET", "/api/v1/reservations", w.client.get("/api/v1/reservations", headers=auth))
    check_answer(
        "GET", "/api/v1/reservations", w.client.get("/api/v1/reservations?limit=0", headers=auth)
    )


# --- every class of hostile input gets its 4xx --------------------------------------------------


def staff_token(w: ServerWorld, role: Role) -> dict[str, str]:
    with w.sessionmaker() as session:
        token = services.create_user(session, w.ctx, f"{role.value}-{secrets.token_hex(3)}", role)
    return {"Authorization": f"Bearer {token}"}


def enrolment(**override: Any) -> dict[str, Any]:
    return {
        "name": "Test Person",
        "sex": "F",
        "birth_date": "1990-01-02",
        "id_number": "T" + secrets.token_hex(6),
        "region": "V-01",
        **override,
    }


def test_an_integer_of_thousands_of_digits_is_a_400(server_world: ServerWorld) -> None:
    w = server_world
    raw = b'{"slot": ' + b"9" * 5000 + b', "proof": {}}'
    answer = w.post("/api/v1/authorizations", raw)
    assert (answer.status_code, answer.get_json()["code"]) == (400, "invalid_json")
    admin = staff_token(w, Role.ADMINISTRATOR)
    answer = w.client.post(
        "/api/v1/residents",
        data=b'{"name": 1' + b"0" * 5000 + b"}",
        headers={**admin, "Content-Type": "application/json"},
    )
    assert (answer.status_code, answer.get_json()["code"]) == (400, "invalid_json")


def test_json_nested_tens_of_thousands_deep_is_a_400(server_world: ServerWorld) -> None:
    w = server_world
    raw = b'{"slot": 1, "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(raw) < w.app.config["MAX_CONTENT_LENGTH"]
    answer = w.post("/api/v1/telemetry", raw)
    assert (answer.status_code, answer.get_json()["code"]) == (400, "invalid_json")


def test_a_lone_surrogate_in_a_personal_field_is_a_400(server_world: ServerWorld) -> None:
    w = server_world
    admin = staff_token(w, Role.ADMINISTRATOR)
    raw = json.dumps(enrolment(name="\ud800")).encode()
    answer = w.client.post(
        "/api/v1/residents", data=raw, headers={**admin, "Content-Type": "application/json"}
    )
    assert (answer.status_code, answer.get_json()["code"]) == (400, "invalid_json")


def test_a_non_ascii_digit_is_not_a_number(server_world: ServerWorld) -> None:
    w = server_world
    path = "/api/v1/revocations?since=%C2%B2"
    answer = w.client.get(path, headers=w.kiosk.headers("GET", path, b"", w.clock))
    assert (answer.status_code, answer.get_json()["code"]) == (400, "field_invalid")
    answer = w.post("/api/v1/telemetry", {"stock": {"²": 3}})
    assert (answer.status_code, answer.get_json()["code"]) == (400, "field_invalid")
    assert answer.get_json()["field"] == "stock"


@pytest.mark.parametrize("day", ["0001-01-01", "9999-12-31"])
def test_a_date_at_the_edge_of_the_calendar_is_a_400(server_world: ServerWorld, day: str) -> None:
    w = server_world
    nurse = staff_token(w, Role.STATION_STAFF)
    answer = w.client.get(f"/api/v1/stations/S-0001/slots?date={day}", headers=nurse)
    assert (answer.status_code, answer.get_json()["code"]) == (400, "field_invalid")


def test_an_appointment_beyond_the_calendar_is_a_400(server_world: ServerWorld) -> None:
    w = server_world
    nurse = staff_token(w, Role.STATION_STAFF)
    for starts_at in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"):
        answer = w.client.post(
            "/api/v1/appointments",
            json={
                "station_id": "S-0001",
                "programme": "pre_pregnancy",
                "resident_id": w.seed.resident_id,
                "starts_at": starts_at,
            },
            headers=nurse,
        )
        assert (answer.status_code, answer.get_json()["code"]) == (400, "field_invalid")
        assert answer.get_json()["field"] == "starts_at"


@pytest.mark.parametrize("number", [2**31, 2**63, 2**64 + 1, 10**40])
def test_a_path_id_beyond_the_id_column_is_no_resource(server_world: ServerWorld, number: int) -> None:
    w = server_world
    admin = staff_token(w, Role.ADMINISTRATOR)
    for path in (f"/api/v1/rules/{number}/deactivate", f"/api/v1/appointments/{number}/cancel"):
        answer = w.client.post(path, headers=admin)
        assert answer.status_code == 404, path
        assert answer.mimetype == "application/problem+json"


def test_options_allows_what_the_route_serves(server_world: ServerWorld) -> None:
    answer = server_world.client.options("/api/v1/cards/certificates")
    assert set(answer.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    answer = server_world.client.options("/api/v1/cards/" + "ab" * 16)
    assert set(answer.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_api_answers_are_never_cached_nor_sniffed(server_world: ServerWorld) -> None:
    w = server_world
    for answer in (
        w.client.get("/api/v1/residents?region=V-01", headers={"Authorization": f"Bearer {w.token}"}),
        w.client.get("/api/v1/residents"),  # a problem document
        w.authorize(),
    ):
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"


# --- the schema-driven fuzz ------------------------------------------------------------------------

STAFF_ROLES = [Role.ADMINISTRATOR, Role.TECHNICIAN, Role.STATION_STAFF, Role.AUDITOR]


@pytest.fixture
def fuzz_world(server_world: ServerWorld) -> tuple[ServerWorld, TestKiosk, dict[Role, str]]:
    w = server_world
    station = TestKiosk("S-FUZZ")
    with w.sessionmaker() as session:
        services.add_station(session, w.ctx, station.id, station.public_key_b64)
        tokens = {
            role: services.create_user(session, w.ctx, f"fuzz-{role.value}", role)
            for role in STAFF_ROLES
        }
    return w, station, tokens


def _request_of(case: Any) -> tuple[str, bytes, dict[str, str]]:
    kwargs = case.as_transport_kwargs(base_url="")
    path = case.formatted_path
    params = kwargs.get("params") or {}
    if params:
        path += "?" + urlencode(params, doseq=True)
    if "json" in kwargs:
        raw = json.dumps(kwargs["json"]).encode()
    else:
        data = kwargs.get("data")
        raw = data.encode() if isinstance(data, str) else (data or b"")
    headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if not k.startswith("X-Schemathesis")}
    return path, raw, headers


def _sendable(headers: dict[str, str]) -> bool:
    try:
        return all(
            isinstance(v, str) and "\r" not in v and "\n" not in v and v.encode("latin-1")
            is not None
            for v in headers.values()
        )
    except UnicodeEncodeError:
        return False


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_schema_fuzz_finds_no_5xx_and_no_answer_off_its_schema(
    fuzz_world: tuple[ServerWorld, TestKiosk, dict[Role, str]], path: str, method: str
) -> None:
    w, station, tokens = fuzz_world
    operation = SCHEMA[path][method.upper()]
    spec = DOC["paths"][path][method]
    signed = spec["security"] == [{"deviceSignature": []}]
    staffed = spec["security"] == [{"staffToken": []}]
    device = station if "/exams/" in path and path.startswith("/api/v1") else w.kiosk
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, role=st.sampled_from(STAFF_ROLES), real_proof=st.booleans())
    def probe(case: Any, role: Role, real_proof: bool) -> None:
        target, raw, headers = _request_of(case)
        assume(_sendable(headers))
        if real_proof and signed and raw.startswith(b"{"):
            try:  # sometimes a genuine tap, so the deeper code runs too
                body = json.loads(raw)
                body["proof"] = device.tap(w.card, w.clock)
                raw = json.dumps(body).encode()
            except (ValueError, TypeError):
                pass
        if signed:
            headers = {
                **device.headers(method.upper(), target, raw, w.clock),
                **({"Idempotency-Key": secrets.token_hex(8)} if method == "post" else {}),
            }
        elif staffed:
            headers = {**headers, "Authorization": f"Bearer {tokens[role]}"}
        answer = w.client.open(target, method=method.upper(), data=raw, headers=headers)
        assert answer.status_code < 500, answer.get_data(as_text=True)
        if answer.mimetype in ("application/json", "application/problem+json"):
            check_answer(method.upper(), target, answer)

    probe()


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=300))
def test_raw_bytes_to_a_kiosk_call_are_a_4xx(server_world: ServerWorld, raw: bytes) -> None:
    answer = server_world.post("/api/v1/authorizations", raw)
    assert 400 <= answer.status_code < 500
    check_answer("POST", "/api/v1/authorizations", answer)


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/openapi.json", "/api/v1/server-key"])
def test_public_documents_need_no_credentials(server_world: ServerWorld, path: str) -> None:
    assert server_world.client.get(path).status_code == 200


def test_a_device_request_neither_reads_nor_sets_a_browser_session(server_world: ServerWorld) -> None:
    answer = server_world.authorize()
    assert answer.status_code == 200
    assert "Set-Cookie" not in answer.headers and "Vary" not in answer.headers
