"""The staff pages' catalogue (server/web/translations): every word of the templates and views
has its Simplified Chinese, the compiled .mo says what the .po says, and the words of the card
desk and of staff-card issuing reach their scripts in Chinese with their placeholders intact."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from babel.support import Translations
from flask import Flask

from server.web import i18n
from server.web.admin import staff_card_issue_words
from server.web.i18n import TRANSLATIONS
from server.web.technician import REPLACE_REASONS, card_desk_words

WEB = Path(TRANSLATIONS).parent
PO = TRANSLATIONS / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po"
METHODS = [("**.py", "python"), ("templates/**.html", "jinja2")]
KEYWORDS = {"_": None, "_l": None, "gettext": None, "lazy_gettext": None}
PLACEHOLDER = re.compile(r"%\((\w+)\)s")
HAN = re.compile(r"[\u4e00-\u9fff]")


def source_words() -> set[str]:
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(WEB), METHODS, keywords=KEYWORDS
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_word_has_its_chinese() -> None:
    with PO.open("rb") as handle:
        catalogue = read_po(handle)
    translated = {m.id: m.string for m in catalogue if m.id}
    words = source_words()
    assert len(words) > 100
    assert sorted(w for w in words if not translated.get(w)) == []


def test_the_compiled_catalogue_matches_its_source() -> None:
    with PO.open("rb") as handle:
        catalogue = read_po(handle)
    compiled = Translations.load(str(TRANSLATIONS), ["zh_Hans_CN"])
    stale = [m.id for m in catalogue if m.id and compiled.gettext(m.id) != m.string]
    assert stale == [], "run: pybabel compile -d server/web/translations"


def test_every_word_of_the_card_desk_is_chinese_with_the_same_placeholders() -> None:
    """What static/card-desk.js gets in data-words (progress steps, results, errors, card
    states) and the replacement's reasons: Chinese in zh-CN, the same %(name)s as in English
    (the script fills them in), so no word reaches the technician untranslated or broken."""
    english = check_script_words(
        lambda: {
            **card_desk_words(),
            **{f"reason.{value}": str(words) for value, words in REPLACE_REASONS},
        }
    )
    assert {"step.revoke", "error.reason", "error.revoked_anyway", "state.revoked"} <= set(english)


def test_every_word_of_staff_card_issuing_is_chinese_with_the_same_placeholders() -> None:
    """The same for static/staff-card-issue.js on the administrator's staff-card page."""
    english = check_script_words(staff_card_issue_words)
    assert {"step.link", "error.not_linked", "refusal.card_assigned", "state.active"} <= set(
        english
    )


def check_script_words(words_of: Callable[[], dict[str, str]]) -> dict[str, str]:
    """The words a page's script gets, in zh-CN and en: the same keys, each Chinese in zh-CN
    with the same placeholders as in English; the English words."""
    app = Flask(__name__)
    i18n.init_app(app)
    shown = {}
    for language in ("zh-CN", "en"):
        with app.test_request_context(headers={"Accept-Language": language}):
            shown[language] = words_of()
    chinese, english = shown["zh-CN"], shown["en"]
    assert chinese.keys() == english.keys()
    untranslated = [key for key in english if chinese[key] == english[key]]
    assert untranslated == []
    assert [key for key in english if not HAN.search(chinese[key])] == []
    placeholders = [
        key
        for key in english
        if sorted(PLACEHOLDER.findall(chinese[key])) != sorted(PLACEHOLDER.findall(english[key]))
    ]
    assert placeholders == []
    return english
