"""`onecard card`: the technician's card commands.

`issue-demo` issues a card on the reader: it creates the city card CA if there is none yet, has
the card generate its 9E key, writes the certificate and the CHUID, and records the card at the
server for a resident. (Issue 3 grows this into full provisioning with a diversified management
key and the holder's PIN.)
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

import requests

from cardsvc.ca import CardCA
from cardsvc.errors import CardError
from cardsvc.pcsc import PcscReader
from cardsvc.piv import PivSession
from cardsvc.provision import ProvisionedCard, provision_card


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onecard card", description="Technician card commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    issue = sub.add_parser("issue-demo", help="issue the card on the reader to a resident")
    issue.add_argument("--ca-dir", type=Path, default=Path("var/ca"))
    issue.add_argument("--reader", default=None, help="PC/SC reader name (default: any)")
    issue.add_argument(
        "--server", default=os.environ.get("ONECARD_SERVER_URL", "http://127.0.0.1:8080")
    )
    issue.add_argument(
        "--token",
        default=os.environ.get("ONECARD_TOKEN"),
        required="ONECARD_TOKEN" not in os.environ,
    )
    issue.add_argument("--resident-id", required=True)
    args = parser.parse_args(argv)
    try:
        ca = load_or_create_ca(args.ca_dir)
        issued = issue_card(PcscReader(args.reader), ca, args.server, args.token, args.resident_id)
    except (CardError, IssueError, requests.RequestException, OSError) as exc:
        print(f"onecard card: {exc}", file=sys.stderr)
        return 1
    print(f"issued card {issued.guid.hex()} to resident {args.resident_id}")
    return 0
