"""The card's whole lifecycle on the real stack (issue 3): a technician provisions a stack of
virtual cards with `onecard card provision --batch` (its own process, through pcscd, the cards
presented one after another with card-sim's `swap`), revokes one and replaces it; the kiosk
refuses the revoked card (also with the server stopped, from the list it keeps on disk), refuses
a clone, and accepts the replacement. A card pulled mid-provisioning is not recorded and is
provisioned again; a wrong PIN shows the attempts left; a technician unblocks it with the PUK.
"""

from __future__ import annotations

import base64
import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cardsvc.errors import InvalidPinError, PinBlockedError
from cardsvc.piv import DEFAULT_MANAGEMENT_KEY, Algorithm, ObjectId, PivSession, Slot
from cardsvc.profile import Chuid
from kiosk.revocation import RevocationList, load_server_key
from kiosk.tap import TapOutcome, TapResult
from onecard import card as card_cli
from onecard.platform import READER, SLOT, Platform, start_platform, start_server
from onecard.procs import Child, python_module
from server.services.seeding import LUBE_RULE_UNITS

pytestmark = pytest.mark.pcscd

PIN = "246810"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, pcscd: object) -> Iterator[Platform]:
    with start_platform(tmp_path_factory.mktemp("lifecycle") / "p") as p:
        try:
            yield p
        finally:
            p.server.stop()  # a test may have restarted it: stop the one running now


def new_resident(p: Platform) -> int:
    answer = requests.post(
        p.server_url + "/api/v1/residents",
        json={
            "name": f"Resident {next(_names)}",
            "sex": "F",
            "birth_date": "1992-03-04",
            "id_number": "L" + secrets.token_hex(8),
            "region": p.seed.seed.region_codes[-1],
        },
        headers=tech_headers(p),
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["resident_id"])


def tech_headers(p: Platform) -> dict[str, str]:
    return {"Authorization": f"Bearer {p.seed.technician_token}"}


def technician(p: Platform) -> card_cli.TechnicianClient:
    return card_cli.TechnicianClient(p.server_url, p.seed.technician_token)


def present(p: Platform, card_file: Path) -> None:
    """Take whatever card is in the reader out and put `card_file` in."""
    p.card.send(f"swap {card_file}")


def take_out(p: Platform) -> None:
    p.card.remove()
    p.reader.wait_for_removal(timeout=10)


def tap(p: Platform, card_file: Path) -> TapResult:
    for _ in range(3):  # a stale handle from pcscd reads as a card taken away: tap again
        present(p, card_file)
        try:
            connection = p.reader.wait_for_card(timeout=10)
            assert connection is not None, "the reader did not see the card"
            with connection:
                result = p.kiosk.serve_card(connection, SLOT)
        finally:
            take_out(p)
        if result.outcome is not TapOutcome.CARD_REMOVED:
            break
    return result


def with_card(p: Platform, card_file: Path, work):  # type: ignore[no-untyped-def]
    """Present `card_file` and run `work` on it. pcscd may hand out a handle of the card that
    was just taken away (most after a pull): then the hand presents the card again."""
    for attempt in range(3):
        present(p, card_file)
        try:
            connection = p.reader.wait_for_card(timeout=10)
            assert connection is not None
            with connection:
                piv = PivSession(connection)
                try:
                    piv.select()
                except card_cli.CardRemovedError:
                    if attempt == 2:
                        raise
                    continue
                return work(piv)
        finally:
            take_out(p)
    raise AssertionError("unreachable")


def card_status(p: Platform, guid: str) -> str | None:
    answer = requests.get(
        f"{p.server_url}/api/v1/cards/{guid}", headers=tech_headers(p), timeout=10
    )
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    return str(answer.json()["status"])


def batch_provision(p: Platform, residents: list[int], files: list[Path]) -> list[str]:
    """`onecard card provision --batch` as its own process; the test is the hand at the reader."""
    take_out(p)
    child = Child(
        "provision",
        python_module(
            "onecard.cli",
            "card",
            "provision",
            "--batch",
            *[f"--resident-id={r}" for r in residents],
            "--pin",
            PIN,
            "--reader",
            READER,
            "--timeout",
            "30",
        ),
        {"ONECARD_SERVER_URL": p.server_url, "ONECARD_TOKEN": p.seed.technician_token},
    )
    try:
        child.wait_for_line(rf"\[\.+\] 0/{len(files)}  present the card", 30)
        for index, card_file in enumerate(files):
            present(p, card_file)
            if index + 1 < len(files):
                child.wait_for_line(rf"\] {index + 1}/{len(files)}  card \w+ issued", 30)
                child.wait_for_line(r"remove the card", 30)
        summary = child.wait_for_line(r"summary: (\d+) issued, (\d+) failed", 30)
        assert child.proc.wait(30) == 0, child.tail(20)
    finally:
        child.stop()
        take_out(p)
    assert summary.groups() == (str(len(files)), "0"), child.tail(20)
    lines = list(child.lines)
    assert any(line.startswith("[####################] 3/3") for line in lines), lines
    guids = []
    for resident in residents:
        row = next(line for line in lines if f"resident {resident:>6}  card " in line)
        guids.append(row.split("card ")[1].split()[0])
    return guids


def test_batch_revoke_replace_and_the_kiosk_refuses_revoked_and_clone(
    platform: Platform, tmp_path: Path
) -> None:
    p = platform
    residents = [new_resident(p) for _ in range(3)]
    files = [tmp_path / f"card-{n}.json" for n in range(3)]
    guids = batch_provision(p, residents, files)
    assert len(set(guids)) == 3
    assert [card_status(p, g) for g in guids] == ["active"] * 3

    # Each card is complete: its own management key (not the default), the holder's PIN.
    def check(piv: PivSession) -> str:
        piv.select()
        with pytest.raises(card_cli.AuthenticationError):
            piv.authenticate(DEFAULT_MANAGEMENT_KEY)
        piv.verify_pin(PIN)
        return Chuid.parse(piv.get_object(ObjectId.CHUID)).guid.hex()

    assert with_card(p, files[0], check) == guids[0]

    first = tap(p, files[1])
    assert first.outcome is TapOutcome.DISPENSED, first.message
    assert first.remaining == {"condoms": p.seed.limit - 1, "lubricant": LUBE_RULE_UNITS}

    # Card 1 is reported lost: revoked at once, and the kiosk's list learns it.
    assert card_cli.main(["revoke", guids[1], "--reason", "lost", *cli_auth(p)]) == 0
    assert card_status(p, guids[1]) == "revoked"
    version = p.revocations.version
    assert p.revocations.refresh(p.client)
    assert p.revocations.version > version
    assert bytes.fromhex(guids[1]) in p.revocations.revoked()

    # The server goes away: the kiosk still refuses the revoked card, from its own list, and a
    # kiosk restarted from disk does too.
    p.server.stop()
    try:
        offline = tap(p, files[1])
        assert offline.outcome is TapOutcome.CARD_REJECTED
        assert offline.reason == "revoked"
        server_key = load_server_key(p.device_key_dir)
        assert server_key is not None
        reloaded = RevocationList(p.device_key_dir, server_key)
        assert not reloaded.refresh(p.client)  # server down: the list on disk is kept
        assert bytes.fromhex(guids[1]) in reloaded.revoked()
        assert reloaded.version == p.revocations.version
    finally:
        port = int(p.server_url.rsplit(":", 1)[1])
        p.server = start_server(p.server_env, port)

    # The clone: every readable object of card 0 on another card, with a key of its own.
    def read_objects(piv: PivSession) -> tuple[bytes, bytes]:
        piv.select()
        return piv.get_object(ObjectId.CHUID), piv.get_certificate(Slot.CARD_AUTH)

    chuid, certificate = with_card(p, files[0], read_objects)

    def forge(piv: PivSession) -> None:
        piv.select()
        piv.authenticate(DEFAULT_MANAGEMENT_KEY)
        piv.generate_key(Slot.CARD_AUTH, Algorithm.ECCP256)
        piv.put_certificate(Slot.CARD_AUTH, certificate)
        piv.put_object(ObjectId.CHUID, chuid)

    clone_file = tmp_path / "clone.json"
    with_card(p, clone_file, forge)
    cloned = tap(p, clone_file)
    assert cloned.outcome is TapOutcome.CARD_REJECTED
    assert cloned.reason == "bad_signature"
    assert tap(p, files[0]).outcome is TapOutcome.DISPENSED  # the original still works

    # The replacement: same resident, same allowance history, a new card.
    replacement = tmp_path / "replacement.json"
    present(p, replacement)
    try:
        assert card_cli.main(["replace", guids[1], "--pin", PIN, *cli_auth(p)]) == 0
    finally:
        take_out(p)
    new_guid = with_card(
        p, replacement, lambda piv: (piv.select(), Chuid.parse(piv.get_object(ObjectId.CHUID)))
    )[1].guid.hex()
    assert new_guid != guids[1]
    assert card_status(p, new_guid) == "active"
    assert card_status(p, guids[1]) == "revoked"
    again = tap(p, files[1])
    assert again.outcome in (TapOutcome.CARD_REJECTED, TapOutcome.REFUSED)
    accepted = tap(p, replacement)
    assert accepted.outcome is TapOutcome.DISPENSED, accepted.message
    assert accepted.remaining == {
        "condoms": p.seed.limit - 2,
        "lubricant": LUBE_RULE_UNITS,
    }  # the history came along


def cli_auth(p: Platform) -> list[str]:
    return [
        "--server",
        p.server_url,
        "--token",
        p.seed.technician_token,
        "--reader",
        READER,
        "--timeout",
        "10",
    ]


@pytest.mark.parametrize("pulled_at", ["set PIN", "set management key"])
def test_card_pulled_midway_is_not_recorded_and_is_provisioned_again(
    platform: Platform, tmp_path: Path, pulled_at: str
) -> None:
    p = platform
    resident = new_resident(p)
    blank = tmp_path / "blank.json"
    tech = technician(p)

    def pull_at(name: str) -> None:
        if name == pulled_at:
            p.card.pull_during_next_command()

    def provision(piv: PivSession) -> card_cli.Provisioned:
        return card_cli.provision_one(piv, tech, resident, pin=PIN, step=pull_at)

    with pytest.raises(card_cli.CardRemovedError):
        with_card(p, blank, provision)

    def guid_on_card(piv: PivSession) -> str:
        piv.select()
        return Chuid.parse(piv.get_object(ObjectId.CHUID)).guid.hex()

    guid = with_card(p, blank, guid_on_card)
    assert card_status(p, guid) is None  # written on the card, never recorded as issued

    done = with_card(p, blank, lambda piv: card_cli.provision_one(piv, tech, resident, pin=PIN))
    assert done.resumed and done.guid == guid
    assert card_status(p, guid) == "active"
    assert tap(p, blank).outcome is TapOutcome.DISPENSED

    # Presenting it once more is refused plainly: it is issued already.
    with pytest.raises(card_cli.AlreadyIssuedError):
        with_card(p, blank, lambda piv: card_cli.provision_one(piv, tech, resident))


def test_wrong_pin_shows_attempts_and_a_technician_unblocks_it(
    platform: Platform, tmp_path: Path
) -> None:
    p = platform
    resident = new_resident(p)
    card_file = tmp_path / "card.json"
    tech = technician(p)
    with_card(p, card_file, lambda piv: card_cli.provision_one(piv, tech, resident, pin=PIN))

    def wrong_three_times(piv: PivSession) -> list[str]:
        piv.select()
        said = []
        for _ in range(2):
            with pytest.raises(InvalidPinError) as wrong:
                piv.verify_pin("000000")
            said.append(str(wrong.value))
        with pytest.raises(PinBlockedError):  # the third wrong PIN blocks it
            piv.verify_pin("000000")
        assert piv.get_pin_attempts() == 0
        with pytest.raises(PinBlockedError):
            piv.verify_pin(PIN)
        return said

    said = with_card(p, card_file, wrong_three_times)
    assert said == ["wrong PIN: 2 attempts left", "wrong PIN: 1 attempt left"]

    present(p, card_file)
    try:
        assert card_cli.main(["unblock-pin", "--new-pin", "135790", *cli_auth(p)]) == 0
    finally:
        take_out(p)

    def new_pin_works(piv: PivSession) -> int:
        piv.select()
        piv.verify_pin("135790")
        return piv.get_pin_attempts()

    assert with_card(p, card_file, new_pin_works) in (-1, 3)


def test_renewal_gives_the_same_card_a_later_expiry(platform: Platform, tmp_path: Path) -> None:
    p = platform
    resident = new_resident(p)
    card_file = tmp_path / "card.json"
    tech = technician(p)
    done = with_card(p, card_file, lambda piv: card_cli.provision_one(piv, tech, resident))
    renewed = with_card(p, card_file, lambda piv: card_cli.renew_on_card(piv, tech))
    assert renewed["card_guid"] == done.guid
    assert renewed["expiry"] >= done.expiry
    on_card = with_card(
        p,
        card_file,
        lambda piv: (piv.select(), piv.get_certificate(Slot.CARD_AUTH))[1],
    )
    assert on_card == base64.b64decode(renewed["certificate"])
    assert tap(p, card_file).outcome is TapOutcome.DISPENSED
