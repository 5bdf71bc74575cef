"""The words of the fleet and report pages (issue 12): a gettext domain of their own, `fleet`
(server/web/translations/zh_Hans_CN/LC_MESSAGES/fleet.po beside the staff pages' messages.po),
selected by the same language choice as every staff page (server.web.i18n).

A domain of its own because the staff catalogue was being edited by another change at the same
time; merging fleet.po into messages.po later is mechanical (`msgcat`). Templates of these pages
call `t(...)`; views call `t` and `tl` (lazy) from here.

    pybabel extract -F server/web/babel.cfg -k t -k tl -o /tmp/fleet.pot \\
        server/web/fleet.py server/web/reports.py server/web/templates/staff/fleet*.html \\
        server/web/templates/staff/reports.html server/web/templates/staff/restock.html
    pybabel update -D fleet -i /tmp/fleet.pot -d server/web/translations -l zh_Hans_CN
    pybabel compile -D fleet -d server/web/translations
"""

from __future__ import annotations

from flask_babel import Domain

from server.web.i18n import TRANSLATIONS

words = Domain(translation_directories=[str(TRANSLATIONS)], domain="fleet")
t = words.gettext
tl = words.lazy_gettext
tn = words.ngettext

__all__ = ["t", "tl", "tn", "words"]
