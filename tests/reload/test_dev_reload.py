"""`corral run --reload`: a saved file runs the reload transaction (corral.supervisor.devreload).

Each test runs a real `corral run --reload` on an app in tmp_path and edits the app's files as a
developer's editor would. What is asserted: the new code serves after a save; a syntax error
keeps the last good code answering (and is reported once, in one banner); requests sent during
a change are all answered; saves during a reload coalesce into one more; and, side by side,
`uvicorn --reload` on the same syntax error stops answering until the next save while corral
keeps answering. The time from a save to the new code serving is measured on the demo app.
"""

from __future__ import annotations

import http.client
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from reload_util import Load, write_app

from corral.config import load
from corral.supervisor.devreload import BANNER_TITLE, WatchFilter, find_syntax_error
from util import REPO, VENV_BIN, Corral, free_port, stop_process, wait_until

SYNTAX_ERROR = "def broken(:\n    pass\n"
RELOADING = re.compile(r"reload: .* changed; reloading")
SERVING = re.compile(r"reload: new code serving (\d+) ms after the change was seen")


def _get(port: int, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _body_is(port: int, body: bytes) -> bool:
    status, got = _get(port)
    return status == 200 and got == body


class DevCorral(Corral):
    """`corral run --reload` (the flag, as a developer types it) on app:app in ``app_dir``."""

    def __init__(self, tmp_path: Path, app_dir: Path, *args: str, **config: object) -> None:
        config.setdefault("graceful_timeout", 5)
        # workers: auto, which --reload makes one worker.
        super().__init__(tmp_path, "app:app", app_dir, workers="auto", args=["--reload", *args],  # type: ignore[arg-type]
                         **config)

    def wait_ready(self, count: int | None = None, timeout: float = 90.0, exact: bool = False) -> dict[str, Any]:
        data = super().wait_ready(1 if count is None else count, timeout, exact)
        # The watcher logs this once its watches are in place: a save from now on is seen.
        wait_until(lambda: "for changes (development mode)" in self.log(), timeout, 0.02, "the watcher")
        return data

    def banners(self) -> int:
        return self.log().count(BANNER_TITLE)

    def reloads_started(self) -> int:
        return len(RELOADING.findall(self.log()))

    def reloads_served(self) -> list[int]:
        return [int(ms) for ms in SERVING.findall(self.log())]

    def settled_at(self, generation: int) -> bool:
        """``generation`` serves, alone (the old worker gone). Read from the status, not the log: a
        reload that finds corral's own code changed re-executes the supervisor first (while corral
        is being worked on, as in this checkout), and the re-executed image does not log it as a
        dev reload."""
        data = self.status()
        return data["generation"] == generation and data["phase"] == "running" and len(data["workers"]) == 1


def _app_dir(tmp_path: Path, version: str, **options: object) -> Path:
    directory = tmp_path / "src"
    write_app(directory, version, module="app", **options)
    return directory


def _break(app_dir: Path) -> None:
    path = app_dir / "app.py"
    path.write_text(path.read_text() + "\n" + SYNTAX_ERROR)


# --------------------------------------------------------------------------- the filter


def test_watch_filter_follows_uvicorn_patterns(tmp_path):
    (tmp_path / "static").mkdir()
    config = load(None, {"app_dir": str(tmp_path), "reload": "true", "reload_includes": ["*.html", ".env"],
                         "reload_excludes": ["static", "*_test.py"]}, environ={})
    wanted = WatchFilter.from_config(config)
    assert wanted(str(tmp_path / "app.py")) and wanted(str(tmp_path / "pkg" / "views.py"))
    assert wanted(str(tmp_path / "templates" / "index.html")) and wanted(str(tmp_path / ".env"))
    assert not wanted(str(tmp_path / "static" / "x.py")), "an excluded directory"
    assert not wanted(str(tmp_path / "app_test.py")), "an excluded pattern"
    assert not wanted(str(tmp_path / ".app.py.swp")) and not wanted(str(tmp_path / "notes.txt"))
    assert not wanted(str(tmp_path / ".hidden.py")), "hidden files stay excluded"
    assert config.workers == 1, "workers: auto is one worker with reload on"
    only_html = WatchFilter.from_config(load(None, {"app_dir": str(tmp_path), "reload_excludes": ["*.py"],
                                                    "reload_includes": ["*.html"]}, environ={}))
    assert not only_html(str(tmp_path / "app.py")) and only_html(str(tmp_path / "a.html"))


def test_syntax_errors_are_located_by_parsing_only(tmp_path):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text("x = 1\n")
    bad.write_text("import sys\nsys.exit(7)\n" + SYNTAX_ERROR)  # never run: only parsed
    problem = find_syntax_error([str(good), str(bad), str(tmp_path / "deleted.py")])
    assert problem is not None and problem.path == str(bad) and problem.line == 3
    assert find_syntax_error([str(good)]) is None


# --------------------------------------------------------------------------- corral run --reload


def test_edit_serves_the_new_code(tmp_path):
    app_dir = _app_dir(tmp_path, "v1")
    with DevCorral(tmp_path, app_dir) as corral:
        assert _body_is(corral.port, b"v1\n")
        pid = corral.status()["workers"][0]["pid"]
        write_app(app_dir, "v2", module="app")
        wait_until(lambda: _body_is(corral.port, b"v2\n"), 60, 0.02, "v2 served after the save")
        wait_until(lambda: corral.settled_at(2), 30, 0.05, "generation 2 alone")
        assert pid not in {w["pid"] for w in corral.status()["workers"]}
        # A file the filter leaves out (not *.py) reloads nothing.
        (app_dir / "notes.txt").write_text("scratch\n")
        write_app(app_dir, "v3", module="app")
        wait_until(lambda: _body_is(corral.port, b"v3\n"), 60, 0.02, "v3 served after the save")
        wait_until(lambda: corral.settled_at(3), 30, 0.05, "generation 3 alone")
        assert corral.reloads_started() == 2, corral.log()
        assert corral.banners() == 0


def test_syntax_error_keeps_the_last_good_code_serving_and_is_reported_once(tmp_path):
    app_dir = _app_dir(tmp_path, "good")
    with DevCorral(tmp_path, app_dir) as corral:
        assert _body_is(corral.port, b"good\n")
        _break(app_dir)
        wait_until(lambda: corral.banners() == 1, 60, 0.05, "the reload-failed banner")
        # The old code answers, with its old body, on the same socket.
        for _ in range(20):
            assert _get(corral.port) == (200, b"good\n")
        log = corral.log()
        banner = log[log.index(BANNER_TITLE):]
        assert f'File "{app_dir / "app.py"}", line ' in banner and "SyntaxError: " in banner, banner
        assert "the last good code (generation 1) keeps serving" in banner
        # One worker tried the new code (workers: auto is 1 with --reload): one traceback, one banner.
        assert log.count("the app failed to start") == 1 and log.count(BANNER_TITLE) == 1, log
        # Saving the broken file again says so in one line: still one banner.
        _break(app_dir)
        wait_until(lambda: "reload failed again, same error as above" in corral.log(), 60, 0.05,
                   "the one-line repeat")
        assert _get(corral.port) == (200, b"good\n")
        # The next good save recovers.
        write_app(app_dir, "fixed", module="app")
        wait_until(lambda: _body_is(corral.port, b"fixed\n"), 60, 0.02, "the fixed code served")
        wait_until(lambda: "the error is fixed" in corral.log(), 30, 0.05, "the recovery's log line")
        assert corral.banners() == 1, corral.log()
        assert corral.status()["phase"] == "running"


def test_import_error_keeps_the_last_good_code_serving(tmp_path):
    app_dir = _app_dir(tmp_path, "good")
    with DevCorral(tmp_path, app_dir) as corral:
        write_app(app_dir, "bad", module="app", import_error="no database configured")
        wait_until(lambda: corral.banners() == 1, 60, 0.05, "the reload-failed banner")
        assert _get(corral.port) == (200, b"good\n")
        banner = corral.log()[corral.log().index(BANNER_TITLE):]
        assert "RuntimeError: no database configured" in banner, banner
        write_app(app_dir, "good2", module="app")
        wait_until(lambda: _body_is(corral.port, b"good2\n"), 60, 0.02, "the fixed code served")


def test_requests_during_a_change_are_all_answered(tmp_path):
    app_dir = _app_dir(tmp_path, "a")
    with DevCorral(tmp_path, app_dir) as corral, Load(corral.port, clients=4) as load:
        load.wait_for_more(50)
        write_app(app_dir, "b", module="app")
        wait_until(lambda: any(r.version == "b" for r in load.done()), 60, 0.02, "b served under load")
        _break(app_dir)  # a failed reload under load: nothing is lost either
        wait_until(lambda: corral.banners() == 1, 60, 0.05, "the reload-failed banner")
        write_app(app_dir, "c", module="app")
        wait_until(lambda: any(r.version == "c" for r in load.done()), 60, 0.02, "c served under load")
        load.wait_for_more(50)
        load.stop()
        sent, answered = load.total(), load.ok()
        assert sent == answered, (load.summary(), load.errors()[:5])
        assert sent >= 100 and {r.version for r in load.done()} == {"a", "b", "c"}


def test_saves_during_a_reload_coalesce_into_one_more(tmp_path):
    # A slow start-up (lifespan) keeps the first reload running while three more saves land.
    app_dir = _app_dir(tmp_path, "s1", startup_delay=1.5)
    with DevCorral(tmp_path, app_dir) as corral:
        write_app(app_dir, "s2", module="app", startup_delay=1.5)
        wait_until(lambda: corral.reloads_started() == 1, 30, 0.02, "the first reload")
        for version in ("s3", "s4", "s5"):
            write_app(app_dir, version, module="app", startup_delay=1.5)
            time.sleep(0.15)  # pacing the saves (separate batches for the watcher), not waiting on anything
        wait_until(lambda: _body_is(corral.port, b"s5\n"), 60, 0.05, "the last save served")
        # Four saves, two reloads: the first, and one for the three saved while it ran. (One, if
        # corral's own code changed meanwhile: the re-executed supervisor's reload reads all four.)
        wait_until(lambda: corral.settled_at(1 + corral.reloads_started()), 30, 0.05, "the reloads over")
        assert 1 <= corral.reloads_started() <= 2, corral.log()
        assert corral.reloads_started() == 2 or "re-executing the supervisor in place" in corral.log()


def test_broken_at_start_waits_for_the_fix(tmp_path):
    # Without --reload corral exits when no worker can boot; with it, nothing serves yet, the
    # error is reported once and a save starts the app again.
    app_dir = _app_dir(tmp_path, "late")
    _break(app_dir)
    corral = DevCorral(tmp_path, app_dir).start(wait=False)
    with corral:
        wait_until(lambda: corral.banners() == 1, 60, 0.05, "the banner")
        banner = corral.log()[corral.log().index(BANNER_TITLE):]
        assert "nothing serves yet" in banner and f'File "{app_dir / "app.py"}", line ' in banner, banner
        assert corral.proc is not None and corral.proc.poll() is None, "corral must wait, not exit"
        wait_until(lambda: "for changes (development mode)" in corral.log(), 60, 0.02, "the watcher")
        write_app(app_dir, "late", module="app")
        wait_until(lambda: _body_is(corral.port, b"late\n"), 60, 0.05, "the fixed app served")
        write_app(app_dir, "later", module="app")  # from now on a save is an ordinary reload
        wait_until(lambda: _body_is(corral.port, b"later\n"), 60, 0.05, "the next save served")
        assert corral.banners() == 1


def test_missing_watchfiles_names_the_extra(tmp_path):
    blocker = tmp_path / "block" / "watchfiles"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('blocked for this test')\n")
    app_dir = _app_dir(tmp_path, "v1")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    proc = subprocess.run([str(VENV_BIN / "corral"), "run", "--reload", "-b", f"127.0.0.1:{port}",
                           "--control-socket", str(tmp_path / "c.sock"), "--app-dir", str(app_dir), "app:app"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'corral[dev]'" in proc.stderr and "watchfiles" in proc.stderr, proc.stderr
    assert "starting 1 worker" not in proc.stderr, "refused before any worker started"


# --------------------------------------------------------------------------- corral vs uvicorn --reload


def _request_fails(port: int) -> str | None:
    """How a request to ``port`` failed within 2 s, or None if it was answered."""
    try:
        _get(port, timeout=2.0)
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except (ConnectionError, http.client.HTTPException) as exc:
        return f"error: {exc!r}"
    return None


def test_side_by_side_with_uvicorn_reload_on_a_syntax_error(tmp_path):
    uvicorn = VENV_BIN / "uvicorn"
    if not uvicorn.exists():
        pytest.skip("uvicorn is not installed in the virtualenv (the test extra)")
    ours = _app_dir(tmp_path / "corral", "v1")
    theirs = _app_dir(tmp_path / "uvicorn", "v1")
    port = free_port()
    log_path = tmp_path / "uvicorn.log"
    with DevCorral(tmp_path / "corral", ours) as corral, open(log_path, "wb") as uv_log:
        proc = subprocess.Popen([str(uvicorn), "--reload", "--port", str(port), "app:app"], cwd=theirs,
                                stdout=uv_log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: _body_is(port, b"v1\n"), 60, 0.1, "uvicorn serving v1")
            # uvicorn's reloader starts watching some time after its server answers: save until a
            # save is picked up, so that the syntax error below is seen by both.
            def picked_up() -> bool:
                if _body_is(port, b"v1b\n"):
                    return True
                write_app(theirs, "v1b", module="app")  # (again, until its watcher sees one)
                return False

            wait_until(picked_up, 60, 1.0, "uvicorn's watcher picking up a save")
            _break(ours)
            _break(theirs)
            wait_until(lambda: corral.banners() == 1, 60, 0.05, "corral's reload-failed banner")
            wait_until(lambda: "SyntaxError" in log_path.read_text(errors="replace"), 60, 0.05,
                       "uvicorn's reload failing on the syntax error")
            # uvicorn: its server process died on the import; the reloader holds the socket, and
            # nothing answers until the next save. corral: the old code answers.
            failures = [_request_fails(port) for _ in range(3)]
            assert all(failures), f"uvicorn answered during the syntax error: {failures}"
            assert [_get(corral.port) for _ in range(3)] == [(200, b"v1\n")] * 3
            write_app(ours, "v2", module="app")
            write_app(theirs, "v2", module="app")
            wait_until(lambda: _body_is(corral.port, b"v2\n"), 60, 0.02, "corral serving v2")
            wait_until(lambda: _body_is(port, b"v2\n"), 60, 0.1, "uvicorn serving v2 after the fix")
        finally:
            stop_process(proc)


# --------------------------------------------------------------------------- latency


def test_save_to_new_code_serving_time_for_the_demo_app(tmp_path, capsys):
    """The demo app (corral.demo.app, copied: editing corral's own package would upgrade corral
    in place) is saved several times; each time, from the write to the first response with the
    new body. The median is reported (docs/dev-reload.md); the assertion is a loose ceiling for
    a loaded test machine, the target being 500 ms."""
    app_dir = tmp_path / "src"
    app_dir.mkdir()
    source = (REPO / "daemon" / "corral" / "demo" / "app.py").read_text()
    assert 'HELLO = b"Hello from corral!\\n"' in source
    (app_dir / "app.py").write_text(source)
    times = []
    with DevCorral(tmp_path, app_dir) as corral:
        assert _body_is(corral.port, b"Hello from corral!\n")
        for n in range(1, 8):
            body = f"Hello, save {n}!\n".encode()
            text = source.replace('HELLO = b"Hello from corral!\\n"', f"HELLO = {body!r}")
            started = time.monotonic()
            (app_dir / "app.py").write_text(text)
            wait_until(lambda body=body: _body_is(corral.port, body), 60, 0.005, f"save {n} served")
            times.append(time.monotonic() - started)
            # The next save after this reload is over (the old worker gone): one reload per save.
            wait_until(lambda n=n: corral.settled_at(n + 1), 30, 0.02, f"reload {n} over")
        internal = corral.reloads_served()
    median = statistics.median(times)
    with capsys.disabled():
        print(f"\ndev reload, demo app: save -> new code serving: median {median * 1000:.0f} ms over {len(times)} "
              f"saves (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}); corral's own measure "
              f"(change seen -> serving): median {statistics.median(internal or [0]):.0f} ms", file=sys.stderr)
    assert median < 3.0, times


def test_reload_off_watches_nothing(tmp_path):
    app_dir = _app_dir(tmp_path, "v1")
    with Corral(tmp_path, "app:app", app_dir, workers=1, args=["--reload-dir", str(app_dir)]) as corral:
        write_app(app_dir, "v2", module="app")
        assert "set but reload is off" in corral.log()
        assert "watching" not in corral.log()
        # No fixed wait for a reload that must not come: a SIGHUP reload proves the process
        # handles reloads, and it is the only one in the log.
        corral.reload()
        wait_until(lambda: _body_is(corral.port, b"v2\n"), 60, 0.05, "v2 after the explicit reload")
        assert not RELOADING.search(corral.log())

