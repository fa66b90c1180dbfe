"""TLS benchmark: handshakes per second and keep-alive requests per second over TLS, corral vs uvicorn.

    python tests/bench/bench_tls.py [--rounds 3] [--duration 8] [--warmup 2] [--json results.json]

Method: both servers serve ``corral.demo.hello:asgi`` with one worker, the same
certificate (an ECDSA P-256 key and a certificate made with openssl for the
run) and the default ciphers of each; each runs alone, pinned to CPU 0
(``taskset -c 0``); wrk runs pinned to CPU 1 with one thread:

  handshakes   wrk -c16 -H "Connection: close": every request is a new TCP
               connection and a full TLS handshake (wrk resumes no sessions),
               so requests/s = handshakes/s
  keep-alive   wrk -c64: requests over established TLS connections

  corral       corral run -w 1 (its own engine; ssl_* from CORRAL_SSL_* variables)
  uvicorn      uvicorn --loop uvloop --http httptools --no-access-log --ssl-certfile/--ssl-keyfile

Rounds are paired: each round measures both servers back to back, in
alternating order, and the per-round ratio corral/uvicorn is taken within the
pair, so drift of a busy machine cancels out. Printed: the median of each
server's figures with their range (min-max), the median of the ratios and
their range, and the server's CPU time per request (steadier than req/s when
other processes steal wall-clock time). Not a test: run it by hand or with
``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import BIN, EXPECTED_BODY, REPO, check_tools, cpu_seconds, free_port, loadavg, stop

APP = "corral.demo.hello:asgi"
SERVERS = ("corral", "uvicorn")
MODES = {  # name: (wrk connections, extra wrk arguments)
    "handshakes": (16, ["-H", "Connection: close"]),
    "keep-alive": (64, []),
}


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for localhost (what certbot issues by default)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def command(name: str, port: int, cert: Path, key: Path) -> tuple[list[str], dict[str, str]]:
    if name == "corral":
        return ([str(BIN / "corral"), "run", "-w", "1", "-b", f"127.0.0.1:{port}", "--log-level", "warning", APP],
                {"CORRAL_SSL_CERTFILE": str(cert), "CORRAL_SSL_KEYFILE": str(key)})
    return ([str(BIN / "uvicorn"), APP, "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
             "--http", "httptools", "--no-access-log", "--log-level", "warning",
             "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)], {})


def responds(port: int, cert: Path) -> bool:
    """The server answers the hello-world body over TLS, with our certificate."""
    context = ssl.create_default_context(cafile=str(cert))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data.startswith(b"HTTP/1.1 200") and data.endswith(EXPECTED_BODY)
    except (OSError, ssl.SSLError):
        return False


def wrk(port: int, seconds: float, connections: int, extra: list[str]) -> tuple[float, str]:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", *extra,
                          f"https://127.0.0.1:{port}/"], check=True, capture_output=True, text=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"could not read wrk output:\n{out}")
    errors = re.findall(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
    return float(match.group(1)), "; ".join(errors)


def measure(name: str, cert: Path, key: Path, duration: float, warmup: float) -> dict[str, Any]:
    """Start one server pinned to CPU 0, run every mode against it, stop it."""
    port = free_port()
    cmd, env = command(name, port, cert, key)
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO / "daemon"), **env},
                            start_new_session=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not responds(port, cert):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{name} did not start: {' '.join(cmd)}\n{err[-2000:]}")
            time.sleep(0.2)
        result: dict[str, Any] = {"loadavg": loadavg()}
        for mode, (connections, extra) in MODES.items():
            if warmup:
                wrk(port, warmup, connections, extra)
            before = cpu_seconds(proc.pid)
            rps, errors = wrk(port, duration, connections, extra)
            cpu = cpu_seconds(proc.pid) - before
            result[mode] = {"per_second": rps, "errors": errors,
                            "cpu_us": round(cpu / (rps * duration) * 1e6, 1) if rps else None}
        return result
    finally:
        stop(proc)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def report(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode in MODES:
        print(f"  {mode}:")
        for name in SERVERS:
            rates = [r[name][mode]["per_second"] for r in rounds]
            cpus = [r[name][mode]["cpu_us"] for r in rounds if r[name][mode]["cpu_us"] is not None]
            errors = "; ".join(e for r in rounds if (e := r[name][mode]["errors"]))
            print(f"    {name:8s} {spread(rates):>26s} /s   {statistics.median(cpus):7.1f} us CPU each"
                  + (f"   ({errors})" if errors else ""))
        ratios = [r["corral"][mode]["per_second"] / r["uvicorn"][mode]["per_second"] for r in rounds]
        print(f"    corral/uvicorn {statistics.median(ratios):.2f}x (rounds: {min(ratios):.2f}-{max(ratios):.2f}x)")
        summary[mode] = {"ratio_median": round(statistics.median(ratios), 3),
                         "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (both servers each)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of each warm-up run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if (status := check_tools("bench_tls")) is not None:
        return status
    with tempfile.TemporaryDirectory(prefix="corral-bench-tls-") as tmp:
        cert, key = make_certificate(Path(tmp))
        print(f"{args.rounds} paired rounds; wrk -t1 on CPU 1, server on CPU 0; {args.duration:g}s runs after "
              f"{args.warmup:g}s warm-ups; app {APP}; ECDSA P-256 certificate")
        rounds: list[dict[str, dict[str, Any]]] = []
        for index in range(args.rounds):
            order = SERVERS if index % 2 == 0 else SERVERS[::-1]
            rounds.append({name: measure(name, cert, key, args.duration, args.warmup) for name in order})
            pair = rounds[-1]
            print(f"  round {index + 1}: " + ", ".join(
                f"{name} {pair[name]['handshakes']['per_second']:,.0f} handshakes/s "
                f"{pair[name]['keep-alive']['per_second']:,.0f} req/s" for name in SERVERS), flush=True)
    summary = report(rounds)
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
