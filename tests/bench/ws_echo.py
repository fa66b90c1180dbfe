"""The WebSocket benchmark's servers (tests/bench/bench_ws.py).

* ``app``: an ASGI echo app (every server under test serves it);
* ``python ws_echo.py PORT``: the ceiling, a bare uvloop server that does the
  handshake and echoes frames itself, unmasking with websockets' C routine (no
  ASGI, no sans-IO library, no message reassembly: the bench's frames are
  small and whole).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import sys
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class BareEcho(asyncio.Protocol):
    """Handshake, then echo each masked client frame back unmasked (the ceiling)."""

    def __init__(self) -> None:
        from websockets.speedups import apply_mask  # the C unmasking routine

        self.apply_mask = apply_mask
        self.buf = bytearray()
        self.open = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            key = b""
            for line in bytes(buf[:end]).split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            if not key:  # a plain HTTP probe
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                self.transport.close()
                return
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            del buf[:end + 4]
            self.open = True
        out = []
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = struct.unpack_from("!H", buf, 2)[0]
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = struct.unpack_from("!Q", buf, 2)[0]
                pos = 10
            if len(buf) < pos + 4 + n:
                break
            mask = bytes(buf[pos:pos + 4])
            payload = self.apply_mask(bytes(buf[pos + 4:pos + 4 + n]), mask)
            del buf[:pos + 4 + n]
            opcode = b0 & 0x0F
            if opcode == 8:  # close: echo it and end
                out.append(bytes([0x88, len(payload)]) + payload)
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            head = bytes([b0]) + (bytes([n]) if n < 126 else (b"\x7e" + struct.pack("!H", n) if n < 65536
                                                               else b"\x7f" + struct.pack("!Q", n)))
            out.append(head + payload)
        if out:
            self.transport.write(b"".join(out))


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BareEcho, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(_serve(int(sys.argv[1])))
