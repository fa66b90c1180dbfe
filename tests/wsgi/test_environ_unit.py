"""Unit tests of environ construction (PEP 3333 keys, decoding, header mapping)."""

from __future__ import annotations

import io

import pytest

from corral.engine.wsgi.environ import (
    ERRORS,
    build_environ,
    environ_base,
    set_client,
    decode_path,
    header_key,
    script_name_for,
    split_host,
    split_script_name,
)

PEP3333_KEYS = {
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
    "SERVER_PROTOCOL", "wsgi.version", "wsgi.url_scheme", "wsgi.input", "wsgi.errors",
    "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
}


def make(headers=(), raw_path=b"/", query=b"", version="1.1", client=("10.0.0.9", 5555),
         server=("127.0.0.1", 8000), scheme="http", script_name="", method="GET"):
    base = environ_base(client, server, scheme, script_name, True, True, object)
    return build_environ(base, method, raw_path, query, version, list(headers), io.BytesIO())


def test_every_pep3333_key_present_and_typed():
    env = make([(b"host", b"example.org:8080")])
    assert PEP3333_KEYS <= env.keys()
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.errors"] is ERRORS
    assert env["wsgi.run_once"] is False
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    for key, value in env.items():
        if key.isupper():
            assert type(value) is str, key


def test_path_is_percent_decoded_then_latin1():
    # "/caf%C3%A9/a%2Fb" -> bytes b"/caf\xc3\xa9/a/b" -> latin-1 native string
    env = make(raw_path=b"/caf%C3%A9/a%2Fb", query=b"x=%20y&z")
    assert env["PATH_INFO"] == "/caf\xc3\xa9/a/b"
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/a/b"
    assert env["QUERY_STRING"] == "x=%20y&z"  # raw, not decoded
    assert env["RAW_URI"] == "/caf%C3%A9/a%2Fb?x=%20y&z"
    assert decode_path(b"/plain") == "/plain"


def test_script_name_from_root_path():
    sn = script_name_for("/app/")
    assert sn == "/app"
    env = make(raw_path=b"/app/users/1", script_name=sn)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/users/1")
    assert make(raw_path=b"/app", script_name=sn)["PATH_INFO"] == ""
    # not on a segment boundary, or outside the mount: passed through whole
    assert split_script_name("/application", "/app") == "/application"
    assert split_script_name("/other", "/app") == "/other"
    assert script_name_for("/caf\u00e9") == "/caf\xc3\xa9"
    assert script_name_for("") == ""


def test_headers_mapped_merged_and_content_headers_unprefixed():
    env = make([
        (b"host", b"h"), (b"Accept", b"text/html"), (b"accept", b"text/plain"),
        (b"content-type", b"application/json"), (b"content-length", b"12"),
        (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x-custom-thing", b"caf\xe9"),
    ])
    assert env["HTTP_ACCEPT"] == "text/html,text/plain"
    assert env["CONTENT_TYPE"] == "application/json"
    assert env["CONTENT_LENGTH"] == "12"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_X_CUSTOM_THING"] == "caf\xe9"


def test_underscore_header_names_are_dropped():
    env = make([(b"x_forwarded_for", b"1.2.3.4"), (b"x-forwarded-for", b"5.6.7.8")])
    assert env["HTTP_X_FORWARDED_FOR"] == "5.6.7.8"
    assert header_key(b"x_forwarded_for") == ""


def test_no_content_length_without_header():
    env = make([(b"transfer-encoding", b"chunked")])
    assert "CONTENT_LENGTH" not in env
    assert env["wsgi.input_terminated"] is True


@pytest.mark.parametrize("host,scheme,expected", [
    ("example.org", "http", ("example.org", "80")),
    ("example.org", "https", ("example.org", "443")),
    ("example.org:8443", "https", ("example.org", "8443")),
    ("[::1]:9000", "http", ("[::1]", "9000")),
    ("[::1]", "https", ("[::1]", "443")),
])
def test_split_host(host, scheme, expected):
    assert split_host(host, scheme) == expected


def test_server_name_port_from_host_then_socket():
    assert (make([(b"host", b"example.org")])["SERVER_NAME"], make([(b"host", b"example.org")])["SERVER_PORT"]) == ("example.org", "80")
    env = make(version="1.0", server=("127.0.0.1", 8000))
    assert (env["SERVER_NAME"], env["SERVER_PORT"], env["SERVER_PROTOCOL"]) == ("127.0.0.1", "8000", "HTTP/1.0")
    env = make(server=None, scheme="https")
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", "443")


def test_remote_addr_and_scheme():
    env = make(client=("192.0.2.7", 40000), scheme="https")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["wsgi.url_scheme"]) == ("192.0.2.7", "40000", "https")
    env = make(client=None)
    assert env["REMOTE_ADDR"] == "" and "REMOTE_PORT" not in env
    set_client(env, ("203.0.113.5", 0))  # a request's trusted X-Forwarded-For overrides the peer
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.5", "0")


def test_base_is_not_modified_by_requests():
    base = environ_base(("1.2.3.4", 1), ("127.0.0.1", 80), "http", "", False, True, None)
    before = dict(base)
    build_environ(base, "POST", b"/x", b"a=1", "1.1", [(b"host", b"h:1"), (b"x-a", b"1")], io.BytesIO())
    assert base == before


def test_errors_stream_logs_lines(caplog):
    with caplog.at_level("ERROR", logger="corral.app"):
        ERRORS.write("first line\nsecond ")
        ERRORS.write("part\n")
        ERRORS.write("tail")
        ERRORS.flush()
    assert [r.getMessage() for r in caplog.records] == ["first line", "second part", "tail"]
    with pytest.raises(TypeError):
        ERRORS.write(b"bytes")
