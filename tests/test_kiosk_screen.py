"""The kiosk screen's parts without devices: the session's state machine (kiosk.session), the
words in both languages (kiosk.screen.words and render), the local page server
(kiosk.screen.server) over real HTTP, and speech through espeak-ng."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import string
from pathlib import Path
from typing import Any

import pytest
import requests
from babel.messages.extract import extract_from_dir

from kiosk.screen.render import render
from kiosk.screen.server import CSP, ScreenServer
from kiosk.screen.speech import Speaker
from kiosk.screen.words import LANGUAGES, LOCALE_DIR, Words, load_catalogue, phrase
from kiosk.session import (
    SCREEN_TRANSITIONS,
    TIMEOUTS,
    WARN_BEFORE_S,
    Screen,
    ScreenSession,
    SessionError,
)

KIOSK_DIR = Path(__file__).resolve().parent.parent / "kiosk"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def words() -> Words:
    return Words()


# --- the state machine ------------------------------------------------------------------------


def test_every_state_but_idle_has_a_timeout_and_a_way_back() -> None:
    for screen in Screen:
        assert screen in SCREEN_TRANSITIONS
        if screen is not Screen.IDLE:
            assert TIMEOUTS[screen] is not None, screen
            assert (
                Screen.IDLE in SCREEN_TRANSITIONS[screen]
                or Screen.FAULT in SCREEN_TRANSITIONS[screen]
            ), screen


def test_moves_the_table_does_not_have_are_refused() -> None:
    session = ScreenSession()
    with pytest.raises(SessionError):
        session.go(Screen.DISPENSING)
    session.go(Screen.CHECKING)
    session.go(Screen.CHOOSING)
    with pytest.raises(SessionError):
        session.go(Screen.STAFF_PIN)
    assert session.screen is Screen.CHOOSING


def test_a_timeout_warns_first_and_can_be_extended_where_a_person_waits() -> None:
    clock = Clock()
    session = ScreenSession(clock=clock)
    session.go(Screen.CHECKING)
    session.go(Screen.CHOOSING)
    timeout = TIMEOUTS[Screen.CHOOSING]
    assert timeout is not None
    clock.now += timeout - WARN_BEFORE_S - 1
    assert not session.snapshot().warn
    clock.now += 2
    assert session.snapshot().warn and not session.expired()
    assert session.post({"action": "extend"})
    assert not session.snapshot().warn
    assert session.seconds_left() == pytest.approx(timeout)
    clock.now += timeout
    assert session.expired()
    session.go(Screen.FAULT, kind="card_pulled")
    assert not session.extend()  # a result screen is not held by "more time"


def test_each_person_starts_in_chinese_without_speech_and_old_actions_are_dropped() -> None:
    session = ScreenSession()
    session.go(Screen.CHECKING)
    session.post({"action": "language", "language": "en"})
    session.post({"action": "speech", "on": True})
    session.post({"action": "choose", "slot": 1})
    session.go(Screen.CHOOSING)  # the choice was posted for the screen before: dropped
    assert session.next_action(0.01) is None
    assert (session.snapshot().language, session.snapshot().speech) == ("en", True)
    session.go(Screen.IDLE)
    assert (session.snapshot().language, session.snapshot().speech) == ("zh_CN", False)
    assert session.post({"action": "choose", "slot": 1}) is False  # idle takes no action


# --- the words ----------------------------------------------------------------------------------


def catalogue_ids() -> set[str]:
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(KIOSK_DIR), keywords={"N_": None}, method_map=[("**.py", "python")]
    ):
        found.add(message)
    return found


def placeholders(text: str) -> list[str]:
    return sorted(name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name)


def test_every_word_of_the_kiosk_is_in_chinese_with_the_same_placeholders() -> None:
    from babel.messages.pofile import read_po

    used = catalogue_ids()
    assert len(used) > 60
    with open(LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "kiosk.po", "rb") as po:
        catalogue = read_po(po)
    translated = {m.id: m.string for m in catalogue if m.id and not m.context}
    missing = sorted(used - set(translated))
    assert missing == []
    for msgid in used:
        assert translated[msgid], f"no Chinese for {msgid!r}"
        assert placeholders(translated[msgid]) == placeholders(msgid), msgid
        assert not re.search(r"[A-Za-z]{3,}", re.sub(r"\{\w+\}", "", translated[msgid])), (
            f"English left in {translated[msgid]!r}"
        )
    for lang in LANGUAGES:
        load_catalogue(LOCALE_DIR / lang / "LC_MESSAGES" / "kiosk.po")


def test_dates_names_and_phrases_in_each_language(words: Words) -> None:
    day = dt.date(2026, 12, 1)
    assert words.date("zh_CN", day) == "2026年12月1日"
    assert words.date("en", day) == "December 1, 2026"
    said = phrase("You can take more from {date}.", date=day)
    assert words.say("zh_CN", said) == "从2026年12月1日起可以再领。"
    assert words.say("en", said) == "You can take more from December 1, 2026."
    assert words.named("zh_CN", "category", "condoms", "x") == "避孕套"
    assert words.named("en", "product", "NO-SUCH-SKU", "Server's name") == "Server's name"
    assert words.language("fr") == "zh_CN"


def choosing_session() -> ScreenSession:
    session = ScreenSession()
    session.go(Screen.CHECKING)
    session.go(
        Screen.CHOOSING,
        categories=[
            {
                "category": "condoms", "left": 0, "allowed": False, "reason": "limit_reached",
                "next_allowed_on": dt.date(2026, 12, 1),
                "offers": [{"slot": 1, "sku": "CONDOM-STD-1", "name": "Condom, standard",
                            "units": 1, "stock": 9, "in_stock": True, "may_take": False}],
            },
            {
                "category": "lubricant", "left": 2, "allowed": True, "reason": None,
                "next_allowed_on": None,
                "offers": [{"slot": 3, "sku": "LUBE-1", "name": "Lubricant", "units": 1,
                            "stock": 0, "in_stock": False, "may_take": False}],
            },
        ],
        offline=False,
        notice=[],
    )  # fmt: skip
    return session


@pytest.mark.parametrize(
    ("lang", "expected"),
    [
        ("zh_CN", ["避孕套", "本期额度已用完，从2026年12月1日起可以再领。", "润滑剂", "本期还可以领2件。", "已发完"]),
        ("en", ["Condoms", "None left this period. You can take more from December 1, 2026.", "Lubricant", "You may take 2 more this period.", "Out of stock"]),
    ],
)  # fmt: skip
def test_the_choice_is_said_in_the_persons_language(
    words: Words, lang: str, expected: list[str]
) -> None:
    session = choosing_session()
    session.set_language(lang)
    doc = render(session.snapshot(), words)
    condoms, lube = doc["categories"]
    shown = [
        condoms["name"],
        condoms["status"],
        lube["name"],
        lube["status"],
        lube["offers"][0]["stock"],
    ]
    assert shown == expected
    assert doc["html_lang"] == {"zh_CN": "zh-CN", "en": "en"}[lang]
    assert not condoms["offers"][0]["may_take"]


@pytest.mark.parametrize("screen", list(Screen))
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_screen_renders_in_both_languages(words: Words, screen: Screen, lang: str) -> None:
    session = ScreenSession()
    session._state.screen = screen  # every screen, whatever led to it
    session.set_language(lang)
    doc = render(session.snapshot(), words)
    assert doc["screen"] == str(screen) and doc["heading"]
    json.dumps(doc, ensure_ascii=False)  # plain values only: the page gets JSON
    if lang == "zh_CN":
        assert re.search(r"[\u4e00-\u9fff]", doc["heading"]), doc["heading"]


# --- the page server -----------------------------------------------------------------------------


def test_the_page_server_streams_the_state_and_takes_actions(words: Words) -> None:
    session = ScreenSession()
    with ScreenServer(session, words) as screen:
        page = requests.get(screen.url, timeout=5)
        assert page.status_code == 200 and page.headers["Content-Security-Policy"] == CSP
        assert page.headers["Cache-Control"] == "no-store"
        assert "<script>" not in page.text and "http" not in page.text.replace("http-equiv", "")
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
            assert requests.get(screen.url.rstrip("/") + asset, timeout=5).status_code == 200
        assert requests.get(screen.url + "static/../server.py", timeout=5).status_code == 404
        assert requests.get(screen.url + "pictograms/unknown.svg", timeout=5).status_code == 200

        refused = requests.post(
            screen.url + "action", json={"action": "choose", "slot": 1}, timeout=5
        )
        assert refused.status_code == 409  # idle takes no choice
        session.go(Screen.CHECKING)
        session.go(Screen.CHOOSING)
        taken = requests.post(
            screen.url + "action", json={"action": "choose", "slot": 1}, timeout=5
        )
        assert taken.status_code == 202
        assert session.next_action(1)["slot"] == 1  # type: ignore[index]
        assert requests.post(screen.url + "action", data="x", timeout=5).status_code == 400

        with requests.get(screen.url + "events", stream=True, timeout=5) as events:
            assert events.headers["Content-Type"].startswith("text/event-stream")
            lines = events.iter_lines(decode_unicode=True)
            first = _next_event(lines)
            assert first["screen"] == "choosing"
            requests.post(
                screen.url + "action", json={"action": "language", "language": "en"}, timeout=5
            )
            while (doc := _next_event(lines))["lang"] != "en":
                pass
            assert doc["heading"] == "Choose an item"


def _next_event(lines: Any) -> dict[str, Any]:
    for line in lines:
        if line.startswith("data: "):
            return json.loads(line.removeprefix("data: "))  # type: ignore[no-any-return]
    raise AssertionError("the stream ended")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_speech_says_each_screen_in_its_language(words: Words, tmp_path: Path) -> None:
    speaker = Speaker(words, wav_dir=tmp_path)
    session = ScreenSession()
    session.subscribe(speaker)
    session.go(Screen.CHECKING)
    assert speaker.spoken == []  # off until asked for
    session.set_speech(True)
    speaker.wait()
    session.set_language("en")
    speaker.wait()
    session.go(Screen.REFUSED, reason="limit_reached", next_allowed_on=dt.date(2026, 12, 1))
    speaker.wait()
    voices = [v for v, _ in speaker.spoken]
    assert voices == ["cmn", "en-us", "en-us"]
    assert "December 1, 2026" in speaker.spoken[-1][1]
    wavs = sorted(tmp_path.glob("*.wav"))
    assert len(wavs) == 3 and all(w.stat().st_size > 1000 for w in wavs)
