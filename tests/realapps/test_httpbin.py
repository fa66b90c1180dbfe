"""httpbin (a Flask app from PyPI) on corral and on gunicorn's sync worker: the same answers.

Every request goes to both servers and the normalised answers must be equal
(realapps_util.Diff). httpbin echoes most of what it was sent (headers, args,
form, files, origin, url), so an environ key corral fills differently from
gunicorn shows up in a body here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

import httpbin
import httpx
import pytest
import requests

from corral import __version__ as CORRAL_VERSION
from realapps_util import APPS, CorralServer, Diff, GunicornServer, curl, from_requests, reload_under_load

HTTPBIN_DIR = Path(httpbin.__file__).resolve().parent.parent
APP = "httpbin:app"


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("httpbin")


@pytest.fixture(scope="module")
def corral(tmp: Path) -> Iterator[CorralServer]:
    # Inline WSGI (threads: 0, the default): one request at a time per worker, like gunicorn's sync worker.
    with CorralServer(tmp, APP, app_dir=HTTPBIN_DIR, ready_path="/get") as server:
        yield server


@pytest.fixture(scope="module")
def gunicorn(tmp: Path) -> Iterator[GunicornServer]:
    with GunicornServer(tmp, APP, app_dir=HTTPBIN_DIR, ready_path="/get") as server:
        yield server


@pytest.fixture(scope="module")
def diff(corral: CorralServer, gunicorn: GunicornServer) -> Iterator[Diff]:
    d = Diff(corral, gunicorn)
    yield d
    print(f"\n[realapps] httpbin: {d.compared} requests compared with gunicorn")


def test_get_echoes_args_and_headers(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/get?flavour=oatmeal&flavour=raisin&empty=", headers={"X-Custom": "abc-123"})
    echoed = ours.json()
    assert echoed["args"] == {"flavour": ["oatmeal", "raisin"], "empty": ""}
    assert echoed["headers"]["X-Custom"] == "abc-123"
    diff.same("GET", "/anything/some/path%20with%20space?q=%C3%A9")
    diff.same("GET", "/headers", headers={"Accept": "application/json", "X-Many": "a, b"})
    diff.same("GET", "/user-agent")
    diff.same("GET", "/status/418")
    diff.same("GET", "/")


def test_post_json(diff: Diff) -> None:
    ours, _ = diff.same("POST", "/post?x=1", json={"name": "corral", "list": [1, 2.5, None], "nested": {"é": "ü"}})
    assert ours.json()["json"] == {"name": "corral", "list": [1, 2.5, None], "nested": {"é": "ü"}}
    diff.same("PUT", "/put", content=b"raw bytes \x00\xff", headers={"Content-Type": "application/octet-stream"})
    diff.same("PATCH", "/patch", data={"a": "1", "b": "two words"})
    diff.same("DELETE", "/delete")


def test_post_multipart(diff: Diff) -> None:
    # The boundary is fixed: httpbin echoes the Content-Type, and httpx would pick a random one per request.
    upload = bytes(range(256)) * 40
    ours, _ = diff.same("POST", "/post", data={"field": "value", "other": "ünïcode"},
                        files={"file": ("data.bin", upload, "application/octet-stream"),
                               "note": ("note.txt", b"hello\r\nworld\n", "text/plain")},
                        headers={"Content-Type": "multipart/form-data; boundary=realapps-boundary-1234"})
    echoed = ours.json()
    assert echoed["form"] == {"field": "value", "other": "ünïcode"}
    assert echoed["files"]["note"] == "hello\r\nworld\n"
    assert echoed["files"]["file"].startswith("data:application/octet-stream;base64,")


def test_stream(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/stream/20")
    lines = ours.text.splitlines()
    assert [int(json.loads(line)["id"]) for line in lines] == list(range(20))
    diff.same("GET", "/stream-bytes/5000?seed=7&chunk_size=333")
    diff.same("GET", "/bytes/2048?seed=3")


def _dechunk(raw: bytes) -> bytes:
    """Decode a chunked body as it came on the wire; fail unless it is well-formed and ends with the 0 chunk."""
    out, rest = b"", raw
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        assert sep, f"a chunk-size line without CRLF in {raw[-200:]!r}"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert rest == b"\r\n", f"after the last chunk: {rest!r}"
            return out
        out, rest = out + rest[:size], rest[size:]
        assert rest[:2] == b"\r\n", f"chunk data not followed by CRLF: {rest[:20]!r}"
        rest = rest[2:]


def test_stream_framing_on_the_wire(diff: Diff) -> None:
    """``curl --raw``: both send the stream chunked, well-formed, with the same decoded body."""
    ours = curl(diff.ours.url + "/stream/5", "--raw")
    theirs = curl(diff.theirs.url + "/stream/5", "--raw")
    assert ours.header("transfer-encoding") == theirs.header("transfer-encoding") == "chunked"
    # De-chunked before the comparison's port normalisation, which changes the chunks' lengths.
    diff.compare("GET /stream/5 (curl --raw, de-chunked)", dataclasses.replace(ours, body=_dechunk(ours.body)),
                 dataclasses.replace(theirs, body=_dechunk(theirs.body)))
    assert len(_dechunk(ours.body).splitlines()) == 5


def test_drip(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/drip?duration=1&numbytes=10&code=200&delay=0")
    assert ours.content == b"*" * 10
    diff.same("GET", "/drip?duration=0.2&numbytes=3&code=418&delay=0.1")


@pytest.mark.parametrize("method, path, headers", [
    ("GET", "/status/204", {}),
    ("GET", "/status/304", {}),
    ("GET", "/status/500", {}),
    ("GET", "/etag/abc", {"If-None-Match": '"abc"'}),          # 304, no body
    ("GET", "/etag/abc", {"If-Match": '"other"'}),             # 412
    ("GET", "/cache", {"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}),  # 304
    ("GET", "/response-headers?X-Twice=1&X-Twice=2", {}),      # a repeated header, in order
    ("HEAD", "/get", {}),
    ("HEAD", "/stream/3", {}),
    ("OPTIONS", "/get", {"Origin": "https://example.org", "Access-Control-Request-Method": "PUT"}),
    ("GET", "/html", {}),
    ("GET", "/xml", {}),
    ("GET", "/image/png", {}),
    ("GET", "/encoding/utf8", {}),
])
def test_statuses_and_conditionals(diff: Diff, method: str, path: str, headers: dict[str, str]) -> None:
    # Werkzeug builds Allow from a set of method names, so its order follows the process's string-hash
    # seed (PYTHONHASHSEED): two gunicorns differ in it too. Allow is compared as a set, apart.
    ours, theirs = diff.same(method, path, headers=headers, ignore=["allow"])
    assert _allowed(ours) == _allowed(theirs)
    if ours.status_code in (204, 304) or method == "HEAD":
        assert ours.content == b""


def _allowed(response: httpx.Response) -> set[str]:
    return {method.strip() for method in response.headers.get("allow", "").split(",")}


@pytest.mark.parametrize("byte_range", ["bytes=0-9", "bytes=10-19", "bytes=90-", "bytes=-5", "bytes=200-300"])
def test_range(diff: Diff, byte_range: str) -> None:
    ours, _ = diff.same("GET", "/range/100?chunk_size=7", headers={"Range": byte_range})
    assert ours.status_code == (416 if byte_range == "bytes=200-300" else 206)


def test_range_whole(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/range/1000")
    assert ours.headers["accept-ranges"] == "bytes"
    assert len(ours.content) == 1000


def test_gzip(diff: Diff) -> None:
    # httpx decodes the body; the Content-Encoding header is compared as it came.
    ours, _ = diff.same("GET", "/gzip")
    assert ours.headers["content-encoding"] == "gzip"
    assert ours.json()["gzipped"] is True
    diff.same("GET", "/deflate")
    diff.same("GET", "/brotli")


def test_redirect_not_followed(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/redirect/3")
    assert ours.status_code == 302
    diff.same("GET", "/absolute-redirect/2")
    diff.same("GET", "/redirect-to?url=/get&status_code=307")


def test_redirect_followed(diff: Diff) -> None:
    ours, theirs = diff.same("GET", "/redirect/4", follow_redirects=True)
    assert ours.status_code == 200
    hops = [(r.status_code, r.headers["location"]) for r in ours.history]
    assert hops == [(r.status_code, r.headers["location"]) for r in theirs.history]
    assert len(hops) == 4
    ours, theirs = diff.same("GET", "/absolute-redirect/3", follow_redirects=True)
    # Absolute Locations name each server's own port; normalised, the chains are the same.
    assert [str(r.url).replace(str(diff.ours.port), "PORT") for r in ours.history] == \
        [str(r.url).replace(str(diff.theirs.port), "PORT") for r in theirs.history]


def test_cookies_with_session(diff: Diff) -> None:
    """A requests session per server, as a browser keeps cookies per site."""
    with requests.Session() as ours, requests.Session() as theirs:
        for path in ("/cookies/set?flavour=oatmeal&count=3", "/cookies", "/cookies/delete?count",
                     "/cookies/set/name/value"):
            a = ours.get(diff.ours.url + path, timeout=60)
            b = theirs.get(diff.theirs.url + path, timeout=60)
            assert [r.status_code for r in a.history] == [r.status_code for r in b.history]
            for hop_a, hop_b in zip(a.history, b.history):
                diff.compare(f"GET {path} (hop)", from_requests(hop_a), from_requests(hop_b))
            diff.compare(f"GET {path}", from_requests(a), from_requests(b))
        assert ours.cookies.get_dict() == theirs.cookies.get_dict() == {"flavour": "oatmeal", "name": "value"}
        assert ours.get(diff.ours.url + "/cookies", timeout=60).json() == \
            {"cookies": {"flavour": "oatmeal", "name": "value"}}


def test_basic_auth(diff: Diff) -> None:
    ours, _ = diff.same("GET", "/basic-auth/user/passwd", auth=("user", "passwd"))
    assert ours.json() == {"authenticated": True, "user": "user"}
    ours, _ = diff.same("GET", "/basic-auth/user/passwd", auth=("user", "wrong"))
    assert ours.status_code == 401
    assert ours.headers["www-authenticate"] == 'Basic realm="Fake Realm"'
    ours, _ = diff.same("GET", "/basic-auth/user/passwd")
    assert ours.status_code == 401
    diff.same("GET", "/bearer", headers={"Authorization": "Bearer token-1"})


def test_forwarded_proto_and_for(diff: Diff) -> None:
    """From a trusted peer (loopback, the default of both), the scheme and client address come from the proxy."""
    ours, _ = diff.same("GET", "/get", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"})
    assert ours.json()["url"].startswith("https://") and ours.json()["origin"] == "203.0.113.7"


def test_forwarded_host_is_not_believed_by_default(diff: Diff) -> None:
    """A client's own X-Forwarded-Host and RFC 7239 ``Forwarded`` (which nginx passes through) change
    nothing by default, on corral as on gunicorn: the app's URLs keep the real Host. (corral used to
    believe them from any trusted peer: a client behind the README's nginx could pick the Host.)"""
    for headers in ({"X-Forwarded-Host": "evil.example"},
                    {"Forwarded": "for=1.2.3.4;host=evil.example;proto=https"}):
        ours, _ = diff.same("GET", "/get", headers=headers)
        assert ours.json()["url"] == f"http://127.0.0.1:{diff.ours.port}/get"
        assert ours.json()["origin"] == "127.0.0.1"


@pytest.mark.parametrize("server", ["corral", "gunicorn"])
def test_delay_with_client_timeout(diff: Diff, server: str) -> None:
    """The client gives up before the app answers; the server then serves the next request.

    One worker with one request at a time, on both: the next request waits
    for the delayed one to finish, then is answered.
    """
    target = diff.ours if server == "corral" else diff.theirs
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(target.url + "/delay/2", timeout=0.5)
    after = httpx.get(target.url + "/get?after=delay", timeout=60)
    assert after.status_code == 200
    assert after.json()["args"] == {"after": "delay"}
    if server == "corral":
        # A client that leaves before its answer is an ordinary event, not an error.
        assert diff.ours.errors_logged() == []


def _upload(tmp: Path) -> Path:
    path = tmp / "chunked-upload.txt"
    path.write_bytes(b"".join(b"line %05d of a chunked upload\n" % i for i in range(2000)))
    return path


CHUNKED = ("-X", "POST", "-H", "Transfer-Encoding: chunked", "-H", "Content-Type: text/plain")


def test_chunked_upload_what_a_corral_user_gets(diff: Diff, tmp: Path) -> None:
    """``curl -H 'Transfer-Encoding: chunked' --data-binary @file`` to httpbin's /post.

    gunicorn: 200, the upload echoed. corral: httpbin's own 501, which names
    the server it refused. httpbin accepts chunked uploads from gunicorn only,
    by name (see apps/httpbin_chunked.py for why); this is httpbin's choice,
    and corral must not claim to be gunicorn to get past it. What corral
    owes the app is an honest ``SERVER_SOFTWARE`` (PEP 3333's CGI key, which
    corral did not set before: httpbin's message then named no server at all).
    """
    upload = _upload(tmp)
    theirs = curl(diff.theirs.url + "/post", *CHUNKED, "--data-binary", f"@{upload}")
    assert theirs.status == 200
    assert theirs.body and json.loads(theirs.body)["data"] == upload.read_text()
    ours = curl(diff.ours.url + "/post", *CHUNKED, "--data-binary", f"@{upload}")
    assert ours.status == 501, ours
    assert f"Chunked requests are not supported for server corral/{CORRAL_VERSION}".encode() in ours.body


def test_chunked_upload_body_same_as_gunicorn(diff: Diff, tmp: Path) -> None:
    """With httpbin's server-name gate removed (and only that), corral echoes the chunked upload as gunicorn does."""
    upload = _upload(tmp)
    with CorralServer(tmp / "ungated", "httpbin_chunked:app", app_dir=APPS, ready_path="/get") as ungated:
        pair = Diff(ungated, diff.theirs)
        for extra in ((), ("-H", "Expect: 100-continue")):
            ours = curl(ungated.url + "/post", *CHUNKED, *extra, "--data-binary", f"@{upload}")
            theirs = curl(diff.theirs.url + "/post", *CHUNKED, *extra, "--data-binary", f"@{upload}")
            pair.compare("POST /post (chunked upload, curl)", ours, theirs)
            assert json.loads(ours.body)["data"] == upload.read_text()
        diff.compared += pair.compared
        assert ungated.errors_logged() == []


def test_reload_under_load(diff: Diff) -> None:
    counts = reload_under_load(diff.ours, "/get")
    print(f"\n[realapps] httpbin reload under load: {counts}")
    assert counts["failed"] == 0, counts
    assert counts["ok"] > 0
    assert diff.ours.errors_logged() == []
