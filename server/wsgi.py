"""The WSGI entry point for production servers, configured from the environment:

    gunicorn --workers 4 --threads 8 --bind 127.0.0.1:8080 'server.wsgi:app'

Put it behind a TLS reverse proxy; run `onecard server init-db` on deploy, before the workers.
"""

from __future__ import annotations

from server.app import create_app

app = create_app()
