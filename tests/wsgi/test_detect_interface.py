"""``interface: auto``: corral.appload.detect_interface on real framework apps and edge cases."""

from __future__ import annotations

import functools
from wsgiref.validate import validator

import pytest

from corral.appload import detect_interface
from corral.demo import hello


async def asgi_fn(scope, receive, send):
    pass


def wsgi_fn(environ, start_response):
    return []


def wsgi_with_optional(environ, start_response, extra=None):
    return []


def sync_asgi(scope, receive, send):  # returns a coroutine: still ASGI 3
    return asgi_fn(scope, receive, send)


class AsgiClass:
    async def __call__(self, scope, receive, send):
        pass


class WsgiClass:
    def __call__(self, environ, start_response):
        return []


def test_plain_callables():
    assert detect_interface(hello.asgi) == "asgi"
    assert detect_interface(hello.wsgi) == "wsgi"
    assert detect_interface(asgi_fn) == "asgi"
    assert detect_interface(wsgi_fn) == "wsgi"
    assert detect_interface(wsgi_with_optional) == "wsgi"  # only required arguments count
    assert detect_interface(sync_asgi) == "asgi"
    assert detect_interface(AsgiClass()) == "asgi"
    assert detect_interface(WsgiClass()) == "wsgi"


def test_wrappers():
    assert detect_interface(functools.partial(asgi_fn)) == "asgi"
    assert detect_interface(functools.partial(wsgi_with_optional, extra=1)) == "wsgi"

    @functools.wraps(wsgi_fn)
    def wrapped(*args, **kwargs):
        return wsgi_fn(*args, **kwargs)

    assert detect_interface(wrapped) == "wsgi"
    assert detect_interface(validator(wsgi_fn)) == "wsgi"  # lint_app(*args, **kw): WSGI by default


def test_frameworks():
    flask = pytest.importorskip("flask")
    assert detect_interface(flask.Flask("x")) == "wsgi"
    starlette = pytest.importorskip("starlette.applications")
    assert detect_interface(starlette.Starlette()) == "asgi"
    fastapi = pytest.importorskip("fastapi")
    assert detect_interface(fastapi.FastAPI()) == "asgi"
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler
    assert detect_interface(WSGIHandler.__new__(WSGIHandler)) == "wsgi"
    assert detect_interface(ASGIHandler.__new__(ASGIHandler)) == "asgi"
