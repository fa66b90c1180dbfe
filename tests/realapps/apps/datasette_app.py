"""Datasette, served as the ASGI app its users hand to uvicorn, on a database the test builds.

``REALAPPS_DATASETTE_DB`` names the SQLite file (tests/realapps/test_datasette.py
makes it). The signing secret is fixed so that both servers sign alike; the
CSRF token each page carries is still random per response, and the test
normalises only that.
"""

from __future__ import annotations

import os

from datasette.app import Datasette

DB_PATH = os.environ["REALAPPS_DATASETTE_DB"]

app = Datasette([DB_PATH], secret="realapps-datasette-fixed-secret").app()
