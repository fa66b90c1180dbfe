"""Files the end-to-end package tests put inside the namespace: a demo app in its own
virtualenv, its corral config, a load generator and a sandbox probe (each run inside with the
system python3)."""

from __future__ import annotations

DEMO_APP = '''\
"""The demo app: a plain ASGI app with lifespan, in its own virtualenv, that uses what the
README's walk-through gives an app: its state directory (a SQLite database, as Django's
would be), a directory made writable by ReadWritePaths= (uploads) and a secret handed over
with LoadCredential=."""
import hashlib, os, sqlite3
from pathlib import Path

MEDIA_ROOT = Path("/srv/demo/media")


def database():
    return sqlite3.connect(Path(os.environ["STATE_DIRECTORY"], "db.sqlite3"))


def add_note(text):
    with database() as db:
        db.execute("INSERT INTO notes (text) VALUES (?)", (text,))
        return db.execute("SELECT count(*) FROM notes").fetchone()[0]


def secret_digest():
    secret = Path(os.environ["CREDENTIALS_DIRECTORY"], "secret-key").read_bytes()
    return hashlib.sha256(secret).hexdigest()


def upload(body):
    (MEDIA_ROOT / "upload.txt").write_bytes(body)
    return len(body)


async def read_body(receive):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    route = (scope["method"], scope["path"])
    status, body = 200, f"demo {os.getpid()}"
    try:
        if route == ("POST", "/notes"):
            status, body = 201, str(add_note((await read_body(receive)).decode()))
        elif route == ("POST", "/upload"):
            status, body = 201, str(upload(await read_body(receive)))
        elif route == ("GET", "/secret"):
            body = secret_digest()
    except OSError as exc:  # shown to the test, which asserts on the status
        status, body = 500, repr(exc)
    data = body.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
'''

# What the README's `systemd-run ... manage.py migrate` runs for the demo app: it creates the
# database in the state directory, with the secret from the credential (as Django would).
DEMO_MANAGE = """\
import os, sys
from pathlib import Path

from demoapp import database, secret_digest

assert sys.argv[1:] == ["migrate"], sys.argv
secret_digest()
with database() as db:
    db.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT NOT NULL)")
print("migrated", Path(os.environ["STATE_DIRECTORY"], "db.sqlite3"))
"""

DEMO_CONFIG = """\
# /etc/corral/demo.yaml: the demo app lives in its own virtualenv.
app: demoapp:app
app_dir: /srv/demo/src
virtualenv: /srv/demo/venv
workers: 2
"""

# Requests over the unix socket until STOP exists, from fresh connections and from
# keep-alive ones, counting every outcome. A request on a reused keep-alive connection that
# the server closed before any byte of a response may be retried (RFC 9112 section 9.3.1,
# what HTTP clients do); those are counted apart, every other failure is a failure.
LOAD = r'''
import json, os, socket, sys, threading, time

SOCK, STOP, OUT = sys.argv[1:4]
lock = threading.Lock()
stats = {"ok": 0, "failed": 0, "retried_stale_keepalive": 0, "errors": []}


class NoResponse(Exception):
    """The connection closed before any byte of a response."""


def read_response(f):
    line = f.readline()
    if not line:
        raise NoResponse("closed before the status line")
    status = int(line.split()[1])
    length, close = None, False
    while True:
        header = f.readline()
        if header in (b"\r\n", b""):
            break
        name, _, value = header.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    body = f.read(length) if length is not None else b""
    if length is None or len(body) != length:
        raise IOError(f"truncated response ({len(body)} of {length} bytes)")
    return status, close


def record(ok, error=None):
    with lock:
        if ok:
            stats["ok"] += 1
        else:
            stats["failed"] += 1
            if len(stats["errors"]) < 20:
                stats["errors"].append(f"{time.monotonic():.3f} {error}")


def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(SOCK)
    return s


def fresh_connections():
    while not os.path.exists(STOP):
        try:
            with connect() as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
                status, _ = read_response(s.makefile("rb"))
            record(status == 200, f"status {status}")
        except Exception as exc:
            record(False, f"fresh: {exc!r}")


def keep_alive():
    conn = f = None
    reused = False
    while not os.path.exists(STOP):
        try:
            if conn is None:
                conn, reused = connect(), False
                f = conn.makefile("rb")
            conn.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
            status, close = read_response(f)
            record(status == 200, f"status {status}")
            reused = True
            if close:
                conn.close()
                conn = None
        except (NoResponse, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            conn = None
            if reused:
                with lock:
                    stats["retried_stale_keepalive"] += 1
            else:
                record(False, f"keep-alive: {exc!r}")
        except Exception as exc:
            if conn is not None:
                conn.close()
            conn = None
            record(False, f"keep-alive: {exc!r}")


def report(path):
    with lock:
        data = json.dumps(stats)
    with open(path + ".tmp", "w") as out:
        out.write(data)
    os.replace(path + ".tmp", path)


threads = [threading.Thread(target=t) for t in (fresh_connections, fresh_connections,
                                                 keep_alive, keep_alive)]
for t in threads:
    t.start()
while any(t.is_alive() for t in threads):
    report(OUT + ".progress")
    time.sleep(0.2)
report(OUT)
'''

# Run as corral@probe.service with the packaged unit's sandbox (only ExecStart and Type
# changed by a drop-in): everything the supervisor and its workers rely on must work.
PROBE = r'''
import asyncio, errno, json, os, socket, subprocess, sys, traceback

results = {}


def check(name, fn):
    try:
        results[name] = ["ok", repr(fn())]
    except BaseException:
        results[name] = ["error", traceback.format_exc(limit=2)]


def listener():
    sock = socket.socket(fileno=3)
    try:
        assert os.environ["LISTEN_FDS"] == "1", os.environ.get("LISTEN_FDS")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        return sock.getsockname()
    finally:
        sock.detach()


def etc_is_read_only():
    try:
        open("/etc/corral/probe-write-test", "w")
    except OSError as exc:
        assert exc.errno in (errno.EROFS, errno.EACCES), exc
        return errno.errorcode[exc.errno]
    raise AssertionError("/etc is writable")


def uvloop_runs():
    import uvloop
    loop = uvloop.new_event_loop()
    try:
        return (uvloop.__version__, loop.run_until_complete(asyncio.sleep(0, "ran")))
    finally:
        loop.close()


def psutil_works():
    import psutil
    me = psutil.Process()
    return (psutil.virtual_memory().total > 0, psutil.cpu_percent(interval=0.05) >= 0,
            me.memory_full_info().uss > 0, me.num_fds() > 0, "lo" in psutil.net_if_addrs())


def state_dir_writable():
    path = os.path.join(os.environ["STATE_DIRECTORY"], "written")
    with open(path, "w") as out:
        out.write("ok")
    return path


def httptools_parses():
    import httptools
    parser = httptools.HttpRequestParser(None)
    parser.feed_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return parser.get_method()


check("listening socket from systemd", listener)
check("runs as corral", lambda: __import__("pwd").getpwuid(os.getuid()).pw_name)
check("psutil (memory, cpu, uss, fds, net_if_addrs)", psutil_works)
check("os.nice", lambda: os.nice(1))
check("uvloop", uvloop_runs)
check("httptools", httptools_parses)
check("yaml", lambda: __import__("yaml").safe_load("a: 1"))
check("fork+exec a fresh interpreter", lambda: subprocess.run(
    [sys.executable, "-c", "print(42)"], capture_output=True, check=True, text=True).stdout)
check("private /tmp writable", lambda: open("/tmp/probe", "w").write("x"))
check("StateDirectory writable", state_dir_writable)
check("/etc read-only", etc_is_read_only)
with open(os.path.join(os.environ["STATE_DIRECTORY"], "probe.json"), "w") as out:
    json.dump(results, out)
'''

PROBE_DROPIN = """\
[Service]
Type=oneshot
ExecStart=
ExecStart=/usr/lib/corral/bin/python3 /srv/probe/probe.py
ExecReload=
WatchdogSec=0
"""
