"""The station desk page (`/station`): a nurse's browser at a service station.

The nurse signs in, picks the station, and taps the resident's card on the desk reader. The page
asks the local card service on the desk (`onecard cardsvc serve`, http://127.0.0.1,
cardsvc/service.py) for a tap proof made for that station (kiosk_id = the station's id, counter
= a number that only grows: the desk's time in ms), and posts the proof to the desk calls of
server.api.station (`/staff/v1/...`). The card service never talks to the server; the server
never talks to the card service.

    GET  /station      the page (server/web/templates/station.html, server/web/static/station.*)
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template

pages = Blueprint(
    "pages",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/assets",
)

# The page talks to its own server and to the card service on the desk's loopback address.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self' http://127.0.0.1:* http://localhost:*; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@pages.after_request
def _private(response: Response) -> Response:
    """Eligibility is health information: nothing here is cached or framed."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


# --- the page ------------------------------------------------------------------------------------


@pages.get("/station")
def station_page() -> str:
    return render_template("station.html")
