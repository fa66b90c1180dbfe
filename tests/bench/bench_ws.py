"""WebSocket echo benchmark: corral vs uvicorn (each --ws implementation) vs granian vs a bare echo.

    python tests/bench/bench_ws.py [--only NAME]... [--duration 10] [--warmup 3] [--rounds 1]
                                   [--idle 2000] [--json results.json]

Method (issue 15): each server runs alone with one worker, pinned to CPU 0
(``taskset -c 0``), and serves tests/bench/ws_echo.py:app. The load client (this
script with ``--client``, uvloop and prebuilt masked frames) runs pinned to CPU
1: 64 connections, each keeping one message in flight, first with 16-byte then
with 4 KiB binary messages (no permessage-deflate offered). A warm-up run, then
the measured run. The client's CPU is printed: it must stay well under 100% (and
the bare echo, the ceiling, shows what it can drive).

Then the memory per idle connection: ``--idle N`` handshakes held open, the
server's RSS before and after, divided by N (corral also with permessage-deflate).

  corral                    corral run -w 1 (its engine, websockets' ServerProtocol)
  uvicorn-websockets-sansio uvicorn --ws websockets-sansio (httptools, uvloop)
  uvicorn-websockets        uvicorn --ws websockets (the legacy protocol)
  uvicorn-wsproto           uvicorn --ws wsproto
  granian                   granian --interface asgi --workers 1
  bare                      tests/bench/ws_echo.py: frames echoed by hand (the ceiling)

Not a test: run it by hand or with ``make bench``. The machine drifts 10-25%:
compare servers within one run; ``--rounds N`` alternates the servers and
prints medians and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import BIN, REPO, cpu_seconds, free_port, loadavg, stop

HERE = Path(__file__).resolve().parent
APP = "ws_echo:app"
SIZES = (16, 4096)
TARGETS = [("corral", "uvicorn-websockets-sansio", 1.3), ("corral", "granian", 1.5)]


def commands(port: int) -> dict[str, list[str]]:
    host = ["--host", "127.0.0.1", "--port", str(port)]
    uvicorn = [str(BIN / "uvicorn"), APP, *host, "--app-dir", str(HERE), "--loop", "uvloop", "--http", "httptools",
               "--no-access-log", "--log-level", "warning", "--ws"]
    return {
        "corral": [str(BIN / "corral"), "run", "-w", "1", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                   APP],
        "uvicorn-websockets-sansio": [*uvicorn, "websockets-sansio"],
        "uvicorn-websockets": [*uvicorn, "websockets"],
        "uvicorn-wsproto": [*uvicorn, "wsproto"],
        "granian": [str(BIN / "granian"), "--interface", "asgi", "--workers", "1", "--no-access-log", *host,
                    "--log-level", "warning", "--working-dir", str(HERE), APP],
        "bare": [sys.executable, str(HERE / "ws_echo.py"), str(port)],
    }


ORDER = list(commands(0))

# ---------------------------------------------------------------------------- the load client


def _handshake(path: str = "/", deflate: bool = False) -> bytes:
    key = base64.b64encode(os.urandom(16))
    extra = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else b""
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")


def _masked_frame(payload: bytes) -> bytes:
    from websockets.speedups import apply_mask

    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x82])  # FIN, binary
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + apply_mask(payload, mask)


class _Echoer(asyncio.Protocol):
    """One connection keeping one message in flight: send, wait for the whole echo, send again."""

    def __init__(self, frame: bytes, reply_len: int, counter: list[int], opened: asyncio.Future[None]) -> None:
        self.frame = frame
        self.reply_len = reply_len  # bytes of one unmasked echo frame
        self.counter = counter
        self.opened = opened
        self.buf = b""
        self.open = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(_handshake())

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in self.buf[:20]:
                raise RuntimeError(f"handshake refused: {self.buf[:200]!r}")
            self.open = True
            data = self.buf[end + 4:]
            self.buf = b""
            if not self.opened.done():
                self.opened.set_result(None)
            self.transport.write(self.frame)
            if not data:
                return
        have = len(self.buf) + len(data)
        self.buf = (self.buf + data) if self.buf else data
        if have >= self.reply_len:
            n = have // self.reply_len
            self.counter[0] += n
            self.buf = self.buf[n * self.reply_len:]
            self.transport.write(self.frame)  # one message in flight per connection


async def _client(port: int, size: int, connections: int, seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    frame = _masked_frame(os.urandom(size))
    reply_len = len(frame) - 4  # the server's frame: same header, no mask key
    counter = [0]
    transports = []
    for _ in range(connections):
        opened = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda opened=opened: _Echoer(frame, reply_len, counter, opened), "127.0.0.1", port)
        transports.append(transport)
        await asyncio.wait_for(opened, 30)
    start_count, start, cpu0 = counter[0], time.monotonic(), time.process_time()
    await asyncio.sleep(seconds)
    done, elapsed, cpu = counter[0] - start_count, time.monotonic() - start, time.process_time() - cpu0
    for transport in transports:
        transport.abort()
    return {"messages_per_second": round(done / elapsed), "client_cpu": round(cpu / elapsed, 2)}


def _run_client(port: int, size: int, connections: int, seconds: float) -> dict[str, float]:
    """The load client in its own process, pinned to CPU 1."""
    cmd = ["taskset", "-c", "1", sys.executable, __file__, "--client", str(port), str(size), str(connections),
           str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- servers


def _start(name: str, port: int) -> subprocess.Popen[bytes]:
    cmd = ["taskset", "-c", "0", *commands(port)[name]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO / "daemon")]),
           "CORRAL_CONTROL_SOCKET": f"/tmp/corral-bench-ws-{os.getpid()}.sock",
           "CORRAL_APP_DIR": str(HERE), "CORRAL_MAX_CONNECTIONS": "100000"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, cwd=HERE)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            stop(proc)
            raise RuntimeError(f"{name} did not start: {' '.join(cmd)}\n{err[-2000:]}")
        time.sleep(0.2)


def _server_rss(proc: subprocess.Popen[bytes]) -> int:
    """RSS of the process tree (corral: supervisor + worker; the worker grows)."""
    import psutil

    root = psutil.Process(proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def _idle_memory(name: str, count: int, deflate: bool) -> float:
    port = free_port()
    proc = _start(name, port)
    socks: list[socket.socket] = []
    try:
        def open_some(n: int) -> None:
            batch = []
            for _ in range(n):
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock.sendall(_handshake(deflate=deflate))
                batch.append(sock)
            for sock in batch:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
                assert b" 101 " in head[:20], head[:200]
            socks.extend(batch)
        open_some(100)  # warm up allocators
        time.sleep(1.0)
        before = _server_rss(proc)
        for _ in range(count // 100):
            open_some(100)
        time.sleep(2.0)
        return round((_server_rss(proc) - before) / (count // 100 * 100) / 1024, 1)
    finally:
        for sock in socks:
            sock.close()
        stop(proc)


def run_one(name: str, duration: float, warmup: float, connections: int) -> dict[str, Any]:
    port = free_port()
    proc = _start(name, port)
    result: dict[str, Any] = {"server": name, "loadavg": loadavg()}
    try:
        for size in SIZES:
            if warmup:
                _run_client(port, size, connections, warmup)
            cpu_before = cpu_seconds(proc.pid)
            got = _run_client(port, size, connections, duration)
            cpu = cpu_seconds(proc.pid) - cpu_before
            rate = got["messages_per_second"]
            result[f"msgs_{size}"] = rate
            result[f"client_cpu_{size}"] = got["client_cpu"]
            result[f"server_us_per_msg_{size}"] = round(cpu / (rate * duration) * 1e6, 2) if rate else None
    finally:
        stop(proc)
    return result


def _ratio_lines(rows: list[dict[str, Any]], rounds: list[dict[str, dict[str, Any]]]) -> list[str]:
    by = {r["server"]: r for r in rows}
    lines = []
    for mine, other, target in TARGETS:
        if mine not in by or other not in by:
            continue
        for size in SIZES:
            per_round = [r[mine][f"msgs_{size}"] / r[other][f"msgs_{size}"] for r in rounds
                         if mine in r and other in r and r[other][f"msgs_{size}"]]
            if not per_round:
                continue
            ratio = statistics.median(per_round)
            spread = f" (rounds {min(per_round):.2f}-{max(per_round):.2f})" if len(per_round) > 1 else ""
            # The steadier measure on a busy machine: server CPU per message, theirs / ours.
            cpu = [r[other][f"server_us_per_msg_{size}"] / r[mine][f"server_us_per_msg_{size}"] for r in rounds
                   if mine in r and other in r and r[mine][f"server_us_per_msg_{size}"]]
            cpu_text = f"; CPU per message {statistics.median(cpu):.2f}x" if cpu else ""
            lines.append(f"{mine} / {other} @ {size} B: {ratio:.2f}x{spread} "
                         f"(target >= {target}x: {'met' if ratio >= target else 'NOT met'}){cpu_text}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=ORDER, help="run only this server (repeatable)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--idle", type=int, default=2000, help="idle connections for the memory figure (0: skip)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--client", nargs=4, metavar=("PORT", "SIZE", "CONNECTIONS", "SECONDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        import uvloop

        port, size, conns, seconds = args.client
        print(json.dumps(uvloop.run(_client(int(port), int(size), int(conns), float(seconds)))))
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    names = args.only or ORDER
    rounds: list[dict[str, dict[str, Any]]] = []
    for i in range(args.rounds):
        results: dict[str, dict[str, Any]] = {}
        for name in names:
            try:
                results[name] = run_one(name, args.duration, args.warmup, args.connections)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                print(f"{name}: failed: {exc}", file=sys.stderr)
                continue
            r = results[name]
            print(f"[round {i + 1}] {name:27s} " + "  ".join(
                f"{size:>5} B: {r[f'msgs_{size}']:>7} msg/s ({r[f'server_us_per_msg_{size}']} us/msg, "
                f"client CPU {r[f'client_cpu_{size}']:.0%})" for size in SIZES), flush=True)
        rounds.append(results)
    rows = []
    for name in names:
        runs = [r[name] for r in rounds if name in r]
        if not runs:
            continue
        row = {"server": name, "rounds": len(runs)}
        for size in SIZES:
            row[f"msgs_{size}"] = round(statistics.median(r[f"msgs_{size}"] for r in runs))
            row[f"client_cpu_{size}"] = round(statistics.median(r[f"client_cpu_{size}"] for r in runs), 2)
            row[f"us_{size}"] = round(statistics.median(r[f"server_us_per_msg_{size}"] or 0 for r in runs), 1)
        rows.append(row)
    if args.idle:
        for name in names:
            try:
                rows_by = next(r for r in rows if r["server"] == name)
            except StopIteration:
                continue
            rows_by["idle_KiB"] = _idle_memory(name, args.idle, deflate=False)
            if name == "corral":
                rows_by["idle_KiB_deflate"] = _idle_memory(name, args.idle, deflate=True)
    print()
    print("| server | msgs/s, 16 B | msgs/s, 4 KiB | server CPU per message, 16 B / 4 KiB | client CPU (16 B) "
          "| RSS per idle connection |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        idle = f"{row.get('idle_KiB', '-')} KiB"
        if "idle_KiB_deflate" in row:
            idle += f" ({row['idle_KiB_deflate']} KiB with permessage-deflate)"
        print(f"| {row['server']} | {row['msgs_16']} | {row['msgs_4096']} | {row['us_16']} / {row['us_4096']} us "
              f"| {row['client_cpu_16']:.0%} | {idle} |")
    print()
    for line in _ratio_lines(rows, rounds):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
