"""The environ over real sockets: PEP 3333 keys, decoding, headers, proxies, addresses."""

from __future__ import annotations

import pytest

from wsgi_util import request

PEP3333 = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
           "SERVER_PROTOCOL"]


def test_every_key_and_flags(server, mode):
    r = request(server, "GET", "/environ?a=1&b=%20", headers={"Host": "example.org:8080"})
    assert r.status == 200
    env = r.json()
    for key in PEP3333:
        assert key in env, key
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.org", "8080")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is bool(mode)
    assert env["wsgi.multiprocess"] is True and env["wsgi.run_once"] is False
    assert {"wsgi.input", "wsgi.errors", "wsgi.file_wrapper", "wsgi.input_terminated"} <= set(env["has"])
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"].isdigit()
    assert env["HTTP_HOST"] == "example.org:8080"


def test_path_info_percent_decoded_as_latin1(server):
    env = request(server, "GET", "/environ/caf%C3%A9%2Fx?q=%C3%A9").json()
    # the UTF-8 bytes of "é", each as one latin-1 character (PEP 3333 native string)
    assert env["PATH_INFO"] == "/environ/caf\u00c3\u00a9/x"
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/environ/café/x"
    assert env["QUERY_STRING"] == "q=%C3%A9"
    assert env["RAW_URI"] == "/environ/caf%C3%A9%2Fx?q=%C3%A9"


def test_headers_merged_and_content_headers(server):
    raw = ("POST /environ HTTP/1.1\r\nHost: h\r\nAccept: text/html\r\nX-Multi: one\r\nAccept: text/plain\r\n"
           "X-Multi: two\r\nCookie: a=1\r\nCookie: b=2\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
           "X_Sneaky: dropped\r\n\r\nabc")
    from wsgi_util import recv_response
    with server.connect() as sock:
        sock.sendall(raw.encode())
        env = recv_response(sock).json()
    assert env["HTTP_ACCEPT"] == "text/html,text/plain"
    assert env["HTTP_X_MULTI"] == "one,two"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert "HTTP_X_SNEAKY" not in env  # underscores in names could smuggle past a proxy


def test_http10_protocol_and_server_name_from_socket(server):
    r = request(server, "GET", "/environ", headers={"Host": ""}, version="1.0")
    env = r.json()
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(server.port))


def test_trusted_proxy_headers_set_scheme_and_remote_addr(server):
    # 127.0.0.1 is trusted by default (forwarded_allow_ips)
    env = request(server, "GET", "/environ", headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7, 127.0.0.1", "Host": "shop.example"}).json()
    assert env["wsgi.url_scheme"] == "https"
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("shop.example", "443")


def test_rfc7239_forwarded_when_configured(make_server):
    srv = make_server(settings={"forwarded_headers": ["forwarded"]})
    env = request(srv, "GET", "/environ", headers={"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}).json()
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["wsgi.url_scheme"]) == ("2001:db8::1", "4711", "https")


def test_untrusted_peer_cannot_set_scheme(make_server):
    srv = make_server(settings={"forwarded_allow_ips": []})
    env = request(srv, "GET", "/environ", headers={"X-Forwarded-Proto": "https",
                                                   "X-Forwarded-For": "203.0.113.7"}).json()
    assert env["wsgi.url_scheme"] == "http"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTP_X_FORWARDED_PROTO"] == "https"  # still visible as a plain header


def test_script_name_from_root_path(make_server):
    srv = make_server(settings={"root_path": "/shop"})
    env = request(srv, "GET", "/environ?x=1").json()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/shop", "/environ", "x=1")


@pytest.mark.parametrize("threads", [0, 2])
def test_unix_socket_peer(make_server, tmp_path, threads):
    srv = make_server(threads=threads, unix=str(tmp_path / "wsgi.sock"))
    env = request(srv, "GET", "/environ", headers={"Host": "internal:81"}).json()
    assert env["REMOTE_ADDR"] == "" and "REMOTE_PORT" not in env
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("internal", "81")
