"""``wsgi.input``: the request body as a file-like object, in bounded memory.

Two shapes, one per execution mode:

* :class:`SpooledBody` (inline mode, ``threads: 0``). The app runs on the event
  loop and must never block it waiting for the client, so the whole body is
  received first. It is kept in memory up to ``spool_threshold`` bytes and moved
  to an anonymous temporary file past that, so a 1 GiB upload costs disk, not
  RAM. The app then reads a plain ``BytesIO`` or file.

* :class:`StreamingInput` (thread-pool mode). The app runs in a worker thread and
  reads the body while it arrives, pulling it from the connection's bounded
  buffer; the connection stops reading the socket while that buffer is full,
  so memory per request stays bounded whatever the client sends.
"""

from __future__ import annotations

import io
import tempfile
import threading
from typing import BinaryIO, Callable, Iterator

from corral.engine.cycle import ClientDisconnected  # an OSError: raised by reads once the client is gone

__all__ = ["ClientDisconnected", "EMPTY_INPUT", "EmptyInput", "SpooledBody", "StreamingInput"]


class EmptyInput:
    """``wsgi.input`` for a request without a body: always at EOF, stateless, so one instance serves all."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def read1(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int = -1) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


EMPTY_INPUT = EmptyInput()


class SpooledBody:
    """Collects a request body on the event loop; memory up to ``threshold`` bytes, then a temp file."""

    __slots__ = ("_chunks", "_size", "_file", "_threshold", "_spool_dir")

    def __init__(self, threshold: int, spool_dir: str | None = None) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._file: BinaryIO | None = None
        self._threshold = threshold
        self._spool_dir = spool_dir

    @property
    def size(self) -> int:
        return self._size

    @property
    def spooled(self) -> bool:
        """True once the body has moved to a temporary file."""
        return self._file is not None

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        if self._size > self._threshold:
            # Anonymous (already unlinked) file: nothing is left behind if the worker dies.
            self._file = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115 - closed by close()
            self._file.writelines(self._chunks)
            self._chunks = []

    def finish(self) -> BinaryIO:
        """The complete body as a readable stream positioned at its start."""
        if self._file is not None:
            self._file.flush()
            self._file.seek(0)
            return self._file
        chunks, self._chunks = self._chunks, []
        if not chunks:
            return io.BytesIO()
        return io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def close(self) -> None:
        self._chunks = []
        if self._file is not None:
            self._file.close()


class StreamingInput:
    """A thread-safe blocking body stream: the app thread reads, the event loop supplies.

    Pull model, so memory stays bounded without any extra flow-control state:
    when a read needs more than is buffered, the stream calls ``request_more``
    once (from the app thread; it must hand the request to the loop, e.g. via
    ``call_soon_threadsafe``) and waits. The loop answers with exactly one of
    :meth:`feed` (whatever body bytes the connection has buffered, at most its
    body buffer), :meth:`feed_eof` or :meth:`feed_error`. The connection stops
    reading from the client while its own buffer is full, so at most about two
    buffers of body are in memory per request, whatever the client sends.
    """

    def __init__(self, request_more: Callable[[], None]) -> None:
        self._buf = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._requested = False
        self._request_more = request_more
        self._cond = threading.Condition(threading.Lock())

    # -- loop side ---------------------------------------------------------

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._buf += data
            self._requested = False
            self._cond.notify()

    def feed_eof(self) -> None:
        with self._cond:
            self._eof = True
            self._requested = False
            self._cond.notify()

    def feed_error(self, exc: BaseException) -> None:
        """The body will never complete (disconnect, timeout, over the size limit)."""
        with self._cond:
            if not self._eof:
                self._error = exc
            self._requested = False
            self._cond.notify()

    # -- app side ----------------------------------------------------------

    def _wait(self) -> None:
        """Block until the loop answers a request for more. Called with the lock held."""
        if self._error is not None:
            raise self._error
        if not self._requested:
            self._requested = True
            self._request_more()
        self._cond.wait()

    def _take(self, n: int) -> bytes:
        """Remove and return the first ``n`` buffered bytes. Called with the lock held."""
        buf = self._buf
        data = bytes(buf[:n])
        del buf[:n]  # O(1) for a bytearray prefix: CPython moves its start offset
        return data

    def read(self, size: int | None = -1) -> bytes:
        with self._cond:
            if size is None or size < 0:
                while not self._eof:
                    self._wait()
                return self._take(len(self._buf))
            while len(self._buf) < size and not self._eof:
                self._wait()
            return self._take(min(size, len(self._buf)))

    def read1(self, size: int = -1) -> bytes:
        """Whatever is buffered (at least one byte unless at EOF), up to ``size``."""
        with self._cond:
            while not self._buf and not self._eof:
                self._wait()
            n = len(self._buf) if size is None or size < 0 else min(size, len(self._buf))
            return self._take(n)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        with self._cond:
            scanned = 0
            while True:
                buf = self._buf
                nl = buf.find(b"\n", scanned)
                if nl != -1:
                    end = nl + 1
                    break
                if 0 <= limit <= len(buf) or self._eof:
                    end = len(buf)
                    break
                scanned = len(buf)
                self._wait()
            if 0 <= limit < end:
                end = limit
            return self._take(end)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Apps may close wsgi.input; unread body bytes are discarded by the connection, not here."""
