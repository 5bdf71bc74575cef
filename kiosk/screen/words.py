"""The kiosk's words for residents and technicians: gettext catalogues, read with Babel.

One catalogue per language in `kiosk/screen/locale/<lang>/LC_MESSAGES/kiosk.po`: Simplified
Chinese (`zh_CN`, the kiosk's first language) and English (`en`, whose msgids are the English
words themselves; its catalogue only names categories and products). The kiosk core (kiosk.tap,
kiosk.attendant) marks its words with `N_` and keeps them as (msgid, parameters); the screen
(kiosk.screen.render) and the log say them in a language with `Words.text`. Placeholders are
`str.format` names (`{name}`, `{date}`), the same in every language (tests/test_kiosk_screen.py checks).

Why .po read at start rather than .mo files: the .po is the one source; Babel compiles it in
memory (`write_mo` into a buffer, read by the standard `gettext.GNUTranslations`) in a few
milliseconds when the kiosk starts, so there is no build step and no binary in git that can
drift from its source.

Dates and numbers are localised with Babel (`format_date(..., "long")`: 2026年12月1日,
December 1, 2026). Category and product names are looked up in the catalogue by context
(`category` + code, `product` + SKU); a name the catalogue lacks falls back to the server's.
"""

from __future__ import annotations

import datetime as dt
import gettext
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from babel.dates import format_date
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "kiosk"
LANGUAGES = ("zh_CN", "en")  # the first is the kiosk's default
DEFAULT_LANGUAGE = LANGUAGES[0]
HTML_LANG = {"zh_CN": "zh-CN", "en": "en"}
SPEECH_VOICE = {"zh_CN": "cmn", "en": "en-us"}  # espeak-ng voices (Debian's espeak-ng-data)

Phrase = tuple[str, Mapping[str, Any]]
"""A msgid and its parameters, said in a language only at the edge."""


def N_(msgid: str) -> str:  # noqa: N802 - gettext's marker name, found by extraction
    """Mark `msgid` as a word of the catalogue without translating it here."""
    return msgid


def phrase(msgid: str, **params: Any) -> Phrase:
    return (msgid, params)


def load_catalogue(path: Path) -> gettext.GNUTranslations:
    """A .po file as standard gettext translations (compiled in memory by Babel)."""
    with open(path, "rb") as po:
        catalogue = read_po(po)
    buffer = io.BytesIO()
    write_mo(buffer, catalogue, use_fuzzy=False)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


class Words:
    """The catalogues of every language, loaded once."""

    def __init__(self, locale_dir: Path = LOCALE_DIR) -> None:
        self._translations: dict[str, gettext.NullTranslations] = {
            lang: load_catalogue(locale_dir / lang / "LC_MESSAGES" / f"{DOMAIN}.po")
            for lang in LANGUAGES
        }

    def language(self, lang: str | None) -> str:
        """`lang` when the kiosk speaks it, else the default."""
        return lang if lang in self._translations else DEFAULT_LANGUAGE

    def text(self, lang: str, msgid: str, **params: Any) -> str:
        translated = self._translations[self.language(lang)].gettext(msgid)
        values = {k: self._value(lang, v) for k, v in params.items()}
        return translated.format(**values) if values else translated

    def say(self, lang: str, words: Phrase) -> str:
        msgid, params = words
        return self.text(lang, msgid, **params)

    def date(self, lang: str, day: dt.date) -> str:
        return format_date(day, format="long", locale=self.language(lang))

    def named(self, lang: str, context: str, code: str, fallback: str) -> str:
        """A category's or a product's name: the catalogue's (context `category` or
        `product`), else `fallback` (the server's name)."""
        translated = self._translations[self.language(lang)].pgettext(context, code)
        return fallback if translated == code else translated

    def _value(self, lang: str, value: Any) -> Any:
        if isinstance(value, dt.date):
            return self.date(lang, value)
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            return self.say(lang, value)  # a phrase inside a phrase
        return value
