"""The words of the pages that drive the desk's card service, in the gettext catalogue: the
resident's card desk (static/card-desk.js, server/web/technician.py) and, for the steps and
failures they share, the staff-card issuing panel (static/staff-card-issue.js,
server/web/admin.py). A module of its own, without pages: importing a page module would change
the order of the navigation (and so each role's first page).
"""

from __future__ import annotations

from server.web.i18n import _l

CARD_DESK_WORDS = {
    # progress, one line per step (the steps of `onecard card provision|renew|unblock-pin`)
    "step.identify": _l("Reading the card on the reader"),
    "step.check": _l("Asking the server whether this card is issued already"),
    "step.secrets": _l("Fetching this card's keys from the server"),
    "step.generate": _l("The card makes its key"),
    "step.certify": _l("The server certifies the card's key"),
    "step.write": _l("Writing the certificate, the PIN and the card's own key"),
    "step.record": _l("Recording the card for this resident"),
    "step.revoke": _l("Revoking the old card, so kiosks refuse it"),
    "step.renew": _l("The server renews the certificate"),
    "step.write_renewal": _l("Writing the new certificate"),
    "step.unblock": _l("Setting the new PIN with the card's PUK"),
    # results
    "done.issued": _l("Card %(guid)s issued. The holder's PIN is set."),
    "done.replaced_revoked": _l(
        "Card %(guid)s issued in place of card %(old)s, which is revoked (%(reason)s). The "
        "holder's PIN is set."
    ),
    "done.replaced": _l(
        "Card %(guid)s issued in place of card %(old)s, which is marked replaced (%(reason)s). "
        "The holder's PIN is set."
    ),
    "done.renewed": _l("Card %(guid)s renewed: valid until %(expiry)s."),
    "done.unblocked": _l("The PIN of card %(guid)s is set again."),
    "busy": _l("Working on the card: leave it on the reader."),
    # problems
    "error.pin": _l("Type the holder's new PIN: 6 to 8 digits."),
    "error.reason": _l("Choose why the card is replaced."),
    "error.revoked_anyway": _l(
        "Card %(old)s stays revoked (%(reason)s): kiosks refuse it. Issue the new card with "
        "the Issue button."
    ),
    "error.cardsvc_unreachable": _l(
        "The card service on this computer does not answer. Start it: onecard cardsvc serve."
    ),
    "error.server_unreachable": _l("The server does not answer. Nothing was recorded."),
    "error.no_card": _l("No card on the reader. Put the card on it and press again."),
    "error.no_reader": _l("No card reader is connected to this computer."),
    "error.card_removed": _l(
        "The card left the reader before it was finished. Nothing was recorded: put it back "
        "and press again."
    ),
    "error.management_key_refused": _l("The card refused its management key: it is not ours."),
    "error.wrong_pin": _l("The card refused its PUK."),
    "error.pin_blocked": _l("The card's PUK is blocked: replace the card."),
    "error.already_issued": _l(
        "This card is issued already (%(status)s): renew it, or put another card on the reader."
    ),
    "error.blank": _l("This card was never issued: issue it instead."),
    "error.not_this_card": _l("The card on the reader is not card %(guid)s."),
    "error.not_recorded": _l(
        "The card is written but the server did not record it (%(detail)s). Press Issue again "
        "with the same card."
    ),
    "error.server": _l("The server refused: %(detail)s"),
    "error.card": _l("The card refused: %(detail)s"),
}
