"""End to end over real HTTP: the kiosk's own signed client against a served app.

The kiosk's ServerClient (kiosk/client.py) and this server were written apart against
docs/interfaces.md; this is where the two meet on a socket.
"""

from __future__ import annotations

import requests

from kiosk.client import ServerClient
from kiosk.errors import ServerProblemError
from tests.fixtures.database import ServerWorld


def test_kiosk_client_walks_to_the_limit_over_http(
    server_world: ServerWorld, live_server: str
) -> None:
    w = server_world
    w.clock.follow_real_time()
    with ServerClient(live_server, w.kiosk.id, w.kiosk.key) as client:
        assert requests.get(live_server + "/api/v1/health", timeout=5).json()["status"] == "ok"
        for left in (2, 1, 0):
            answer = client.authorize(
                w.kiosk.tap(w.card, w.clock), slot=1, idempotency_key=f"tap-{left}"
            )
            assert answer.approved, answer
            assert answer.remaining == {"condoms": left}
            assert answer.product == {
                "sku": "CONDOM-STD-1",
                "name": "Condom, standard",
                "category": "condoms",
            }
            assert answer.authorization_id is not None
            settled = client.capture(
                answer.authorization_id, board_txn=left, idempotency_key=f"cap-{left}"
            )
            assert settled == {"status": "captured", "remaining": {"condoms": left}}
        refused = client.authorize(w.kiosk.tap(w.card, w.clock), slot=1, idempotency_key="tap-last")
        assert not refused.approved
        assert refused.reason == "limit_reached"
        assert refused.next_allowed_on is not None


def test_kiosk_client_void_and_retry(server_world: ServerWorld, live_server: str) -> None:
    w = server_world
    w.clock.follow_real_time()
    with ServerClient(live_server, w.kiosk.id, w.kiosk.key) as client:
        proof = w.kiosk.tap(w.card, w.clock)
        first = client.authorize(proof, slot=1, idempotency_key="tap-1")
        again = client.authorize(proof, slot=1, idempotency_key="tap-1")  # a retry after a timeout
        assert again == first
        assert first.authorization_id is not None
        assert client.void(first.authorization_id, "no_drop", idempotency_key="void-1") == {
            "status": "voided",
            "remaining": {"condoms": 3},
        }
        try:
            client.capture(first.authorization_id, board_txn=1, idempotency_key="cap-1")
        except ServerProblemError as exc:
            assert exc.status == 409
            assert exc.code == "authorization_voided"
        else:
            raise AssertionError("capturing a voided authorization must fail")


def test_problems_over_http(server_world: ServerWorld, live_server: str) -> None:
    w = server_world
    unsigned = requests.post(live_server + "/api/v1/authorizations", data=b"{oops", timeout=5)
    assert unsigned.status_code == 401
    assert unsigned.headers["Content-Type"] == "application/problem+json"
    raw = b"{oops"
    headers = w.kiosk.headers("POST", "/api/v1/authorizations", raw, w.clock, idempotency_key="k1")
    bad_json = requests.post(
        live_server + "/api/v1/authorizations", data=raw, headers=headers, timeout=5
    )
    assert bad_json.status_code == 400
    assert bad_json.headers["Content-Type"] == "application/problem+json"
    assert bad_json.json()["code"] == "invalid_json"


def test_cards_of_the_city_card_ca_module(database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The CA the technicians use (cardsvc.ca), configured as a PEM file, as in production."""
    from datetime import UTC, datetime, timedelta

    from cardsvc.ca import CardCA
    from tests.fixtures.database import FakeClock

    card_ca = CardCA.create(tmp_path / "ca")

    class Adapter:  # CityCA's interface over CardCA
        der = card_ca.certificate_der

        def issue(self, guid, public_key, **_):  # type: ignore[no-untyped-def]
            return card_ca.issue(public_key, guid, datetime.now(UTC) + timedelta(days=365))

    world = ServerWorld(
        database_url,
        tmp_path / "data",
        ca=Adapter(),  # type: ignore[arg-type]
        ca_cert_path=card_ca.certificate_path,
        clock=FakeClock(None),
    )
    try:
        answer = world.authorize().get_json()
        assert answer["approved"] is True, answer
    finally:
        world.close()
