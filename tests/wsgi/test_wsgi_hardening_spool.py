"""Inline mode's request-body spool under pressure: the per-worker cap, a full disk, refusals mid-body.

Inline mode (``threads: 0``) receives a whole body before the app runs, so
unfinished uploads hold memory and TMPDIR space. ``wsgi_spool_max`` caps what
one worker holds across all its connections (503 with Retry-After past it, 413
for a body larger than the cap), a full TMPDIR answers 507 with the cause in
the log, and every way a body ends gives its bytes back.
"""

from __future__ import annotations

import io
import os
import select
import socket
import subprocess
import tempfile

import pytest

from corral.engine.settings import EngineSettings
from corral.engine.wsgi import body as body_module
from corral.engine.wsgi.body import RETRY_AFTER_SECONDS, SpoolBudget, SpooledBody, SpoolRefusal
from util import CORRAL, free_port, stop_process, wait_until
from wsgi_util import HERE, MODE_IDS, MODES, Response, WSGIProc, chunked, recv_response, request

KIB = 1024
APP = "wsgi_hardening_apps:upload"


# ---------------------------------------------------------------- units: the budget and the body

def test_budget_counts_every_body_and_gets_the_bytes_back_on_close():
    budget = SpoolBudget(1000)
    first, second = SpooledBody(100, budget=budget), SpooledBody(100, budget=budget)
    first.feed(b"a" * 400)
    second.feed(b"b" * 500)
    assert budget.used == 900
    with pytest.raises(SpoolRefusal) as info:
        second.feed(b"b" * 101)
    refusal = info.value
    assert (refusal.status, refusal.retry_after) == (503, RETRY_AFTER_SECONDS)
    assert "wsgi_spool_max" in refusal.cause and "wsgi_spool_max" not in refusal.message
    assert budget.used == 900  # the refused bytes were never counted
    first.close()
    first.close()  # closing twice gives the bytes back once
    assert budget.used == 500
    second.feed(b"b" * 101)
    second.close()
    assert budget.used == 0


def test_a_body_larger_than_the_whole_budget_is_413_not_503():
    budget = SpoolBudget(1000)
    with pytest.raises(SpoolRefusal) as info:
        budget.check_declared(1001)
    assert info.value.status == 413 and info.value.retry_after is None
    assert "threads: N" in info.value.cause  # the fix is named
    body = SpooledBody(100, budget=budget)
    body.feed(b"x" * 1000)
    with pytest.raises(SpoolRefusal) as info:
        body.feed(b"x")
    assert info.value.status == 413
    body.close()


def test_declared_length_is_checked_against_what_is_left():
    budget = SpoolBudget(1000)
    held = SpooledBody(100, budget=budget)
    held.feed(b"h" * 700)
    budget.check_declared(300)
    with pytest.raises(SpoolRefusal) as info:
        budget.check_declared(301)
    assert info.value.status == 503
    held.close()
    budget.check_declared(1000)
    SpoolBudget(None).check_declared(1 << 50)  # no limit


def test_refusals_are_reported_at_most_every_ten_seconds_with_a_count():
    budget = SpoolBudget(10)
    assert budget.note_refusal(100.0) == 1  # the first one at once
    assert [budget.note_refusal(100.0 + i) for i in range(1, 6)] == [0] * 5
    assert budget.note_refusal(110.0) == 6  # the five held back, and this one


def _dev_full(dir: str | None = None) -> io.BufferedRandom:  # noqa: A002 - TemporaryFile's name
    """A "temporary file" on /dev/full: every write that reaches the kernel fails with ENOSPC."""
    return open("/dev/full", "r+b")  # noqa: SIM115 - the body closes it


def test_disk_full_while_spooling_is_a_507_naming_the_cause(monkeypatch, tmp_path):
    monkeypatch.setattr(body_module.tempfile, "TemporaryFile", _dev_full)
    budget = SpoolBudget(1 << 20)
    body = SpooledBody(1000, spool_dir=str(tmp_path), budget=budget)
    body.feed(b"x" * 500)
    with pytest.raises(SpoolRefusal) as info:
        for _ in range(100):  # past the threshold, then past the file's write buffer
            body.feed(b"y" * 8192)
    refusal = info.value
    assert refusal.status == 507
    assert "ENOSPC" in refusal.cause and str(tmp_path) in refusal.cause and "TMPDIR" in refusal.cause
    assert str(tmp_path) not in refusal.message  # no server paths for the client
    body.close()
    assert budget.used == 0


def test_disk_full_on_the_last_flush_is_a_507(monkeypatch):
    monkeypatch.setattr(body_module.tempfile, "TemporaryFile", _dev_full)
    body = SpooledBody(10)
    body.feed(b"z" * 100)  # small enough to wait in the file's buffer
    with pytest.raises(SpoolRefusal) as info:
        body.finish()
    assert info.value.status == 507 and tempfile.gettempdir() in info.value.cause
    body.close()


def test_other_spool_errors_are_500_with_the_directory(tmp_path):
    missing = tmp_path / "gone"
    body = SpooledBody(10, spool_dir=str(missing))
    with pytest.raises(SpoolRefusal) as info:
        body.feed(b"q" * 100)
    assert info.value.status == 500 and str(missing) in info.value.cause
    body.close()


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "1G"])
def test_bad_wsgi_spool_max_is_refused_with_the_fix(value):
    with pytest.raises(ValueError, match="wsgi_spool_max must be a number of bytes > 0 .* or null"):
        EngineSettings(wsgi_spool_max=value)


def test_wsgi_spool_max_defaults_to_a_gibibyte_and_null_means_no_cap():
    assert EngineSettings().wsgi_spool_max == 1 << 30
    assert EngineSettings(wsgi_spool_max=None).wsgi_spool_max is None


# ---------------------------------------------------------------- over sockets: the cap

def _start_upload(srv: WSGIProc, length: int, send: int) -> socket.socket:
    """A connection that declares ``length`` body bytes, sends ``send`` of them and stalls."""
    sock = srv.connect()
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % length + b"u" * send)
    return sock


def _chunked_upload(sock: socket.socket, total: int) -> None:
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + chunked(b"c" * total, 16 * KIB))


@pytest.fixture
def capped(make_server):
    """Inline mode with a 1 MiB spool cap, spooling to disk past 64 KiB."""
    return make_server(APP, threads=0, settings={"wsgi_spool_max": 1024 * KIB,
                                                 "wsgi_spool_threshold": 64 * KIB})


def test_unfinished_uploads_past_the_cap_get_503_and_their_bytes_back_when_they_end(capped):
    holders = [_start_upload(capped, 400 * KIB, 300 * KIB) for _ in range(3)]  # 900 KiB held
    try:
        # Declared too large for what is left: refused before the body is sent. The
        # probe asks for 100 Continue and never sends its body, so it holds nothing.
        def refused_upfront() -> Response | None:
            with capped.connect() as sock:
                sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
                             b"Expect: 100-continue\r\n\r\n" % (200 * KIB))
                r = recv_response(sock)
            return r if r.status == 503 else None  # 100: not refused (yet)
        r = wait_until(refused_upfront, timeout=60, what="a 200 KiB upload refused while 900 KiB are held")
        assert r.header("retry-after") == str(RETRY_AFTER_SECONDS)
        assert r.header("connection") == "close"  # the client withholds a body we will never read
        assert b"retry later" in r.body
        # Chunked (no length to check first): refused when the bytes go past the cap,
        # and the connection, its body dropped, still answers the next request.
        with capped.connect() as sock:
            _chunked_upload(sock, 300 * KIB)
            r = recv_response(sock)
            assert (r.status, r.header("retry-after")) == (503, str(RETRY_AFTER_SECONDS))
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nsmall")
            assert recv_response(sock).json() == {"length": 5}
        # Larger than the whole cap: it could never fit, so 413, not 503.
        r = request(capped, "POST", "/upload", body=b"b" * (1100 * KIB))
        assert r.status == 413 and r.header("retry-after") is None
    finally:
        for sock in holders:
            sock.close()
    # The holders' bytes come back when their connections end.
    wait_until(lambda: request(capped, "POST", "/upload", body=b"f" * (900 * KIB)).status == 200,
               timeout=60, what="a 900 KiB upload accepted once the stalled uploads are gone")
    log = capped.log_text()
    assert "wsgi_spool_max" in log and "internal error" not in log and "Traceback" not in log


def test_a_body_timeout_gives_the_spooled_bytes_back(make_server):
    srv = make_server(APP, threads=0, settings={"wsgi_spool_max": 1024 * KIB, "wsgi_spool_threshold": 64 * KIB,
                                                "body_timeout": 1.0})
    with _start_upload(srv, 1000 * KIB, 900 * KIB) as stalled:
        # The server gives up on it (408) after body_timeout...
        stalled.settimeout(60)
        assert recv_response(stalled).status == 408
        # ...and its 900 KiB no longer count against the cap.
        wait_until(lambda: request(srv, "POST", "/upload", body=b"n" * (900 * KIB)).status == 200,
                   timeout=60, what="a 900 KiB upload accepted after the stalled one timed out")


@pytest.mark.parametrize("threads", MODES, ids=MODE_IDS)
def test_a_body_past_max_body_size_mid_upload_gets_its_413(make_server, threads):
    """The 413 for a chunked body that grows past max_body_size reaches the client in both modes."""
    srv = make_server(APP, threads=threads, settings={"max_body_size": 300 * KIB, "wsgi_spool_threshold": 16 * KIB})
    with srv.connect() as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(40):  # up to 2 MiB, until the server answers
            try:
                sock.sendall(b"%x\r\n" % (50 * KIB) + b"a" * (50 * KIB) + b"\r\n")
            except OSError:
                break
            if select.select([sock], [], [], 0.05)[0]:
                break
        r = recv_response(sock)
    assert r.status == 413


# ---------------------------------------------------------------- a full TMPDIR, end to end

def _can_mount_privately() -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k corral-probe /mnt"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_privately(), reason="needs root and mount namespaces (unshare --mount) "
                                                        "to put TMPDIR on a tiny tmpfs")
def test_full_tmpdir_gets_507_and_the_log_names_enospc_and_the_directory(tmp_path):
    """corral run with TMPDIR on a 256 KiB tmpfs (in a mount namespace of its own): a 1 MiB upload."""
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    env = {**os.environ, "CORRAL_CONTROL_SOCKET": str(tmp_path / "control.sock"), "PYTHONPATH": str(HERE),
           "TMPDIR": str(spool), "CORRAL_WSGI_SPOOL_THRESHOLD": str(16 * KIB)}
    env.pop("CORRAL_THREADS", None)
    log_path = tmp_path / "corral.log"
    mount_then_run = 'mount -t tmpfs -o size=256k corral-test-spool "$TMPDIR" && exec "$@"'
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount_then_run,
                                 "sh", CORRAL, "run", "-w", "1", "-b", f"127.0.0.1:{port}", APP],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    srv = _Port(port)
    try:
        wait_until(lambda: request(srv, "POST", "/upload", body=b"s" * KIB).status == 200, timeout=60,
                   what="corral serving the upload app")
        r = request(srv, "POST", "/upload", body=b"L" * (1024 * KIB))
        assert r.status == 507 and b"Insufficient Storage" in r.body
        # The failed spool file is gone with its request: a spooled upload that fits still works.
        assert request(srv, "POST", "/upload", body=b"m" * (100 * KIB)).json() == {"length": 100 * KIB}
        log = wait_until(lambda: (text := log_path.read_text()) and "ENOSPC" in text and text,
                         timeout=30, what="the spool error in the log")
        assert str(spool) in log and "No space left on device" in log
        assert "internal error while parsing" not in log
    finally:
        stop_process(proc)
    assert not list(spool.iterdir())  # the tmpfs was private to corral's namespace


class _Port:
    """Enough of WSGIProc for wsgi_util.request(): a server on a TCP port."""

    def __init__(self, port: int) -> None:
        self.port = port

    def connect(self, timeout: float = 30.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
