"""WSGI apps that need a thread with no running event loop, as under gunicorn's sync worker.

Each route does what real apps do: Django's ORM (``async_unsafe`` refuses to run
"from an async context"), ``asyncio.run()`` in a view, a Flask ``async def`` view
(asgiref's ``async_to_sync``), and the same from a streamed body and from the
iterable's ``close()``, which inline mode runs on the event loop's thread too.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False, ALLOWED_HOSTS=["*"], SECRET_KEY="loopless-test",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": os.path.join(tempfile.mkdtemp(prefix="corral-loopless-"), "db.sqlite3")}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
    )
    django.setup()

from django.db import connection  # noqa: E402  (after settings)
from flask import Flask, Response  # noqa: E402

flask_app = Flask(__name__)


async def _answer() -> int:
    await asyncio.sleep(0)
    return 42


def _running_loop() -> str:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "none"
    return "running"


def _orm_query() -> int:
    with connection.cursor() as cursor:  # async_unsafe: raises SynchronousOnlyOperation in a loop
        cursor.execute("SELECT 1 + 1")
        return cursor.fetchone()[0]


@flask_app.get("/loop")
def loop_state():
    return {"loop": _running_loop()}


@flask_app.get("/orm")
def orm():
    return {"sum": _orm_query()}


@flask_app.get("/asyncio-run")
def asyncio_run():
    return {"answer": asyncio.run(_answer())}


@flask_app.get("/async-view")
async def async_view():
    return {"answer": await _answer()}


@flask_app.get("/stream")
def stream():
    def body():
        yield json.dumps({"loop": _running_loop()}).encode() + b"\n"
        yield json.dumps({"answer": asyncio.run(_answer())}).encode() + b"\n"
        yield json.dumps({"sum": _orm_query()}).encode() + b"\n"
    return Response(body(), mimetype="application/x-ndjson")


CLOSED: list[str] = []


class _ClosingBody:
    """An iterable whose close() needs a loop-free thread (Django's request_finished closes DB connections)."""

    def __init__(self) -> None:
        self.parts = [b"closing body\n"]

    def __iter__(self):
        return iter(self.parts)

    def close(self) -> None:
        CLOSED.append(f"{_running_loop()} {asyncio.run(_answer())} {_orm_query()}")


def app(environ, start_response):
    if environ["PATH_INFO"] == "/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _ClosingBody()
    if environ["PATH_INFO"] == "/closed":
        body = json.dumps(CLOSED).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    return flask_app(environ, start_response)
