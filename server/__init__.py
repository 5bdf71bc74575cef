"""The OneCard central server: entitlement rules, card records, kiosk authorization and exam
eligibility for a whole city. See server/README.md; the app factory is server.app.create_app."""
