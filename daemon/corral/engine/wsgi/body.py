"""``wsgi.input``: the request body as a file-like object, in bounded memory.

Two shapes, one per execution mode:

* :class:`SpooledBody` (inline mode, ``threads: 0``). The app runs on the event
  loop and must never block it waiting for the client, so the whole body is
  received first. It is kept in memory up to ``spool_threshold`` bytes and moved
  to an anonymous temporary file past that, so a 1 GiB upload costs disk, not
  RAM. The app then reads a plain ``BytesIO`` or file. What all such bodies of
  one worker hold, in memory and on disk together, is counted by one
  :class:`SpoolBudget` (``wsgi_spool_max``), so unfinished uploads cannot fill
  TMPDIR; a body that does not fit is refused with a :class:`SpoolRefusal`
  (503, or 413 for a body larger than the whole budget), and so is one whose
  temporary file cannot be written (507 for a full disk).

* :class:`StreamingInput` (thread-pool mode). The app runs in a worker thread and
  reads the body while it arrives, pulling it from the connection's bounded
  buffer; the connection stops reading the socket while that buffer is full,
  so memory per request stays bounded whatever the client sends.
"""

from __future__ import annotations

import errno
import io
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

from corral.engine.cycle import ClientDisconnected  # an OSError: raised by reads once the client is gone

__all__ = [
    "EMPTY_INPUT",
    "RETRY_AFTER_SECONDS",
    "ClientDisconnected",
    "EmptyInput",
    "SpoolBudget",
    "SpoolRefusal",
    "SpooledBody",
    "StreamingInput",
]

# Retry-After of a 503 for a full spool: uploads in progress usually finish (and
# free their share) within seconds; a client that honours it should not hammer.
RETRY_AFTER_SECONDS = 5
# Seconds between two log reports of 503s for a full spool.
_REPORT_EVERY = 10.0
# Errors that mean "the spool's filesystem is full": 507 Insufficient Storage.
_DISK_FULL = frozenset((errno.ENOSPC, errno.EDQUOT))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class SpoolRefusal(Exception):
    """A request body that inline mode cannot hold for the app: answer ``status`` and log ``cause``.

    ``message`` is for the client (no server paths in it), ``cause`` for the
    log (what happened and the fix); ``retry_after`` is the Retry-After
    header's seconds, or None for none.
    """

    def __init__(self, status: int, message: str, cause: str, retry_after: int | None = None) -> None:
        super().__init__(cause)
        self.status = status
        self.message = message
        self.cause = cause
        self.retry_after = retry_after


class SpoolBudget:
    """The request-body bytes all inline-mode requests of one worker may hold (``wsgi_spool_max``).

    Inline mode receives a whole body before it runs the app, so every
    connection holds one while its client uploads. Counted across all the
    worker's connections, memory and temporary files alike; a body's bytes
    are given back when it is closed. Loop thread only: no lock.
    """

    __slots__ = ("limit", "used", "_refused", "_reported_at")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit  # None: no limit
        self.used = 0
        self._refused = 0  # 503s not yet reported in the log
        self._reported_at = float("-inf")

    def note_refusal(self, now: float) -> int:
        """Count a 503; return how many to report in the log now, or 0 to stay quiet.

        A flood of uploads must not become a flood of log lines: at most one
        report per ``_REPORT_EVERY`` seconds, with the count since the last one.
        """
        self._refused += 1
        if now - self._reported_at < _REPORT_EVERY:
            return 0
        count, self._refused, self._reported_at = self._refused, 0, now
        return count

    def check_declared(self, length: int) -> None:
        """Refuse a body of declared ``length`` now, before the client sends it, if it cannot fit."""
        limit = self.limit
        if limit is not None and length > limit - self.used:
            raise self._refusal(length, length)

    def take(self, n: int, body_size: int) -> None:
        """Count ``n`` more bytes of a body already holding ``body_size``; SpoolRefusal if over the limit."""
        limit = self.limit
        if limit is not None and self.used + n > limit:
            raise self._refusal(body_size + n, n)
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n

    def _refusal(self, body_size: int, wanted: int) -> SpoolRefusal:
        limit = self.limit or 0
        if body_size > limit:
            # It could never fit, however long the client waits: 413, not 503.
            return SpoolRefusal(
                413, f"Content Too Large: this server holds at most {limit} bytes of a request body",
                f"refused a request body of {body_size}+ bytes: inline mode (threads: 0) receives a whole "
                f"body before the app runs, and wsgi_spool_max ({limit} bytes) caps what one worker holds; "
                f"raise wsgi_spool_max, or set threads: N so that bodies stream to the app")
        return SpoolRefusal(
            503, "Service Unavailable: too many uploads in progress; retry later",
            f"refused a request body: the worker's unfinished uploads already hold {_mib(self.used)} of "
            f"wsgi_spool_max ({_mib(limit)}), {wanted} more bytes do not fit; answering 503 with "
            f"Retry-After: {RETRY_AFTER_SECONDS}. Raise wsgi_spool_max if this is ordinary traffic",
            RETRY_AFTER_SECONDS)


def spool_write_failed(exc: OSError, spool_dir: str | None) -> SpoolRefusal:
    """The refusal for an OSError while creating or writing a spool file in ``spool_dir`` (None: TMPDIR)."""
    where = spool_dir or tempfile.gettempdir()
    if exc.errno in _DISK_FULL:
        return SpoolRefusal(
            507, "Insufficient Storage: the server cannot store the request body",
            f"cannot spool a request body to a temporary file in {where}: {exc.strerror or exc} "
            f"({errno.errorcode.get(exc.errno or 0, exc.errno)}); answering 507. Free space there, point "
            f"TMPDIR at a larger filesystem, or lower wsgi_spool_max below the space it has")
    return SpoolRefusal(
        500, "Internal Server Error: the server cannot store the request body",
        f"cannot spool a request body to a temporary file in {where}: {exc}; answering 500. "
        f"Check that TMPDIR is a writable directory")


class EmptyInput:
    """``wsgi.input`` for a request without a body: always at EOF, stateless, so one instance serves all."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def read1(self, size: int | None = -1) -> bytes:
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
    """Collects a request body on the event loop; memory up to ``threshold`` bytes, then a temp file.

    With a ``budget``, every byte fed is counted against it until :meth:`close`.
    :meth:`feed` and :meth:`finish` raise :class:`SpoolRefusal` when a byte does
    not fit the budget or the temporary file cannot be created or written;
    the caller must still :meth:`close` the body.
    """

    __slots__ = ("_chunks", "_size", "_file", "_threshold", "_spool_dir", "_budget", "_held")

    def __init__(self, threshold: int, spool_dir: str | None = None, budget: SpoolBudget | None = None) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._file: BinaryIO | None = None
        self._threshold = threshold
        self._spool_dir = spool_dir
        self._budget = budget
        self._held = 0  # bytes counted against the budget, given back by close()

    @property
    def size(self) -> int:
        return self._size

    @property
    def spooled(self) -> bool:
        """True once the body has moved to a temporary file."""
        return self._file is not None

    def feed(self, data: bytes) -> None:
        n = len(data)
        budget = self._budget
        if budget is not None:
            budget.take(n, self._size)
            self._held += n
        self._size += n
        try:
            if self._file is not None:
                self._file.write(data)
                return
            self._chunks.append(data)
            if self._size > self._threshold:
                # Anonymous (already unlinked) file: nothing is left behind if the worker dies.
                self._file = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115 - closed by close()
                self._file.writelines(self._chunks)
                self._chunks = []
        except OSError as exc:
            raise spool_write_failed(exc, self._spool_dir) from exc

    def finish(self) -> BinaryIO:
        """The complete body as a readable stream positioned at its start."""
        if self._file is not None:
            try:
                self._file.flush()  # a full disk may show only now, for the last buffered bytes
            except OSError as exc:
                raise spool_write_failed(exc, self._spool_dir) from exc
            self._file.seek(0)
            return self._file
        chunks, self._chunks = self._chunks, []
        if not chunks:
            return io.BytesIO()
        return io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def close(self) -> None:
        """Drop the body and give its bytes back to the budget (safe to call more than once)."""
        self._chunks = []
        if self._held:
            self._budget.release(self._held)  # type: ignore[union-attr]  # _held > 0 only with a budget
            self._held = 0
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # flushing the unread rest failed (a full disk): the file is gone anyway


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

    def read1(self, size: int | None = -1) -> bytes:
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
        lines: list[bytes] = []
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
