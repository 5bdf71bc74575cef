"""The card service's staff-card sign-in call over real HTTP, with a virtual staff card behind
pcscd: the card signs the server's challenge with its PIN-bound 9A key (the certificate handed
back is the 9A one) only after its PIN, only for the page's own origin, and a PIN of the wrong
shape never reaches the card; a staff card issued without a 9A key is refused before its PIN is
tried (cardsvc.service, cardsvc.profile.sign_in, cardsvc.signin)."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
import requests

from cardsvc.ca import CardCA
from cardsvc.piv import PivSession
from cardsvc.provision import provision_card
from cardsvc.signin import SignInChallenge, verify_sign_in_signature
from cardsvc.verify import CardRole, verify_certificate
from tests.fixtures.pcscd import VirtualCardHandle
from tests.test_card_service import ORIGIN, post, provision_in_steps, service  # noqa: F401

pytestmark = pytest.mark.pcscd
PIN = "24681357"  # what provision_in_steps sets


def issue_staff_card(virtual_card: VirtualCardHandle, ca: CardCA) -> bytes:
    """A staff card as the issuing desk makes it (both keys), through pcscd; its GUID."""
    with virtual_card.reader() as reader:
        connection = reader.wait_for_card(timeout=10)
        assert connection is not None
        with connection:
            issued = provision_card(PivSession(connection), ca.staff_issuer(), pin=PIN)
    return issued.guid


def a_challenge(origin: str = ORIGIN) -> SignInChallenge:
    return SignInChallenge(origin, os.urandom(16), int(time.time() * 1000) + 120_000)


def sign_in(base: str, challenge: SignInChallenge, pin: str, **headers: str) -> requests.Response:
    body = {"challenge": base64.b64encode(challenge.to_bytes()).decode(), "pin": pin}
    return post(base + "/v1/card/sign-in", body, **headers)


def test_the_card_signs_the_challenge_after_its_pin_and_a_malformed_pin_costs_no_try(
    service: str,  # noqa: F811 - the fixture imported above
    virtual_card: VirtualCardHandle,
    tmp_path: Path,
) -> None:
    ca = CardCA.create(tmp_path / "ca")
    guid = issue_staff_card(virtual_card, ca)
    tries = virtual_card.card.state["pin_tries"]

    malformed = sign_in(service, a_challenge(), "12ab")
    assert malformed.status_code == 400 and malformed.json()["code"] == "pin_malformed"
    assert virtual_card.card.state["pin_tries"] == tries  # never sent to the card

    wrong = sign_in(service, a_challenge(), "11112222")
    assert wrong.status_code == 403 and wrong.json()["code"] == "wrong_pin"
    assert virtual_card.card.state["pin_tries"] == tries - 1

    challenge = a_challenge()
    signed = sign_in(service, challenge, PIN)
    assert signed.status_code == 200, signed.text
    assert virtual_card.card.state["pin_tries"] == tries  # a right PIN resets the counter
    card = verify_certificate(base64.b64decode(signed.json()["certificate"]), ca.certificate_der)
    assert card.guid == guid and card.role is CardRole.STAFF and card.pin_bound
    read = post(service + "/v1/card/read", {})  # the 9E certificate, what kiosks see
    assert read.json()["certificate"] != signed.json()["certificate"]
    signature = base64.b64decode(signed.json()["signature"])
    verify_sign_in_signature(card.certificate.public_key(), challenge, signature)


def test_a_staff_card_without_a_9a_key_is_refused_before_its_pin(
    service: str,  # noqa: F811
    virtual_card: VirtualCardHandle,
    tmp_path: Path,
) -> None:
    """A card issued before staff cards had a 9A key: the 9E key would sign without the PIN,
    so the service does not use it; no try of the PIN is spent."""
    provision_in_steps(service, CardCA.create(tmp_path / "ca").staff_issuer())  # type: ignore[arg-type]
    tries = virtual_card.card.state["pin_tries"]
    refused = sign_in(service, a_challenge(), PIN)
    assert refused.status_code == 422 and refused.json()["code"] == "no_sign_in_key"
    assert virtual_card.card.state["pin_tries"] == tries


def test_a_challenge_for_another_site_is_not_signed(
    service: str,  # noqa: F811
    virtual_card: VirtualCardHandle,
    tmp_path: Path,
) -> None:
    issue_staff_card(virtual_card, CardCA.create(tmp_path / "ca"))
    tries = virtual_card.card.state["pin_tries"]
    phished = sign_in(service, a_challenge("https://onecard.example.evil"), PIN)
    assert phished.status_code == 403 and phished.json()["code"] == "origin_mismatch"
    not_a_browser = requests.post(
        service + "/v1/card/sign-in",
        json={"challenge": base64.b64encode(a_challenge().to_bytes()).decode(), "pin": PIN},
        timeout=30,
    )
    assert not_a_browser.status_code == 403
    garbage = post(service + "/v1/card/sign-in", {"challenge": "aGVsbG8=", "pin": PIN})
    assert garbage.status_code == 400
    assert virtual_card.card.state["pin_tries"] == tries
