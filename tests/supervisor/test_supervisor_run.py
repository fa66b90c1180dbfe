"""`corral run` in the foreground: serving with N workers, stopping, status, footprint."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from supervisor_util import APPS, Corral, Load
from util import CORRAL, free_port, stop_process, wait_until

FORBIDDEN = ("uvloop", "httptools", "probe", "starlette", "fastapi")


def test_serves_with_n_workers_and_sigint_exits_zero(tmp_path):
    with Corral(tmp_path, workers=3) as corral:
        data = corral.status()
        assert data["workers_ready"] == 3 and data["workers_wanted"] == 3
        pids = {w["pid"] for w in data["workers"]}
        assert len(pids) == 3 and corral.proc.pid not in pids
        status, body, headers = corral.get("/")
        assert status == 200 and int(headers["x-worker-pid"]) in pids
        # SIGINT (Ctrl-C) is a fast stop, and a clean one.
        assert corral.stop(signal.SIGINT) == 0
        assert "all workers stopped" in corral.log()
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_default_bind_and_app_from_command_line(tmp_path):
    """The fixed command line: `corral run MODULE:ATTR` alone, with -w."""
    port = free_port()
    proc = subprocess.Popen([CORRAL, "run", "-w", "1", "-b", f"127.0.0.1:{port}", "probe:app"],
                            cwd=APPS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={"PATH": "/usr/bin:/bin", "CORRAL_CONTROL_SOCKET": str(tmp_path / "c.sock")})
    try:
        import http.client

        def get() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            return conn.getresponse().status

        assert wait_until(get, 60, 0.1, "a 200") == 200
    finally:
        assert stop_process(proc, signal.SIGTERM) == 0


def test_sigterm_finishes_in_flight_request_then_exits_zero(tmp_path):
    with Corral(tmp_path, workers=1) as corral:
        result: dict = {}

        import threading

        def slow() -> None:
            result["response"] = corral.get("/sleep?s=2")

        thread = threading.Thread(target=slow)
        thread.start()
        wait_until(lambda: corral.status()["workers"][0]["in_flight"] == 1, 20, 0.05, "request in flight")
        corral.proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert result["response"][0] == 200
        assert corral.proc.wait(30) == 0


def test_supervisor_never_imports_app_or_engine_and_stays_small(tmp_path):
    with Corral(tmp_path, workers=2) as corral:
        with Load(corral.port, clients=4):
            wait_until(lambda: corral.status()["requests_total"] > 200, 60, 0.2, "some traffic")
        data = corral.status()
        modules = set(data["supervisor"]["modules"])
        assert not modules & set(FORBIDDEN), modules & set(FORBIDDEN)
        # Nor what only the command line's image of `corral run` needs (corral.supervisor.launch),
        # nor ssl, which asyncio would load (libssl, libcrypto) had launch.serve not kept it out.
        assert not modules & {"argparse", "yaml", "difflib", "ssl", "_ssl"}, modules
        # Nor pathlib, which brings urllib.parse and ipaddress (about 0.4 MiB): the modules the
        # supervisor loads use os.path, and the dev reloader loads pathlib only with --reload.
        # corral.addresses parses IP addresses with socket.inet_pton, not ipaddress (0.2 MiB).
        assert not modules & {"pathlib", "urllib", "ipaddress"}, modules
        # Nor ctypes (about 0.3 MiB): the command line's image asked prctl() whether it is a child
        # subreaper (supervisor.reaper), and the answer came over with the config.
        assert "ctypes" not in modules, modules
        assert "asyncio" in modules and "corral" in modules
        # ... while the workers did load them (the test would be vacuous otherwise).
        worker = psutil.Process(data["workers"][0]["pid"])
        maps = open(f"/proc/{worker.pid}/maps").read()
        assert "uvloop" in maps and "httptools" in maps
        rss = psutil.Process(corral.proc.pid).memory_info().rss
        print(f"supervisor RSS {rss / 1048576:.1f} MiB, USS {data['supervisor']['uss'] / 1048576:.1f} MiB")
        assert rss < 25 * 1048576, f"supervisor RSS {rss / 1048576:.1f} MiB"


def test_status_table_lists_every_worker(tmp_path):
    with Corral(tmp_path, workers=2) as corral:
        corral.get("/")
        out = subprocess.run([CORRAL, "status", "--control-socket", corral.control], capture_output=True,
                             text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        for w in corral.status()["workers"]:
            assert str(w["pid"]) in out.stdout
        assert "PID" in out.stdout and "USS" in out.stdout and "workers ready" in out.stdout


def test_status_without_a_running_corral_says_so(tmp_path):
    out = subprocess.run([CORRAL, "status", "--control-socket", str(tmp_path / "nothing.sock")],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 1 and "is corral running?" in out.stderr


def test_second_instance_with_same_control_socket_is_refused(tmp_path):
    with Corral(tmp_path, workers=1) as first:
        proc = subprocess.run([CORRAL, "run", "--config", str(first.config_path), "-b", f"127.0.0.1:{free_port()}"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1
        assert "another corral is running with control socket" in proc.stderr
        assert first.get("/")[0] == 200


def test_ttin_ttou_change_the_number_of_workers(tmp_path):
    with Corral(tmp_path, workers=2) as corral:
        corral.proc.send_signal(signal.SIGTTIN)
        corral.wait_ready(3)
        # Signals of one kind sent back to back merge in the kernel: one at a time.
        corral.proc.send_signal(signal.SIGTTOU)
        wait_until(lambda: len(corral.status()["workers"]) == 2, 30, 0.1, "two workers left")
        corral.proc.send_signal(signal.SIGTTOU)
        wait_until(lambda: len(corral.status()["workers"]) == 1, 30, 0.1, "one worker left")
        corral.proc.send_signal(signal.SIGTTOU)  # never below one
        assert corral.get("/")[0] == 200
        data = corral.status()
        assert data["workers_wanted"] == 1 and len(data["workers"]) == 1


def test_app_runs_with_its_own_virtualenv(tmp_path):
    """Workers use the app's interpreter: its own packages, plus corral's worker deps appended."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "venv_only_app.py").write_text(
        "import sys\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n        return\n"
        "    body = sys.prefix.encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n")
    with Corral(tmp_path, app="venv_only_app:app", workers=1, virtualenv=str(venv)) as corral:
        status, body, _ = corral.get("/")
        assert status == 200 and body.decode() == str(venv)
        worker = psutil.Process(corral.status()["workers"][0]["pid"])
        assert worker.cmdline()[0] == str(venv / "bin" / "python")
