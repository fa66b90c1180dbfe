"""At max_connections, idle connections make room for new clients (issue 13, "Idle connections").

2 x max_connections idle keep-alive or silent connections from one client used
to lock every other client out until the keep-alive (65 s) or header (30 s)
timeouts. Now, at the limit, the worker closes the connection that has been
idle longest (a keep-alive connection between requests, or one that never sent
a byte) for each new one, as nginx does; it stops accepting only while every
connection is busy, and starts again as soon as one is idle.
"""

from __future__ import annotations

import resource
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from engine_util import EngineProc, peer_closed, read_responses, wait_until

GET = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"


def request(proc: EngineProc, sock: socket.socket | None = None, path: str = "/hello",
            timeout: float = 20.0) -> int:
    """One request on ``sock`` (or a new connection); its status."""
    own = sock is None
    sock = sock or proc.connect(timeout=timeout)
    try:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
        return read_responses(sock, 1, timeout=timeout)[0].status
    finally:
        if own:
            sock.close()


def open_connections(proc: EngineProc, n: int) -> None:
    wait_until(lambda: proc.stats()["connections_open"] == n, 30, what=f"{n} open connections")


def test_the_longest_idle_connection_makes_room(make_server):
    proc = make_server(settings={"max_connections": 3}, stats=True)
    a, b = proc.connect(), proc.connect()
    assert request(proc, a) == 200 and request(proc, b) == 200  # a, then b: idle keep-alive
    c = proc.connect()  # silent
    open_connections(proc, 3)
    # At the limit: d gets in, and a (idle longest) is closed for it.
    d = proc.connect()
    assert request(proc, d) == 200
    assert peer_closed(a, timeout=20)
    # b is used again: c (silent since it connected) is now the one idle longest, then d.
    assert request(proc, b) == 200
    e = proc.connect()
    assert request(proc, e) == 200
    assert peer_closed(c, timeout=20)
    assert [request(proc, sock) for sock in (b, d, e)] == [200, 200, 200]  # never closed
    for sock in (a, b, c, d, e):
        sock.close()


def test_a_busy_connection_is_never_closed_to_make_room(make_server):
    proc = make_server(settings={"max_connections": 2}, stats=True)
    busy = proc.connect()
    busy.sendall(b"GET /sleep?s=3&tag=busy HTTP/1.1\r\nHost: t\r\n\r\n")
    idle = proc.connect()
    assert request(proc, idle) == 200
    # The newcomer takes the idle connection's place, not the busy one's.
    assert request(proc, path="/hello?new") == 200
    assert peer_closed(idle, timeout=20)
    (resp,) = read_responses(busy, 1, timeout=30)
    assert resp.status == 200 and resp.body == b"slept busy"
    busy.close()
    idle.close()


def test_when_every_connection_is_busy_a_newcomer_waits_only_until_one_is_idle(make_server):
    # keepalive_timeout is long: the newcomer must not wait for it.
    proc = make_server(settings={"max_connections": 1, "keepalive_timeout": 300}, stats=True)
    busy = proc.connect()
    busy.sendall(b"GET /sleep?s=1&tag=busy HTTP/1.1\r\nHost: t\r\n\r\n")
    open_connections(proc, 1)
    assert request(proc, path="/hello?newcomer", timeout=30) == 200
    (resp,) = read_responses(busy, 1, timeout=30)
    assert resp.body == b"slept busy"
    assert peer_closed(busy, timeout=20)  # idle after its response: closed for the newcomer
    busy.close()


# ------------------------------------------------------------------ the attack from the issue

ATTACK_CONNECTIONS = 5000
LIMIT = 200


@dataclass
class Attack:
    """One client opening ATTACK_CONNECTIONS connections and keeping them open.

    Even-numbered ones make a request, read the response and then sit idle
    (keep-alive); odd-numbered ones never send a byte.
    """

    port: int
    opened: int = 0
    answered: int = 0
    closed_by_server: dict[str, int] = field(default_factory=lambda: {"keep-alive": 0, "silent": 0})
    errors: list[str] = field(default_factory=list)
    done_opening: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        socks: list[socket.socket] = []
        try:
            while not self.stop.is_set():
                if self.opened < ATTACK_CONNECTIONS:
                    for _ in range(50):
                        self._open(sel, socks)
                    if self.opened == ATTACK_CONNECTIONS:
                        self.done_opening.set()
                for key, events in sel.select(timeout=0.01):
                    self._event(sel, key, events)
        except Exception as exc:  # surfaces in the test's assertions
            self.errors.append(repr(exc))
        finally:
            self.done_opening.set()
            sel.close()
            for sock in socks:
                sock.close()

    def _open(self, sel: selectors.BaseSelector, socks: list[socket.socket]) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        kind = "keep-alive" if self.opened % 2 == 0 else "silent"
        sel.register(sock, selectors.EVENT_WRITE, [kind, "connecting"])
        socks.append(sock)
        self.opened += 1

    def _event(self, sel: selectors.BaseSelector, key: selectors.SelectorKey, events: int) -> None:
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        kind, state = key.data
        if state == "connecting":
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.errors.append("connect failed")
                sel.unregister(sock)
                return
            if kind == "keep-alive":
                sock.send(GET)
            sel.modify(sock, selectors.EVENT_READ, [kind, "open"])
            return
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:
            self.answered += data.count(b"HTTP/1.1 200")
            return
        self.closed_by_server[kind] += 1
        sel.unregister(sock)


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft >= need, f"the test needs {need} file descriptors; the hard limit allows {soft}"


def test_5000_idle_connections_do_not_lock_out_a_probe(make_server):
    _raise_fd_limit(ATTACK_CONNECTIONS + 1000)
    proc = make_server(settings={"max_connections": LIMIT}, stats=True, backlog=1024)
    attack = Attack(proc.port)
    attacker = threading.Thread(target=attack.run, daemon=True)
    peak = [0]
    sampling = threading.Event()

    def sample() -> None:  # the most connections the worker held at once
        while not sampling.is_set():
            peak[0] = max(peak[0], proc.stats()["connections_open"])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    attacker.start()
    probes = answered = 0
    failures: list[str] = []
    try:
        # Probes while the connections pile up, then while all 5,000 are held.
        deadline = None
        while deadline is None or time.monotonic() < deadline or probes < 30:
            if deadline is None and attack.done_opening.is_set():
                deadline = time.monotonic() + 3.0
            probes += 1
            try:
                status = request(proc, path=f"/hello?probe={probes}", timeout=20)
            except (OSError, AssertionError) as exc:
                failures.append(f"probe {probes}: {exc!r}"[:200])
                break
            answered += status == 200
            time.sleep(0.05)
    finally:
        attack.stop.set()
        attacker.join(30)
        sampling.set()
        sampler.join(10)
    print(f"probes answered {answered}/{probes}; attack: opened {attack.opened}, "
          f"answered {attack.answered}, closed by the server {attack.closed_by_server}; "
          f"peak open connections {peak[0]}")
    assert failures == [] and answered == probes, (failures, answered, probes)
    assert attack.errors == []
    assert attack.opened == ATTACK_CONNECTIONS
    # Both kinds of idle connection made room, and the limit still held.
    assert attack.closed_by_server["keep-alive"] > 0 and attack.closed_by_server["silent"] > 0
    assert peak[0] <= LIMIT + 20
    assert proc.proc.poll() is None
    # Thousands of connections closed to make room: one warning (at most one a minute).
    assert proc.log_text().count(f"max_connections ({LIMIT}) reached") == 1
