"""What every service shares: the Context (keys, the CA, the clock, the city's time zone), a
small TTL cache, and helpers for Core statements.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.store import ledger
from server.store.fieldcrypto import FieldCipher

RULES_TTL = 5.0


class TtlCache:
    """One value, refreshed when older than `ttl` seconds. Thread-safe enough: a race reloads twice."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._value: Any = None
        self._loaded_at = float("-inf")

    def get(self, now: float, load: Callable[[], Any]) -> Any:
        if not 0 <= now - self._loaded_at < self.ttl:
            self._value = load()
            self._loaded_at = now
        return self._value

    def clear(self) -> None:
        self._loaded_at = float("-inf")


@dataclass(frozen=True)
class Context:
    """What services need besides the session: keys, the CA, the clock, the city's time zone."""

    cipher: FieldCipher
    timezone: ZoneInfo
    card_ca_der: bytes | None
    clock_skew: int
    clock: Callable[[], float]
    server_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate, compare=False)
    rules_cache: TtlCache = field(default_factory=lambda: TtlCache(RULES_TTL), compare=False)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    def today(self, moment: dt.datetime | None = None) -> dt.date:
        return (moment or self.now()).astimezone(self.timezone).date()


_table = ledger.table_of
_connection = ledger.core_connection


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
