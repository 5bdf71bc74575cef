"""The staff pages' catalogue (server/web/translations): every word of the templates and views
has its Simplified Chinese, and the compiled .mo says what the .po says."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from babel.support import Translations

from server.web.i18n import TRANSLATIONS

WEB = Path(TRANSLATIONS).parent
PO = TRANSLATIONS / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po"
METHODS = [("**.py", "python"), ("templates/**.html", "jinja2")]
KEYWORDS = {"_": None, "_l": None, "gettext": None, "lazy_gettext": None}


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
