"""The staff pages' words: one gettext catalogue (Flask-Babel) for every staff page.

Source strings are English in the templates and views (`_("...")`); Simplified Chinese is
server/web/translations/zh_Hans_CN/LC_MESSAGES/messages.po, compiled to messages.mo beside it
(the directory is named as Babel parses zh_CN: zh_Hans_CN).
The language is the one the person chose (the 中文 / English buttons of base.html, kept in a
cookie), else the browser's preferred one of the two, else Simplified Chinese.

To add words: write `_("...")` in a template or view, then

    pybabel extract -F server/web/babel.cfg -k _l -o server/web/translations/messages.pot server/web
    pybabel update -i server/web/translations/messages.pot -d server/web/translations -l zh_Hans_CN
    (translate the new entries in messages.po)
    pybabel compile -d server/web/translations

tests/test_staff_i18n.py fails while a word has no Chinese or the .mo is older than the .po.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, request
from flask_babel import Babel, get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

TRANSLATIONS = Path(__file__).resolve().parent / "translations"
LANGUAGES = ("zh_CN", "en")
DEFAULT_LANGUAGE = "zh_CN"
LANGUAGE_COOKIE = "onecard_language"
LANGUAGE_TAGS = {"zh_CN": "zh-CN", "en": "en"}

babel = Babel()

__all__ = ["LANGUAGES", "LANGUAGE_COOKIE", "_", "_l", "babel", "init_app", "language_tag"]


def select_language() -> str:
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    best = request.accept_languages.best_match(["zh-CN", "zh", "en"])
    if best is None:
        return DEFAULT_LANGUAGE
    return "en" if best == "en" else "zh_CN"


def language_tag() -> str:
    """The BCP 47 tag of the page's language (`<html lang>`)."""
    return LANGUAGE_TAGS.get(str(get_locale()), "zh-CN")


def init_app(app: Flask) -> None:
    app.config.setdefault("BABEL_DEFAULT_LOCALE", DEFAULT_LANGUAGE)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS)
    babel.init_app(app, locale_selector=select_language)
    app.jinja_env.globals["current_language_tag"] = language_tag
