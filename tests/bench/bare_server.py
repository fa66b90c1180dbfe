"""The ceiling of this stack: uvloop + httptools answering a fixed response, no ASGI.

    python tests/bench/bare_server.py PORT

Parses each request with httptools (so the parsing cost is included) and answers
every complete request with the same pre-encoded "Hello, world!" response,
honouring keep-alive. Used by tests/bench/bench.py as the reference point.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import httptools
import uvloop

RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\n"
            b"Hello, world!")


class BareProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def main(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    server = await asyncio.get_running_loop().create_server(BareProtocol, sock=sock)
    print(f"READY {port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
