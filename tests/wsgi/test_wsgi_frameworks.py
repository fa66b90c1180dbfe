"""Real Flask and Django apps end to end, in both execution modes."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from wsgi_util import WSGIProc, chunked, recv_response

CASES = [("flask", "wsgi_flask_app:app", 0), ("flask", "wsgi_flask_app:app", 4),
         ("django", "wsgi_django_app:application", 0), ("django", "wsgi_django_app:application", 4)]


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    path = tmp_path_factory.mktemp("dl") / "data.bin"
    path.write_bytes(os.urandom(2 * 1024 * 1024 + 17))
    return path


@pytest.fixture(scope="module", params=CASES, ids=[f"{c[0]}-{'inline' if not c[2] else 'threads'}" for c in CASES])
def fw(request, download):
    name, spec, threads = request.param
    proc = WSGIProc(spec, threads=threads, settings={"max_body_size": None},
                    env={"CORRAL_TEST_DOWNLOAD": str(download)})
    client = httpx.Client(base_url=proc.url, timeout=60)
    try:
        yield name, proc, client
    finally:
        client.close()
        proc.cleanup()


def test_get_and_head(fw):
    name, _, c = fw
    r = c.get("/")
    assert r.status_code == 200 and r.text == f"hello from {name}"
    h = c.head("/")
    assert h.status_code == 200 and h.content == b""
    assert h.headers["content-length"] == str(len(r.content))


def test_form_post(fw):
    _, _, c = fw
    r = c.post("/form", data={"name": "Zoë & co", "tag": ["a", "b"]})
    assert r.status_code == 200
    assert r.json()["name"] == "Zoë & co" and r.json()["tags"] == ["a", "b"]


def test_multipart_upload(fw):
    _, _, c = fw
    payload = os.urandom(5 * 1024 * 1024 + 3)
    r = c.post("/upload", files={"file": ("report.bin", payload, "application/octet-stream")},
               data={"note": "quarterly"})
    assert r.status_code == 200, r.text
    assert r.json() == {"filename": "report.bin", "size": len(payload),
                        "sha256": hashlib.sha256(payload).hexdigest(), "note": "quarterly"}


# Flask only: Django reads CONTENT_LENGTH alone and ignores chunked request bodies by design.
FLASK_CASES = [c for c in CASES if c[0] == "flask"]


@pytest.mark.parametrize("fw", FLASK_CASES, indirect=True,
                         ids=[f"flask-{'inline' if not c[2] else 'threads'}" for c in FLASK_CASES])
def test_chunked_multipart_upload_flask(fw):
    name, proc, c = fw
    payload = os.urandom(300_000)
    req = c.build_request("POST", "/upload", files={"file": ("c.bin", payload)})
    body = req.read()
    head = (f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Type: {req.headers['content-type']}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    with proc.connect() as sock:
        sock.sendall(head + chunked(body, 7000))
        r = recv_response(sock)
    assert r.status == 200 and r.json()["sha256"] == hashlib.sha256(payload).hexdigest()


def test_streaming_response(fw):
    _, _, c = fw
    with c.stream("GET", "/stream?n=50") as r:
        assert r.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in r.headers
        text = "".join(r.iter_text())
    assert text == "".join(f"line {i}\n" for i in range(50))


def test_file_download_uses_sendfile(fw, download):
    _, _, c = fw
    before = c.get("/sendfile-count").json()["calls"]
    r = c.get("/download")
    assert r.status_code == 200
    assert r.content == download.read_bytes()
    assert r.headers["content-length"] == str(download.stat().st_size)
    assert "attachment" in r.headers["content-disposition"]
    assert c.get("/sendfile-count").json()["calls"] > before


def test_redirect(fw):
    _, _, c = fw
    r = c.get("/redirect")
    assert r.status_code in (301, 302) and r.headers["location"] in ("/", "http://testserver/", f"{c.base_url}/")
    assert c.get("/redirect", follow_redirects=True).text.startswith("hello from")


def test_error_pages(fw):
    name, proc, c = fw
    r = c.get("/missing")
    assert r.status_code == 404 and "Not Found" in r.text
    r = c.get("/boom")
    assert r.status_code == 500
    assert ("Internal Server Error" in r.text) if name == "flask" else ("Server Error" in r.text)
    assert c.get("/").status_code == 200  # the worker lives on


def test_proxy_headers_reach_the_framework(fw):
    _, _, c = fw
    r = c.get("/whoami", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.4",
                                  "Host": "app.example"})
    data = r.json()
    assert data["remote"] == "198.51.100.4"
    if "scheme" in data:
        assert data["scheme"] == "https" and data["url"] == "https://app.example/whoami"
    else:
        assert data["secure"] is True and data["uri"] == "https://app.example/whoami"


def test_keep_alive_many_requests(fw):
    _, proc, c = fw
    for _ in range(50):
        assert c.get("/").status_code == 200
    assert "Exception in WSGI application" not in proc.log_text()
