"""Apps wrapped in wsgiref.validate.validator: it asserts PEP 3333 rules on our side of the interface.

A violation raises AssertionError inside the server (a 500, logged), and an
iterable never closed is reported when it is garbage-collected; both show in
the server's log, which must stay clean.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from wsgi_util import MODE_IDS, MODES, WSGIProc, chunked, recv_response, request


@pytest.fixture(scope="module", params=MODES, ids=MODE_IDS)
def vserver(request):
    proc = WSGIProc("wsgi_apps:validated_app", threads=request.param)
    try:
        yield proc
    finally:
        proc.cleanup()


def test_validated_apps(vserver, tmp_path):
    body = b"line one\nline two\nend"
    file_path = tmp_path / "f.bin"
    file_path.write_bytes(os.urandom(100_000))
    checks = [
        request(vserver, "GET", "/environ?x=1"),
        request(vserver, "POST", "/body?mode=readn", body=body),
        request(vserver, "POST", "/body?mode=readline", headers={"Transfer-Encoding": "chunked"},
                body=chunked(body, 5)),
        request(vserver, "POST", "/body?mode=readlines", body=body),
        request(vserver, "POST", "/body?mode=iter", body=body),
        request(vserver, "GET", "/stream?n=3"),
        request(vserver, "GET", "/multi"),
        request(vserver, "GET", "/write"),
        request(vserver, "GET", "/exc-before"),
        request(vserver, "GET", "/no-content"),
        request(vserver, "HEAD", "/multi"),
        request(vserver, "GET", f"/file?path={file_path}"),
    ]
    statuses = [r.status for r in checks]
    assert statuses == [200, 200, 200, 200, 200, 200, 200, 200, 503, 204, 200, 200], statuses
    assert checks[1].json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert checks[2].json()["lines"] == ["line one\n", "line two\n", "end"]
    assert checks[-1].body == file_path.read_bytes()
    # A keep-alive connection through several validated requests.
    with vserver.connect() as sock:
        for _ in range(3):
            sock.sendall(b"GET /stream?n=2 HTTP/1.1\r\nHost: t\r\n\r\n")
            assert recv_response(sock).body == b"chunk 0\nchunk 1\n"
    log = vserver.log_text()
    assert "AssertionError" not in log, log
    assert "garbage collected without being closed" not in log, log
    assert "Exception in WSGI application" not in log, log


def test_validator_catches_a_violation(vserver):
    """The check above can fail: reading wsgi.input with no size argument trips the validator."""
    r = request(vserver, "POST", "/body?mode=read", body=b"abc")
    assert r.status == 500
    assert "AssertionError" in vserver.log_text()
