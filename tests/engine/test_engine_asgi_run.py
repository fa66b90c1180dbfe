"""ASGI: how the app is run: a task from the first instruction, isolated context per request."""

from __future__ import annotations

import json

from engine_util import read_responses


def test_app_runs_in_one_task_and_context_does_not_leak(server):
    with server.connect() as sock:
        for i, path in enumerate([b"/task-identity", b"/task-identity-sync"] * 3):
            sock.sendall(b"GET " + path + b"?v=%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
            (resp,) = read_responses(sock, 1)
            info = json.loads(resp.body)
            assert info["has_task"] is True
            assert info.get("same_task", True) is True
            assert info["previous"] == "unset"  # contextvars set by earlier requests are invisible


def test_every_kind_of_suspension_works(server):
    with server.connect() as sock:
        for _ in range(3):
            sock.sendall(b"GET /awaits-everything HTTP/1.1\r\nHost: t\r\n\r\n")
            (resp,) = read_responses(sock, 1)
            assert resp.status == 200 and json.loads(resp.body) == [3, 7, ["x", "y"]]
