"""A real Flask app on corral and on gunicorn's sync worker, sent the same requests (issue 12).

``apps/flaskreal/app.py`` is a Flask app as its users write them: templates and
static files, JSON views, an ``async def`` view, a view calling
``asyncio.run()``, ``send_file``/``send_from_directory`` (with ranges and
conditional requests), a generator streamed with ``stream_with_context``, a
body read as a stream (a chunked upload, hashed), multipart files, a form with
a redirect, and error handlers for 404 and 500; a client leaving mid-stream
must log no ERROR. corral serves it inline (``threads: 0``, the
default) and with ``threads: 4``; one gunicorn serves as the reference for both
(the app keeps no state, so one peer is enough).

Clients: httpx (through :class:`Diff`), curl for chunked and multipart uploads
as a shell user sends them (``Expect: 100-continue`` included), and a
``requests`` session for the form's post-redirect-get.

Allowed differences beyond the harness's (Date, Server, connection management
and framing), each asserted exactly where it is allowed:

* X-Forwarded-For from a trusted peer: corral gives the app the client's
  address, gunicorn the proxy's (:func:`test_forwarded_for_from_a_trusted_peer`);
* two ``Cookie`` lines: corral joins them with ``"; "``, gunicorn with ``","``
  (:func:`test_repeated_cookie_lines`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import requests

from realapps_util import (APPS, CorralServer, Diff, GunicornServer, curl, from_requests, leave_mid_response,
                           reload_under_load, wait_requests_done)

APP_DIR = APPS / "flaskreal"
APP = "app:app"
GUIDE = (APP_DIR / "files" / "guide.txt").read_bytes()

# A chunked upload of 3 MiB: more than inline mode's spool threshold (1 MiB), so corral spools it to a file.
UPLOAD_PIECE = hashlib.sha256(b"flask upload").hexdigest().encode() * 1024  # 64 KiB
UPLOAD_PIECES = 48


class Pieces:
    """A request body sent in pieces with no length (httpx sends it chunked); iterable again for the second server."""

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(UPLOAD_PIECES):
            yield UPLOAD_PIECE


UPLOAD_SHA256 = hashlib.sha256(UPLOAD_PIECE * UPLOAD_PIECES).hexdigest()
UPLOAD_SIZE = len(UPLOAD_PIECE) * UPLOAD_PIECES


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    server = GunicornServer(tmp_path_factory.mktemp("flask-gunicorn"), APP, app_dir=APP_DIR)
    try:
        yield server
    finally:
        server.stop()


# (threads, more config keys): inline, a thread pool, and workers forked from a zygote that
# imported the app and sent it its warm-up request before forking (docs/zygote.md).
MODES = {"inline": (0, {}), "threads4": (4, {}),
         "zygote-warmup": (0, {"worker_start": "zygote", "preload": True, "preload_warmup": True, "workers": 2})}


@pytest.fixture(scope="module", params=list(MODES))
def diff(request: pytest.FixtureRequest, gunicorn: GunicornServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Diff]:
    threads, config = MODES[request.param]
    corral = CorralServer(tmp_path_factory.mktemp(f"flask-corral-{request.param}"), APP, app_dir=APP_DIR,
                          interface="wsgi", threads=threads, **config)
    pair = Diff(corral, gunicorn)
    try:
        yield pair
    finally:
        corral.stop()
        print(f"\n[realapps flask {request.param}] {pair.compared} requests compared with gunicorn")


def corral_of(diff: Diff) -> CorralServer:
    assert isinstance(diff.ours, CorralServer)
    return diff.ours


def test_workers_come_from_a_zygote_only_in_the_zygote_mode(diff: Diff) -> None:
    corral = corral_of(diff)
    zygotes = corral.status()["zygotes"]
    if not corral.config.get("preload_warmup"):
        assert zygotes == []
        return
    assert "warm-up in the zygote: GET / (Host: localhost) -> 200, 10 requests in " in corral.log(), corral.log()
    assert [(z["state"], z["preloaded"]) for z in zygotes] == [("ready", True)], zygotes


# --------------------------------------------------------------------------- sync views


@pytest.mark.parametrize("path", ["/", "/static/style.css", "/api/items", "/api/items?limit=2", "/api/items/2"])
def test_pages(diff: Diff, path: str) -> None:
    ours, _ = diff.same("GET", path)
    assert ours.status_code == 200


def test_echo_sees_the_same_request(diff: Diff) -> None:
    headers = {"User-Agent": "realapps/1"}
    ours, _ = diff.same("GET", "/echo?a=1&a=2&b=x%20y", headers=headers)
    assert ours.json()["args"] == {"a": ["1", "2"], "b": ["x y"]}
    ours, _ = diff.same("POST", "/echo", json={"name": "Ada", "n": [1, 2]}, headers=headers)
    assert ours.json()["json"] == {"name": "Ada", "n": [1, 2]}
    for method in ("PUT", "PATCH", "DELETE"):
        ours, _ = diff.same(method, "/echo?x=1", headers=headers)
        assert ours.json()["method"] == method


def test_forwarded_proto_from_a_trusted_peer(diff: Diff) -> None:
    """Both servers believe X-Forwarded-Proto from loopback (gunicorn: secure_scheme_headers)."""
    ours, _ = diff.same("GET", "/echo", headers={"X-Forwarded-Proto": "https"})
    assert ours.json()["scheme"] == "https"
    assert ours.json()["url"].startswith("https://")


def test_forwarded_for_from_a_trusted_peer(diff: Diff) -> None:
    """Documented difference: corral applies X-Forwarded-For from a trusted peer, gunicorn does not.

    corral believes X-Forwarded-For from the peers in ``forwarded_allow_ips``
    (loopback and unix sockets by default; README, "Proxy headers"), as uvicorn
    does: behind nginx, the app sees the client's address. gunicorn's sync
    worker never rewrites REMOTE_ADDR (it leaves that to a WSGI middleware such
    as Werkzeug's ProxyFix). Everything else the app saw must be the same.
    """
    headers = {"X-Forwarded-For": "203.0.113.7", "User-Agent": "realapps/1"}
    ours = httpx.get(diff.ours.url + "/echo", headers=headers, timeout=60).json()
    theirs = httpx.get(diff.theirs.url + "/echo", headers=headers, timeout=60).json()
    assert ours.pop("remote_addr") == "203.0.113.7"
    assert theirs.pop("remote_addr") == "127.0.0.1"
    assert _own_port(ours, diff.ours.port) == _own_port(theirs, diff.theirs.port)


def test_repeated_cookie_lines(diff: Diff) -> None:
    """Documented difference: two ``Cookie`` lines reach the app as one, joined as cookies are joined.

    corral joins them with ``"; "`` (the cookie-string separator of RFC 6265,
    and how HTTP/2 rejoins split cookies, RFC 9113 8.2.3), so the app reads both
    cookies. gunicorn joins every repeated header with ``","``, which makes the
    first cookie's value swallow the second: corral is right here.
    """
    headers = [("Cookie", "theme=dark"), ("Cookie", "lang=fr"), ("User-Agent", "realapps/1")]
    ours = httpx.get(diff.ours.url + "/echo", headers=headers, timeout=60).json()
    theirs = httpx.get(diff.theirs.url + "/echo", headers=headers, timeout=60).json()
    assert ours.pop("cookies") == {"theme": "dark", "lang": "fr"}
    assert theirs.pop("cookies") == {"theme": "dark,lang=fr"}
    assert ("Cookie", "theme=dark; lang=fr") in [tuple(h) for h in ours.pop("headers")]
    assert ("Cookie", "theme=dark,lang=fr") in [tuple(h) for h in theirs.pop("headers")]
    assert _own_port(ours, diff.ours.port) == _own_port(theirs, diff.theirs.port)


def _own_port(echoed: dict[str, Any], port: int) -> dict[str, Any]:
    """The echo with the server's own port blanked, as :class:`Diff` blanks it."""
    return json.loads(json.dumps(echoed).replace(f"127.0.0.1:{port}", "127.0.0.1:PORT"))


# --------------------------------------------------------------------------- async


def test_async_view(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/async")
    assert ours.status_code == 200, ours.text
    assert ours.json() == {"squares": [0, 1, 4, 9, 16, 25], "view": "async"}


def test_view_calling_asyncio_run(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/asyncio-run")
    assert ours.status_code == 200, ours.text
    assert ours.json() == {"total": 285, "view": "asyncio.run"}


# --------------------------------------------------------------------------- files


def test_send_file(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/files/guide.txt")
    assert ours.content == GUIDE
    assert ours.headers["accept-ranges"] == "bytes"
    head, _ = diff.same("HEAD", "/files/guide.txt")
    assert head.content == b"" and head.headers["content-length"] == str(len(GUIDE))
    missing, _ = diff.same("GET", "/files/nothing.txt")
    assert missing.status_code == 404


@pytest.mark.parametrize("spec, status, expected", [
    ("bytes=100-199", 206, GUIDE[100:200]),
    ("bytes=-50", 206, GUIDE[-50:]),
    (f"bytes={len(GUIDE) - 10}-", 206, GUIDE[-10:]),
    (f"bytes={len(GUIDE) + 100}-", 416, None),
])
def test_send_file_range(diff: Diff, spec: str, status: int, expected: bytes | None) -> None:
    ours, _ = diff.same("GET", "/files/guide.txt", headers={"Range": spec})
    assert ours.status_code == status
    if expected is not None:
        assert ours.content == expected
        assert ours.headers["content-range"].startswith("bytes ")


def test_send_file_conditional(diff: Diff) -> None:
    first, _ = diff.same("GET", "/files/guide.txt")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    ours, _ = diff.same("GET", "/files/guide.txt", headers={"If-None-Match": etag})
    assert ours.status_code == 304 and ours.content == b""
    ours, _ = diff.same("GET", "/files/guide.txt", headers={"If-Modified-Since": modified})
    assert ours.status_code == 304
    ours, _ = diff.same("GET", "/files/guide.txt", headers={"If-Range": etag, "Range": "bytes=0-9"})
    assert ours.status_code == 206 and ours.content == GUIDE[:10]
    ours, _ = diff.same("GET", "/files/guide.txt", headers={"If-Range": '"stale"', "Range": "bytes=0-9"})
    assert ours.status_code == 200 and ours.content == GUIDE


def test_send_file_from_memory(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/report.bin")
    assert len(ours.content) == 2 * 1024 * 1024
    assert ours.headers["content-disposition"] == "attachment; filename=report.bin"
    part, _ = diff.same("GET", "/report.bin", headers={"Range": "bytes=1048576-1048675"})
    assert part.status_code == 206 and part.content == ours.content[1048576:1048676]


# --------------------------------------------------------------------------- streaming


def test_streamed_generator(diff: Diff) -> None:
    ours, theirs = diff.same("GET", "/stream?lines=5000&word=hello")
    lines = ours.text.splitlines()
    assert len(lines) == 5000 and lines[-1] == "04999 hello /stream"
    # No length known: HTTP/1.1 streams it chunked on both servers.
    assert ours.headers.get("transfer-encoding") == theirs.headers.get("transfer-encoding") == "chunked"


def test_client_leaving_mid_stream(diff: Diff) -> None:
    """A client that hangs up during a long stream is an ordinary event: no ERROR, and the worker serves on."""
    corral = corral_of(diff)
    before = corral.status()["requests_total"]
    for _ in range(3):
        assert leave_mid_response(corral, "/stream?lines=2000000") >= 64 * 1024
    wait_requests_done(corral, before + 3)
    assert corral.errors_logged() == [], corral.log()
    diff.same("GET", "/stream?lines=10")


# --------------------------------------------------------------------------- request bodies


def test_chunked_upload(diff: Diff) -> None:
    ours, _ = diff.same("POST", "/upload", content=Pieces(), headers={"Content-Type": "application/octet-stream"})
    assert ours.status_code == 200, ours.text
    assert ours.json() == {"sha256": UPLOAD_SHA256, "size": UPLOAD_SIZE, "content_length": None,
                           "transfer_encoding": "chunked"}


def test_chunked_upload_with_curl(diff: Diff, tmp_path: Path) -> None:
    body = tmp_path / "upload.bin"
    body.write_bytes(UPLOAD_PIECE * UPLOAD_PIECES)
    args = ("-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/octet-stream",
            "--data-binary", f"@{body}")
    ours = curl(diff.ours.url + "/upload", *args)
    theirs = curl(diff.theirs.url + "/upload", *args)
    diff.compare("POST /upload (curl, chunked)", ours, theirs)
    assert json.loads(ours.body) == {"sha256": UPLOAD_SHA256, "size": UPLOAD_SIZE, "content_length": None,
                                     "transfer_encoding": "chunked"}


def test_upload_with_length(diff: Diff) -> None:
    ours, _ = diff.same("POST", "/upload", content=GUIDE)
    assert ours.json() == {"sha256": hashlib.sha256(GUIDE).hexdigest(), "size": len(GUIDE),
                           "content_length": len(GUIDE), "transfer_encoding": None}


def test_multipart_files(diff: Diff) -> None:
    files = [("doc", ("guide.txt", GUIDE, "text/plain")),
             ("doc", ("blob.bin", UPLOAD_PIECE, "application/octet-stream"))]
    ours, _ = diff.same("POST", "/attachments", data={"title": "two files"}, files=files)
    assert ours.status_code == 200, ours.text
    assert ours.json()["form"] == {"title": ["two files"]}
    assert [f["sha256"] for f in ours.json()["files"]["doc"]] == [hashlib.sha256(GUIDE).hexdigest(),
                                                                  hashlib.sha256(UPLOAD_PIECE).hexdigest()]


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_multipart_files_with_curl(diff: Diff, tmp_path: Path, framing: str) -> None:
    """``curl -F`` with a 3 MiB file (curl sends ``Expect: 100-continue``), with a length or chunked."""
    big = tmp_path / "big.bin"
    big.write_bytes(UPLOAD_PIECE * UPLOAD_PIECES)
    args = ["-F", "title=from curl", "-F", f"doc=@{big}",
            "-F", f"doc=@{APP_DIR / 'files' / 'guide.txt'};type=text/plain"]
    if framing == "chunked":
        args += ["-H", "Transfer-Encoding: chunked"]
    ours = curl(diff.ours.url + "/attachments", *args)
    theirs = curl(diff.theirs.url + "/attachments", *args)
    diff.compare(f"POST /attachments (curl -F, {framing})", ours, theirs)
    docs = json.loads(ours.body)["files"]["doc"]
    assert [(d["filename"], d["size"]) for d in docs] == [("big.bin", UPLOAD_SIZE), ("guide.txt", len(GUIDE))]
    assert docs[0]["sha256"] == UPLOAD_SHA256


def test_form_and_redirect(diff: Diff) -> None:
    diff.same("GET", "/contact")
    invalid, _ = diff.same("POST", "/contact", data={"name": "", "message": "hi"})
    assert invalid.status_code == 400 and b"Please tell us your name." in invalid.content
    fields = {"name": "Ada Lovelace", "message": "Two saws, please.", "topic": ["orders", "returns"]}
    ours, _ = diff.same("POST", "/contact", data=fields)
    assert ours.status_code == 302
    assert ours.headers["location"] == "/thanks?name=Ada+Lovelace&topics=orders&topics=returns"
    moved, _ = diff.same("GET", "/old-home")
    assert moved.status_code == 301 and moved.headers["location"] == "/"


def test_form_with_requests_session(diff: Diff) -> None:
    """The post-redirect-get as ``requests`` follows it: the final page and the history agree."""
    answers = []
    for server in (diff.ours, diff.theirs):
        with requests.Session() as session:
            response = session.post(server.url + "/contact", timeout=60,
                                    data={"name": "Grace", "message": "A chisel.", "topic": "orders"})
            assert [r.status_code for r in response.history] == [302]
            answers.append(from_requests(response))
    diff.compare("POST /contact (requests, redirect followed)", *answers)
    assert b"Thank you, Grace!" in answers[0].body and b"Topics: orders" in answers[0].body


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("path", ["/no/such/page", "/api/items/99"])
def test_not_found(diff: Diff, path: str) -> None:
    ours, _ = diff.same("GET", path)
    assert ours.status_code == 404


def test_no_errors_logged(diff: Diff) -> None:
    """Everything so far was an ordinary request: nothing at ERROR in corral's log."""
    corral = corral_of(diff)
    assert corral.errors_logged() == [], corral.log()


def test_server_error_handler(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/boom")
    assert ours.status_code == 500
    assert b"Something went wrong" in ours.content
    # Flask logs the exception (to wsgi.errors, which corral logs and gunicorn writes to its error log).
    corral = corral_of(diff)
    assert "Exception on /boom [GET]" in corral.log(), corral.log()
    assert "ZeroDivisionError: boom" in corral.log()
    assert "Exception on /boom [GET]" in diff.theirs.log()


def test_reload_under_load(diff: Diff) -> None:
    corral = corral_of(diff)
    counts = reload_under_load(corral, "/api/items")
    print(f"\n[realapps flask threads={corral.config['threads']}] reload under load: {counts}")
    assert counts["failed"] == 0, counts
    assert counts["ok"] > 0
    diff.same("GET", "/async")  # the new generation serves the async view too
