"""Business operations of the server. Each takes a SQLAlchemy session (and a Context where it
needs keys, the clock or the time zone) and leaves committing to the caller, except the
administrative helpers (`seed_demo`, `add_kiosk`, `add_station`, `create_user`), which the CLI and
the demo call directly and which commit.

The operations live in modules by surface; this package re-exports what the rest of the server,
the CLI, the demo, the benchmarks and the tests call as `services.<name>`:

- `context`: Context (keys, the CA, the clock, the time zone), the TTL cache, Core helpers;
- `devices`: signed kiosk/station requests, nonces, idempotent answers, pruning;
- `dispensing`: authorize, capture, void, offline sync, taps, rules and usage (the hot path,
  over server.store.ledger; its concurrency notes are in its docstring);
- `kiosks`: kiosk and station registration, the signed kiosk configuration, telemetry;
- `stations`: exam eligibility and records, couples, appointments;
- `people`: residents, cards, staff users, regional scope;
- `reports`: the monthly report with small counts suppressed;
- `seeding`: demo city, catalogue and exam programmes (server.demo readies a whole demo server).

Submodules import each other directly (`from server.services.context import Context`), never
this package, so there is no import cycle.
"""

from __future__ import annotations

from server.errors import ApiError
from server.services.appointments import book_appointment, cancel_appointment, station_slots
from server.services.context import Context
from server.services.devices import (
    AuthenticatedDevice,
    SignedRequest,
    StoredAnswer,
    authenticate_kiosk,
    prune,
    prune_nonces,
    request_hash,
    run_idempotent,
    spend_nonce,
)
from server.services.dispensing import (
    DISPENSE_OUTCOMES,
    OfflineDispense,
    authorize,
    capture,
    create_rule,
    deactivate_rule,
    list_rules,
    open_reservations,
    retirable_rule_ids,
    sync_offline,
    void,
)
from server.services.kiosks import (
    TELEMETRY_KINDS,
    add_kiosk,
    add_station,
    kiosk_config,
    record_telemetry,
)
from server.services.people import (
    SEXES,
    enrol_resident,
    find_residents,
    in_scope,
    issue_card,
    revoke_card,
    subtree_ids,
)
from server.services.reports import SMALL_COUNT, monthly_report
from server.services.seeding import DemoSeed, seed_catalog, seed_demo
from server.services.staff_auth import authenticate_staff, require_role
from server.services.staff_auth import create_user_with_token as create_user
from server.services.stations import exam_eligibility, record_exam, register_couple

__all__ = [
    "DISPENSE_OUTCOMES",
    "SEXES",
    "SMALL_COUNT",
    "TELEMETRY_KINDS",
    "ApiError",
    "AuthenticatedDevice",
    "Context",
    "DemoSeed",
    "OfflineDispense",
    "SignedRequest",
    "StoredAnswer",
    "add_kiosk",
    "add_station",
    "authenticate_kiosk",
    "authenticate_staff",
    "authorize",
    "book_appointment",
    "cancel_appointment",
    "capture",
    "create_rule",
    "create_user",
    "deactivate_rule",
    "enrol_resident",
    "exam_eligibility",
    "find_residents",
    "in_scope",
    "issue_card",
    "kiosk_config",
    "list_rules",
    "monthly_report",
    "open_reservations",
    "prune",
    "prune_nonces",
    "record_exam",
    "record_telemetry",
    "retirable_rule_ids",
    "require_role",
    "register_couple",
    "request_hash",
    "revoke_card",
    "run_idempotent",
    "seed_catalog",
    "seed_demo",
    "spend_nonce",
    "station_slots",
    "subtree_ids",
    "sync_offline",
    "void",
]
