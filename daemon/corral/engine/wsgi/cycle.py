"""The WSGI request cycle: runs ``app(environ, start_response)`` for one request.

Built on the engine's :class:`~corral.engine.cycle.Cycle` (framing, flow
control, error responses; see ``corral.engine.protocol`` for that contract).
Two execution modes, one subclass each:

* :class:`InlineCycle` (``threads: 0``) calls the app on the event loop. The
  request body is received (and spooled past a threshold) before the call, the
  response iterable is pumped while the client keeps up, and the pump pauses
  on the connection's drain future when it does not. The hello-world path
  (a body-less request, a one-item list back) is the hot path.
* :class:`ThreadedCycle` (``threads: N``) calls the app on the interface's
  thread pool. The app reads ``wsgi.input`` while the body arrives
  (:class:`~corral.engine.wsgi.body.StreamingInput`) and its response bytes
  are handed to the loop with ``call_soon_threadsafe``; at most
  ``write_buffer_size`` bytes wait between thread and socket, so a slow client
  makes the app thread wait, not memory grow.

WSGI rules kept here: nothing is sent before the first non-empty body chunk
(so ``start_response(..., exc_info)`` can still replace the head); the
iterable's ``close()`` is called exactly once in every outcome, disconnects
included, and on the thread that ran the app; ``wsgi.file_wrapper`` results
for regular files go out with ``os.sendfile``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
import traceback
from asyncio import _set_running_loop
from collections.abc import Callable
from typing import Any, NoReturn, Protocol
from urllib.parse import unquote_to_bytes

from corral.engine.cycle import ClientDisconnected, Cycle
from corral.engine.wire import STATUS_LINES, InvalidResponse
from corral.engine.wsgi.body import EMPTY_INPUT, SpoolBudget, SpooledBody, SpoolRefusal, StreamingInput
from corral.engine.wsgi.environ import ConnectionEnviron, build_environ
from corral.engine.wsgi.filewrapper import FileWrapper
from corral.engine.wsgi.head import WSGIHead, encode_head
from corral.engine.wsgi.sendfile import SendfileJob

log = logging.getLogger("corral.engine.wsgi")

BytesIO = io.BytesIO
# Response bytes an inline app may produce in one go before the loop serves others.
_PUMP_BUDGET = 4 << 20
_get_ident = threading.get_ident
_new = object.__new__

# Inline mode runs the app on the event loop's thread, but the app must see a
# thread with no running loop, as under gunicorn's sync worker: Django's ORM
# refuses to run "from an async context", and asyncio.run() and asgiref's
# async_to_sync (Flask's async views) refuse to start inside a running loop.
# So every stretch of app code (the call, iterating the body, close()) runs
# with the thread's running loop unset, and the loop is set back before the
# engine carries on. ``asyncio._set_running_loop`` is the hook asyncio exports
# for event loop implementations (uvloop uses it); it is a C call, cheap enough
# for the hot path. The engine's loop is blocked meanwhile either way.
_no_loop = _set_running_loop


def close_iterable_inline(result: Any, cycle: WSGICycle) -> None:
    """``close_iterable`` on the loop's thread, with no running loop (see ``_no_loop``)."""
    _no_loop(None)
    try:
        close_iterable(result, cycle)
    finally:
        _no_loop(cycle.ctx.loop)


def close_iterable(result: Any, cycle: WSGICycle) -> None:
    """Call the response iterable's ``close()``, if it has one, logging what it raises."""
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("error in close() of the WSGI response iterable (%s)", cycle.request_line())


def thread_stack(ident: int | None) -> str:
    """The formatted stack of thread ``ident`` right now."""
    frame = sys._current_frames().get(ident) if ident is not None else None
    if frame is None:
        return "(the thread has finished)\n"
    return "".join(traceback.format_stack(frame))


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's Content-Length (the parser has checked it is digits), or None for a chunked body."""
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


class WSGIHost(Protocol):
    """What a cycle needs of its interface (``corral.engine.wsgi.interface.WSGIInterface``)."""

    app: Any  # the WSGI callable
    threads: int  # 0: inline mode
    spool_threshold: int
    spool_budget: SpoolBudget
    inline_current: WSGICycle | None  # the request an inline app is running now
    call_soon_threadsafe: Callable[..., Any]  # the loop's, once started

    def base_for(self, client: Any, server: Any, scheme: str) -> dict[str, Any]:
        """The per-(client, server, scheme) part of the environ."""
        ...

    def submit(self, cycle: ThreadedCycle, wsgi_input: Any) -> None:
        """Give a request to the thread pool (loop thread)."""

    def job_done(self, ctx: Any) -> None:
        """A pool thread finished a request (loop thread)."""

    def request_recycle(self, ctx: Any, reason: str) -> None:
        """Ask for this worker to be replaced gracefully."""


class WSGICycle(Cycle):
    """What both execution modes share: environ, start_response, committing the head, errors."""

    # No __slots__ here: the per-request fields below are class-level defaults
    # until a request sets them, so a cycle needs no __init__ of its own (hot path).
    _wsgi_head: WSGIHead | None = None  # from start_response (the base cycle's _head is the encoded head)
    _sent = False  # the head was handed over for writing (exc_info may no longer replace it)
    _result: Any = None  # the app's response iterable, until closed
    _sendfile: SendfileJob | None = None  # the running sendfile, if any
    _ident: int | None = None  # the thread running the app (for stack dumps)
    _timed_out = False  # request_timeout passed
    _body: SpooledBody | None = None  # the spooled request body (inline mode)
    # (method, raw_path, query) while serve_simple() runs the request without
    # a scope or the base cycle's state (inline mode); None once it is a full cycle.
    _simple: tuple[str, bytes, bytes] | None = None

    iface: WSGIHost  # set on the per-interface subclass

    def request_line(self) -> str:
        simple = self._simple
        if simple is not None:  # no scope yet: serve_simple() has not needed one
            method, raw_path, _query = simple
            return f"{method} {unquote_to_bytes(raw_path).decode('utf-8', 'replace')}"
        scope = self.scope
        return f"{scope['method']} {scope['path']}"

    # ------------------------------------------------------------------ environ

    def make_environ(self, wsgi_input: Any) -> dict[str, Any]:
        """The environ for this request (hot path; safe to call from the app thread)."""
        scope = self.scope
        base = self.iface.base_for(scope["client"], scope["server"], scope["scheme"])
        return build_environ(base, scope["method"], scope["raw_path"], scope["query_string"],
                             scope["http_version"], scope["headers"], wsgi_input)

    # ------------------------------------------------------------------ start_response

    def wsgi_start_response(self, status: str, headers: list[tuple[str, str]],
                            exc_info: Any = None) -> Callable[[bytes], None]:
        """The ``start_response`` callable given to the app (PEP 3333 rules on ``exc_info``)."""
        if exc_info is not None:
            try:
                if self._sent:
                    # Too late to change the head: re-raise so the app's error propagates.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self._wsgi_head is not None:
            raise AssertionError("start_response() called a second time without exc_info; "
                                 "only an error handler passing exc_info may replace the response head")
        self._wsgi_head = encode_head(status, headers)
        return self._write_legacy

    def _write_legacy(self, data: bytes) -> None:
        raise NotImplementedError

    def _no_start_response(self) -> NoReturn:
        raise InvalidResponse(f"the WSGI app produced a body without calling start_response() "
                              f"({self.request_line()})")

    def commit_head(self, head: WSGIHead | None) -> None:
        """Hand the head recorded by start_response to the base cycle (loop thread; hot path)."""
        if head is None:
            self._no_start_response()
        code, encoded, length, close, flags, _plain = head
        # WSGI headers were validated and encoded by encode_head.
        self.set_encoded_head(code, encoded, length, flags, close)

    # ------------------------------------------------------------------ outcomes (loop thread)

    def app_failed(self, exc: BaseException) -> None:
        """The app (or its iterable) raised: 500 if nothing was sent, else close the connection."""
        if getattr(exc, "logged", False) or (self.response_complete and isinstance(exc, InvalidResponse)):
            pass  # a framing error the base cycle already logged and acted on
        elif isinstance(exc, ClientDisconnected):
            # Raised by our own writes (or wsgi.input reads) once the client is gone.
            log.debug("client went away during %s", self.request_line())
        elif self._timed_out:
            log.info("WSGI request %s ended with %r after its request_timeout", self.request_line(), exc)
        else:
            log.error("Exception in WSGI application (%s)", self.request_line(), exc_info=exc)
        self.abort_response(500, "Internal Server Error")

    def timed_out(self, elapsed: float, stack: str) -> None:
        """``request_timeout`` passed: a WSGI call cannot be cancelled, so report it and ask for a recycle."""
        log.error("WSGI request %s has run for %.1fs, past request_timeout (%ss); a WSGI call cannot be "
                  "cancelled, so this worker asks to be recycled gracefully. Stack of the thread running "
                  "it:\n%s", self.request_line(), elapsed, self.ctx.request_timeout, stack.rstrip("\n"))
        self.iface.request_recycle(self.ctx, f"WSGI request {self.request_line()} stuck past request_timeout")

    # ------------------------------------------------------------------ file responses (loop thread)

    def serve_file(self, head: Any, span: tuple[int, int, int], done: Callable[[BaseException | None], None]) -> bool:
        """Send a ``wsgi.file_wrapper`` file with ``os.sendfile``; ``done(error)`` follows.

        Returns False (nothing done, head not sent) when the file must instead
        be iterated: the connection has unsent bytes queued, so writing to the
        socket directly could reorder them, or it is a TLS connection.
        """
        if head is None:
            raise InvalidResponse(f"the WSGI app returned a file without calling start_response() "
                                  f"({self.request_line()})")
        transport = self.conn.transport
        if transport is None or transport.get_write_buffer_size():
            return False
        if transport.get_extra_info("ssl_object") is not None:
            return False  # TLS: the bytes must go through the TLS layer, not around it with sendfile
        fd, offset, size = span
        code, encoded, length, close, flags, plain = head
        if length is None and code not in (204, 304):
            length = size
            encoded += b"Content-Length: %d\r\n" % size
        count = size if length is None else min(length, size)
        self.commit_head((code, encoded, length, close, flags, plain))
        self._sent = True
        if self.is_head or code in (204, 304) or count == 0:
            self.write_body(b"", False)  # head only (or an empty file); raises if short of Content-Length
            done(None)
            return True
        self.write_body(b"", True)  # the head alone: the body goes around the transport

        def finished(sent: int, error: BaseException | None) -> None:
            self._sendfile = None
            # Account for the bytes the base cycle did not write itself.
            self._remaining -= sent
            self.bytes_sent += sent
            if error is not None:
                if not self.disconnected:
                    log.warning("file download %s stopped after %d bytes: %s", self.request_line(), sent, error)
                self.abort_response()  # closes the connection: the body is incomplete
                done(None)
                return
            try:
                self.write_body(b"", False)
            except InvalidResponse as exc:  # the file was shorter than the app's Content-Length
                done(exc)
                return
            done(None)

        job = SendfileJob(self.ctx.loop, transport.get_extra_info("socket"), fd, offset, count,
                          self.ctx.write_timeout, self._is_gone, finished)
        self._sendfile = job
        job.step()
        return True

    def _is_gone(self) -> bool:
        return self.disconnected or self.response_complete

    def on_drain(self) -> None:
        job = self._sendfile
        if job is not None and self.disconnected:
            job.cancel()


class InlineCycle(WSGICycle):
    """``threads: 0``: the app runs on the event loop (no thread hops; CPU-bound apps, fastest hello-world)."""

    _iter: Any = None  # the response iterator being pumped
    _scheduled = False  # the body is complete and the app call is queued

    @classmethod
    def serve_simple(cls, conn: Any, method: str, raw_path: bytes, query: bytes,
                     headers: list[tuple[bytes, bytes]]) -> None:
        """Serve a simple request (see ``corral.engine.protocol``) on the loop, now (hot path).

        The cycle object starts bare: no scope, no base-cycle state, only what
        the app call needs. When the app returns a one-item list with a plain
        head, the response goes out through ``conn.finish_simple``; anything
        else (an error, an iterable, write(), Connection: close, HEAD,
        204/304, a Date or Server of its own) makes it a full cycle first
        (``_leave_simple``), which carries on as if it had been one all along.
        """
        cycle = _new(cls)
        cycle.conn = conn
        cycle.ctx = ctx = conn.ctx
        cycle._simple = (method, raw_path, query)
        iface = cls.iface
        state = conn.interface_state
        if state is None:
            state = conn.interface_state = ConnectionEnviron(iface.base_for(conn.client, conn.server, conn.scheme))
        environ = state.environ(method, raw_path, query, headers, EMPTY_INPUT)
        cycle.start = start = ctx.monotonic()
        iface.inline_current = cycle
        _no_loop(None)
        try:
            result = iface.app(environ, cycle.wsgi_start_response)
        except Exception as exc:  # noqa: BLE001  (app code may raise anything: answered 500)
            _no_loop(ctx.loop)
            iface.inline_current = None
            cycle._leave_simple()
            cycle.app_failed(exc)
            return
        except BaseException:
            _no_loop(ctx.loop)  # SystemExit, KeyboardInterrupt: the engine still needs its loop
            raise
        _no_loop(ctx.loop)
        head = cycle._wsgi_head
        if head is not None and type(result) is list and len(result) == 1 and cycle._simple is not None:
            code, encoded, length, _close, _flags, plain = head
            body = result[0]
            if plain and type(body) is bytes and (length is None or length == len(body)) and method != "HEAD":
                iface.inline_current = None
                conn.finish_simple(encoded, body, length is None, code, start)
                return
        cycle._leave_simple()
        cycle.after_call(result)

    def _leave_simple(self) -> None:
        """Become the connection's ordinary current cycle, if serve_simple() began this request."""
        simple = self._simple
        if simple is not None:
            self._simple = None
            start = self.start
            self.conn.adopt(self, *simple)
            self.start = start

    def run(self) -> None:
        # Hot path.
        self.start = self.ctx.monotonic()
        if self.body_complete:
            self.call_app(BytesIO(self.take_body()) if self._chunks else EMPTY_INPUT)
            return
        # The app cannot wait for the client on the loop: receive the whole body
        # first, in memory up to the spool threshold, then in a temporary file,
        # within the worker's spool budget (wsgi_spool_max).
        iface = self.iface
        budget = iface.spool_budget
        if budget.limit is not None:
            length = declared_length(self.scope["headers"])
            if length is not None:
                try:
                    budget.check_declared(length)
                except SpoolRefusal as refusal:
                    # Before any 100 Continue: the client need not send what cannot be kept.
                    self._refuse_body(refusal)
                    return
        self._body = SpooledBody(iface.spool_threshold, budget=budget)
        self.want_body()
        self._collect()

    def on_body_event(self) -> None:
        if self._body is not None and not self._scheduled:
            self._collect()

    def _collect(self) -> None:
        body = self._body
        if body is None:
            return
        if self.disconnected or self.response_complete:
            # The client left, or the exchange ended without the app (body_timeout,
            # request_timeout): give the body's bytes back to the budget now.
            self._body = None
            body.close()
            if not self.response_complete:
                # Not at once: when the protocol refuses this request mid-body (a
                # 413 past max_body_size, a bad chunk), it disconnects the cycle and
                # then writes the refusal itself, which completing here would prevent.
                self.ctx.loop.call_soon(self.abort_response)
            return
        data = self.take_body()
        if data:
            try:
                body.feed(data)
            except SpoolRefusal as refusal:
                self._body = None
                body.close()
                self._refuse_body(refusal)
                return
        if self.body_complete:
            self.body_wait_over()
            self._scheduled = True
            # Not from inside the parser's callback: the app may take a while.
            self.ctx.loop.call_soon(self._call_with_body, body)

    def _call_with_body(self, body: SpooledBody) -> None:
        if self.disconnected or self.response_complete:
            self._body = None
            body.close()
            self.abort_response()
            return
        try:
            wsgi_input = body.finish()
        except SpoolRefusal as refusal:  # the last bytes could not be written out
            self._body = None
            body.close()
            self._refuse_body(refusal)
            return
        self.call_app(wsgi_input)

    def _refuse_body(self, refusal: SpoolRefusal) -> None:
        """Answer a request whose body inline mode cannot hold, without running the app.

        The answer keeps the connection: the engine reads and drops the rest of
        the body, so the client is not reset before it reads it (it closes
        instead when the client still withholds the body for a 100 Continue).
        """
        status = refusal.status
        if status == 413:
            log.info("%s (%s)", refusal.cause, self.request_line())  # the client's body, not our state
        elif status == 503:
            count = self.iface.spool_budget.note_refusal(self.ctx.monotonic())
            if count:
                log.warning("%s (%s)%s", refusal.cause, self.request_line(),
                            f"; {count} uploads refused since the last report" if count > 1 else "")
        else:
            log.error("%s (%s)", refusal.cause, self.request_line())
        if self.disconnected:
            self.abort_response()  # nobody to answer
            return
        self.body_wait_over()
        text = (refusal.message + "\n").encode("utf-8")
        head = STATUS_LINES[status] + b"content-type: text/plain; charset=utf-8\r\n"
        if refusal.retry_after is not None:
            head += b"retry-after: %d\r\n" % refusal.retry_after
        head += b"content-length: %d\r\n" % len(text)
        self.set_encoded_head(status, head, len(text), 0, False)
        self._sent = True
        self.write_body(text, False)

    def call_app(self, wsgi_input: Any) -> None:
        """Run the app and send what it returns."""
        iface = self.iface
        environ = self.make_environ(wsgi_input)
        iface.inline_current = self
        loop = self.ctx.loop
        _no_loop(None)
        try:
            result = iface.app(environ, self.wsgi_start_response)
        except Exception as exc:  # noqa: BLE001  (app code may raise anything: answered 500)
            _no_loop(loop)
            iface.inline_current = None
            self.app_failed(exc)
            self._done()
            return
        except BaseException:
            _no_loop(loop)  # SystemExit, KeyboardInterrupt: the engine still needs its loop
            raise
        _no_loop(loop)
        self.after_call(result)

    def after_call(self, result: Any) -> None:
        """Send what the app returned (``iface.inline_current`` is still this cycle)."""
        iface = self.iface
        if type(result) is list and len(result) == 1 and not self._sent:
            # Hot path: the whole body in one piece, one write with the head.
            iface.inline_current = None
            try:
                head = self._wsgi_head
                if head is None:
                    self._no_start_response()
                self.set_encoded_head(head[0], head[1], head[2], head[4], head[3])
                self._sent = True
                self.write_body(result[0], False)
            except Exception as exc:  # noqa: BLE001  (the app's head or body may be invalid in any way: answered 500)
                self.app_failed(exc)
            if self._body is not None:
                self._done()
            return
        self._result = result
        try:
            if type(result) is FileWrapper:
                span = result.sendfile_span()
                if span is not None and self.serve_file(self._wsgi_head, span, self._file_done):
                    iface.inline_current = None
                    return
            _no_loop(None)
            try:
                self._iter = iter(result)  # the app's own __iter__ may run here
            finally:
                _no_loop(self.ctx.loop)
        except Exception as exc:  # noqa: BLE001  (the app's __iter__ may raise anything: answered 500)
            iface.inline_current = None
            self.app_failed(exc)
            self._done()
            return
        self._pump()

    def _file_done(self, error: BaseException | None) -> None:
        self._done()

    def _write(self, chunk: bytes, more: bool) -> None:
        if not self._sent:
            self.commit_head(self._wsgi_head)
            self._sent = True
        self.write_body(chunk, more)

    def _write_legacy(self, data: bytes) -> None:
        """The ``write()`` callable. On the loop it cannot wait for a slow client: the transport buffers."""
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        self._leave_simple()
        self._write(data, True)

    def _pump(self) -> None:
        """Send chunks while the client keeps up; continue from the drain future when it does not."""
        it = self._iter
        if it is None:
            return  # already finished (aborted while this step was queued)
        if self._is_gone():
            self.abort_response()
            self._done()
            return
        iface = self.iface
        transport: asyncio.Transport = self.conn.transport  # type: ignore[assignment]  # set: the connection is open
        budget = _PUMP_BUDGET
        iface.inline_current = self
        loop = self.ctx.loop
        _no_loop(None)  # the app's generator runs in this loop (see _no_loop)
        try:
            for chunk in it:
                if not chunk and not self._sent:
                    continue  # PEP 3333: no head before the first non-empty chunk
                self._write(chunk, True)
                if self.response_complete:
                    break
                if self.is_head:
                    self.write_body(b"", False)  # HEAD: the rest would be dropped anyway
                    break
                if self.conn.write_paused:
                    waiter = self.drain()
                    if waiter is not None:
                        waiter.add_done_callback(self._resume)
                        return
                if transport.is_closing():
                    # A failed write closes the transport at once but reports
                    # connection_lost later: stop producing for a dead socket.
                    raise ClientDisconnected("the client closed the connection")
                budget -= len(chunk)
                if budget <= 0:
                    # A fast client and a long body: let other connections run too.
                    loop.call_soon(self._pump)
                    return
            else:
                self._write(b"", False)
        except Exception as exc:  # noqa: BLE001  (the app's iterable may raise anything: answered 500 or a close)
            self.app_failed(exc)
        finally:
            _no_loop(loop)
            iface.inline_current = None
        self._done()

    def _resume(self, waiter: Any) -> None:
        if waiter.cancelled() or waiter.exception() is not None or self.response_complete:
            self.abort_response()  # the client went away (or the request timed out)
            self._done()
            return
        self._pump()

    def _done(self) -> None:
        """Close the iterable and the spooled body; every path through the cycle ends here."""
        self._iter = None
        result = self._result
        if result is not None:
            self._result = None
            close_iterable_inline(result, self)
        body = self._body
        if body is not None:
            self._body = None
            body.close()

    def on_request_timeout(self) -> None:
        # Only reached while the loop is free: the response waits for a slow
        # client (a blocked loop is reported by the interface's deadline watch).
        if self._timed_out:
            return
        self._timed_out = True
        log.warning("WSGI request %s exceeded request_timeout (%ss) while sending its response; closing it",
                    self.request_line(), self.ctx.request_timeout)
        self.abort_response(504, "Gateway Timeout: the request took longer than request_timeout")
        job = self._sendfile
        if job is not None:
            job.cancel()  # its completion closes the iterable
        else:
            self._done()  # the iterable (a pending drain callback then finds nothing to do), the spooled body


class ThreadedCycle(WSGICycle):
    """``threads: N``: the app runs on the pool; the loop only parses, frames and writes."""

    _stream: StreamingInput | None = None  # wsgi.input while the body still arrives
    _pulling = False  # the app waits for body bytes the connection does not have yet
    _cond: threading.Condition | None = None  # response flow control between thread and loop
    _unacked = 0  # response bytes handed to the loop and not yet written (or drained)
    _error: BaseException | None = None  # why the loop could not write the last chunk
    _file_event: threading.Event | None = None  # set when a sendfile finishes

    def run(self) -> None:
        # Hot path.
        self.start = self.ctx.monotonic()
        if self.body_complete:
            wsgi_input: Any = BytesIO(self.take_body()) if self._chunks else EMPTY_INPUT
        else:
            self._stream = wsgi_input = StreamingInput(self._request_more)
        self.iface.submit(self, wsgi_input)

    # ------------------------------------------------------------------ request body (loop side)

    def _request_more(self) -> None:
        """From the app thread: the app wants body bytes that are not here yet."""
        self.iface.call_soon_threadsafe(self._pull)

    def _pull(self) -> None:
        stream = self._stream
        if stream is None:
            return
        data = self.take_body()
        if data:
            stream.feed(data)
        elif self.body_complete:
            stream.feed_eof()
        elif self.disconnected or self.response_complete:
            stream.feed_error(ClientDisconnected(
                f"the client disconnected (or the request was aborted) before the request body of "
                f"{self.request_line()} was complete"))
        elif not self._pulling:
            self._pulling = True
            self.want_body()

    def on_body_event(self) -> None:
        if self._pulling:
            self._pulling = False
            self.body_wait_over()
            self._pull()

    # ------------------------------------------------------------------ the app thread

    def thread_main(self, wsgi_input: Any) -> None:
        """Runs on a pool thread: the whole WSGI call, from environ to close()."""
        iface = self.iface
        post = iface.call_soon_threadsafe
        if self.disconnected or self.response_complete:
            # The client left (or the request timed out) while queued for a thread.
            post(self._finish, None, b"", None)
            return
        self._ident = _get_ident()
        try:
            result = iface.app(self.make_environ(wsgi_input), self.wsgi_start_response)
        except Exception as exc:  # noqa: BLE001  (app code may raise anything: the loop answers 500)
            post(self._finish, None, b"", exc)
            return
        if type(result) is list and len(result) == 1 and not self._sent and self._wsgi_head is not None:
            # Hot path: the whole body in one piece; one hop to the loop.
            self._sent = True
            post(self._finish, self._wsgi_head, result[0], None)
            return
        error: BaseException | None = None
        try:
            if type(result) is FileWrapper and self._send_file(result):
                pass
            else:
                for chunk in result:
                    if not chunk and not self._sent:
                        continue  # PEP 3333: no head before the first non-empty chunk
                    self._send(chunk)
                    if self.is_head:
                        break  # HEAD: the head is out; the rest would be dropped anyway
        except Exception as exc:  # noqa: BLE001  (the app's iterable may raise anything: the loop answers it)
            error = exc
        close_iterable(result, self)
        head = None
        if not self._sent and error is None:
            head = self._wsgi_head
            if head is None:
                error = InvalidResponse(f"the WSGI app returned without calling start_response() "
                                        f"({self.request_line()})")
            self._sent = True
        post(self._finish, head, b"", error)

    def _send(self, chunk: bytes) -> None:
        """Hand one chunk to the loop; wait while too much is still unwritten (app thread)."""
        if type(chunk) is not bytes:
            raise TypeError(f"the WSGI response iterable yielded {type(chunk).__name__}, not bytes")
        self._check_live()
        head = None
        if not self._sent:
            head = self._wsgi_head
            if head is None:
                raise InvalidResponse(f"the WSGI app produced a body without calling start_response() "
                                      f"({self.request_line()})")
            self._sent = True
        cond = self._cond
        if cond is None:
            cond = self._cond = threading.Condition(threading.Lock())
        n = len(chunk)
        limit = self.ctx.write_buffer_size
        with cond:
            self._unacked += n
        self.iface.call_soon_threadsafe(self._write_chunk, head, chunk)
        with cond:
            while self._unacked > limit and self._live():
                cond.wait(1.0)
        self._check_live()

    def _live(self) -> bool:
        return self._error is None and not self.disconnected and not self.response_complete

    def _check_live(self) -> None:
        if self._error is not None:
            raise self._error
        if self.disconnected or self.response_complete:
            raise ClientDisconnected(f"the client closed the connection (or the response was aborted) "
                                     f"during {self.request_line()}")

    def _write_legacy(self, data: bytes) -> None:
        """The ``write()`` callable: returns once the loop has (or will soon have) the bytes."""
        if not data:
            if type(data) is not bytes:
                raise TypeError(f"write() takes bytes, not {type(data).__name__}")
            return
        self._send(data)

    def _send_file(self, wrapper: FileWrapper) -> bool:
        """Have the loop sendfile() the wrapped file; False if it must be iterated instead."""
        span = wrapper.sendfile_span()
        if span is None:
            return False
        event = self._file_event = threading.Event()
        outcome: list[Any] = []
        head = self._wsgi_head
        self._sent = True

        def finished(error: BaseException | None) -> None:
            outcome.append(error)
            event.set()

        def start() -> None:
            try:
                started = self.serve_file(head, span, finished)
            except Exception as exc:  # noqa: BLE001  (whatever failed is raised in the app thread, which waits for it)
                outcome.append(exc)
                event.set()
                return
            if not started:
                self._sent = False
                outcome.append(False)
                event.set()

        self.iface.call_soon_threadsafe(start)
        while not event.wait(1.0):
            if self.disconnected and self._sendfile is None:
                break
        if outcome and outcome[0] is False:
            return False  # the loop could not sendfile: iterate it like any iterable
        if outcome and isinstance(outcome[0], BaseException):
            raise outcome[0]
        return True

    # ------------------------------------------------------------------ loop side of the response

    def _write_chunk(self, head: Any, chunk: bytes) -> None:
        n = len(chunk)
        try:
            if self.response_complete or self.disconnected or self.conn.transport.is_closing():  # type: ignore[union-attr]  # set: the connection is open
                raise ClientDisconnected("the client closed the connection")
            if head is not None:
                self.commit_head(head)
            self.write_body(chunk, True)
            if self.conn.write_paused:
                waiter = self.drain()
                if waiter is not None:
                    waiter.add_done_callback(lambda w: self._drained(w, n))
                    return
        except Exception as exc:  # noqa: BLE001  (whatever failed is raised in the app thread, from its next write)
            self._error = exc
        self._ack(n)

    def _drained(self, waiter: Any, n: int) -> None:
        if not waiter.cancelled() and waiter.exception() is not None:
            self._error = ClientDisconnected("the client closed the connection")
        self._ack(n)

    def _ack(self, n: int) -> None:
        cond = self._cond  # made by _send() before it handed over the chunk acknowledged here
        with cond:  # type: ignore[union-attr]  # set (above)
            self._unacked -= n
            cond.notify()  # type: ignore[union-attr]  # set (above)

    def _wake_thread(self) -> None:
        cond = self._cond
        if cond is not None:
            with cond:
                cond.notify()
        stream = self._stream
        if stream is not None and (self.disconnected or self.response_complete):
            self._pull()

    def on_drain(self) -> None:
        WSGICycle.on_drain(self)
        if self.disconnected:
            self._wake_thread()

    def _finish(self, head: Any, chunk: bytes, error: BaseException | None) -> None:
        """The app thread is done with this request: last bytes, or its error (loop; hot path)."""
        try:
            if error is not None:
                self.app_failed(error)
            elif not self.response_complete:
                if self.disconnected:
                    self.abort_response()
                else:
                    if head is not None:
                        self.commit_head(head)
                    self.write_body(chunk, False)
        except Exception as exc:  # noqa: BLE001  (the app's last bytes may be invalid in any way: answered 500)
            self.app_failed(exc)
        self.iface.job_done(self.ctx)

    def on_request_timeout(self) -> None:
        if self._timed_out:
            return
        self._timed_out = True
        if self._ident is None:
            # Still queued: every thread is busy (those requests report themselves).
            log.warning("WSGI request %s waited %.1fs for a free thread, past request_timeout (%ss); "
                        "answering 504 (all %d threads busy: raise threads, or look for slow requests)",
                        self.request_line(), self.ctx.monotonic() - self.start, self.ctx.request_timeout,
                        self.iface.threads)
        else:
            self.timed_out(self.ctx.monotonic() - self.start, thread_stack(self._ident))
        self.abort_response(504, "Gateway Timeout: the request took longer than request_timeout")
        job = self._sendfile
        if job is not None:
            job.cancel()
        self._wake_thread()
