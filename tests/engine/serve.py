"""Run the engine alone on a socket it is handed: the tests' (and the early benchmark's) server.

    python tests/engine/serve.py --app MODULE:ATTR [--settings JSON] [--bind HOST:PORT | --unix PATH]

Binds and listens itself (like the supervisor or systemd would), then gives the
socket to ``corral.engine.Server``. Prints ``READY <port-or-path>`` on stdout
once accepting. SIGTERM/SIGINT start a graceful shutdown; the shutdown timeout
is ``--shutdown-timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys

import uvloop

from corral.appload import load_app
from corral.engine import EngineSettings, LifespanError, Server
from corral.engine.tls import build_context
from corral.logs import setup_logging


def _listen(bind: str | None, unix: str | None, backlog: int) -> socket.socket:
    if unix:
        if os.path.exists(unix):
            os.unlink(unix)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(unix)
    else:
        host, _, port = (bind or "127.0.0.1:0").rpartition(":")
        host = host.strip("[]")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    sock.listen(backlog)
    return sock


async def _main(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    settings = EngineSettings(**json.loads(args.settings)) if args.settings else EngineSettings()
    sock = _listen(args.bind, args.unix, args.backlog)
    server = Server(app, settings, interface=args.interface)
    try:
        await server.startup()
    except LifespanError as exc:
        print(f"lifespan startup failed: {exc}", file=sys.stderr, flush=True)
        return 3
    # With ssl_certfile set the socket speaks HTTPS (the worker builds the context the same way).
    await server.serve([sock], build_context(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    restart = []  # SIGHUP: shut down as a reload or recycle would (WebSockets close with 1012)
    loop.add_signal_handler(signal.SIGHUP, lambda: (restart.append(True), stop.set()))
    # Accept balancing, as the worker drives it: USR1 pauses, USR2 resumes.
    loop.add_signal_handler(signal.SIGUSR1, server.pause_accepting)
    loop.add_signal_handler(signal.SIGUSR2, server.resume_accepting)
    if args.stats_file:
        loop.create_task(_dump_stats(server, args.stats_file))
    # Only now: a test may signal us as soon as it reads this line.
    where = args.unix or sock.getsockname()[1]
    print(f"READY {where}", flush=True)
    await stop.wait()
    await server.shutdown(args.shutdown_timeout, restart=bool(restart))
    print("STOPPED", flush=True)
    sock.close()
    # A test app may ignore cancellation on purpose; don't let asyncio's exit
    # (which waits for every task) hang on it.
    sys.stderr.flush()
    os._exit(0)


async def _dump_stats(server: Server, path: str) -> None:
    while True:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(server.stats.snapshot(), accepting=server.accepting), f)
        os.replace(tmp, path)
        await asyncio.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True)
    parser.add_argument("--settings", default="")
    parser.add_argument("--bind")
    parser.add_argument("--unix")
    parser.add_argument("--interface", default="asgi")
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--stats-file")
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args()
    setup_logging(args.log_level, role="engine-test")
    return uvloop.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
