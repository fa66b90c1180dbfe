"""The WSGI environ next to gunicorn's and the wsgiref reference's: the same keys, each difference explained.

One environ-dumping app (``wsgi_hardening_apps:environ_keys``) answers the same
requests under corral (both execution modes), gunicorn (its sync worker, what
corral's inline mode stands in for) and ``wsgiref.simple_server`` (the
standard library's reference server). The key sets must match except for the
differences listed below, each with its reason; a key that appears or goes
away on either side fails the test until it is looked at and listed.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

import corral
from util import free_port, stop_process, wait_until
from wsgi_util import HERE, MODE_IDS, MODES, WSGIProc

import wsgi_hardening_apps

GUNICORN = str(Path(sys.executable).parent / "gunicorn")

# Keys gunicorn sets that corral does not, and why that is right.
GUNICORN_ONLY = {
    "gunicorn.socket": "gunicorn's own extension: the raw client socket, which an app must not touch under "
                       "an event-loop server that owns the connection",
    "wsgi.early_hints": "gunicorn's extension for 103 Early Hints; corral sends no 1xx from WSGI apps, and "
                        "apps that know it check for the key first",
}
# Keys corral sets that gunicorn does not.
CORRAL_NOT_GUNICORN = {
    "GATEWAY_INTERFACE": "the CGI/1.1 meta-variable (RFC 3875 4.1.4) that wsgiref, mod_wsgi and granian set",
}
# Keys wsgiref sets that corral does not (besides the whole os.environ, which
# wsgiref copies into every request's environ, as a CGI gateway would).
WSGIREF_ONLY = {
    "REMOTE_HOST": "wsgiref sets it to '' (no reverse DNS); RFC 3875 lets a server leave the lookup out, "
                   "and gunicorn does",
}
# Keys wsgiref sets only on a request without a body.
WSGIREF_ONLY_WITHOUT_BODY = {
    "CONTENT_TYPE": "wsgiref defaults it to text/plain; PEP 3333 lets it be absent, as gunicorn does",
    "CONTENT_LENGTH": "wsgiref sets it to ''; PEP 3333 lets it be absent, as gunicorn does",
}
# Keys corral sets that wsgiref does not.
CORRAL_NOT_WSGIREF = {
    "RAW_URI": "the request target as sent, which gunicorn sets too (and Werkzeug's server)",
    "REMOTE_PORT": "the client's port, as gunicorn and Werkzeug's server set it",
    "wsgi.input_terminated": "wsgi.input ends at the body's end, chunked bodies included (gunicorn sets it)",
}
# Values that must be the same under corral and gunicorn for the same request.
SAME_VALUES = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "RAW_URI", "SERVER_PROTOCOL",
               "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_X_TEST", "HTTP_ACCEPT_ENCODING", "REMOTE_ADDR",
               "wsgi.url_scheme", "wsgi.version", "wsgi.run_once", "wsgi.input_terminated", "<body>")

REQUESTS = {
    # A plain GET (corral's inline mode serves it through its simple-request shortcut).
    "get": ("GET", "/path/x%20y?q=1&r=%C3%A9", {"X-Test": "get"}, b""),
    # A POST with a body (the full request cycle in every mode).
    "post": ("POST", "/form", {"X-Test": "post", "Content-Type": "application/x-www-form-urlencoded"},
             b"a=1&b=2"),
}


def fetch(port: int, name: str) -> dict[str, Any]:
    method, target, headers, body = REQUESTS[name]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, target, body=body or None, headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def wsgiref_port() -> Iterator[int]:
    server = make_server("127.0.0.1", 0, wsgi_hardening_apps.environ_keys, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def gunicorn_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([GUNICORN, "-w", "1", "-b", f"127.0.0.1:{port}", "--chdir", str(HERE),
                             "wsgi_hardening_apps:environ_keys"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: fetch(port, "get"), timeout=60, what="gunicorn serving the environ app")
        yield port
    finally:
        stop_process(proc)


@pytest.fixture(scope="module", params=MODES, ids=MODE_IDS)
def corral_port(request: pytest.FixtureRequest) -> Iterator[int]:
    proc = WSGIProc("wsgi_hardening_apps:environ_keys", threads=request.param)
    try:
        yield proc.port
    finally:
        proc.cleanup()


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_server_software_names_corral_and_its_version(corral_port, name):
    env = fetch(corral_port, name)
    assert env["SERVER_SOFTWARE"] == f"corral/{corral.__version__}"
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_same_keys_as_gunicorn(corral_port, gunicorn_port, name):
    ours = fetch(corral_port, name)
    theirs = fetch(gunicorn_port, name)
    assert set(theirs) - set(ours) == set(GUNICORN_ONLY)
    assert set(ours) - set(theirs) == set(CORRAL_NOT_GUNICORN)
    assert {k: ours[k] for k in SAME_VALUES if k in theirs} == {k: theirs[k] for k in SAME_VALUES if k in theirs}
    # Both name themselves the same way: "server/version".
    assert theirs["SERVER_SOFTWARE"].startswith("gunicorn/")


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_same_keys_as_wsgiref(corral_port, wsgiref_port, name):
    ours = fetch(corral_port, name)
    theirs = {k: v for k, v in fetch(wsgiref_port, name).items() if k not in os.environ}
    reference_only = set(WSGIREF_ONLY) | (set() if REQUESTS[name][3] else set(WSGIREF_ONLY_WITHOUT_BODY))
    assert set(theirs) - set(ours) == reference_only
    assert set(ours) - set(theirs) == set(CORRAL_NOT_WSGIREF)
    assert ours["GATEWAY_INTERFACE"] == theirs["GATEWAY_INTERFACE"]
