"""A screen session's snapshot as the page shows it, in the person's language. Pure.

The page (static/screen.js) is a thin view: it writes these texts with `textContent` and sends
actions back; every word comes from here (the catalogue, kiosk.screen.words), so the screen and
the kiosk's log say the same things, and switching the language re-renders the same snapshot.

`say` is what speech reads aloud for this screen (kiosk.screen.speech).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from kiosk.screen.words import HTML_LANG, LANGUAGES, N_, Phrase, Words
from kiosk.session import Screen, Snapshot

TITLE = N_("OneCard free contraceptives")

UI = {
    "speech_on": N_("Speak to me"),
    "speech_off": N_("Stop speaking"),
    "more_time": N_("More time"),
    "cancel": N_("Cancel"),
    "finish": N_("Finish"),
    "take": N_("Take this"),
    "out_of_stock": N_("Out of stock"),
    "in_stock": N_("In stock: {count}"),
    "not_for_you": N_("Not available now"),
    "seconds_left": N_("{seconds} seconds left"),
    "warn": N_("The screen will go back to the start soon. Touch More time to continue."),
    "privacy": N_("Nothing about you is shown or kept on this machine."),
    "language_label": N_("Language"),
    "enter": N_("Enter"),
    "clear": N_("Clear"),
    "pin_label": N_("PIN"),
}

IDLE_LINES = [
    N_("Free of charge, for residents with a OneCard."),
    N_("Tap your card on the reader to start."),
]
RECOVERED = N_(
    "The machine finished a transaction that was interrupted. Nobody was charged for an item "
    "that did not fall."
)
RECOVERING = N_("The machine is finishing an earlier transaction. One moment please.")

CHECK_STEPS = {
    "read card": N_("Reading your card"),
    "card proves": N_("Your card proves it is genuine"),
    "verify offline": N_("Checking your card"),
    "entitlements": N_("Looking up what you may take"),
}
CHECKING = N_("Checking your card. Please keep it on the reader.")

CHOOSE = N_("Choose an item")
LEFT = N_("You may take {left} more this period.")
NONE_LEFT = N_("None left this period. You can take more from {date}.")
NONE_LEFT_NO_DATE = N_("None left this period.")
NOT_ELIGIBLE = N_("Not available with this card.")
OFFLINE_CHOICE = N_(
    "The service cannot be reached: this machine may give a small amount without it. It counts "
    "towards your allowance later."
)

DISPENSE_STEPS = {
    "start": N_("Starting"),
    "card proves": N_("Your card proves it is genuine"),
    "authorize": N_("Approving"),
    "offline rules": N_("Approving (offline)"),
    "dispense": N_("The machine is dispensing"),
    "settle": N_("Confirming"),
}
DISPENSING = N_("Dispensing {name}. Please wait.")
LEFT_AFTER = N_("You may take {left} more this period.")

REFUSED_TITLE = N_("Not possible now")
REFUSAL = {
    "limit_reached": N_("You have received this period's free allowance for this item."),
    "card_revoked": N_("This card has been reported lost or is no longer valid."),
    "card_unknown": N_("This card is not registered."),
    "not_eligible": N_("This item is not available with this card."),
    "expired": N_("This card has expired."),
    "not_yet_valid": N_("This card is not valid yet."),
    "revoked": N_("This card has been reported lost or is no longer valid."),
    "staff_card": N_("This is a staff card."),
    "wrong_pin": N_("Wrong PIN."),
    "pin_blocked": N_("The PIN of this card is blocked."),
}
REFUSED_OTHER = N_("This card cannot be used here now.")
ASK_STATION = N_("Please ask at a service station.")
MORE_FROM = N_("You can take more from {date}.")

FAULT_TITLE = N_("Sorry")
FAULTS = {
    "empty": N_("This item has run out."),
    "jammed": N_("The machine jammed."),
    "motor_fault": N_("The machine has a fault."),
    "no_drop": N_("No item fell."),
    "board_silent": N_("The machine did not answer."),
    "server_unreachable": N_("The service cannot be reached right now. Please try again later."),
    "card_pulled": N_("The card was taken away too soon."),
    "not_ready": N_("This machine is not ready yet. Please try again later."),
    "unsettled": N_("The machine could not finish."),
}
NOT_CHARGED = N_("You were not charged: nothing was taken from your allowance.")
MAYBE_CHARGED = N_("If no item came out, nothing will be taken from your allowance.")

TAKE_TITLE = N_("Please take your item")
TAKE_LINE = N_("Please take {name} from the tray.")
SERVED_OFFLINE = N_("Served offline: it counts towards your allowance later.")

REMOVE = N_("Please take your card.")
REMINDER = N_("Your card is still on the reader. Please take it with you.")

STAFF_PIN = N_("Staff card: enter your PIN")
PIN_WRONG = N_("Wrong PIN: {tries} tries left.")
MAINTENANCE = N_("Maintenance")
COLUMNS = (N_("Slot"), N_("Product"), N_("Stock"), N_("Capacity"), N_("Actions"))
REFILL = N_("Refill to full")
TEST_DISPENSE = N_("Test dispense")
CLEAR_FAULTS = N_("Clear faults")
DOOR_OPEN = N_("Door open")
DOOR_CLOSED = N_("Door closed")
BOARD_FAULTS = N_("Board faults: {faults}")
NO_FAULTS = N_("No board faults")
BOARD_SILENT = N_("The board did not answer: {error}")

# Faults whose outcome the kiosk knows: nothing fell, nothing charged.
_NOT_CHARGED = frozenset(
    {"empty", "jammed", "motor_fault", "no_drop", "card_pulled", "server_unreachable"}
)


def render(snapshot: Snapshot, words: Words) -> dict[str, Any]:
    """The page's document for `snapshot` in its language."""
    lang = words.language(snapshot.language)
    t = _Texts(words, lang)
    view = snapshot.view
    doc: dict[str, Any] = {
        "seq": snapshot.seq,
        "screen": str(snapshot.screen),
        "lang": lang,
        "html_lang": HTML_LANG[lang],
        "languages": list(LANGUAGES),
        "speech": snapshot.speech,
        "title": t(TITLE),
        "heading": "",
        "lines": [],
        "steps": [],
        "categories": [],
        "buttons": [],
        "timer": None,
        "ui": {k: t(v) for k, v in UI.items() if "{" not in v},
        "maintenance": None,
        "seen_ms": view.get(
            "seen_ms"
        ),  # when the kiosk saw the card (Unix ms): the benchmark's start
    }
    if snapshot.seconds_left is not None and snapshot.extendable:
        doc["timer"] = {
            "seconds": int(snapshot.seconds_left),
            "text": t(UI["seconds_left"], seconds=int(snapshot.seconds_left)),
            "warn": snapshot.warn,
            "warning": t(UI["warn"]) if snapshot.warn else "",
        }
    _SCREENS[snapshot.screen](doc, view, t)
    doc["say"] = " ".join(x for x in [doc["heading"], *doc["lines"]] if x)
    return doc


class _Texts:
    def __init__(self, words: Words, lang: str) -> None:
        self.words = words
        self.lang = lang

    def __call__(self, msgid: str, **params: Any) -> str:
        return self.words.text(self.lang, msgid, **params)

    def phrases(self, phrases: Sequence[Phrase] | None) -> list[str]:
        return [self.words.say(self.lang, (m, p)) for m, p in phrases or []]

    def date(self, day: dt.date | str | None) -> str | None:
        if day is None:
            return None
        if isinstance(day, str):
            day = dt.date.fromisoformat(day)
        return self.words.date(self.lang, day)

    def category(self, code: str) -> str:
        return self.words.named(self.lang, "category", code, code)

    def product(self, sku: str, fallback: str) -> str:
        return self.words.named(self.lang, "product", sku, fallback)


def _idle(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    doc["heading"] = t(TITLE)
    doc["lines"] = [t(line) for line in IDLE_LINES]
    if view.get("recovered"):
        doc["lines"].append(t(RECOVERED))
    doc["lines"].append(t(UI["privacy"]))
    doc["offers"] = [
        {
            "category": o["category"],
            "category_name": t.category(o["category"]),
            "name": t.product(o["sku"], o["name"]),
            "in_stock": o["in_stock"],
            "status": "" if o["in_stock"] else t(UI["out_of_stock"]),
        }
        for o in view.get("offers", [])
    ]


def _recovering(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    doc["heading"] = t(RECOVERING)


def _checking(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    doc["heading"] = t(CHECKING)
    doc["steps"] = _steps(CHECK_STEPS, str(view.get("step", "")), t)


def _steps(steps: Mapping[str, str], current: str, t: _Texts) -> list[dict[str, Any]]:
    names = list(steps)
    at = names.index(current) if current in names else 0
    return [
        {
            "name": n,
            "text": t(steps[n]),
            "state": "done" if i < at else "now" if i == at else "todo",
        }
        for i, n in enumerate(names)
    ]


def _choosing(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    doc["heading"] = t(CHOOSE)
    doc["lines"] = t.phrases(view.get("notice"))
    if view.get("offline"):
        doc["lines"].append(t(OFFLINE_CHOICE))
    for c in view.get("categories", []):
        if c["allowed"]:
            status = t(LEFT, left=c["left"])
        elif c["reason"] == "not_eligible":
            status = t(NOT_ELIGIBLE)
        elif c.get("next_allowed_on"):
            status = t(NONE_LEFT, date=t.date(c["next_allowed_on"]))
        else:
            status = t(NONE_LEFT_NO_DATE)
        doc["categories"].append(
            {
                "category": c["category"],
                "name": t.category(c["category"]),
                "left": c["left"],
                "allowed": c["allowed"],
                "status": status,
                "offers": [
                    {
                        "slot": o["slot"],
                        "name": t.product(o["sku"], o["name"]),
                        "pictogram": f"/pictograms/{c['category']}.svg",
                        "in_stock": o["in_stock"],
                        "may_take": o["may_take"],
                        "stock": (
                            t(UI["in_stock"], count=o["stock"])
                            if o["in_stock"] and o["stock"] is not None
                            else ""
                            if o["in_stock"]
                            else t(UI["out_of_stock"])
                        ),
                        "button": t(UI["take"]) if o["may_take"] else t(UI["not_for_you"]),
                    }
                    for o in c["offers"]
                ],
            }
        )
    doc["say"] = ""
    doc["buttons"] = [{"action": "cancel", "text": t(UI["cancel"])}]


def _dispensing(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    doc["heading"] = t(DISPENSING, name=t.product(view.get("sku", ""), view.get("name", "")))
    doc["steps"] = _steps(DISPENSE_STEPS, str(view.get("step", "")), t)


def _take_item(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    doc["heading"] = t(TAKE_TITLE)
    name = t.product(view.get("sku", ""), view.get("name", ""))
    doc["lines"] = [t(TAKE_LINE, name=name)]
    if view.get("left") is not None:
        doc["lines"].append(t(LEFT_AFTER, left=view["left"]))
    if view.get("offline"):
        doc["lines"].append(t(SERVED_OFFLINE))
    doc["lines"].append(t(REMOVE))


def _refused(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    doc["heading"] = t(REFUSED_TITLE)
    reason = str(view.get("reason") or "")
    doc["reason"] = reason
    doc["lines"] = [t(REFUSAL.get(reason, REFUSED_OTHER))]
    if view.get("next_allowed_on"):
        doc["lines"].append(t(MORE_FROM, date=t.date(view["next_allowed_on"])))
    elif reason not in ("limit_reached", "wrong_pin"):
        doc["lines"].append(t(ASK_STATION))
    doc["lines"].append(t(REMOVE))


def _fault(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    kind = str(view.get("kind") or "unsettled")
    doc["heading"] = t(FAULT_TITLE)
    doc["reason"] = kind
    if kind == "card_pulled" and view.get("words"):
        doc["lines"] = t.phrases(view["words"])  # when it was pulled: what was (not) begun
    else:
        doc["lines"] = [t(FAULTS.get(kind, FAULTS["unsettled"]))]
        doc["lines"].append(t(NOT_CHARGED) if kind in _NOT_CHARGED else t(MAYBE_CHARGED))
    if kind != "card_pulled":
        doc["lines"].append(t(REMOVE))


def _remove_card(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    doc["heading"] = t(REMINDER) if view.get("reminder") else t(REMOVE)
    doc["reminder"] = bool(view.get("reminder"))


def _staff_pin(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    doc["heading"] = t(STAFF_PIN)
    doc["lines"] = t.phrases(view.get("notice"))
    if view.get("tries") is not None:
        doc["lines"].append(t(PIN_WRONG, tries=view["tries"]))
    doc["pin"] = True
    doc["buttons"] = [{"action": "cancel", "text": t(UI["cancel"])}]


def _maintenance(doc: dict[str, Any], view: Mapping[str, Any], t: _Texts) -> None:
    doc["heading"] = t(MAINTENANCE)
    doc["lines"] = t.phrases(view.get("notice"))
    faults = view.get("faults") or []
    status = []
    if view.get("door_open") is not None:
        status.append(t(DOOR_OPEN) if view["door_open"] else t(DOOR_CLOSED))
    status.append(t(BOARD_FAULTS, faults=", ".join(faults)) if faults else t(NO_FAULTS))
    if view.get("board_error"):
        status.append(t(BOARD_SILENT, error=view["board_error"]))
    doc["maintenance"] = {
        "columns": [t(c) for c in COLUMNS],
        "slots": [
            {
                "slot": row["slot"],
                "cells": [
                    str(row["slot"]),
                    t.product(row.get("sku", ""), row.get("name", "")),
                    "?" if row.get("stock") is None else str(row["stock"]),
                    "?" if row.get("capacity") is None else str(row["capacity"]),
                ],
                "actions": [
                    {"action": "refill", "text": t(REFILL)},
                    {"action": "test_dispense", "text": t(TEST_DISPENSE)},
                ],
            }
            for row in view.get("slots", [])
        ],
        "status": status,
    }
    doc["buttons"] = [
        {"action": "clear_faults", "text": t(CLEAR_FAULTS)},
        {"action": "finish", "text": t(UI["finish"])},
    ]


_SCREENS = {
    Screen.IDLE: _idle,
    Screen.RECOVERING: _recovering,
    Screen.CHECKING: _checking,
    Screen.CHOOSING: _choosing,
    Screen.DISPENSING: _dispensing,
    Screen.TAKE_ITEM: _take_item,
    Screen.REFUSED: _refused,
    Screen.FAULT: _fault,
    Screen.REMOVE_CARD: _remove_card,
    Screen.STAFF_PIN: _staff_pin,
    Screen.MAINTENANCE: _maintenance,
}
