"""Alert delivery: e-mail by SMTP, and an HMAC-signed webhook POST for the city's SMS gateway.

The only module of the alerts that touches the network. Settings come from the server's
configuration (environment):

| variable | meaning |
|---|---|
| `ONECARD_SMTP_HOST`, `ONECARD_SMTP_PORT` | the mail relay (no host: no e-mail) |
| `ONECARD_SMTP_FROM` | the sender address (default `onecard@localhost`) |
| `ONECARD_SMTP_USER`, `ONECARD_SMTP_PASSWORD` | login, when the relay wants one |
| `ONECARD_SMTP_STARTTLS` | `1`: STARTTLS before login |
| `ONECARD_ALERT_WEBHOOK_URL` | the gateway's URL (none: no webhook) |
| `ONECARD_ALERT_WEBHOOK_SECRET` | the shared HMAC key |

The webhook's body is JSON; `X-OneCard-Timestamp` is the Unix time of sending and
`X-OneCard-Signature` is `sha256=` + hex HMAC-SHA256 over `<timestamp>.<body>` with the shared
secret, so the gateway can refuse a forged or replayed message (`verify_signature`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import requests

TIMEOUT_S = 10.0


class DeliveryError(Exception):
    """A message that could not be handed over; the text goes in the delivery's row."""


@dataclass(frozen=True)
class NotifySettings:
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "onecard@localhost"
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    webhook_url: str | None = None
    webhook_secret: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NotifySettings:
        def get(name: str) -> str | None:
            value = config.get(name)
            return None if value in (None, "") else str(value)

        return cls(
            smtp_host=get("ONECARD_SMTP_HOST"),
            smtp_port=int(get("ONECARD_SMTP_PORT") or 25),
            smtp_from=get("ONECARD_SMTP_FROM") or "onecard@localhost",
            smtp_user=get("ONECARD_SMTP_USER"),
            smtp_password=get("ONECARD_SMTP_PASSWORD"),
            smtp_starttls=get("ONECARD_SMTP_STARTTLS") == "1",
            webhook_url=get("ONECARD_ALERT_WEBHOOK_URL"),
            webhook_secret=get("ONECARD_ALERT_WEBHOOK_SECRET"),
        )


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str, timestamp: str, body: bytes, signature: str, *, now: float, max_age_s: int = 300
) -> bool:
    """What a receiver checks: the signature, and that the message is fresh."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > max_age_s:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)


class Notifier:
    """Sends one message; raises DeliveryError when the other end does not take it."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings

    @property
    def channels(self) -> tuple[str, ...]:
        found = []
        if self.settings.smtp_host:
            found.append("email")
        if self.settings.webhook_url and self.settings.webhook_secret:
            found.append("webhook")
        return tuple(found)

    def email(self, to: str, subject: str, text: str) -> None:
        s = self.settings
        if not s.smtp_host:
            raise DeliveryError("no SMTP host configured")
        message = EmailMessage()
        message["From"] = s.smtp_from
        message["To"] = to
        message["Subject"] = subject
        message.set_content(text)
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=TIMEOUT_S) as smtp:
                if s.smtp_starttls:
                    smtp.starttls()
                if s.smtp_user:
                    smtp.login(s.smtp_user, s.smtp_password or "")
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP: {exc}") from exc

    def webhook(self, payload: Mapping[str, Any]) -> None:
        s = self.settings
        if not (s.webhook_url and s.webhook_secret):
            raise DeliveryError("no webhook configured")
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        timestamp = int(time.time())
        try:
            response = requests.post(
                s.webhook_url,
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-OneCard-Timestamp": str(timestamp),
                    "X-OneCard-Signature": sign(s.webhook_secret, timestamp, body),
                },
                timeout=TIMEOUT_S,
            )
        except requests.RequestException as exc:
            raise DeliveryError(f"webhook: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"webhook answered {response.status_code}")
