"""ASGI: the scope is complete and exact (TCP and unix sockets, root_path, lifespan state)."""

from __future__ import annotations

import json

from engine_util import exchange, parse_responses, read_responses


def _scope(proc, request: bytes) -> dict:
    (resp,) = parse_responses(exchange(proc, request))
    assert resp.status == 200, resp
    return json.loads(resp.body)


def test_scope_is_complete_and_exact(server):
    scope = _scope(server, b"GET /caf%C3%A9/a%2Fb%20c?x=1&y=%20#frag HTTP/1.1\r\nHost: example.test\r\n"
                           b"X-B: first\r\nx-a: Second \r\nX-B: third\r\nConnection: close\r\n\r\n")
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/café/a/b c"
    assert scope["raw_path"] == "/caf%C3%A9/a%2Fb%20c"
    assert scope["query_string"] == "x=1&y=%20"
    assert scope["root_path"] == ""
    assert scope["headers"] == [["host", "example.test"], ["x-b", "first"], ["x-a", "Second"],
                                ["x-b", "third"], ["connection", "close"]]
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["has_state"] and scope["state"] == {"started_by": "lifespan"}


def test_http10_and_methods_in_scope(server):
    scope = _scope(server, b"DELETE /thing HTTP/1.0\r\n\r\n")
    assert scope["http_version"] == "1.0" and scope["method"] == "DELETE"


def test_absolute_form_target(server):
    scope = _scope(server, b"GET http://example.test/p%41th?q=1 HTTP/1.1\r\nHost: example.test\r\n"
                           b"Connection: close\r\n\r\n")
    assert scope["path"] == "/pAth" and scope["raw_path"] == "/p%41th" and scope["query_string"] == "q=1"


def test_root_path_is_prefixed(make_server):
    proc = make_server(settings={"root_path": "/api"})
    scope = _scope(proc, b"GET /users/1 HTTP/1.0\r\n\r\n")
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/users/1" and scope["raw_path"] == "/api/users/1"


def test_unix_socket_scope(make_server, tmp_path):
    path = str(tmp_path / "s.sock")
    proc = make_server(unix=path)
    scope = _scope(proc, b"GET /x HTTP/1.0\r\n\r\n")
    assert scope["client"] is None
    assert scope["server"] == [path, None]


def test_state_is_a_copy_per_request(server):
    # Each request gets its own shallow copy: the apps below can't leak into each other.
    with server.connect() as sock:
        sock.sendall(b"GET /scope-a HTTP/1.1\r\nHost: t\r\n\r\nGET /scope-b HTTP/1.1\r\nHost: t\r\n\r\n")
        a, b = read_responses(sock, 2)
    assert json.loads(a.body)["state"] == json.loads(b.body)["state"] == {"started_by": "lifespan"}
