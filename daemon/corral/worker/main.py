"""A worker process: imports the app, runs the engine on the inherited sockets, reports.

Started by the supervisor through ``boot.py`` (fresh interpreter). Lifecycle:

1. read the ``hello`` (config, identity, listening fds) from the control channel;
2. import the app and run lifespan startup, with the event loop already running
   (heartbeats flow during a slow startup);
3. serve, and say ``ready``. A standby (``standby`` in the hello) says ``standby`` instead and
   waits, serving nothing, until the supervisor gives it a slot (``promote``);
4. TERM (or the supervisor's end of the channel closing): stop accepting, finish
   in-flight requests within graceful_timeout, lifespan shutdown, exit 0. Open
   WebSockets close with 1012 if the supervisor said it is replacing us (its
   ``retiring`` message: a reload or recycle), else 1001.
   INT/QUIT: the same without the wait. SIGUSR2 dumps every thread's traceback
   (the supervisor asks for it before it kills a hung worker). USR1 reopens log
   files. HUP is ignored: reloads are the supervisor's business.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from corral.config import Config, ConfigError, apply_log_config
from corral.logs import install_logging, log_setup, reopen_log_files
from corral.worker import probe, protocol
from corral.worker.check import DEPENDENCY_HINT
from corral.worker.identity import app_identity
from corral.worker.protocol import WORKER_LOG_ROLE, Channel, ChannelClosed, Kind, KnownConfig, config_text

if TYPE_CHECKING:
    from corral.engine import Server
    from corral.engine.settings import EngineSettings

log = logging.getLogger("corral.worker")

HEARTBEAT_INTERVAL = 1.0
QUIESCE_MAX = 2.0  # seconds after shutdown() starts; a stray half-open connection must not hold a reload
EXIT_BOOT_ERROR = 3


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="corral-worker")
    parser.add_argument("--channel-fd", type=int)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--generation", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="import the app (config JSON on stdin) and exit")
    parser.add_argument("--zygote", action="store_true",
                        help="be the generation's zygote: fork workers on request (corral.worker.zygote)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.check:
        from corral.worker.check import check

        return check(Config.from_json(json.load(sys.stdin)))
    if args.channel_fd is None:
        print("corral worker: started without --channel-fd; workers are started by `corral run`", file=sys.stderr)
        return 2
    if args.zygote:
        from corral.worker import zygote

        return zygote.run(args.channel_fd, run)
    return run(args.channel_fd)


def run(channel_fd: int, known: KnownConfig | None = None) -> int:
    """A worker's whole life on its control channel; returns its exit status.

    ``known``: the config a zygote read before it forked this worker. When the hello carries
    the same, the worker takes it as it is instead of checking every key again: parsing again
    would write to (and so copy) the pages this worker shares with the zygote.
    """
    channel = Channel(socket.socket(fileno=channel_fd))
    try:
        hello = channel.receive_blocking(timeout=30)
    except (ChannelClosed, OSError, ValueError) as exc:  # closed, timed out, or not a message
        print(f"corral worker: no hello from the supervisor: {exc!r}", file=sys.stderr)
        return 2
    try:
        config = config_of(hello, known)
    except ConfigError as exc:  # a supervisor of another corral version; it runs this copy's boot.py
        return _boot_failed(channel, f"cannot read the config the supervisor sent: {exc}")
    built = zygote_built(config, known)
    install_logging(built.logging if built is not None and built.logging is not None
                    else log_setup(config.log_level, role=WORKER_LOG_ROLE))
    try:
        apply_log_config(config.log_config)
    except ConfigError as exc:
        return _boot_failed(channel, str(exc))
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR2, all_threads=True, chain=False)
    # Until the loop's handlers are installed, a stop simply ends a booting worker
    # (QUIT's default action would also dump core).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError as exc:
        return _boot_failed(channel, f"cannot import uvloop with {sys.executable}: {exc}; {DEPENDENCY_HINT}")
    runtime = WorkerRuntime(hello, config, channel, built.settings if built is not None else None,
                            built.server if built is not None else None)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(runtime.run())


def config_of(hello: dict[str, Any], known: KnownConfig | None) -> Config:
    """The config the hello carries: ``known``'s when it was read from the same data."""
    if known is not None and config_text(hello["config"]) == known.text:
        return known.config
    return Config.from_json(hello["config"])


def zygote_built(config: Config, known: KnownConfig | None) -> KnownConfig | None:
    """``known`` when ``config`` is the zygote's own: what the zygote built from it serves this
    worker as it is (engine settings, log handlers). None: the worker builds its own."""
    return known if known is not None and config is known.config else None


def _boot_failed(channel: Channel, message: str) -> int:
    log.error("%s", message)
    channel.send(protocol.boot_error(message))
    return EXIT_BOOT_ERROR


class WorkerRuntime:
    def __init__(self, hello: dict[str, Any], config: Config, channel: Channel,
                 settings: EngineSettings | None = None, server: Server | None = None) -> None:
        self.hello = hello
        self.config = config
        self.channel = channel
        self.known_settings = settings  # built by the zygote from this config (KnownConfig)
        self.known_server = server  # made (not started) by a preloading zygote for this config
        self.server: Any = None
        self.stop_event: asyncio.Event | None = None
        self.graceful = True
        self.ready = False
        self.balancer: Any = None
        self.reload_gate = False  # part of a reload: a failed warm-up fails the boot (the old code serves on)
        self.parked = False  # a rolling reload replaced us, and may still roll back to us
        self.restart = False  # the supervisor replaces us (reload, recycle): WebSockets close with 1012
        self.close_keep_alive = False  # a drain was announced (drain_delay): every response closes
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._promoted: asyncio.Future[None] | None = None  # a standby's wait for its slot
        self.cannot_serve = False  # a standby given a slot whose sockets it does not hold
        self._loop: asyncio.AbstractEventLoop  # set by run(), before anything reads it
        self._fast_stop: asyncio.Future[None] | None = None  # held: the loop keeps only weak references

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        loop.add_reader(self.channel.fileno(), self._on_channel)
        loop.add_signal_handler(signal.SIGTERM, self.stop, True)
        loop.add_signal_handler(signal.SIGINT, self.stop, False)
        loop.add_signal_handler(signal.SIGQUIT, self.stop, False)
        loop.add_signal_handler(signal.SIGUSR1, reopen_log_files)
        self._heartbeat()

        if self.known_server is not None:
            app, interface = self.known_server.app, self.known_server.interface
        else:
            try:
                app, interface = self._load_app()
            except Exception as exc:  # noqa: BLE001  (importing the app runs its code, which may raise anything)
                return self._report_boot_error(exc)
        self.channel.send(protocol.booted(interface))
        try:
            from corral.engine import Server
            from corral.engine.settings import EngineSettings

            settings = self.known_settings or EngineSettings(**self.config.engine)
        except ImportError as exc:
            return _boot_failed(self.channel, f"cannot import corral's engine with {sys.executable}: {exc}; "
                                              + DEPENDENCY_HINT)
        except (TypeError, ValueError) as exc:
            return _boot_failed(self.channel, f"invalid engine setting: {exc}")
        try:
            tls = self._tls_context(settings)
        except ValueError as exc:
            return _boot_failed(self.channel, f"invalid TLS setting: {exc}")
        self.server = self.known_server or Server(app, settings, interface)
        self._record_in_flight()
        try:
            await self.server.startup()
        except Exception as exc:  # noqa: BLE001  (the app's lifespan startup may raise anything)
            return self._report_boot_error(exc)
        gate = probe.Gate(self.config.warmup or None, self.config.health_check or None)
        if gate and not self.stop_event.is_set():
            # The warm-up and the health check: the app answers through this worker's own engine,
            # before the worker takes any public traffic (corral.worker.probe).
            self._on_channel()  # a reload's "reload_gate" was sent right after the hello
            try:
                passed = await probe.run_gate(self.server, gate, strict_warmup=self.reload_gate)
            except probe.ProbeFailed as exc:
                await self.server.shutdown(0)
                return _boot_failed(self.channel, str(exc))
            log.debug("passed the gate: %s", "; ".join(passed))
            # The gate zeroed the counters; a heartbeat sent during it may have carried its requests.
            # Before "ready", so the supervisor never counts them as served (backoff, max_requests).
            self._send_heartbeat()
        if self.hello.get("standby") and not self.stop_event.is_set():
            await self.wait_for_slot()
        if self.stop_event.is_set():
            await self.server.shutdown(0)
            return EXIT_BOOT_ERROR if self.cannot_serve else 0
        await self._serve(settings, tls)
        if self.close_keep_alive:  # announced while we booted
            self.server.set_close_keep_alive(True)
        self._start_balancer()
        self.ready = True
        # requests: the gate's own; the supervisor counts only later ones as served
        self.channel.send(protocol.ready(os.getpid(), interface, self._identity(),
                                         requests=self.server.stats.requests_total))
        await self.stop_event.wait()

        self.ready = False
        # The supervisor's "retiring" (why we stop) was sent before the signal: read it now, since
        # the loop may have run this coroutine before the channel's reader.
        self._on_channel()
        if self.balancer is not None:
            self.balancer.stop()
        self.channel.send(protocol.bare(Kind.DRAINING))
        timeout = self.config.graceful_timeout if self.graceful else 0.0
        if self.graceful:
            timeout -= await self._linger(min(self.config.drain_linger, timeout))
        shutdown = asyncio.ensure_future(self.server.shutdown(max(timeout, 0.0), restart=self.restart))
        await self._quiesce(shutdown)
        await shutdown
        self._send_heartbeat()  # final counters, so the supervisor's totals stay exact
        return 0

    async def _quiesce(self, shutdown: asyncio.Future[None]) -> None:
        """Tell the supervisor once no idle connection is left open (only busy ones, which close
        after their response): from then on no new request can reach this worker, so a reload
        may report that the new code serves everything."""
        deadline = time.monotonic() + QUIESCE_MAX
        stats = self.server.stats
        while not shutdown.done() and stats.connections_open > stats.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.channel.send(protocol.bare(Kind.QUIESCED))

    def _app_listeners(self) -> list[dict[str, Any]]:
        return [item for item in self.hello["listeners"] if item.get("role", "http") == "http"]

    def _tls_context(self, settings: EngineSettings) -> ssl.SSLContext | None:
        """The TLS context, built from the files as they are now: a reload loads renewed ones."""
        if settings.ssl_certfile is None:  # TLS off (the settings were checked when they were made)
            return None
        from corral.engine import tlsconfig
        from corral.engine.tls import build_context

        context = build_context(settings)
        if context is None:
            return None
        listeners = [(item["address"], item.get("name", "")) for item in self._app_listeners()]
        unmatched = tlsconfig.unmatched_listeners(settings, listeners)
        if unmatched:
            known = ", ".join(f"{address} (name {name!r})" if name else address for address, name in listeners)
            raise tlsconfig.TLSError(f"ssl_listeners {', '.join(map(repr, unmatched))} match no app listener (they "
                               f"are: {known}): name an address as `corral status` shows it, ':PORT', or a "
                               "systemd FileDescriptorName=")
        if self.hello["worker"]["slot"] == 0:  # once per generation, not once per worker
            for warning in tlsconfig.warnings(settings):
                log.warning("%s", warning)
        return context

    async def wait_for_slot(self) -> None:
        """A standby: booted and warmed up, it says so and waits, serving nothing, until the
        supervisor gives it a slot (``promote``) or stops it."""
        self._promoted = asyncio.get_running_loop().create_future()  # resolved by promote, or by stop()
        self.channel.send(protocol.bare(Kind.STANDBY))
        log.debug("on standby")
        self._on_channel()  # a promotion may be waiting already
        await self._promoted

    def promote(self, slot: int, fds: list[int]) -> None:
        """Take ``slot``: serve on its listeners (``fds``), close the other slots' (a standby got them all)."""
        if self._promoted is None or self._promoted.done():
            return
        keep = set(fds)
        missing = keep - {item["fd"] for item in self.hello["listeners"]}
        if missing:  # the supervisor's sockets changed since our hello: we cannot serve that slot
            log.error("promoted to slot %d, but fds %s are not among our listeners; exiting", slot,
                      sorted(missing))
            self.channel.send(protocol.boot_error(f"the standby was not given the sockets of slot {slot}"))
            self.cannot_serve = True
            self.stop(False)
            return
        listeners = []
        for item in self.hello["listeners"]:
            if item.get("role", "http") != "http" or item["fd"] in keep:
                listeners.append(item)
            else:
                try:
                    os.close(item["fd"])
                except OSError:
                    pass
        self.hello["listeners"] = listeners
        self.hello["worker"]["slot"] = slot
        log.debug("promoted to slot %d", slot)
        self._promoted.set_result(None)

    async def _serve(self, settings: EngineSettings, tls: ssl.SSLContext | None) -> None:
        """Accept on the app listeners: TLS on those ssl_listeners picks (all, by default)."""
        from corral.engine.tlsconfig import wants_tls

        plain: list[socket.socket] = []
        secure: list[socket.socket] = []
        for item in self._app_listeners():
            sock = socket.socket(fileno=item["fd"])
            wanted = tls is not None and wants_tls(settings, item["address"], item.get("name", ""))
            (secure if wanted else plain).append(sock)
        await self.server.serve(plain)
        if secure:
            await self.server.serve(secure, tls)

    def _identity(self) -> dict[str, Any] | None:
        zygote = sys.modules.get("corral.worker.zygote")  # forked from a preloaded zygote: known already
        known = getattr(zygote, "preloaded_identity", None)
        if isinstance(known, dict):
            return known
        try:
            return app_identity(self._app_spec(), self.config.app_dir)
        except Exception as exc:  # noqa: BLE001  (only a label: never fail a boot over it)
            log.debug("cannot tell the app's code identity: %s", exc)
            return None

    async def _linger(self, seconds: float) -> float:
        """Stop accepting and close keep-alive connections after their next response, for up to
        ``seconds`` before shutdown() closes those still idle; returns the time spent.

        A client that sends its next request on a connection the server is closing
        sees a reset. Clients in the middle of a conversation send within this window
        and get ``Connection: close`` on their answer instead.
        """
        begin = getattr(self.server, "begin_drain", None)
        if begin is None or seconds <= 0:
            return 0.0
        start = time.monotonic()
        await begin()
        while self.server.stats.connections_open and time.monotonic() - start < seconds and self.graceful:
            await asyncio.sleep(0.02)
        return time.monotonic() - start

    def _load_app(self) -> tuple[Any, str]:
        from corral.appload import interface_of, load_app

        app = load_app(self._app_spec(), app_dir=self.config.app_dir)
        return app, interface_of(app, self.config.interface)

    def _app_spec(self) -> str:
        if self.config.app is None:  # `corral run` refuses to start without one
            raise ValueError("no app given: pass MODULE:ATTR or set app: in the config")
        return self.config.app

    def _report_boot_error(self, exc: BaseException) -> int:
        # The app's own traceback, logged (under journald every line of it at priority err) ...
        log.error("the app failed to start", exc_info=exc)
        # ... and its last line for the supervisor's exit message and STATUS=.
        from corral.appload import error_line

        self.channel.send(protocol.boot_error(error_line(exc)))
        return EXIT_BOOT_ERROR

    def _record_in_flight(self) -> None:
        """Note every request in the supervisor's in-flight table, so that if this process dies
        in one, the supervisor can log which (corral.worker.inflight)."""
        info = self.hello.get("in_flight")
        if not info:
            return
        from corral.worker.inflight import InFlightTable

        try:
            self.server.record_in_flight(InFlightTable(info["fd"], info["slots"]))
        except (OSError, ValueError) as exc:  # only a diagnostic: never fail a boot over it
            log.warning("cannot map the in-flight table: %s; a crash will not name its request", exc)

    def _start_balancer(self) -> None:
        info = self.hello.get("balance")
        if not info or not self.config.accept_balance:
            return
        from corral.worker.balancer import AcceptBalancer

        self.balancer = AcceptBalancer(self.server, info["fd"], info["cell"])
        self.balancer.start()

    # ------------------------------------------------------------------ control

    def stop(self, graceful: bool) -> None:
        if self.stop_event is None:
            return
        if self.stop_event.is_set():
            if not graceful and self.graceful:
                self.graceful = False
                if self.server is not None:
                    # A second, fast stop during a graceful drain: close everything now.
                    self._fast_stop = asyncio.ensure_future(self.server.shutdown(0))
            return
        self.graceful = graceful
        self.stop_event.set()
        if self._promoted is not None and not self._promoted.done():
            self._promoted.set_result(None)  # a standby stopped before it got a slot

    def park(self) -> None:
        """A rolling reload replaced us: take no new connections, but keep the app loaded (and answer
        the connections already open) until the reload either drains us or rolls back to us."""
        if not self.ready or self.parked or self.server is None:
            return
        self.parked = True
        if self.balancer is not None:
            self.balancer.stop()  # it would resume accepting to even out the load otherwise
        self.server.pause_accepting()
        log.info("parked: accepting no new connections until the reload finishes")

    def unpark(self) -> None:
        """The rolling reload failed: serve again, this process's code being the one to come back."""
        if not self.parked or self.server is None or (self.stop_event is not None and self.stop_event.is_set()):
            return
        self.parked = False
        self.server.resume_accepting()
        if self.balancer is not None:
            self.balancer.start()
        log.info("unparked: the reload rolled back; serving again")

    def drain_notice(self, on: bool) -> None:
        """corral announced (or called off) a stop to the load balancers: keep serving, but close
        each connection after its response so that its client reconnects to another host."""
        self.close_keep_alive = on
        if self.ready and self.server is not None:
            self.server.set_close_keep_alive(on)
        log.info("%s", "drain announced: every response now closes its connection" if on
                 else "drain called off: keep-alive connections stay open again")

    def _on_channel(self) -> None:
        try:
            for message in self.channel.receive():
                kind = protocol.kind_of(message)
                if kind is Kind.RELOAD_GATE:
                    self.reload_gate = True
                elif kind is Kind.PARK:
                    self.park()
                elif kind is Kind.UNPARK:
                    self.unpark()
                elif kind is Kind.RETIRING:
                    self.restart = bool(message.get("restart"))
                elif kind is Kind.DRAIN_NOTICE:
                    self.drain_notice(bool(message.get("on")))
                elif kind is Kind.PROMOTE:
                    self.promote(int(message["slot"]), [int(fd) for fd in message["listeners"]])
        except ChannelClosed:
            # The supervisor is gone: nobody will replace or watch us; drain and leave.
            self._loop.remove_reader(self.channel.fileno())
            log.warning("supervisor went away; stopping")
            self.stop(True)

    def _heartbeat(self) -> None:
        # Scheduled on the event loop itself: a loop blocked by the app sends nothing,
        # which is exactly what the supervisor's hung-worker check looks for.
        self._send_heartbeat()
        self._heartbeat_handle = self._loop.call_later(HEARTBEAT_INTERVAL, self._heartbeat)

    def _send_heartbeat(self) -> None:
        stats: dict[str, Any] = {}
        if self.server is not None:
            stats = _stats_dict(self.server.stats)
            oldest = stats.get("oldest_in_flight")
            stats["oldest_in_flight_age"] = None if oldest is None else round(time.monotonic() - oldest, 3)
            if self.balancer is not None:
                stats["accept_paused"] = self.balancer.paused
                stats["accept_pauses"] = self.balancer.pauses
        self.channel.send(protocol.heartbeat(stats))


def _stats_dict(stats: Any) -> dict[str, Any]:
    if hasattr(stats, "snapshot"):
        return dict(stats.snapshot())
    if isinstance(stats, dict):
        return dict(stats)
    return {k: getattr(stats, k) for k in dir(stats) if not k.startswith("_")
            and isinstance(getattr(stats, k, None), (int, float, str, bool, type(None)))}

