"""`onecard card`: the technician's card commands.

`provision` is how a technician issues a card (issue 3, item 4), one card or `--batch` for a
stack, with the city card CA and the management-key master secret on the server side
(server.services.provisioning):

1. the card generates its 9E key (GENERATE ASYMMETRIC KEY PAIR, P-256);
2. the public key goes to the server, whose city card CA signs the certificate and the CHUID,
   and which answers this card's diversified management key and PUK;
3. the certificate and the CHUID are written;
4. the holder's PIN is set (with the card's new PUK: RESET RETRY COUNTER sets it whatever it was);
5. the default management key is replaced by the card's diversified one;
6. the issuance is recorded at the server for the resident (`POST /api/v1/cards`).

Steps 4 and 5 of the issue's list are swapped on purpose: the management key is the last thing
changed on the card, so it tells a later run how far an interrupted one got (default key: no
further than the PIN; diversified key: the card is complete, only the record may be missing).
Nothing is recorded before step 6, so a card pulled midway is never an issued card; presenting
it again restarts it cleanly: a new key, certified again under the GUID it already carries, if
any. A card already recorded is left alone (renew it, or replace it with a new one).

`provision --staff --user NAME` (an administrator's token) issues a staff card the same way:
the card also makes its PIN-bound 9A key, the server certifies both with the city CA's staff
issuer (`POST /api/v1/staff-cards/certificates`), and the last step links the card to the staff
user by its 9A certificate (`POST /api/v1/staff-cards`) instead of recording a resident's card.

`revoke`, `replace` (a new card for the same resident: the server marks the old card replaced,
and the allowance, kept per person, carries over), `renew` (a new certificate and CHUID with a
new expiry for the key on the card) and `unblock-pin` (the PUK, fetched for this card from the
server, resets the holder's PIN) complete the lifecycle. `issue-demo` is the demo's shortcut with
a local CA and no card secrets.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests

from cardsvc.ca import CardCA
from cardsvc.errors import (
    AuthenticationError,
    CardError,
    CardRemovedError,
    NotFoundError,
)
from cardsvc.pcsc import PcscReader
from cardsvc.piv import DEFAULT_MANAGEMENT_KEY, ManagementKeyType, ObjectId, PivSession
from cardsvc.profile import Chuid
from cardsvc.provision import (
    ProvisionedCard,
    finish_card,
    generate_keys,
    provision_card,
    spki,
)

REVOKE_REASONS = ("lost", "stolen")


class IssueError(RuntimeError):
    """The card could not be issued; the message says why."""


def load_or_create_ca(directory: Path) -> CardCA:
    if (directory / "ca-cert.pem").exists() or any(directory.glob("*.pem")):
        return CardCA.load(directory)
    return CardCA.create(directory)


def issue_card(
    reader: PcscReader,
    ca: CardCA,
    server_url: str,
    token: str,
    resident_id: int | str,
    *,
    timeout: float = 10.0,
) -> ProvisionedCard:
    """Provision the card on `reader` and record it at the server. Nothing is recorded for a
    card that was pulled before it was complete."""
    connection = reader.wait_for_card(timeout=timeout)
    if connection is None:
        raise IssueError(
            f"no card appeared in reader {reader.name or '(any)'} within {timeout:.0f} s"
        )
    with connection:
        issued = provision_card(PivSession(connection), ca)
    response = requests.post(
        server_url.rstrip("/") + "/api/v1/cards",
        json={
            "resident_id": resident_id,
            "certificate": base64.b64encode(issued.certificate_der).decode(),
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )
    if response.status_code != 201:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise IssueError(f"the server did not record the card ({response.status_code}): {detail}")
    return issued


# --- the technician's link to the server --------------------------------------------------------


class ServerRefusal(IssueError):
    """The server answered with a problem; `code` is its stable code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"the server refused ({status} {code}): {detail}")
        self.status = status
        self.code = code


class TechnicianClient:
    """The technician calls of /api/v1 (bearer token)."""

    def __init__(
        self,
        server_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        server_ca: Path | None = None,
    ) -> None:
        self.base = server_url.rstrip("/") + "/api/v1"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout
        # HTTPS: the server's certificate is checked against this CA file, else the system's.
        self._verify: str | bool = str(server_ca) if server_ca is not None else True

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = requests.request(
                method,
                self.base + path,
                json=body,
                headers=self._headers,
                timeout=self._timeout,
                verify=self._verify,
            )
        except requests.RequestException as exc:
            raise IssueError(f"the server at {self.base} did not answer: {exc}") from exc
        try:
            doc = response.json()
        except ValueError:
            doc = {}
        if response.status_code >= 400:
            raise ServerRefusal(
                response.status_code,
                str(doc.get("code", response.status_code)),
                str(doc.get("detail") or doc.get("title") or response.reason),
            )
        return doc

    def certify(self, resident_id: int, public_key_der: bytes, guid: bytes | None) -> Any:
        body: dict[str, Any] = {
            "resident_id": resident_id,
            "public_key": base64.b64encode(public_key_der).decode(),
        }
        if guid is not None:
            body["card_guid"] = guid.hex()
        return self._call("POST", "/cards/certificates", body)

    def secrets(self, guid: bytes, purpose: str) -> Any:
        return self._call("POST", f"/cards/{guid.hex()}/secrets", {"purpose": purpose})

    def record(self, resident_id: int, certificate_der: bytes) -> Any:
        body = {
            "resident_id": resident_id,
            "certificate": base64.b64encode(certificate_der).decode(),
        }
        return self._call("POST", "/cards", body)

    def card(self, guid_hex: str) -> Any:
        return self._call("GET", f"/cards/{guid_hex}")

    def revoke(self, guid_hex: str, reason: str) -> Any:
        return self._call("POST", f"/cards/{guid_hex}/revoke", {"reason": reason})

    def renew(self, guid: bytes) -> Any:
        return self._call("POST", f"/cards/{guid.hex()}/renew", {})

    def staff_card(self, guid_hex: str) -> Any:
        return self._call("GET", f"/staff-cards/{guid_hex}")

    def certify_staff(
        self, user_name: str, public_key_der: bytes, sign_in_key_der: bytes, guid: bytes | None
    ) -> Any:
        body: dict[str, Any] = {
            "user_name": user_name,
            "public_key": base64.b64encode(public_key_der).decode(),
            "sign_in_public_key": base64.b64encode(sign_in_key_der).decode(),
        }
        if guid is not None:
            body["card_guid"] = guid.hex()
        return self._call("POST", "/staff-cards/certificates", body)

    def link_staff(self, user_name: str, sign_in_certificate_der: bytes) -> Any:
        body = {
            "user_name": user_name,
            "certificate": base64.b64encode(sign_in_certificate_der).decode(),
        }
        return self._call("POST", "/staff-cards", body)


# --- provisioning one card ---------------------------------------------------------------------


@dataclass(frozen=True)
class Provisioned:
    guid: str
    resident_id: int
    expiry: str
    pin: str
    resumed: bool  # the card carried a GUID from an earlier, interrupted run


class AlreadyIssuedError(IssueError):
    """The card on the reader is already recorded as issued."""


def _card_guid(piv: PivSession) -> bytes | None:
    try:
        return Chuid.parse(piv.get_object(ObjectId.CHUID)).guid
    except NotFoundError:
        return None


def _open_management(piv: PivSession, tech: TechnicianClient) -> tuple[bytes | None, bool]:
    """Authenticate with the card's management key: (its GUID if it has one, default key?)."""
    try:
        piv.authenticate(DEFAULT_MANAGEMENT_KEY, ManagementKeyType.TDES)
        return _card_guid(piv), True
    except AuthenticationError:
        pass
    guid = _card_guid(piv)
    if guid is None:
        raise IssueError("this card has a management key of its own and no CHUID: not ours")
    keys = tech.secrets(guid, "provision")
    piv.authenticate(base64.b64decode(keys["management_key"]), ManagementKeyType.AES128)
    return guid, False


class Holder(Protocol):
    """Whom a card is issued to: the server calls that differ between a resident's card and a
    staff user's (`--staff`); the steps on the card are the same."""

    @property
    def staff(self) -> bool: ...

    def issued_to(self, tech: TechnicianClient, guid: bytes) -> str | None: ...

    def certify(
        self, tech: TechnicianClient, keys: tuple[bytes, bytes | None], guid: bytes | None
    ) -> Any: ...

    def record(self, tech: TechnicianClient, answer: Any) -> None: ...


@dataclass(frozen=True)
class ResidentHolder:
    resident_id: int
    staff: bool = False

    def issued_to(self, tech: TechnicianClient, guid: bytes) -> str | None:
        try:
            known = tech.card(guid.hex())
        except ServerRefusal as exc:
            if exc.code != "card_unknown":
                raise
            return None
        return f"resident {known['resident_id']} ({known['status']})"

    def certify(
        self, tech: TechnicianClient, keys: tuple[bytes, bytes | None], guid: bytes | None
    ) -> Any:
        return tech.certify(self.resident_id, keys[0], guid)

    def record(self, tech: TechnicianClient, answer: Any) -> None:
        tech.record(self.resident_id, base64.b64decode(answer["certificate"]))


@dataclass(frozen=True)
class StaffHolder:
    """A staff card for user `name`: a PIN-bound 9A key besides 9E, certified by the city CA's
    staff issuer; linked to the user (by its 9A certificate) as the last step."""

    name: str
    staff: bool = True

    def issued_to(self, tech: TechnicianClient, guid: bytes) -> str | None:
        try:
            known = tech.staff_card(guid.hex())
        except ServerRefusal as exc:
            if exc.code != "card_unknown":
                raise
            return None
        return f"a {known['holder']} card ({known['status']})"

    def certify(
        self, tech: TechnicianClient, keys: tuple[bytes, bytes | None], guid: bytes | None
    ) -> Any:
        assert keys[1] is not None
        return tech.certify_staff(self.name, keys[0], keys[1], guid)

    def record(self, tech: TechnicianClient, answer: Any) -> None:
        tech.link_staff(self.name, base64.b64decode(answer["sign_in_certificate"]))


def provision_one(
    piv: PivSession,
    tech: TechnicianClient,
    holder: int | Holder,
    *,
    pin: str | None = None,
    step: Callable[[str], None] = lambda _: None,
) -> Provisioned:
    """The six steps on the card behind `piv` (see the module docstring), for a resident (their
    id) or a staff user (`StaffHolder`)."""
    who: Holder = ResidentHolder(holder) if isinstance(holder, int) else holder
    pin = pin or f"{secrets.randbelow(1_000_000):06d}"
    piv.select()
    guid, default_management = _open_management(piv, tech)
    if guid is not None:
        known = who.issued_to(tech, guid)
        if known is not None:
            raise AlreadyIssuedError(f"card {guid.hex()} is already issued to {known}")
    step("generate key")
    public_key, sign_in_key = generate_keys(piv, sign_in=who.staff)
    step("certify")
    answer = who.certify(tech, (spki(public_key), spki(sign_in_key) if sign_in_key else None), guid)
    finish_card(
        piv,
        base64.b64decode(answer["certificate"]),
        base64.b64decode(answer["chuid"]),
        puk=answer["puk"],
        pin=pin,
        management_key=(ManagementKeyType.AES128, base64.b64decode(answer["management_key"])),
        default_management=default_management,
        sign_in_certificate_der=(
            base64.b64decode(answer["sign_in_certificate"]) if who.staff else None
        ),
        step=step,
    )
    step("record issuance")
    who.record(tech, answer)
    return Provisioned(
        answer["card_guid"],
        who.resident_id if isinstance(who, ResidentHolder) else 0,
        answer["expiry"],
        pin,
        guid is not None,
    )


# --- batches -------------------------------------------------------------------------------------


def progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


@dataclass
class BatchReport:
    issued: list[Provisioned] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    interrupted: int = 0

    def summary(self) -> str:
        lines = [
            f"summary: {len(self.issued)} issued, {len(self.failed)} failed, "
            f"{self.interrupted} interrupted and presented again"
        ]
        lines += [
            f"  resident {p.resident_id:>6}  card {p.guid}  expires {p.expiry}  PIN {p.pin}"
            + ("  (resumed)" if p.resumed else "")
            for p in self.issued
        ]
        lines += [f"  resident {r:>6}  FAILED: {why}" for r, why in self.failed]
        return "\n".join(lines)


def provision_batch(
    reader: PcscReader,
    tech: TechnicianClient,
    residents: Sequence[int],
    *,
    pin: str | None = None,
    say: Callable[[str], None] = print,
    card_timeout: float = 120.0,
    tries: int = 3,
) -> BatchReport:
    """One card per resident, presented one after another; a card pulled midway is asked for
    again (up to `tries` times). Progress is plain lines, so it reads the same without a TTY."""
    report = BatchReport()
    total = len(residents)
    for index, resident_id in enumerate(residents):
        for attempt in range(1, tries + 1):
            say(f"{progress_bar(index, total)}  present the card for resident {resident_id}")
            connection = reader.wait_for_card(timeout=card_timeout)
            if connection is None:
                report.failed.append((resident_id, "no card was presented"))
                break
            try:
                with connection:
                    done = provision_one(
                        PivSession(connection),
                        tech,
                        resident_id,
                        pin=pin,
                        step=_step_reporter(say, resident_id),
                    )
            except CardRemovedError:
                report.interrupted += 1
                say(f"    resident {resident_id}: the card was pulled midway; nothing recorded")
                if attempt == tries:
                    report.failed.append((resident_id, "the card was pulled midway"))
                else:
                    _wait_removed(reader, say)
                continue
            except (CardError, IssueError) as exc:
                report.failed.append((resident_id, str(exc)))
                say(f"    resident {resident_id}: failed: {exc}")
            else:
                report.issued.append(done)
                say(f"{progress_bar(index + 1, total)}  card {done.guid} issued")
            if index + 1 < total:
                _wait_removed(reader, say)
            break
    say(report.summary())
    return report


def _step_reporter(say: Callable[[str], None], resident_id: int) -> Callable[[str], None]:
    return lambda name: say(f"    resident {resident_id}: {name}")


def _wait_removed(reader: PcscReader, say: Callable[[str], None]) -> None:
    say("    remove the card")
    while not reader.wait_for_removal(timeout=5.0):
        pass


# --- the rest of the lifecycle --------------------------------------------------------------------


def renew_on_card(piv: PivSession, tech: TechnicianClient) -> dict[str, Any]:
    """A new certificate and CHUID (new expiry) for the card's own key, written on the card."""
    piv.select()
    guid = _card_guid(piv)
    if guid is None:
        raise IssueError("this card has no CHUID: provision it instead")
    answer = tech.renew(guid)
    piv.authenticate(base64.b64decode(answer["management_key"]), ManagementKeyType.AES128)
    finish_card(piv, base64.b64decode(answer["certificate"]), base64.b64decode(answer["chuid"]))
    return dict(answer)


def unblock_pin_on_card(piv: PivSession, tech: TechnicianClient, new_pin: str) -> str:
    """Reset the holder's PIN with the card's PUK (from the server); returns the card GUID."""
    piv.select()
    guid = _card_guid(piv)
    if guid is None:
        raise IssueError("this card has no CHUID: it was never provisioned")
    keys = tech.secrets(guid, "unblock-pin")
    piv.unblock_pin(keys["puk"], new_pin)
    return guid.hex()


def _on_reader(reader: PcscReader, timeout: float, work: Callable[[PivSession], Any]) -> Any:
    connection = reader.wait_for_card(timeout=timeout)
    if connection is None:
        raise IssueError(
            f"no card appeared in reader {reader.name or '(any)'} within {timeout:.0f} s"
        )
    with connection:
        return work(PivSession(connection))


CARD_ENVIRONMENT = """environment (each sets the option's default):
  ONECARD_SERVER_URL  --server
  ONECARD_SERVER_CA   --server-ca
  ONECARD_TOKEN       --token"""


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=env("ONECARD_SERVER_URL", "http://127.0.0.1:8080"),
        help="the server's base URL (env ONECARD_SERVER_URL)",
    )
    common.add_argument(
        "--server-ca",
        type=Path,
        default=env("ONECARD_SERVER_CA"),
        help="CA certificate (PEM) that signed the server's TLS certificate "
        "(env ONECARD_SERVER_CA; default: the system's trust store)",
    )
    common.add_argument(
        "--token",
        default=env("ONECARD_TOKEN"),
        required=not env("ONECARD_TOKEN"),
        help="the technician's bearer token (env ONECARD_TOKEN)",
    )
    common.add_argument("--reader", default=None, help="PC/SC reader name (default: any)")
    common.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a card")
    parser = argparse.ArgumentParser(prog="onecard card", description="Technician card commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    issue = sub.add_parser(
        "issue-demo", parents=[common], help="the demo's shortcut: a local CA, no card secrets"
    )
    issue.add_argument(
        "--ca-dir", type=Path, default=Path("var/ca"), help="the demo's local card CA directory"
    )
    issue.add_argument("--resident-id", required=True, help="the holder's resident id")
    prov = sub.add_parser("provision", parents=[common], help="issue the card(s) on the reader")
    prov.add_argument(
        "--resident-id",
        type=int,
        action="append",
        help="the holder; repeat it with --batch, one per card, in order",
    )
    prov.add_argument("--batch", action="store_true", help="a stack of cards, one per resident")
    prov.add_argument(
        "--staff",
        action="store_true",
        help="a staff card (PIN-bound sign-in key) for --user; an administrator's token",
    )
    prov.add_argument("--user", default=None, help="with --staff: the staff user's name")
    prov.add_argument("--pin", default=None, help="the holder's PIN (default: a random one)")
    revoke = sub.add_parser("revoke", parents=[common], help="a card reported lost or stolen")
    revoke.add_argument("guid", help="the card's GUID (32 hex digits)")
    revoke.add_argument(
        "--reason", choices=REVOKE_REASONS, required=True, help="why the card is revoked"
    )
    replace = sub.add_parser(
        "replace", parents=[common], help="a new card on the reader for the holder of GUID"
    )
    replace.add_argument("guid", help="the old card's GUID (32 hex digits)")
    replace.add_argument(
        "--reason",
        choices=REVOKE_REASONS,
        default=None,
        help="revoke the old card first for this reason",
    )
    replace.add_argument(
        "--pin", default=None, help="the holder's PIN on the new card (default: a random one)"
    )
    sub.add_parser("renew", parents=[common], help="a new expiry for the card on the reader")
    unblock = sub.add_parser(
        "unblock-pin", parents=[common], help="reset the holder's PIN with the card's PUK"
    )
    unblock.add_argument("--new-pin", required=True, help="the holder's new PIN")
    for command in sub.choices.values():
        command.epilog = CARD_ENVIRONMENT
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    reader = PcscReader(args.reader)
    tech = TechnicianClient(args.server, args.token, server_ca=args.server_ca)
    try:
        if args.command == "issue-demo":
            ca = load_or_create_ca(args.ca_dir)
            issued = issue_card(reader, ca, args.server, args.token, args.resident_id)
            print(f"issued card {issued.guid.hex()} to resident {args.resident_id}")
        elif args.command == "provision" and args.staff:
            if args.user is None or args.resident_id or args.batch:
                parser.error("--staff takes --user NAME, without --resident-id or --batch")
            done = _on_reader(
                reader,
                args.timeout,
                lambda piv: provision_one(
                    piv,
                    tech,
                    StaffHolder(args.user),
                    pin=args.pin,
                    step=lambda n: print(f"  {n}", flush=True),
                ),
            )
            print(
                f"issued staff card {done.guid} to user {args.user}, expires {done.expiry}, "
                f"PIN {done.pin}"
            )
        elif args.command == "provision" and args.batch:
            if not args.resident_id:
                parser.error("--batch takes --resident-id once per card")
            report = provision_batch(
                reader,
                tech,
                args.resident_id,
                pin=args.pin,
                say=lambda line: print(line, flush=True),
                card_timeout=args.timeout,
            )
            return 0 if not report.failed else 1
        elif args.command in ("provision", "replace"):
            if args.command == "replace":
                old = tech.card(args.guid)
                if args.reason:
                    tech.revoke(args.guid, args.reason)
                resident_id = int(old["resident_id"])
            else:
                if len(args.resident_id or ()) != 1:
                    parser.error("one --resident-id without --batch")
                resident_id = args.resident_id[0]
            done = _on_reader(
                reader,
                args.timeout,
                lambda piv: provision_one(
                    piv, tech, resident_id, pin=args.pin, step=lambda n: print(f"  {n}", flush=True)
                ),
            )
            print(
                f"issued card {done.guid} to resident {resident_id}, expires {done.expiry}, "
                f"PIN {done.pin}"
            )
        elif args.command == "revoke":
            answer = tech.revoke(args.guid, args.reason)
            print(f"card {answer['card_guid']} is {answer['status']}")
        elif args.command == "renew":
            answer = _on_reader(reader, args.timeout, lambda piv: renew_on_card(piv, tech))
            print(f"card {answer['card_guid']} renewed, expires {answer['expiry']}")
        elif args.command == "unblock-pin":
            guid = _on_reader(
                reader, args.timeout, lambda piv: unblock_pin_on_card(piv, tech, args.new_pin)
            )
            print(f"card {guid}: PIN reset")
    except (CardError, IssueError, requests.RequestException, OSError) as exc:
        print(f"onecard card: {exc}", file=sys.stderr)
        return 1
    finally:
        reader.close()
    return 0
