"""The preload_warmup tests' WSGI app: like Django, it imports part of itself on its first request.

GET /         imports ``lazyviews`` (once per process) and answers with the pid that serves and
              the pid that imported ``lazyviews``
GET /keep     also opens a file and keeps it open (like a database connection kept across requests)
A KEEP file next to it makes every path keep one (a deploy that starts keeping a connection open).
"""

from __future__ import annotations

import importlib
import json
import os

_kept: list[object] = []


def app(environ, start_response):
    keep = environ["PATH_INFO"] == "/keep" or os.path.exists(os.path.join(os.path.dirname(__file__), "KEEP"))
    if keep and not _kept:
        _kept.append(open(os.path.join(os.path.dirname(__file__), "warmwsgi.py"), "rb"))  # noqa: SIM115
    lazyviews = importlib.import_module("lazyviews")
    body = json.dumps({"pid": os.getpid(), "lazy_imported_in": lazyviews.IMPORTED_IN,
                       "host": environ.get("HTTP_HOST"), "agent": environ.get("HTTP_USER_AGENT")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def make():
    """The same app through a factory (MODULE:make())."""
    return app
