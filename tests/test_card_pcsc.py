"""Integration: the card joint through pcscd + vpcd + pyscard, no in-process shortcut on the
kiosk side (the virtual card runs in a thread or a process of its own, behind pcscd)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cardsvc.ca import CardCA
from cardsvc.errors import (
    CardRemovedError,
    CardVerificationError,
    NoReaderError,
    NotFoundError,
    PcscdUnavailableError,
    VerificationFailure,
)
from cardsvc.pcsc import PcscReader, list_readers
from cardsvc.piv import PivSession
from cardsvc.profile import TapChallenge, prove, read_card
from cardsvc.provision import provision_card
from cardsvc.verify import verify_tap
from cardsvc.vpcd import send_control
from tests.fixtures.pcscd import VirtualCardHandle, vpcd_port, vpcd_reader_name

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.pcscd


@pytest.fixture
def ca(tmp_path: Path) -> CardCA:
    return CardCA.create(tmp_path / "ca")


def _challenge(guid: bytes, counter: int = 1) -> TapChallenge:
    return TapChallenge("K-0001", counter, int(time.time() * 1000), os.urandom(16), guid)


def _tap(reader: PcscReader, ca: CardCA, **kwargs: object) -> tuple[bytes, int]:
    connection = reader.wait_for_card(timeout=10)
    assert connection is not None, "pcscd did not see the card"
    with connection:
        piv = PivSession(connection)
        card = read_card(piv)
        challenge = _challenge(card.guid)
        signature = prove(piv, challenge)
        verified = verify_tap(
            card.certificate_der, ca.certificate_der, challenge, signature, **kwargs
        )  # type: ignore[arg-type]
        return verified.guid, piv.apdu_count


def test_provision_then_tap_verifies(virtual_card: VirtualCardHandle, ca: CardCA) -> None:
    with virtual_card.reader() as reader:
        connection = reader.wait_for_card(timeout=10)
        assert connection is not None
        with connection:
            issued = provision_card(PivSession(connection), ca)
        guid, apdus = _tap(reader, ca)
    assert guid == issued.guid
    assert apdus == 4  # SELECT, CHUID, certificate, GENERAL AUTHENTICATE (extended APDUs)


def test_tap_with_short_apdus_uses_response_chaining(
    virtual_card: VirtualCardHandle, ca: CardCA
) -> None:
    with virtual_card.reader() as reader:
        connection = reader.wait_for_card(timeout=10)
        assert connection is not None
        with connection:
            issued = provision_card(PivSession(connection, extended=False), ca)
            piv = PivSession(connection, extended=False)
            card = read_card(piv)
            challenge = _challenge(card.guid)
            signature = prove(piv, challenge)
    assert card.guid == issued.guid
    assert piv.apdu_count > 4  # the certificate needed GET RESPONSE
    verify_tap(card.certificate_der, ca.certificate_der, challenge, signature)


def test_the_card_keeps_its_key_across_removal(virtual_card: VirtualCardHandle, ca: CardCA) -> None:
    with virtual_card.reader() as reader:
        connection = reader.wait_for_card(timeout=10)
        assert connection is not None
        with connection:
            issued = provision_card(PivSession(connection), ca)
        virtual_card.remove()
        assert reader.wait_for_removal(timeout=10)
        assert reader.wait_for_card(timeout=0.2) is None
        virtual_card.swap(virtual_card.state_path)  # the same card, a new process-side object
        guid, _ = _tap(reader, ca)
    assert guid == issued.guid


def test_a_clone_without_the_private_key_is_refused(
    virtual_card: VirtualCardHandle, ca: CardCA, tmp_path: Path
) -> None:
    with virtual_card.reader() as reader:
        connection = reader.wait_for_card(timeout=10)
        assert connection is not None
        with connection:
            provision_card(PivSession(connection), ca)
        # The clone: every readable object copied onto another card, which has its own key.
        original = virtual_card.card.state
        virtual_card.swap(tmp_path / "clone.json")
        connection = reader.wait_for_card(timeout=10)
        assert connection is not None
        with connection:
            provision_card(PivSession(connection), ca)  # any key at all in 9E
        clone = virtual_card.card
        clone.state["objects"] = dict(original["objects"])
        clone._save()
        with pytest.raises(CardVerificationError) as caught:
            _tap(reader, ca)
    assert caught.value.reason is VerificationFailure.BAD_SIGNATURE


def test_a_revoked_card_is_refused(virtual_card: VirtualCardHandle, ca: CardCA) -> None:
    with virtual_card.reader() as reader:
        connection = reader.wait_for_card(timeout=10)
        assert connection is not None
        with connection:
            issued = provision_card(PivSession(connection), ca)
        with pytest.raises(CardVerificationError) as caught:
            _tap(reader, ca, revoked=frozenset({issued.guid}))
    assert caught.value.reason is VerificationFailure.REVOKED


def test_card_pulled_mid_command_raises_card_removed(
    virtual_card: VirtualCardHandle, ca: CardCA
) -> None:
    with virtual_card.reader() as reader:
        connection = reader.wait_for_card(timeout=10)
        assert connection is not None
        with connection:
            piv = PivSession(connection)
            provision_card(piv, ca)
            virtual_card.pull_during_next_command()
            with pytest.raises(CardRemovedError) as caught:
                read_card(piv)
        assert "removed" in str(caught.value)
        assert reader.wait_for_removal(timeout=10)


def test_wait_for_card_times_out_on_an_empty_reader(virtual_card: VirtualCardHandle) -> None:
    virtual_card.remove()
    with virtual_card.reader() as reader:
        assert reader.wait_for_removal(timeout=10)
        assert reader.wait_for_card(timeout=0.3) is None


def test_an_unknown_reader_name_raises_no_reader(pcscd: object) -> None:
    with PcscReader("No Such Reader 99") as reader, pytest.raises(NoReaderError):
        reader.wait_for_card(timeout=0.1)


def test_list_readers_shows_the_vpcd_readers(pcscd: object) -> None:
    assert vpcd_reader_name(vpcd_port()) in list_readers()


def _pcsc_probe(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    # PCSCLITE_CSOCK_NAME is honoured by the client library: a socket nobody listens on is a
    # pcscd that is not running, without touching the real one.
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_pcscd_not_running_says_how_to_start_it(tmp_path: Path) -> None:
    code = (
        "from cardsvc.pcsc import PcscReader, list_readers\n"
        "from cardsvc.errors import PcscdUnavailableError\n"
        "for call in (list_readers, lambda: PcscReader().wait_for_card(timeout=0.1)):\n"
        "    try:\n"
        "        call()\n"
        "    except PcscdUnavailableError as exc:\n"
        "        print('unavailable:', exc)\n"
        "    else:\n"
        "        print('no error')\n"
    )
    result = _pcsc_probe(tmp_path, code)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert len(lines) == 2, result.stdout
    for line in lines:
        assert line.startswith(
            "unavailable: pcscd is not running: start it with `pcscd --foreground`"
        )


def test_pcscd_unavailable_from_a_fake_pcsc_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    from smartcard import scard

    from cardsvc import pcsc

    monkeypatch.setattr(
        pcsc.scard, "SCardEstablishContext", lambda scope: (scard.SCARD_E_NO_SERVICE, 0)
    )
    with pytest.raises(PcscdUnavailableError, match="pcscd --foreground"):
        list_readers()


def _start_card_sim(state: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cardsvc.vpcd",
            "--state",
            str(state),
            "--port",
            str(vpcd_port()),
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.match(r"card-sim ready: control (\S+),", line)
    if match is None:
        process.kill()
        process.wait()
        process.stdout.close()
        pytest.fail(f"card-sim did not start: {line!r}")
    return process, match.group(1)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_card_sim_process_is_tapped_through_its_control_channel(
    pcscd: object, ca: CardCA, tmp_path: Path
) -> None:
    state = tmp_path / "card.json"
    reader_name = vpcd_reader_name(vpcd_port())
    process, control = _start_card_sim(state, "--control", str(tmp_path / "control.sock"))
    try:
        assert send_control(control, "status").startswith("ok removed")
        assert send_control(control, "insert") == "ok inserted"
        with PcscReader(reader_name) as reader:
            connection = reader.wait_for_card(timeout=10)
            assert connection is not None
            with connection:
                issued = provision_card(PivSession(connection), ca)
            # Another card into the same reader, without restarting anything.
            other = tmp_path / "Other Card.json"
            assert send_control(control, f"swap {other}") == f"ok inserted {other}"
            connection = reader.wait_for_card(timeout=10)
            assert connection is not None
            with connection, pytest.raises(NotFoundError):
                read_card(PivSession(connection))  # a blank card: not the one just issued
            assert send_control(control, f"swap {state}").startswith("ok inserted")
            assert send_control(control, "remove") == "ok removed"
            assert reader.wait_for_removal(timeout=10)
            assert send_control(control, "bogus").startswith("error")
    finally:
        _stop(process)
    # A new process with the same state file is the same card: same GUID, same key.
    process, control = _start_card_sim(state, "--inserted", "--control", "127.0.0.1:0")
    try:
        assert send_control(control, "status").startswith("ok inserted")
        with PcscReader(reader_name) as reader:
            guid, _ = _tap(reader, ca, now=datetime.now(UTC))
        assert guid == issued.guid
    finally:
        _stop(process)


def test_two_connections_never_interleave(virtual_card: VirtualCardHandle) -> None:
    """The second process-like user of the card gets it only after the first one let go."""
    import threading

    events: list[str] = []
    first_reader, second_reader = virtual_card.reader(), virtual_card.reader()
    first = first_reader.wait_for_card(timeout=10)
    assert first is not None
    got_second = threading.Event()

    def second_user() -> None:
        connection = second_reader.wait_for_card(timeout=30)
        events.append("second acquired")
        got_second.set()
        if connection is not None:
            PivSession(connection).select()
            connection.close()

    thread = threading.Thread(target=second_user)
    thread.start()
    try:
        piv = PivSession(first)
        for _ in range(20):
            piv.get_version()
        got_second.wait(0.5)  # gives the second user every chance to cut in
        events.append("first released")
        first.close()
        thread.join(30)
    finally:
        first.close()
        first_reader.close()
        second_reader.close()
    assert events == ["first released", "second acquired"]


def test_a_reader_survives_a_pcscd_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """After pcscd restarts, the old context is dead: the reader establishes a new one."""
    from smartcard import scard

    from cardsvc import pcsc

    contexts = iter([101, 202])
    released: list[int] = []
    calls: list[int] = []

    def establish(scope: int) -> tuple[int, int]:
        return scard.SCARD_S_SUCCESS, next(contexts)

    def list_readers_(context: int, groups: list[str]) -> tuple[int, list[str]]:
        calls.append(context)
        if context == 101:
            return scard.SCARD_E_SERVICE_STOPPED, []
        return scard.SCARD_S_SUCCESS, ["Reader A"]

    monkeypatch.setattr(pcsc.scard, "SCardEstablishContext", establish)
    monkeypatch.setattr(pcsc.scard, "SCardListReaders", list_readers_)
    monkeypatch.setattr(pcsc.scard, "SCardReleaseContext", released.append)
    assert list_readers() == ["Reader A"]
    assert calls == [101, 202] and released == [101, 202]
