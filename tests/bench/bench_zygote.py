"""Memory and worker-replacement benchmark for worker_start: zygote (docs/zygote.md).

Memory: each server runs the same app with --workers N; after --requests requests on fresh
connections, the total USS and PSS of its whole process tree (supervisor, zygote, workers) is read
from /proc (psutil memory_full_info). Servers: corral exec / zygote / zygote+preload /
zygote+standby (one more worker, booted and idle), and for a WSGI app zygote+preload with
preload_warmup (the warm-up request, at the page measured, sent once in the zygote too);
gunicorn with and without --preload, granian, uvicorn. Bytecode is compiled first, as a package
install does. Apps: hello world (ASGI; the WSGI twin for gunicorn's sync workers); unless --no-fastapi, a
small FastAPI service (pydantic models, GET /items/7; gunicorn runs uvicorn's worker class); unless
--no-django, a Django project from `django-admin startproject` (admin on) hitting /admin/login/,
and tests/realapps' Django project (an app of its own, the admin, SQLite) hitting its post list, a
query and a template (WSGI for every server).

Replacement: corral with 2 workers on an app whose import sleeps --import-sleep seconds, under a
light wrk load; one worker that has served is SIGKILLed and the time until `corral status` (polled every 5 ms over
the control socket) shows a ready replacement in its slot is reported for exec, zygote,
zygote+preload and zygote+standby (a standby worker booted ahead: config standby), --kills times each
(median).

Reload: with --workers workers on the same app, the time from `corral reload` until the new
generation serves with all its workers ready (polled every 10 ms), --reloads times each.

    .venv/bin/python tests/bench/bench_zygote.py [--workers 4] [--requests 400] [--kills 3] [--reloads 3]

A memory figure is a snapshot, not a timed run; replacement times depend on the machine's load
(printed with the results).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "daemon"))

import corral as corral_package  # noqa: E402  (only to find its directory)

HELLO = '''\
import os, time
time.sleep(float(os.environ.get("BENCH_IMPORT_SLEEP", "0")))
BODY = b"Hello, world!"

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": BODY})

def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [BODY]
'''

# A small FastAPI service: pydantic models, path and query parameters, a JSON body.
FASTAPI_APP = '''\
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

app = FastAPI(title="bench items")


class Item(BaseModel):
    id: int
    name: str
    price: float
    tags: list[str] = []


ITEMS = {i: Item(id=i, name=f"item {i}", price=i * 1.5, tags=["bench", str(i % 7)]) for i in range(100)}


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> Item:
    if item_id not in ITEMS:
        raise HTTPException(404, "no such item")
    return ITEMS[item_id]


@app.get("/items")
async def list_items(limit: int = 10, tag: str | None = None) -> list[Item]:
    return [i for i in ITEMS.values() if tag is None or tag in i.tags][:limit]


@app.post("/items")
async def create_item(item: Item) -> Item:
    ITEMS[item.id] = item
    return item
'''


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(USS, PSS, processes) summed over ``pid`` and all its descendants."""
    uss = pss = count = 0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        uss += info.uss
        pss += getattr(info, "pss", 0)
        count += 1
    return uss, pss, count


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for pid in children:  # by pid: a worker that outlived its server
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def corral_config(tmp: Path, name: str, app: str, app_dir: Path, port: int, workers: int,
                  **extra: Any) -> Path:
    config = {"app": app, "app_dir": str(app_dir), "workers": workers, "bind": [f"127.0.0.1:{port}"],
              "control_socket": str(tmp / f"{name}.sock"), "name": name, "log_level": "warning", **extra}
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(config))
    return path


def servers(tmp: Path, app_dir: Path, asgi: str, wsgi: str | None, workers: int, port: int, path: str
            ) -> list[tuple[str, list[str]]]:
    """The servers to compare: ``asgi == wsgi`` is a WSGI app served as WSGI everywhere; ``wsgi``
    None an ASGI-only app (gunicorn then runs uvicorn's worker class, as FastAPI users do). A WSGI
    app also gets a row with preload_warmup, its warm-up request at ``path``, the page measured."""
    corral = str(BIN / "corral")
    w = str(workers)
    rows = [
        ("corral exec", [corral, "run", "--config", str(corral_config(tmp, "mexec", asgi, app_dir, port, workers))]),
        ("corral zygote", [corral, "run", "--config", str(corral_config(
            tmp, "mzyg", asgi, app_dir, port, workers, worker_start="zygote"))]),
        ("corral zygote+preload", [corral, "run", "--config", str(corral_config(
            tmp, "mpre", asgi, app_dir, port, workers, worker_start="zygote", preload=True))]),
        ("corral zygote+standby", [corral, "run", "--config", str(corral_config(
            tmp, "msby", asgi, app_dir, port, workers, worker_start="zygote", standby=True))]),
    ]
    if asgi == wsgi:
        rows.append(("corral preload_warmup", [corral, "run", "--config", str(corral_config(
            tmp, "mwarm", asgi, app_dir, port, workers, worker_start="zygote", preload=True, preload_warmup=True,
            warmup={"path": path}))]))
    bind = f"127.0.0.1:{port}"
    if (BIN / "gunicorn").exists():
        gunicorn = [str(BIN / "gunicorn"), "-w", w, "-b", bind, "--chdir", str(app_dir)]
        if wsgi is None:
            gunicorn += ["-k", "uvicorn.workers.UvicornWorker"]
        kind = "" if wsgi is not None else " -k uvicorn"
        target = wsgi if wsgi is not None else asgi
        rows.append((f"gunicorn{kind}", [*gunicorn, target]))
        rows.append((f"gunicorn{kind} --preload", [*gunicorn, "--preload", target]))
    if (BIN / "granian").exists():
        interface = "wsgi" if asgi == wsgi else "asgi"
        rows.append(("granian", [str(BIN / "granian"), "--interface", interface, "--workers", w, "--host",
                                 "127.0.0.1", "--port", str(port), "--working-dir", str(app_dir),
                                 (wsgi if interface == "wsgi" else asgi)]))
    if (BIN / "uvicorn").exists():
        if asgi == wsgi:  # Django's WSGI app through uvicorn's WSGI adapter
            rows.append(("uvicorn", [str(BIN / "uvicorn"), "--interface", "wsgi", "--workers", w, "--host",
                                     "127.0.0.1", "--port", str(port), "--app-dir", str(app_dir), wsgi]))
        else:
            rows.append(("uvicorn", [str(BIN / "uvicorn"), "--workers", w, "--host", "127.0.0.1", "--port",
                                     str(port), "--app-dir", str(app_dir), asgi]))
    return rows


def measure_memory(label: str, tmp: Path, app_dir: Path, asgi: str, wsgi: str | None, path: str, workers: int,
                   requests: int) -> list[dict[str, Any]]:
    results = []
    # The bytecode of the app and of corral compiled beforehand, as a package install does: a
    # module without it (PYTHONDONTWRITEBYTECODE, a read-only tree) is compiled in every process
    # that imports it, which costs each process memory that production does not pay.
    compileall.compile_dir(str(app_dir), quiet=1)
    compileall.compile_dir(str(Path(corral_package.__file__).parent), quiet=1)
    for name, cmd in servers(tmp, app_dir, asgi, wsgi, workers, port := free_port(), path):
        cmd = [c.replace(f":{port}", f":{port}") for c in cmd]
        env = {**os.environ, "PYTHONPATH": str(app_dir)}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=app_dir,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if get(port, path) == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"{name} did not start: {' '.join(cmd)}\n{err[-2000:]}")
                time.sleep(0.1)
            # Every worker up (the slowest exec'd ones too), then the requests.
            wait_for_processes(proc.pid, workers + (2 if "standby" in name else 0))  # + zygote and standby
            for _ in range(requests):
                get(port, path)
            time.sleep(0.5)
            uss, pss, count = tree_memory(proc.pid)
            results.append({"app": label, "server": name, "uss_mib": round(uss / 2**20, 1),
                            "pss_mib": round(pss / 2**20, 1), "processes": count})
            print(f"  {label:12} {name:24} USS {uss / 2**20:7.1f} MiB  PSS {pss / 2**20:7.1f} MiB  "
                  f"({count} processes)", flush=True)
        finally:
            stop(proc)
    return results


def wait_for_processes(pid: int, workers: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(psutil.Process(pid).children(recursive=True)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let the last ones finish importing


def django_project(tmp: Path) -> Path | None:
    admin = BIN / "django-admin"
    if not admin.exists():
        return None
    root = tmp / "djsite"
    root.mkdir()
    subprocess.run([str(admin), "startproject", "mysite", str(root)], check=True, capture_output=True)
    settings = root / "mysite" / "settings.py"
    settings.write_text(settings.read_text().replace("ALLOWED_HOSTS = []", "ALLOWED_HOSTS = ['*']"))
    return root


def blog_project(tmp: Path) -> Path | None:
    """The Django project of tests/realapps (an app of its own with a model, admin, the contrib
    apps; SQLite), copied and migrated, with ten posts for its post list (a query and a template)."""
    if not (BIN / "django-admin").exists():
        return None
    root = tmp / "blog"
    shutil.copytree(REPO / "tests" / "realapps" / "apps" / "blog", root,
                    ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3", "static", "media"))
    env = {**os.environ, "BLOG_DATA_DIR": str(root), "DJANGO_SETTINGS_MODULE": "blog.settings"}
    subprocess.run([str(BIN / "python"), "manage.py", "migrate", "--noinput"], cwd=root, env=env, check=True,
                   capture_output=True)
    posts = "from posts.models import Post\nfor i in range(10): Post.objects.create(title=f'post {i}', body='text ' * 50)"
    subprocess.run([str(BIN / "python"), "manage.py", "shell", "-c", posts], cwd=root, env=env, check=True,
                   capture_output=True)
    return root


WORKER_STARTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("exec", {}), ("zygote", {"worker_start": "zygote"}),
    ("zygote+preload", {"worker_start": "zygote", "preload": True}),
    ("zygote+standby", {"worker_start": "zygote", "standby": True}))


@contextlib.contextmanager
def slow_corral(tmp: Path, app_dir: Path, name: str, extra: dict[str, Any], workers: int, import_sleep: float
                ) -> Iterator[tuple[int, str, Callable[[], dict[str, Any] | None]]]:
    """`corral run` of the hello app whose import sleeps ``import_sleep`` seconds; yields its port,
    its control socket and a status() that answers None until corral listens."""
    from corral.supervisor.control import ControlError, request

    port = free_port()
    config = corral_config(tmp, name, "hello:app", app_dir, port, workers, boot_timeout=60, **extra)
    control = json.loads(config.read_text())["control_socket"]
    env = {**os.environ, "BENCH_IMPORT_SLEEP": str(import_sleep)}
    proc = subprocess.Popen([str(BIN / "corral"), "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)

    def status() -> dict[str, Any] | None:
        try:
            return request(control, {"cmd": "status"}, timeout=10)
        except (ControlError, OSError):  # not listening yet
            return None

    try:
        yield port, control, status
    finally:
        stop(proc)


def replacement_times(tmp: Path, app_dir: Path, import_sleep: float, kills: int) -> list[dict[str, Any]]:
    results = []
    for name, extra in WORKER_STARTS:
        with slow_corral(tmp, app_dir, f"r{name.replace('+', '')}", extra, 2, import_sleep) as (port, _, status):
            def ready(status: Callable[[], dict[str, Any] | None] = status) -> list[dict[str, Any]]:
                data = status()
                return [w for w in data["workers"] if w["state"] == "ready"] if data else []

            wait(lambda: len(ready()) == 2, 120)
            load = None
            if shutil.which("wrk"):
                load = subprocess.Popen(["wrk", "-t1", "-c8", "-d600s", f"http://127.0.0.1:{port}/"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                times = []
                for _ in range(kills):
                    # A worker that has served (its heartbeat said so): one killed before it served
                    # counts as a failed boot, and its slot backs off (0.1 s, doubling), which is
                    # corral's crash-loop guard, not the time a replacement takes.
                    wait(lambda: any(w["requests"] > 0 for w in ready()), 60)
                    if extra.get("standby"):  # the standby the last kill used is booted again
                        wait(lambda: any(w["state"] == "standby" for w in (status() or {}).get("workers", [])),
                             120)
                    victim = next(w for w in ready() if w["requests"] > 0)
                    start = time.monotonic()
                    os.kill(victim["pid"], signal.SIGKILL)
                    wait(lambda v=victim: any(w["slot"] == v["slot"] and w["pid"] != v["pid"] for w in ready()),
                         60, 0.005)
                    times.append(time.monotonic() - start)
                    wait(lambda: len(ready()) == 2, 60)
            finally:
                if load is not None:
                    load.terminate()
                    load.wait(10)
        result = {"worker_start": name, "import_sleep": import_sleep,
                  "replacement_ms": [round(t * 1000, 1) for t in times],
                  "median_ms": round(statistics.median(times) * 1000, 1)}
        results.append(result)
        print(f"  {name:16} replacement after SIGKILL: median {result['median_ms']:8.1f} ms "
              f"(each: {result['replacement_ms']})", flush=True)
    return results


def reload_times(tmp: Path, app_dir: Path, import_sleep: float, reloads: int, workers: int
                 ) -> list[dict[str, Any]]:
    """Time from `corral reload` to cut-over (the new generation serving, as `corral status` says,
    polled every 10 ms), for each worker_start, on the app whose import sleeps."""
    results = []
    for name, extra in WORKER_STARTS:
        with slow_corral(tmp, app_dir, f"l{name.replace('+', '')}", extra, workers, import_sleep) as (
                _, control, status):
            def serving(generation: int, status: Callable[[], dict[str, Any] | None] = status) -> bool:
                data = status()
                return bool(data and data["generation"] == generation and data["phase"] == "running"
                            and sum(w["state"] == "ready" and w["generation"] == generation
                                    for w in data["workers"]) == workers)

            wait(lambda: serving(1), 120)
            times = []
            for number in range(2, reloads + 2):
                start = time.monotonic()
                out = subprocess.run([str(BIN / "corral"), "reload", "--control-socket", control],
                                     capture_output=True, text=True, timeout=120)
                if out.returncode != 0:
                    raise RuntimeError(f"reload failed: {out.stderr}")
                wait(lambda n=number: serving(n), 60, 0.01)
                times.append(time.monotonic() - start)
        result = {"worker_start": name, "import_sleep": import_sleep, "workers": workers,
                  "reload_s": [round(t, 3) for t in times], "median_s": round(statistics.median(times), 3)}
        results.append(result)
        print(f"  {name:16} reload to cut-over: median {result['median_s']:6.3f} s (each: {result['reload_s']})",
              flush=True)
    return results


def wait(predicate: Any, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(interval)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--import-sleep", type=float, default=2.0)
    parser.add_argument("--no-django", action="store_true")
    parser.add_argument("--no-fastapi", action="store_true")
    parser.add_argument("--reloads", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    print(f"bench_zygote: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    out: dict[str, Any] = {"memory": [], "replacement": [], "reload": []}
    with tempfile.TemporaryDirectory(prefix="bench-zygote-") as name:
        tmp = Path(name)
        app_dir = tmp / "hello"
        app_dir.mkdir()
        (app_dir / "hello.py").write_text(HELLO)
        if not args.no_memory:
            print(f"memory, {args.workers} workers, after {args.requests} requests (whole process tree):")
            out["memory"] += measure_memory("hello world", tmp, app_dir, "hello:app", "hello:wsgi", "/",
                                            args.workers, args.requests)
            if not args.no_fastapi and subprocess.run([str(BIN / "python"), "-c", "import fastapi"],
                                                      capture_output=True).returncode == 0:
                fastapi_dir = tmp / "fastapi_app"
                fastapi_dir.mkdir()
                (fastapi_dir / "items.py").write_text(FASTAPI_APP)
                out["memory"] += measure_memory("fastapi", tmp, fastapi_dir, "items:app", None, "/items/7",
                                                args.workers, args.requests)
            project = None if args.no_django else django_project(tmp)
            if project is not None:
                out["memory"] += measure_memory("django", tmp, project, "mysite.wsgi:application",
                                                "mysite.wsgi:application", "/admin/login/", args.workers,
                                                args.requests)
            blog = None if args.no_django else blog_project(tmp)
            if blog is not None:
                out["memory"] += measure_memory("django blog", tmp, blog, "blog.wsgi:application",
                                                "blog.wsgi:application", "/", args.workers, args.requests)
        print(f"replacement, app import sleeping {args.import_sleep:g}s, under wrk -c8:")
        out["replacement"] = replacement_times(tmp, app_dir, args.import_sleep, args.kills)
        print(f"reload, {args.workers} workers, app import sleeping {args.import_sleep:g}s:")
        out["reload"] = reload_times(tmp, app_dir, args.import_sleep, args.reloads, args.workers)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
