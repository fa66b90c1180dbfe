"""The fleet's load generator: HTTP/1.1 through HAProxy's frontend until a stop file appears.

Run inside the HAProxy namespace with the system python3 (standard library only)::

    python3 loadgen.py HOST PORT STOP_FILE OUT_FILE

Keep-alive clients (many requests per connection) and new-connection clients (one request
each) run side by side. Every outcome is counted:

- ``ok``: a 200 with the app's version in the body;
- ``failed``: any other status, or a connection that broke after it was established
  (reset, truncated or missing response);
- ``connect_errors``: a connection that could not be made at all;
- ``retried_stale_keepalive``: a reused keep-alive connection that the other side closed
  before any byte of a response; RFC 9112 section 9.3.1 lets a client retry those, as
  every HTTP client does, so they are counted apart (HAProxy should never cause one).

Per backend server (HAProxy's ``X-Served-By`` header) and app version it records the count
and the first and last time (CLOCK_MONOTONIC, shared with the test process: no time
namespace is involved) a request that got that answer was *sent*, so a test can check that
nothing sent after a deploy finished was answered by the old code. OUT_FILE.progress is
rewritten every 0.2 s while it runs, OUT_FILE once at the end.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

HOST, PORT, STOP, OUT = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
KEEPALIVE_CLIENTS = 2
NEW_CONNECTION_CLIENTS = 2
lock = threading.Lock()
stats = {"ok": 0, "failed": 0, "connect_errors": 0, "retried_stale_keepalive": 0,
         "errors": [], "served": {}}


class NoResponse(Exception):
    """The connection closed before any byte of a response."""


class ConnectFailed(Exception):
    """The TCP connection could not be made."""


def read_response(f):
    """(status, headers, body) of one response with a Content-Length."""
    line = f.readline()
    if not line:
        raise NoResponse("closed before the status line")
    status = int(line.split()[1])
    headers = {}
    while True:
        header = f.readline()
        if header in (b"\r\n", b""):
            break
        name, _, value = header.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    length = int(headers.get("content-length", "-1"))
    body = f.read(length) if length >= 0 else b""
    if length < 0 or len(body) != length:
        raise OSError(f"truncated response ({len(body)} of {length} bytes)")
    return status, headers, body.decode(errors="replace")


def record(sent, status, headers, body):
    server = headers.get("x-served-by", "?")
    version = body.split()[0] if body else "?"
    with lock:
        if status == 200:
            stats["ok"] += 1
        else:
            fail(f"status {status} from {server}: {body[:80]!r}")
        per_version = stats["served"].setdefault(server, {}).setdefault(
            version, {"count": 0, "first_sent": sent, "last_sent": sent})
        per_version["count"] += 1
        per_version["last_sent"] = max(per_version["last_sent"], sent)


def fail(error, kind="failed"):
    """Count a failure (the lock is held by the caller or taken here)."""
    stats[kind] += 1
    if len(stats["errors"]) < 30:
        stats["errors"].append(f"{time.monotonic():.3f} {kind}: {error}")


def count_error(error, kind):
    with lock:
        fail(error, kind)


def connect():
    try:
        return socket.create_connection((HOST, PORT), timeout=30)
    except OSError as exc:
        raise ConnectFailed(repr(exc)) from exc


def new_connections():
    while not os.path.exists(STOP):
        sent = time.monotonic()
        try:
            with connect() as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
                record(sent, *read_response(s.makefile("rb")))
        except ConnectFailed as exc:
            count_error(f"new connection: {exc}", "connect_errors")
        except Exception as exc:  # noqa: BLE001 - every other failure is counted, never fatal to the load
            count_error(f"new connection: {exc!r}", "failed")


def keep_alive():
    conn = f = None
    reused = False
    while not os.path.exists(STOP):
        try:
            if conn is None:
                conn, reused = connect(), False
                f = conn.makefile("rb")
            sent = time.monotonic()
            conn.sendall(b"GET / HTTP/1.1\r\nHost: fleet\r\n\r\n")
            status, headers, body = read_response(f)
            record(sent, status, headers, body)
            reused = True
            if headers.get("connection", "").lower() == "close":
                conn.close()
                conn = None
        except ConnectFailed as exc:
            count_error(f"keep-alive: {exc}", "connect_errors")
        except (NoResponse, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            conn = None
            if reused:
                with lock:
                    stats["retried_stale_keepalive"] += 1
            else:
                count_error(f"keep-alive: {exc!r}", "failed")
        except Exception as exc:  # noqa: BLE001 - every other failure is counted, never fatal to the load
            if conn is not None:
                conn.close()
            conn = None
            count_error(f"keep-alive: {exc!r}", "failed")


def report(path):
    with lock:
        data = json.dumps(stats)
    with open(path + ".tmp", "w") as out:
        out.write(data)
    os.replace(path + ".tmp", path)


threads = [threading.Thread(target=keep_alive) for _ in range(KEEPALIVE_CLIENTS)]
threads += [threading.Thread(target=new_connections) for _ in range(NEW_CONNECTION_CLIENTS)]
for t in threads:
    t.start()
while any(t.is_alive() for t in threads):
    report(OUT + ".progress")
    time.sleep(0.2)
report(OUT)
