"""The JSON API `/api/v1`, one blueprint per audience: kiosk, station, staff, provisioning."""
