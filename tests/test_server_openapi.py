"""The OpenAPI document matches the code: every route documented, real answers valid against
their documented schemas, and a schema-driven fuzz of the kiosk API that never finds a 500.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.openapi import document
from tests.fixtures.database import ServerWorld, TestCard

DOC = document()


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = DOC
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """The subset of JSON Schema the document uses; returns what does not match."""
    schema = resolve(schema)
    found: list[str] = []
    if "oneOf" in schema:
        matches = [s for s in schema["oneOf"] if not errors(value, s, where)]
        return [] if len(matches) == 1 else [f"{where}: matches {len(matches)} of oneOf"]
    if "const" in schema and value != schema["const"]:
        found.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} not in enum")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(value, _TYPES[t])
            and not (t in ("integer", "number") and isinstance(value, bool))
            for t in types
        )
        if not ok:
            return [f"{where}: {value!r} is not {types}"]
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                found.append(f"{where}: {name} missing")
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                found += errors(item, properties[name], f"{where}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                found += errors(item, schema["additionalProperties"], f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += errors(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
            found.append(f"{where}: length {len(value)} out of range")
    return found


def template_of(path: str) -> str:
    for template in DOC["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path):
            return template
    raise AssertionError(f"{path} is not documented")


def check_answer(method: str, path: str, response: Any) -> None:
    """The response is one the document lists for this operation, with a matching body."""
    operation = DOC["paths"][template_of(path)][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method} {path} answered {status}, not documented"
    content = operation["responses"][status]["content"]
    assert response.mimetype in content, f"{response.mimetype} not documented for {status}"
    problems = errors(response.get_json(force=True), content[response.mimetype]["schema"])
    assert problems == [], problems


def test_every_route_is_documented_and_nothing_else(server_world: ServerWorld) -> None:
    routes = set()
    for rule in server_world.app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            template = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:  # type: ignore[operator]
                routes.add((template, method.lower()))
    documented = {(path, method) for path, ops in DOC["paths"].items() for method in ops}
    assert routes == documented


def test_served_document_is_this_document(server_world: ServerWorld) -> None:
    response = server_world.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == json.loads(json.dumps(DOC))
    assert response.get_json()["openapi"].startswith("3.")


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
    check_answer("POST", "/api/v1/authorizations", w.authorize(TestCard(w.ca)))  # refusal
    check_answer("POST", "/api/v1/authorizations", w.post("/api/v1/authorizations", b"{"))
    check_answer("POST", "/api/v1/authorizations", w.authorize(timestamp=0))
    w.authorize()
    auth = {"Authorization": f"Bearer {w.token}"}
    check_answer("GET", "/api/v1/reservations", w.client.get("/api/v1/reservations", headers=auth))
    check_answer(
        "GET", "/api/v1/reservations", w.client.get("/api/v1/reservations?limit=0", headers=auth)
    )
    card = TestCard(w.ca)
    body = {
        "resident_id": w.new_resident(),
        "certificate": base64.b64encode(card.certificate_der).decode(),
    }
    check_answer("POST", "/api/v1/cards", w.client.post("/api/v1/cards", json=body, headers=auth))
    check_answer(
        "POST", "/api/v1/cards", w.client.post("/api/v1/cards", json=body, headers=auth)
    )  # 409


# --- fuzz: bodies drawn from the request schemas, then broken in every way JSON allows --------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values shaped like `schema`, with each field sometimes replaced by any JSON value."""
    schema = resolve(schema)
    if "oneOf" in schema:
        return st.one_of([from_schema(s) for s in schema["oneOf"]])
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        fields = {
            name: from_schema(sub) | json_values
            for name, sub in schema.get("properties", {}).items()
        }
        return st.fixed_dictionaries({}, optional=fields)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})) | json_values, max_size=3)
    if kind == "integer":
        low, high = schema.get("minimum", -(2**70)), schema.get("maximum", 2**70)
        return st.integers(low - 2, high + 2) | st.sampled_from([-1, 0, 1, 2**63, 2**64])
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True) | st.text(max_size=40)
        return st.text(max_size=80)
    return json_values


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_the_kiosk_api_never_fails_with_500(
    server_world: ServerWorld, data: st.DataObject
) -> None:
    w = server_world
    target = data.draw(
        st.sampled_from(["authorize", "capture", "void", "sync", "telemetry", "raw"])
    )
    if target == "authorize":
        body = data.draw(from_schema({"$ref": "#/components/schemas/AuthorizeRequest"}))
        if data.draw(st.booleans()):  # sometimes a real proof, so deeper code runs
            body["proof"] = w.kiosk.tap(w.card, w.clock)
        path = "/api/v1/authorizations"
    elif target in ("capture", "void"):
        schema = "CaptureRequest" if target == "capture" else "VoidRequest"
        body = data.draw(from_schema({"$ref": f"#/components/schemas/{schema}"}))
        authorization_id = data.draw(
            st.sampled_from(["0" * 32, "x"]) | st.text(alphabet="0123456789abcdef", max_size=40)
        )
        path = f"/api/v1/authorizations/{authorization_id or 'a'}/{target}"
    elif target == "sync":
        body = data.draw(from_schema({"$ref": "#/components/schemas/SyncRequest"}))
        items = body.get("transactions") if isinstance(body, dict) else None
        if (
            isinstance(items, list)
            and items
            and isinstance(items[0], dict)
            and data.draw(st.booleans())
        ):
            items[0]["proof"] = w.kiosk.tap(w.card, w.clock)
        path = "/api/v1/sync"
    elif target == "telemetry":
        body = data.draw(from_schema({"$ref": "#/components/schemas/TelemetryRequest"}))
        path = "/api/v1/telemetry"
    else:
        body = None
        path = "/api/v1/authorizations"
    raw = data.draw(st.binary(max_size=200)) if body is None else json.dumps(body).encode()
    response = w.post(path, raw)
    assert response.status_code < 500, response.get_data(as_text=True)
    check_answer("POST", path, response)


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/openapi.json"])
def test_public_documents_need_no_credentials(server_world: ServerWorld, path: str) -> None:
    assert server_world.client.get(path).status_code == 200
