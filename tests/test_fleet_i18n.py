"""The fleet and report pages' catalogue (the `fleet` domain, server.web.fleet_words): every word
has its Simplified Chinese, and the compiled .mo says what the .po says."""

from __future__ import annotations

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from babel.support import Translations

from server.web.i18n import TRANSLATIONS
from tests.test_staff_i18n import METHODS, WEB

PO = TRANSLATIONS / "zh_Hans_CN" / "LC_MESSAGES" / "fleet.po"


def fleet_words() -> set[str]:
    return {
        message if isinstance(message, str) else message[0]
        for _file, _line, message, _comments, _context in extract_from_dir(
            str(WEB), METHODS, keywords={"t": None, "tl": None}
        )
    }


def test_every_fleet_word_has_its_chinese_and_is_compiled() -> None:
    with PO.open("rb") as handle:
        catalogue = read_po(handle)
    translated = {m.id: m.string for m in catalogue if m.id}
    words = fleet_words()
    assert len(words) > 80
    assert sorted(w for w in words if not translated.get(w)) == []
    compiled = Translations.load(str(TRANSLATIONS), ["zh_Hans_CN"], domain="fleet")
    assert [w for w in words if compiled.gettext(w) != translated[w]] == []
