"""preload_warmup: the warm-up request sent once in a preloading zygote (corral.worker.zygote_warmup).

In-process: warm_up() against small WSGI apps (what it sends, the https retry, the timeout, and
the leftovers it refuses). Real processes: with the key, the module an app imports on its first
request is imported once, by the zygote, and every worker serves with that copy; without it each
worker imports its own; a warm-up that keeps a file open stops the start with the fd named.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_zygote import failed_start_log, refused_reload, the_zygote, zcorral

from corral.worker.zygote_warmup import REPEATS, WarmupRefused, warm_up
from util import wait_until

WARMUP = {"path": "/", "host": None, "max_status": 499, "timeout": 30.0}


class Recorder:
    """A WSGI app that records each environ it is called with and answers with ``answer(environ)``."""

    def __init__(self, answer: Any = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answer = answer or (lambda environ: ("200 OK", [("Content-Length", "2")], [b"ok"]))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.calls.append(environ)
        status, headers, body = self.answer(environ)
        start_response(status, headers)
        return body


def test_it_sends_gets_with_a_host_the_app_accepts_until_the_interpreter_has_settled():
    app = Recorder()
    described = warm_up(app, "wsgi", {**WARMUP, "path": "/home?x=1"})
    assert len(app.calls) == REPEATS > 8  # CPython 3.11 specialises a function after 8 calls
    environ = app.calls[-1]
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"]) == ("GET", "/home", "x=1")
    assert environ["HTTP_HOST"] == "localhost"
    assert environ["HTTP_USER_AGENT"] == "corral-warmup"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.input"].read() == b""
    assert described.startswith(f"GET /home?x=1 (Host: localhost) -> 200, {REPEATS} requests in ")


def test_a_redirect_to_https_is_asked_again_as_https():
    def answer(environ):
        if environ["wsgi.url_scheme"] != "https":
            return "301 Moved Permanently", [("Location", "https://localhost/")], [b""]
        return "200 OK", [], [b"ok"]

    app = Recorder(answer)
    assert "-> 200" in warm_up(app, "wsgi", WARMUP)
    assert [e["wsgi.url_scheme"] for e in app.calls] == ["http"] + ["https"] * REPEATS
    assert app.calls[1]["HTTP_X_FORWARDED_PROTO"] == "https"


def test_a_warm_up_that_hangs_is_stopped_at_its_timeout_even_through_the_apps_except():
    def answer(environ):
        try:
            time.sleep(60)
        except Exception:  # noqa: BLE001  an app that turns every error into a 500
            return "500 Internal Server Error", [], [b""]
        return "200 OK", [], [b""]

    start = time.monotonic()
    described = warm_up(Recorder(answer), "wsgi", {**WARMUP, "timeout": 0.5})
    assert time.monotonic() - start < 10
    assert "no answer" in described


def test_an_app_error_is_left_to_the_workers_warm_up_and_not_asked_again():
    def answer(environ):
        raise RuntimeError("urls.py is broken")

    app = Recorder(answer)
    assert "no answer, 1 request in " in warm_up(app, "wsgi", WARMUP)
    assert len(app.calls) == 1


@pytest.mark.parametrize("status", ["404 Not Found", "500 Internal Server Error"])
def test_an_error_status_is_not_asked_again(status):
    app = Recorder(lambda environ: (status, [], [b""]))
    assert f"-> {status[:3]}, 1 request in " in warm_up(app, "wsgi", WARMUP)
    assert len(app.calls) == 1


def test_a_file_left_open_is_refused_and_named(tmp_path):
    kept: list[Any] = []

    def answer(environ):
        kept.append(open(tmp_path / "db.sqlite3", "wb"))  # noqa: SIM115
        return "200 OK", [], [b"ok"]

    try:
        with pytest.raises(WarmupRefused) as refused:
            warm_up(Recorder(answer), "wsgi", WARMUP)
        assert f"({tmp_path / 'db.sqlite3'})" in str(refused.value)
        assert "set preload_warmup: false" in str(refused.value)
    finally:
        for f in kept:
            f.close()


def test_a_file_closed_with_the_response_is_fine(tmp_path):
    class Body(list):
        def close(self):
            self.file.close()

    def answer(environ):
        body = Body([b"ok"])
        body.file = open(tmp_path / "db.sqlite3", "wb")  # noqa: SIM115
        return "200 OK", [], body

    assert "-> 200" in warm_up(Recorder(answer), "wsgi", WARMUP)


def test_a_thread_left_running_is_refused_and_named():
    stop = threading.Event()

    def answer(environ):
        threading.Thread(target=stop.wait, name="cache-filler", daemon=True).start()
        return "200 OK", [], [b"ok"]

    try:
        with pytest.raises(WarmupRefused, match="thread 'cache-filler'"):
            warm_up(Recorder(answer), "wsgi", WARMUP)
    finally:
        stop.set()


def test_threads_running_before_the_warm_up_are_not_its_leftovers():
    stop = threading.Event()
    threading.Thread(target=stop.wait, name="already-there", daemon=True).start()
    try:
        assert "-> 200" in warm_up(Recorder(), "wsgi", WARMUP)
    finally:
        stop.set()


def test_an_asgi_app_is_refused():
    with pytest.raises(WarmupRefused, match="WSGI apps only"):
        warm_up(Recorder(), "asgi", WARMUP)


# ------------------------------------------------------------------ real processes


def lazy_importers(app_dir: Path) -> list[int]:
    log = app_dir / "lazy.log"
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def answers(corral: Any, pids: set[int]) -> dict[int, dict[str, Any]]:
    seen: dict[int, dict[str, Any]] = {}

    def all_seen() -> bool:
        status, body, _ = corral.get("/")
        assert status == 200, body
        data = json.loads(body)
        seen[data["pid"]] = data
        return pids <= set(seen)

    wait_until(all_seen, 60, 0.0, f"an answer from each of {sorted(pids)}")
    return seen


def test_the_zygote_imports_what_the_first_request_loads_and_every_worker_shares_it(tmp_path, app_dir):
    with zcorral(tmp_path, app_dir, workers=3, app="warmwsgi:app", preload_warmup=True) as corral:
        zygote = the_zygote(corral, 1)["pid"]
        workers = {w["pid"] for w in corral.status()["workers"]}
        for pid, data in answers(corral, workers).items():
            assert data["lazy_imported_in"] == zygote, (pid, data)
        assert lazy_importers(app_dir) == [zygote]  # once, and never again in a worker
        assert "warm-up in the zygote: GET / (Host: localhost) -> 200" in corral.log()


def test_without_the_key_each_worker_imports_its_own(tmp_path, app_dir):
    with zcorral(tmp_path, app_dir, workers=2, app="warmwsgi:app") as corral:
        workers = {w["pid"] for w in corral.status()["workers"]}
        for pid, data in answers(corral, workers).items():
            assert data["lazy_imported_in"] == pid
        assert sorted(lazy_importers(app_dir)) == sorted(workers)


def test_a_warm_up_that_keeps_a_file_open_stops_the_start_and_names_it(tmp_path, app_dir):
    log = failed_start_log(zcorral(tmp_path, app_dir, workers=2, app="warmwsgi:app", preload_warmup=True,
                                   warmup={"path": "/keep"}))
    assert "preload_warmup refused: the warm-up request in the zygote (GET /keep" in log, log
    assert f"({app_dir / 'warmwsgi.py'})" in log, log
    # The same app and warm-up without the key: each worker keeps its own file, which is fine.
    (tmp_path / "ok").mkdir()
    with zcorral(tmp_path / "ok", app_dir, workers=1, app="warmwsgi:app", warmup={"path": "/keep"}) as corral:
        assert corral.wait_ready()["workers_ready"] == 1


def test_a_deploy_whose_warm_up_keeps_a_file_open_fails_the_reload_and_the_old_code_serves(tmp_path, app_dir):
    with zcorral(tmp_path, app_dir, workers=2, app="warmwsgi:app", preload_warmup=True) as corral:
        old = {w["pid"] for w in corral.wait_ready()["workers"]}
        (app_dir / "KEEP").write_text("")
        refused_reload(corral, old, "preload_warmup refused")
        code, _, _ = corral.get("/")
        assert code == 200
        # Fixed: the next reload's zygote warms up, and its workers serve.
        (app_dir / "KEEP").unlink()
        result = corral.reload()
        assert result.returncode == 0, result.stderr
        assert corral.status()["generation"] == 3
        assert {w["pid"] for w in corral.ready_workers()}.isdisjoint(old)


@pytest.mark.parametrize(("app", "refusal"), [
    ("zyapp:app", "preload_warmup runs WSGI apps only"),
    ("warmwsgi:make()", "preload_warmup: warmwsgi:make() is an app factory"),
])
def test_an_app_the_zygote_cannot_warm_up_stops_the_start_with_the_fix(tmp_path, app_dir, app, refusal):
    log = failed_start_log(zcorral(tmp_path, app_dir, workers=1, app=app, preload_warmup=True))
    assert refusal in log, log
    assert "set preload_warmup: false" in log


def test_without_preload_the_key_changes_nothing(tmp_path, app_dir):
    with zcorral(tmp_path, app_dir, workers=2, preload=False, app="warmwsgi:app", preload_warmup=True) as corral:
        workers = {w["pid"] for w in corral.status()["workers"]}
        for pid, data in answers(corral, workers).items():
            assert data["lazy_imported_in"] == pid
        assert "warm-up in the zygote" not in corral.log()
        assert os.getpid() not in lazy_importers(app_dir)
