"""Nurses' pages: appointments at a station, by day (book, move, cancel, list), with each
station's opening hours and capacity as data (services.appointments), and the link to the
station desk (/station), which works under the same sign-in.
"""

from __future__ import annotations

from server.store.models import Role
from server.web.base import register_navigation, staff_blueprint
from server.web.i18n import _l

nurse = staff_blueprint("nurse", __name__, url_prefix="/nurse")
register_navigation(_l("Station desk"), "pages.station_page", Role.STATION_STAFF)
