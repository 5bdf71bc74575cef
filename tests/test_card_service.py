"""The local card service over real HTTP, with the card behind pcscd: status, events, read and
prove, provisioning in steps with the CA elsewhere, and the guards against foreign pages."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from cryptography.hazmat.primitives.serialization import load_der_public_key

from cardsvc.ca import CardCA
from cardsvc.profile import Chuid
from cardsvc.provision import new_guid
from cardsvc.service import CardService, CardServiceServer
from cardsvc.verify import TapChallenge, verify_tap
from tests.fixtures.pcscd import VirtualCardHandle

pytestmark = pytest.mark.pcscd
ORIGIN = "https://onecard.example"


@pytest.fixture
def service(virtual_card: VirtualCardHandle) -> Iterator[str]:
    card_service = CardService(virtual_card.reader_name)
    server = CardServiceServer(0, card_service, [ORIGIN])
    card_service.start_monitor()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        card_service.close()
        thread.join(10)


def post(url: str, body: dict[str, object], **headers: str) -> requests.Response:
    return requests.post(url, json=body, headers={"Origin": ORIGIN, **headers}, timeout=30)


def provision_in_steps(base: str, ca: CardCA) -> bytes:
    generated = post(
        base + "/v1/provision/generate",
        {"management_key": "010203040506070801020304050607080102030405060708"},
    )
    assert generated.status_code == 200, generated.text
    public_key = load_der_public_key(base64.b64decode(generated.json()["public_key"]))
    guid = new_guid()
    expiry = (datetime.now(UTC) + timedelta(days=30)).date()
    certificate = ca.issue(public_key, guid, datetime.now(UTC) + timedelta(days=30))  # type: ignore[arg-type]
    unsigned = Chuid(guid, expiry)
    written = post(
        base + "/v1/provision/write",
        {
            "management_key": "010203040506070801020304050607080102030405060708",
            "certificate": base64.b64encode(certificate).decode(),
            "guid": guid.hex(),
            "expiry": expiry.isoformat(),
            "chuid_signature": base64.b64encode(
                ca.sign_detached(unsigned.signed_content())
            ).decode(),
            "pin": "24681357",
            "new_management_key": {"type": "AES128", "key": "00112233445566778899aabbccddeeff"},
        },
    )
    assert written.status_code == 200, written.text
    return guid


def test_provision_read_and_prove_over_http(service: str, tmp_path: pytest.TempPathFactory) -> None:
    ca = CardCA.create(tmp_path / "ca")  # type: ignore[operator]
    guid = provision_in_steps(service, ca)
    read = post(service + "/v1/card/read", {})
    assert read.status_code == 200 and read.json()["card_guid"] == guid.hex()
    assert read.headers["Access-Control-Allow-Origin"] == ORIGIN
    proved = post(
        service + "/v1/card/prove",
        {
            "kiosk_id": "STATION-7",
            "counter": 3,
            "time_ms": int(time.time() * 1000),
            "nonce": os.urandom(16).hex(),
        },
    )
    assert proved.status_code == 200, proved.text
    challenge, signature = TapChallenge.from_json(proved.json()["proof"])
    certificate = base64.b64decode(proved.json()["certificate"])
    assert verify_tap(certificate, ca.certificate_der, challenge, signature).guid == guid
    # The default management key was replaced: provisioning again with it is refused.
    again = post(
        service + "/v1/provision/generate",
        {"management_key": "010203040506070801020304050607080102030405060708"},
    )
    assert again.status_code == 403 and again.json()["code"] == "management_key_refused"


def test_status_and_problems(service: str, virtual_card: VirtualCardHandle) -> None:
    status = requests.get(service + "/v1/status", timeout=30).json()
    assert virtual_card.reader_name in status["readers"]
    blank = post(service + "/v1/card/read", {})
    assert blank.status_code == 422 and blank.json()["code"] == "card_not_provisioned"
    assert blank.headers["Content-Type"] == "application/problem+json"
    bad = post(
        service + "/v1/card/prove", {"kiosk_id": "S", "counter": "x", "time_ms": 1, "nonce": "00"}
    )
    assert bad.status_code == 400 and bad.json()["code"] == "bad_request"
    virtual_card.remove()
    gone = post(service + "/v1/card/read", {})
    assert gone.status_code == 404 and gone.json()["code"] == "no_card"


def test_foreign_pages_are_refused(service: str) -> None:
    foreign = post(service + "/v1/card/read", {}, Origin="https://evil.example")
    assert foreign.status_code == 403 and foreign.json()["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in foreign.headers
    rebound = requests.get(service + "/v1/status", headers={"Host": "attacker.example"}, timeout=30)
    assert rebound.status_code == 421
    form = requests.post(
        service + "/v1/card/read",
        data="x",
        headers={"Origin": ORIGIN, "Content-Type": "text/plain"},
        timeout=30,
    )
    assert form.status_code == 415
    preflight = requests.options(service + "/v1/card/prove", headers={"Origin": ORIGIN}, timeout=30)
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    not_json = requests.post(
        service + "/v1/card/read",
        data="{",
        headers={"Origin": ORIGIN, "Content-Type": "application/json"},
        timeout=30,
    )
    assert not_json.status_code == 400 and not_json.json()["code"] == "invalid_json"


def test_events_follow_the_card(service: str, virtual_card: VirtualCardHandle) -> None:
    with requests.get(
        service + "/v1/events", headers={"Origin": ORIGIN}, stream=True, timeout=30
    ) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        lines = stream.iter_lines(chunk_size=1, decode_unicode=True)

        def next_event() -> dict[str, object]:
            for line in lines:
                if line.startswith("data: "):
                    return json.loads(line[6:])  # type: ignore[no-any-return]
            raise AssertionError("the event stream ended")

        first = next_event()
        if first["type"] == "removed":  # the monitor had not seen the card yet
            first = next_event()
        assert first["type"] == "inserted"
        virtual_card.remove()
        assert next_event()["type"] == "removed"
        virtual_card.insert()
        event = next_event()
        assert event == {"type": "inserted", "reader": virtual_card.reader_name}


def test_finish_refuses_a_chuid_for_another_card_and_a_puk_without_a_pin(
    service: str, tmp_path: pytest.TempPathFactory
) -> None:
    """/v1/provision/finish checks what the page carries before the card is touched."""
    ca = CardCA.create(tmp_path / "ca")  # type: ignore[operator]
    identified = post(service + "/v1/card/identify", {})
    assert identified.status_code == 200 and identified.json() == {"card_guid": None}
    generated = post(service + "/v1/provision/generate", {})  # the default management key
    assert generated.status_code == 200, generated.text
    public_key = load_der_public_key(base64.b64decode(generated.json()["public_key"]))
    guid, other = new_guid(), new_guid()
    not_after = datetime.now(UTC) + timedelta(days=30)
    certificate = base64.b64encode(ca.issue(public_key, guid, not_after)).decode()  # type: ignore[arg-type]
    expiry = not_after.date()

    def chuid(for_guid: bytes) -> str:
        unsigned = Chuid(for_guid, expiry)
        signature = ca.sign_detached(unsigned.signed_content())
        return base64.b64encode(
            Chuid(for_guid, expiry, unsigned.fasc_n, signature).to_bytes()
        ).decode()

    mismatched = post(
        service + "/v1/provision/finish", {"certificate": certificate, "chuid": chuid(other)}
    )
    assert mismatched.status_code == 400 and mismatched.json()["code"] == "bad_request"
    lonely_puk = post(
        service + "/v1/provision/finish",
        {"certificate": certificate, "chuid": chuid(guid), "puk": "12345678"},
    )
    assert lonely_puk.status_code == 400 and lonely_puk.json()["code"] == "bad_request"
    assert post(service + "/v1/card/identify", {}).json() == {"card_guid": None}  # untouched

    written = post(
        service + "/v1/provision/finish", {"certificate": certificate, "chuid": chuid(guid)}
    )
    assert written.status_code == 200, written.text
    assert post(service + "/v1/card/identify", {}).json() == {"card_guid": guid.hex()}
