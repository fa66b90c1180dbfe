"""The engine's Python cost per request, without sockets or a kernel in the way.

    python tests/bench/bench_inprocess.py [--interface asgi|wsgi] [--requests N]

Feeds the same keep-alive GET request into one HttpProtocol, over a stand-in
transport whose write() only counts, and prints the best of five rounds in µs
per request. That is the number to watch when changing the hot path: the
socket benchmarks (bench.py, bench_wsgi.py) add about 7 µs of kernel TCP work
per request and their own noise. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import uvloop

from benchlib import REPO

sys.path.insert(0, str(REPO / "daemon"))

from corral.demo import hello  # noqa: E402
from corral.engine.protocol import HttpProtocol  # noqa: E402
from corral.engine.server import Server  # noqa: E402
from corral.engine.settings import EngineSettings  # noqa: E402
from corral.worker import inflight  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"


class CountingTransport:
    """Just enough of an asyncio transport for the protocol's keep-alive path."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str) -> Any:
        # What a plain TCP transport answers; anything else (ssl_object: not TLS) is None.
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def measure(loop: Any, interface: str, requests: int, result: list[float]) -> None:
    app = hello.asgi if interface == "asgi" else hello.wsgi
    # The connection context exactly as a worker sets it up (shortcuts and in-flight table included).
    server = Server(app, EngineSettings(), interface=interface)
    server.record_in_flight(inflight.InFlightTable(inflight.create(1024), 1024))
    ctx = server._context()
    protocol = HttpProtocol(ctx)
    transport = CountingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    feed = protocol.data_received
    for _ in range(requests // 10):  # warm-up
        feed(REQUEST)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(requests):
            feed(REQUEST)
        best = min(best, (time.perf_counter() - started) / requests)
    if transport.writes < 5 * requests:
        raise SystemExit(f"only {transport.writes} responses for {5 * requests} requests: the app did not answer")
    result.append(best)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interface", choices=("asgi", "wsgi"), default="asgi")
    parser.add_argument("--requests", type=int, default=200_000, help="requests per round (5 rounds)")
    args = parser.parse_args()
    loop = uvloop.new_event_loop()
    result: list[float] = []
    # From a plain loop callback, as uvloop calls data_received: not inside a task.
    loop.call_soon(measure, loop, args.interface, args.requests, result)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()
    print(f"{args.interface}: {result[0] * 1e6:.2f} us of Python per request (best of 5 x {args.requests:,}; "
          f"{sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
