"""httpbin without its server-name gate on chunked uploads: what corral does with such a body.

httpbin answers any request with ``Transfer-Encoding: chunked`` with 501 unless
``SERVER_SOFTWARE`` starts with ``gunicorn/`` (``httpbin.core.before_request``,
httpbin issue 340): Werkzeug reads a body that has no Content-Length only when
the server sets ``wsgi.input_terminated``; gunicorn did not, so httpbin sets
that key itself, for gunicorn alone, and refuses every other server by name.
corral sets ``wsgi.input_terminated`` (its ``wsgi.input`` ends where the
decoded body ends), so the gate is the only thing in the way. This module
removes it, and nothing else, so that tests/realapps/test_httpbin.py can
compare the echoed upload with gunicorn's answer to the same upload.
"""

from __future__ import annotations

from httpbin import app
from httpbin.core import before_request

app.before_request_funcs[None].remove(before_request)

__all__ = ["app"]
