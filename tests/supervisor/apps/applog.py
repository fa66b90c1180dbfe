"""A WSGI app that logs as real apps do: a logger with its own stderr handler (a Django
LOGGING dict), one with a file handler, and one with no handler of its own."""

from __future__ import annotations

import logging
import os
import sys

own = logging.getLogger("applog.own")
own_handler = logging.StreamHandler(sys.stderr)
own_handler.setFormatter(logging.Formatter("APPFMT %(levelname)s %(name)s: %(message)s"))
own.addHandler(own_handler)  # propagates to the root logger too, as Django's loggers do

to_file = logging.getLogger("applog.file")
to_file.addHandler(logging.FileHandler(os.environ["APPLOG_FILE"]))

plain = logging.getLogger("applog.plain")
quiet = logging.getLogger("applog.quiet")
quiet.addHandler(logging.NullHandler())  # a library's "no handler configured" marker


def app(environ, start_response):
    tag = environ["QUERY_STRING"]
    own.error("own-handler %s", tag)
    to_file.error("file-handler %s", tag)
    plain.error("no-handler %s", tag)
    quiet.error("null-handler %s", tag)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
