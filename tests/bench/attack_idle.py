"""The idle-connection attack of issue 13, against corral, uvicorn and gunicorn (not a test).

One client opens 2 x 1024 connections to a one-worker server (1024 is corral's
default ``max_connections``): half send one request and then sit idle on
keep-alive (their answers left unread), half connect and never send a byte. Meanwhile a probe client opens
a new connection every half second and asks for ``/``, with a 2 s timeout.
Printed: probes answered / probes sent, per server.

    .venv/bin/python tests/bench/attack_idle.py [--connections 2048] [--probes 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BIN, REPO, free_port, responds, stop  # noqa: E402


def servers(port: int) -> dict[str, list[str]]:
    return {
        "corral": [str(BIN / "corral"), "run", "-n", f"attack-{port}", "-w", "1", "-b", f"127.0.0.1:{port}",
                   "corral.demo.hello:asgi"],
        "uvicorn": [str(BIN / "uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                    "corral.demo.hello:asgi"],
        "gunicorn": [str(BIN / "gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}", "corral.demo.hello:wsgi"],
    }


def start(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not responds(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"did not start: {' '.join(cmd)}")
        time.sleep(0.2)
    return proc


def attack(port: int, connections: int) -> list[socket.socket]:
    """Open the idle connections: even ones make one request and stay; odd ones stay silent."""
    held = []
    for index in range(connections):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            continue  # the server (or its backlog) refuses: the attack holds what it has
        if index % 2 == 0:
            try:  # its answer is left unread: a server that cannot answer must not stall the attack
                sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            except OSError:
                pass
        held.append(sock)
    return held


def probe(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(2)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            return sock.recv(65536).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2048)
    parser.add_argument("--probes", type=int, default=20)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 1024), hard))
    for name in ("corral", "uvicorn", "gunicorn"):
        port = free_port()
        proc = start(servers(port)[name], port)
        try:
            held = attack(port, args.connections)
            answered = 0
            for _ in range(args.probes):
                started = time.monotonic()
                answered += probe(port)
                time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
            print(f"{name:9s} held {len(held):5d} idle connections; probes answered {answered}/{args.probes}",
                  flush=True)
            for sock in held:
                sock.close()
        finally:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
