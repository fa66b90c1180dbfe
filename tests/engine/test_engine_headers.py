"""ASGI: cached Date, configurable Server header, proxy headers from trusted peers only."""

from __future__ import annotations

import json
import random
import time
from email.utils import formatdate, parsedate_to_datetime

import pytest
from engine_util import exchange, parse_responses, wait_until

from corral.engine.wire import http_date


def _get(proc, path: bytes = b"/hello", headers: bytes = b""):
    (resp,) = parse_responses(exchange(proc, b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                       + headers + b"\r\n"))
    return resp


def test_date_header_is_current_and_refreshed(server):
    first = _get(server).header("date")
    stamp = parsedate_to_datetime(first).timestamp()
    assert abs(stamp - time.time()) < 5
    later = wait_until(lambda: (d := _get(server).header("date")) != first and d, timeout=10,
                       what="the Date header to move on")
    assert parsedate_to_datetime(later).timestamp() > stamp


def test_http_date_gives_the_bytes_email_utils_gives():
    """The Date line is formatted by corral (engine.wire.http_date), not by email.utils: the same bytes."""
    rng = random.Random(7)
    stamps = [0.0, 951782400.0, 4102444799.0, time.time()] + [rng.uniform(0, 4.2e9) for _ in range(5000)]
    for stamp in stamps:
        assert http_date(stamp) == formatdate(stamp, usegmt=True).encode("ascii"), stamp
    assert abs(parsedate_to_datetime(http_date().decode()).timestamp() - time.time()) < 5


def test_server_header_default_custom_and_off(server, make_server):
    assert _get(server).header("server") == "corral"
    custom = make_server(settings={"server_header": "edge/1"})
    assert _get(custom).header("server") == "edge/1"
    off = make_server(settings={"server_header": None, "date_header": False})
    resp = _get(off)
    assert resp.header("server") is None and resp.header("date") is None


def _scope(proc, headers: bytes) -> dict:
    return json.loads(_get(proc, b"/scope", headers).body)


@pytest.mark.parametrize("xff, client", [
    (b"203.0.113.7", "203.0.113.7"),
    (b"198.51.100.1, 203.0.113.7", "203.0.113.7"),  # right-most untrusted hop wins
    (b"198.51.100.1, 203.0.113.7, 127.0.0.1", "203.0.113.7"),  # trusted hops are skipped
    (b"spoofed, 203.0.113.7", "203.0.113.7"),
    (b"[2001:db8::1]:4711", "2001:db8::1"),
])
def test_x_forwarded_for_from_a_trusted_peer(server, xff, client):
    scope = _scope(server, b"X-Forwarded-For: " + xff + b"\r\n")
    assert scope["client"][0] == client


ALL_PROXY_HEADERS = {"forwarded_headers": ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                                            "forwarded"]}


def test_x_forwarded_proto_and_host(make_server):
    proc = make_server(settings=ALL_PROXY_HEADERS)
    scope = _scope(proc, b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
                         b"X-Forwarded-Host: example.org\r\n")
    assert scope["scheme"] == "https"
    assert ["host", "example.org"] in scope["headers"]


def test_rfc7239_forwarded(make_server):
    proc = make_server(settings=ALL_PROXY_HEADERS)
    scope = _scope(proc, b'Forwarded: for=198.51.100.1;proto=http, for="[2001:db8::7]:80";proto=https;'
                         b'host=shop.example\r\n')
    assert scope["client"][0] == "2001:db8::7"
    assert scope["scheme"] == "https"
    assert ["host", "shop.example"] in scope["headers"]


def test_host_and_forwarded_are_not_believed_by_default(server):
    """A proxy passes a client's own X-Forwarded-Host and Forwarded through (nginx does): by default
    neither is believed, as by gunicorn and uvicorn; X-Forwarded-For/-Proto, which proxies set, are."""
    scope = _scope(server, b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: http\r\n"
                           b"X-Forwarded-Host: evil.example\r\n"
                           b"Forwarded: for=1.2.3.4;proto=https;host=evil.example\r\n")
    assert scope["client"][0] == "203.0.113.9"
    assert scope["scheme"] == "http"
    assert ["host", "t"] in scope["headers"]
    assert ["x-forwarded-host", "evil.example"] in scope["headers"]  # still there, as a plain header


def test_forwarded_headers_setting_is_validated(make_server):
    from corral.engine.settings import EngineSettings

    with pytest.raises(ValueError, match="forwarded_headers: 'x-real-ip' is not one of"):
        EngineSettings(forwarded_headers=("x-real-ip",))
    with pytest.raises(ValueError, match="not a string"):
        EngineSettings(forwarded_headers="forwarded")


def test_proxy_headers_from_an_untrusted_peer_are_ignored(make_server):
    proc = make_server(settings={"forwarded_allow_ips": ["10.1.2.3"]})
    scope = _scope(proc, b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
                         b"Forwarded: for=198.51.100.1;proto=https\r\n")
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


def test_unix_socket_peers_are_trusted_by_default(make_server, tmp_path):
    proc = make_server(unix=str(tmp_path / "s.sock"))
    scope = _scope(proc, b"X-Forwarded-For: 203.0.113.9\r\n")
    assert scope["client"] == ["203.0.113.9", 0]


def test_access_log_formats_escape_control_characters(make_server):
    ua = b'evil"\tagent\\x'
    for fmt in ("common", "combined", "json"):
        proc = make_server(settings={"access_log": True, "access_log_format": fmt})
        _get(proc, b"/hello?q=1", b"User-Agent: " + ua + b"\r\nReferer: http://r.example/\r\n")
        line = wait_until(lambda: [l for l in proc.log_text().splitlines() if "/hello" in l and "q=1" in l],
                          what=f"{fmt} access line")[0]
        assert " 200 " in line or '"status": 200' in line
        if fmt == "common":
            assert '"GET /hello?q=1 HTTP/1.1" 200 13 ' in line
        elif fmt == "combined":
            assert '"GET /hello?q=1 HTTP/1.1" 200 13 "http://r.example/" "evil\\x22\\x09agent\\x5cx"' in line
        else:
            record = json.loads(line[line.index("{"):])
            assert record["status"] == 200 and record["bytes"] == 13 and record["duration"] >= 0
            assert record["user_agent"] == 'evil"\tagent\\x'  # json.dumps escaped it on the wire
            assert "\t" not in line
