"""Raw-socket WebSocket client pieces for the tests: handshakes and frames written by hand,
so that a test can send exactly the malformed bytes it means to."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
from dataclasses import dataclass

from engine_util import EngineProc, parse_responses

KEY = base64.b64encode(b"0123456789abcdef")  # a valid Sec-WebSocket-Key (16 bytes)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10


def request(path: str = "/echo", *, key: bytes = KEY, version: bytes | None = b"13",
            connection: bytes = b"Upgrade", extra: bytes = b"", method: bytes = b"GET",
            http: bytes = b"HTTP/1.1", host: bytes | None = b"t") -> bytes:
    """A handshake request; every part can be changed or left out (None)."""
    lines = [method + b" " + path.encode() + b" " + http]
    if host is not None:
        lines.append(b"Host: " + host)
    lines.append(b"Upgrade: websocket")
    if connection is not None:
        lines.append(b"Connection: " + connection)
    if key is not None:
        lines.append(b"Sec-WebSocket-Key: " + key)
    if version is not None:
        lines.append(b"Sec-WebSocket-Version: " + version)
    head = b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"
    return head


def accept_for(key: bytes) -> str:
    return base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    """One frame as a client sends it (masked unless ``mask=False``); ``rsv`` is the RSV1-3 bits (0-7)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def close_frame(code: int | None = 1000, reason: bytes = b"") -> bytes:
    return frame(CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class RawWS:
    """A WebSocket over a plain socket: send raw bytes, read the server's frames."""

    def __init__(self, sock: socket.socket, head: bytes, rest: bytes) -> None:
        self.sock = sock
        self.head = head
        self.buf = rest

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, need: int, deadline: float) -> bool:
        while len(self.buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for a frame; have {self.buf[:80]!r}")
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(262144)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return False
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read(self, timeout: float = 20.0) -> Frame | None:
        """The next frame from the server, or None if it closed the TCP connection."""
        deadline = time.monotonic() + timeout
        if not self._fill(2, deadline):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        assert not b1 & 0x80, "the server masked a frame"
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if not self._fill(4, deadline):
                return None
            n = struct.unpack("!H", self.buf[2:4])[0]
            pos = 4
        elif n == 127:
            if not self._fill(10, deadline):
                return None
            n = struct.unpack("!Q", self.buf[2:10])[0]
            pos = 10
        if not self._fill(pos + n, deadline):
            return None
        payload = self.buf[pos:pos + n]
        self.buf = self.buf[pos + n:]
        return Frame(bool(b0 & 0x80), b0 & 0x0F, payload)

    def read_close(self, timeout: float = 20.0) -> Frame:
        """Read frames until the server's close frame (skipping data and pings)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.read(max(deadline - time.monotonic(), 0.1))
            assert got is not None, "the server dropped the TCP connection without a close frame"
            if got.opcode == CLOSE:
                return got

    def at_eof(self, timeout: float = 20.0) -> bool:
        """True once the server closed the TCP connection (after any frames still in flight)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.5)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return True
            if not chunk:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


def open_raw(proc: EngineProc, path: str = "/echo", *, data: bytes | None = None,
             timeout: float = 20.0) -> RawWS:
    """Connect, send a handshake (``data``, or a valid one for ``path``), read the response head."""
    sock = proc.connect()
    sock.sendall(data if data is not None else request(path))
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return RawWS(sock, head, rest)


def refused(proc: EngineProc, data: bytes, timeout: float = 20.0):
    """Send a handshake the server must refuse; the parsed response, read until the server closes."""
    with proc.connect() as sock:
        sock.sendall(data)
        got = b""
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
    responses = parse_responses(got)
    assert len(responses) == 1, got
    return responses[0]


def ws_url(proc: EngineProc, path: str) -> str:
    """The ws:// URL of ``path`` on ``proc``, for real clients."""
    return f"ws://127.0.0.1:{proc.port}{path}"
