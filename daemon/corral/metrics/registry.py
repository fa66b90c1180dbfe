"""What corral knows about itself, kept by the supervisor and rendered on demand.

The supervisor feeds a ``Metrics`` object from two sources and nothing else:

* worker heartbeats, once a second per worker: the engine's counters as a plain
  dict (see ``parse_heartbeat`` for the keys), and the /proc sample the health
  policies take anyway (``worker_process``);
* its own events: worker started / ready / draining / exited (with the restart
  reason), generation changes, reload outcomes, event-loop lag.

Nothing here runs per request. Work happens per heartbeat (a few dict lookups)
and per scrape or STATUS update (a pass over the live workers plus one or two
system calls per listening socket for the accept-queue depth).

Totals never go backwards: when a worker exits, its last reported counters move
into a retired total, and a live worker's counters are clamped to their maximum
so that a confused heartbeat cannot decrease them either.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from corral import __version__
from corral.metrics import exposition as ex
from corral.metrics.procself import self_process
from corral.metrics.queue import QueueDepth, accept_queue
from corral.metrics.status_line import format_status_line
from corral.metrics.websocket import WsCounters, parse_ws, ws_families

__all__ = [
    "RELOAD_OUTCOMES",
    "RESTART_REASONS",
    "STATUS_CLASSES",
    "WORKER_STATES",
    "Metrics",
    "WorkerCounters",
    "listener_address",
    "parse_heartbeat",
]

log = logging.getLogger("corral.metrics")

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# boot_failed: a worker exited before it was ready (the app failed to import or start);
# boot_timeout: one that was not ready within boot_timeout and was killed.
RESTART_REASONS = ("crash", "hung", "memory", "fds", "max_requests", "lifetime", "deadline",
                   "reload", "boot_failed", "boot_timeout")
RELOAD_OUTCOMES = ("success", "rolled_back", "aborted")
WORKER_STATES = ("booting", "standby", "ready", "draining")

# Reloads take seconds to minutes (app import, readiness gate, drain).
RELOAD_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# req/s is the slope of each worker's request counter over its heartbeats of the
# last RATE_WINDOW seconds; a worker silent for longer than RATE_STALE counts as 0.
RATE_WINDOW = 5.0
RATE_STALE = 3.0
RATE_MIN_STEP = 0.25


class WorkerCounters:
    """One heartbeat's figures, normalised. Counters are cumulative since the worker started."""

    __slots__ = ("requests", "responses", "in_flight", "oldest_in_flight_start",
                 "connections_open", "connections_accepted", "duration_bounds",
                 "duration_counts", "duration_sum", "ws")

    def __init__(self, requests: int = 0, in_flight: int = 0, connections_open: int = 0,
                 connections_accepted: int = 0) -> None:
        self.requests = requests
        self.responses = [0] * len(STATUS_CLASSES)
        self.in_flight = in_flight
        # time.monotonic() in the worker: CLOCK_MONOTONIC is one clock for all processes.
        self.oldest_in_flight_start: float | None = None
        self.connections_open = connections_open
        self.connections_accepted = connections_accepted
        self.duration_bounds: tuple[float, ...] | None = None
        self.duration_counts: list[int] | None = None  # per bucket, plus one for +Inf
        self.duration_sum = 0.0
        self.ws = WsCounters()  # corral.metrics.websocket


def _count(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"heartbeat field {key!r} must be a non-negative integer, got {value!r}")
    return value


def parse_heartbeat(stats: Mapping[str, Any]) -> WorkerCounters:
    """Normalise the engine's stats as a worker sends them in its heartbeat.

    The keys are those of ``corral.engine.stats.EngineStats.snapshot()``; all are
    optional, and a missing counter reads as 0:

    - ``requests_total``: requests received;
    - ``responses``: responses by status class, ``{"2xx": n, ...}`` (or a list of
      five counts for 1xx..5xx);
    - ``in_flight``; ``oldest_in_flight``: ``time.monotonic()`` at which the oldest
      request in flight started, or None (CLOCK_MONOTONIC is one clock for all processes);
    - ``connections_open``, ``connections_accepted``;
    - ``duration_buckets``: the histogram's upper bounds in seconds (+Inf implied);
      it may be sent once, the registry remembers it;
    - ``duration_counts``: request-duration counts per bucket (not cumulative), one
      per bound plus one above the last; ``duration_sum``: total seconds;
    - ``ws``: the WebSocket figures (``corral.metrics.websocket.parse_ws``).

    Raises ValueError naming the field when a value has the wrong shape.
    """
    c = WorkerCounters(
        requests=_count(stats, "requests_total"),
        in_flight=_count(stats, "in_flight"),
        connections_open=_count(stats, "connections_open"),
        connections_accepted=_count(stats, "connections_accepted"),
    )
    c.ws = parse_ws(stats)
    responses = stats.get("responses")
    if isinstance(responses, Mapping):
        unknown = set(responses) - set(STATUS_CLASSES)
        if unknown:
            raise ValueError(f"heartbeat field 'responses' has unknown status classes "
                             f"{sorted(map(str, unknown))}; expected {STATUS_CLASSES}")
        c.responses = [_count(responses, cls) for cls in STATUS_CLASSES]
    elif isinstance(responses, (list, tuple)):
        if len(responses) != len(STATUS_CLASSES):
            raise ValueError(f"heartbeat field 'responses' has {len(responses)} entries; "
                             f"expected {len(STATUS_CLASSES)} (1xx..5xx)")
        c.responses = [_count({"responses": n}, "responses") for n in responses]
    elif responses is not None:
        raise ValueError(f"heartbeat field 'responses' must be a dict or a list, got {responses!r}")
    oldest = stats.get("oldest_in_flight")
    if oldest is not None:
        if isinstance(oldest, bool) or not isinstance(oldest, (int, float)):
            raise ValueError(f"heartbeat field 'oldest_in_flight' must be a number or None, "
                             f"got {oldest!r}")
        c.oldest_in_flight_start = float(oldest)
    counts = stats.get("duration_counts")
    if counts is not None:
        if not isinstance(counts, (list, tuple)):
            raise ValueError(f"heartbeat field 'duration_counts' must be a list, got {counts!r}")
        c.duration_counts = [_count({"duration_counts": n}, "duration_counts") for n in counts]
        total = stats.get("duration_sum", 0.0)
        if isinstance(total, bool) or not isinstance(total, (int, float)) or total < 0:
            raise ValueError(f"heartbeat field 'duration_sum' must be a non-negative number, "
                             f"got {total!r}")
        c.duration_sum = float(total)
    bounds = stats.get("duration_buckets")
    if bounds is not None:
        if not isinstance(bounds, (list, tuple)) or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
            raise ValueError(f"heartbeat field 'duration_buckets' (the bucket bounds) must be a "
                             f"list of numbers, got {bounds!r}")
        c.duration_bounds = tuple(float(b) for b in bounds)
        if c.duration_counts is not None and len(c.duration_counts) != len(bounds) + 1:
            raise ValueError(f"heartbeat has {len(bounds)} duration_buckets (bounds) but "
                             f"{len(c.duration_counts)} duration_counts; expected one count per "
                             f"bound plus one for +Inf")
    return c


class _Worker:
    __slots__ = ("pid", "slot", "generation", "started", "started_wall", "state", "counters",
                 "last_heartbeat", "rate_samples", "rss_bytes", "uss_bytes", "cpu_seconds",
                 "open_fds")

    def __init__(self, pid: int, slot: int, generation: int, started: float,
                 started_wall: float) -> None:
        self.pid, self.slot, self.generation = pid, slot, generation
        self.started = started            # monotonic
        self.started_wall = started_wall  # Unix time
        self.state = "booting"
        self.counters = WorkerCounters()
        self.last_heartbeat: float | None = None
        self.rate_samples: deque[tuple[float, int]] = deque(maxlen=24)
        self.rss_bytes: int | None = None
        self.uss_bytes: int | None = None
        self.cpu_seconds: float | None = None
        self.open_fds: int | None = None


class _Listener:
    __slots__ = ("sock", "name", "address", "app_traffic", "broken")

    def __init__(self, sock: socket.socket, name: str, address: str, app_traffic: bool) -> None:
        self.sock, self.name, self.address, self.app_traffic = sock, name, address, app_traffic
        self.broken = False  # probing failed once: logged, then left out of the scrape


class _Reloads:
    __slots__ = ("counts", "sums", "last_outcome", "last_duration", "last_time")

    def __init__(self) -> None:
        self.counts = {o: [0] * (len(RELOAD_BUCKETS) + 1) for o in RELOAD_OUTCOMES}
        self.sums = dict.fromkeys(RELOAD_OUTCOMES, 0.0)
        self.last_outcome: str | None = None
        self.last_duration = 0.0
        self.last_time = 0.0


_CARRIED = (WorkerCounters, WsCounters, _Reloads)  # slotted figures that carried() nests


def _slots_to_json(obj: WorkerCounters | WsCounters | _Reloads) -> dict[str, Any]:
    """Every slot of a figures object (nested ones too): a new slot is carried without more code."""
    out: dict[str, Any] = {}
    for name in obj.__slots__:
        value = getattr(obj, name)
        out[name] = _slots_to_json(value) if isinstance(value, _CARRIED) else value
    return out


def _slots_from_json(obj: WorkerCounters | WsCounters | _Reloads, data: Mapping[str, Any]) -> None:
    for name in obj.__slots__:
        if name not in data:
            continue  # written by an older image: keep the default
        current, value = getattr(obj, name), data[name]
        if isinstance(current, _CARRIED):
            _slots_from_json(current, value)
        elif name == "duration_bounds":
            setattr(obj, name, tuple(value) if value is not None else None)
        else:
            setattr(obj, name, value)


def listener_address(sock: socket.socket) -> str:
    """How an address reads in labels and logs: ``127.0.0.1:8000``, ``[::]:8000``, ``unix:/run/x.sock``."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):  # abstract namespace
            return "unix:@" + name[1:].decode("utf-8", "backslashreplace")
        return f"unix:{name}" if name else "unix:(unnamed)"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


class Metrics:
    """All of corral's figures, fed by the supervisor, read by scrapes and STATUS updates."""

    def __init__(self, *, duration_bounds: Sequence[float] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``duration_bounds``: the engine's request-duration bucket bounds, if the supervisor
        knows them; otherwise they are taken from the first heartbeat that carries them."""
        self._clock = clock
        self._wall = wall_clock
        self._workers: dict[int, _Worker] = {}
        self._listeners: list[_Listener] = []
        # Retired: the last counters of workers that exited, so that totals stay monotonic.
        self._retired = WorkerCounters()
        self._retired_cpu = 0.0
        self._bounds = tuple(float(b) for b in duration_bounds) if duration_bounds else None
        self._warned_bounds = False
        self._restarts = dict.fromkeys(RESTART_REASONS, 0)
        self._reloads = _Reloads()
        self._generation = 0
        self._desired = 0
        self._loop_lag = 0.0
        self._message: str | None = None

    # ---- supervisor events -------------------------------------------------------------

    def set_desired_workers(self, count: int) -> None:
        self._desired = count

    def set_generation(self, generation: int) -> None:
        """The generation now serving (after a reload's cutover)."""
        self._generation = generation

    def set_message(self, text: str | None) -> None:
        """A short note appended to the STATUS line, e.g. why the last reload failed; None clears it."""
        self._message = " ".join(text.split()) if text else None

    def set_loop_lag(self, seconds: float) -> None:
        self._loop_lag = max(0.0, seconds)

    def worker_started(self, pid: int, *, slot: int, generation: int) -> None:
        """A worker process was spawned (it boots: imports the app, runs lifespan startup)."""
        self._workers[pid] = _Worker(pid=pid, slot=slot, generation=generation,
                                     started=self._clock(), started_wall=self._wall())

    def worker_standby(self, pid: int) -> None:
        """A standby (config standby, slot -1) booted; it serves nothing until it takes a slot."""
        self._worker(pid).state = "standby"

    def worker_slot(self, pid: int, slot: int) -> None:
        """A standby took ``slot``: it boots there (serves) until it is ready."""
        worker = self._worker(pid)
        worker.slot = slot
        worker.state = "booting"

    def worker_ready(self, pid: int) -> None:
        self._worker(pid).state = "ready"

    def worker_draining(self, pid: int) -> None:
        self._worker(pid).state = "draining"

    def worker_exited(self, pid: int, *, restart_reason: str | None) -> None:
        """A worker is gone. ``restart_reason`` counts a restart; None for a stop or scale-down.

        Its last counters are kept in the retired totals. Unknown pids are fine (a
        worker that died before the supervisor registered it) but still count.
        """
        if restart_reason is not None:
            if restart_reason not in self._restarts:
                raise ValueError(f"unknown restart reason {restart_reason!r}; "
                                 f"use one of {RESTART_REASONS}")
            self._restarts[restart_reason] += 1
        w = self._workers.pop(pid, None)
        if w is None:
            return
        r, c = self._retired, w.counters
        r.requests += c.requests
        r.responses = [a + b for a, b in zip(r.responses, c.responses, strict=True)]
        r.connections_accepted += c.connections_accepted
        r.ws.add(c.ws, gauge=False)  # its connections are closed: only the counters carry over
        if c.duration_counts is not None and c.duration_bounds is not None \
                and self._histogram_matches(c):
            if r.duration_counts is None:
                r.duration_counts = [0] * len(c.duration_counts)
            r.duration_counts = [a + b for a, b in zip(r.duration_counts, c.duration_counts, strict=True)]
            r.duration_sum += c.duration_sum
        self._retired_cpu += w.cpu_seconds or 0.0

    def reload_finished(self, outcome: str, duration_seconds: float) -> None:
        """A reload transaction ended: ``success``, ``rolled_back`` (new generation failed) or ``aborted``."""
        if outcome not in RELOAD_OUTCOMES:
            raise ValueError(f"unknown reload outcome {outcome!r}; use one of {RELOAD_OUTCOMES}")
        rl = self._reloads
        counts = rl.counts[outcome]
        for i, bound in enumerate(RELOAD_BUCKETS):
            if duration_seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        rl.sums[outcome] += duration_seconds
        rl.last_outcome, rl.last_duration, rl.last_time = outcome, duration_seconds, self._wall()

    def add_listener(self, sock: socket.socket, name: str = "http", *,
                     app_traffic: bool = True) -> None:
        """Report the accept queue of a listening socket. ``app_traffic=False`` (the metrics
        socket) keeps it out of the STATUS queue figure but still exports it."""
        self._listeners.append(_Listener(sock, name, listener_address(sock), app_traffic))

    def remove_listener(self, sock: socket.socket) -> None:
        self._listeners = [li for li in self._listeners if li.sock is not sock]

    # ---- across an in-place re-exec (corral.supervisor.reexec) -------------------------

    def carried(self) -> dict[str, Any]:
        """The cumulative figures that no live worker reports again (exited workers' totals,
        restarts, reloads, the histogram bounds) as JSON data, for the next image of this
        process: an in-place upgrade must not restart the counters."""
        return {"retired": _slots_to_json(self._retired), "retired_cpu": self._retired_cpu,
                "restarts": dict(self._restarts), "reloads": _slots_to_json(self._reloads),
                "bounds": list(self._bounds) if self._bounds is not None else None}

    def carry_on(self, data: Mapping[str, Any]) -> None:
        """Take the figures ``carried()`` wrote in the previous image (on a fresh registry)."""
        _slots_from_json(self._retired, data["retired"])
        self._retired_cpu = float(data["retired_cpu"])
        self._restarts.update({k: int(v) for k, v in data["restarts"].items() if k in self._restarts})
        _slots_from_json(self._reloads, data["reloads"])
        self._bounds = tuple(data["bounds"]) if data.get("bounds") is not None else self._bounds

    # ---- per heartbeat -----------------------------------------------------------------

    def worker_heartbeat(self, pid: int, stats: Mapping[str, Any]) -> None:
        """Record a worker's heartbeat stats (see ``parse_heartbeat``). Raises ValueError on bad data."""
        w = self._worker(pid)
        new = parse_heartbeat(stats)
        old = w.counters
        # Counters only grow; clamping keeps totals monotonic even if a heartbeat is stale.
        new.requests = max(new.requests, old.requests)
        new.responses = [max(a, b) for a, b in zip(new.responses, old.responses, strict=True)]
        new.connections_accepted = max(new.connections_accepted, old.connections_accepted)
        new.ws.clamp(old.ws)
        # The engine may send its bucket bounds once (or in every heartbeat): remember them.
        new.duration_bounds = new.duration_bounds or old.duration_bounds or self._bounds
        if new.duration_counts is None:
            new.duration_counts, new.duration_sum = old.duration_counts, old.duration_sum
        elif new.duration_bounds is not None and len(new.duration_counts) != len(
                new.duration_bounds) + 1:
            raise ValueError(f"heartbeat has {len(new.duration_counts)} duration_counts for "
                             f"{len(new.duration_bounds)} bucket bounds; expected one per bound "
                             f"plus one for +Inf")
        elif old.duration_counts is not None and len(old.duration_counts) == len(new.duration_counts):
            new.duration_counts = [max(a, b) for a, b in zip(new.duration_counts, old.duration_counts, strict=True)]
            new.duration_sum = max(new.duration_sum, old.duration_sum)
        if self._bounds is None and new.duration_bounds is not None:
            self._bounds = new.duration_bounds
        w.counters = new
        now = self._clock()
        w.last_heartbeat = now
        samples = w.rate_samples
        if len(samples) >= 2 and now - samples[-2][0] < RATE_MIN_STEP:
            # Frequent heartbeats must not shrink the window: keep samples RATE_MIN_STEP apart.
            samples[-1] = (now, new.requests)
        else:
            samples.append((now, new.requests))

    def worker_process(self, pid: int, *, rss_bytes: int, uss_bytes: int | None = None,
                       cpu_seconds: float | None = None, open_fds: int | None = None) -> None:
        """Record the /proc sample the health policies took of a worker."""
        w = self._worker(pid)
        w.rss_bytes, w.uss_bytes, w.cpu_seconds, w.open_fds = rss_bytes, uss_bytes, cpu_seconds, open_fds

    # ---- reading -------------------------------------------------------------------------

    def requests_per_second(self) -> float:
        """Sum over live workers of the slope of their request counter in the last RATE_WINDOW s."""
        now = self._clock()
        total = 0.0
        for w in self._workers.values():
            samples = w.rate_samples
            if len(samples) < 2 or now - samples[-1][0] > RATE_STALE:
                continue
            t1, n1 = samples[-1]
            t0, n0 = samples[0]
            for t, n in samples:
                if t1 - t <= RATE_WINDOW:
                    t0, n0 = t, n
                    break
            if t1 > t0:
                total += (n1 - n0) / (t1 - t0)
        return total

    def queue_depths(self) -> list[tuple[_Listener, QueueDepth]]:
        """Accept-queue depth of every listener that can report one (system calls: call per scrape)."""
        out = []
        for li in self._listeners:
            if li.broken:
                continue
            try:
                q = accept_queue(li.sock)
            except (OSError, ValueError) as exc:
                # Reported once, then left out: a scrape must not fail or spam the log.
                li.broken = True
                log.warning("accept-queue depth of %s socket %s is unavailable: %s",
                            li.name, li.address, exc)
                continue
            if q is not None:
                out.append((li, q))
        return out

    def status(self) -> dict[str, Any]:
        """The figures of the STATUS line and of ``corral status --json`` (one source for both)."""
        now = self._clock()
        states = dict.fromkeys(WORKER_STATES, 0)
        ready_current = 0
        rss = uss = 0
        workers = []
        for w in sorted(self._workers.values(), key=lambda w: (w.generation, w.slot, w.pid)):
            states[w.state] += 1
            if w.state == "ready" and w.generation == self._generation:
                ready_current += 1
            rss += w.rss_bytes or 0
            uss += w.uss_bytes or 0
            workers.append(self._worker_status(w, now))
        queues = self.queue_depths()
        app_queues = [(li, q) for li, q in queues if li.app_traffic]
        me = self_process()
        data = {
            "ready": ready_current,
            "desired": self._desired,
            "booting": states["booting"],
            "draining": states["draining"],
            "generation": self._generation,
            "requests_per_second": round(self.requests_per_second(), 1),
            "requests_total": self._total().requests,
            "in_flight": sum(w.counters.in_flight for w in self._workers.values()),
            "queue_depth": sum(q.depth for _, q in app_queues) if app_queues else None,
            "queue_max": sum(q.max for _, q in app_queues) if app_queues else None,
            "rss_bytes": rss + me.rss_bytes,
            "workers_rss_bytes": rss,
            "workers_uss_bytes": uss,
            "supervisor_rss_bytes": me.rss_bytes,
            "restarts": dict(self._restarts),
            "message": self._message,
            "listeners": [{"name": li.name, "address": li.address, "queue_depth": q.depth,
                           "queue_max": q.max} for li, q in queues],
            "workers": workers,
        }
        data["status_line"] = format_status_line(data)
        return data

    def status_line(self) -> str:
        """The STATUS= line; ``status()["status_line"]`` when the JSON is wanted too."""
        return str(self.status()["status_line"])

    def _worker_status(self, w: _Worker, now: float) -> dict[str, Any]:
        c = w.counters
        oldest = None
        if c.oldest_in_flight_start is not None and c.in_flight:
            oldest = round(max(0.0, time.monotonic() - c.oldest_in_flight_start), 3)
        return {
            "pid": w.pid, "slot": w.slot, "generation": w.generation, "state": w.state,
            "requests": c.requests, "in_flight": c.in_flight,
            "oldest_request_age_seconds": oldest,
            "connections_open": c.connections_open,
            "websockets_open": c.ws.open,
            "rss_bytes": w.rss_bytes, "uss_bytes": w.uss_bytes, "open_fds": w.open_fds,
            "age_seconds": round(now - w.started, 1),
            "heartbeat_age_seconds": (None if w.last_heartbeat is None
                                      else round(now - w.last_heartbeat, 1)),
        }

    def render(self) -> str:
        """One Prometheus scrape."""
        return ex.render(self.collect())

    def collect(self) -> list[ex.Family]:
        """Every metric family, built from the current state."""
        fams: list[ex.Family] = []
        fams += self._request_families()
        fams += self._worker_families()
        fams += self._websocket_families()
        fams += self._lifecycle_families()
        fams += self._queue_families()
        fams += self._supervisor_families()
        return fams

    # ---- families ----------------------------------------------------------------------

    def _request_families(self) -> list[ex.Family]:
        total = self._total()
        requests = ex.counter("corral_requests_total",
                              "Responses sent by all workers (including exited ones), by status class.")
        for cls, n in zip(STATUS_CLASSES, total.responses, strict=True):
            requests.add(n, {"status": cls})
        received = ex.counter("corral_requests_received_total",
                              "Requests received by all workers, including exited ones.")
        received.add(total.requests)
        duration = ex.histogram("corral_request_duration_seconds",
                                "Time from request received to response sent, all workers.")
        if self._bounds is not None:
            counts = total.duration_counts or [0] * (len(self._bounds) + 1)
            duration.add(ex.Histogram(self._bounds, counts, round(total.duration_sum, 6)))
        in_flight = ex.gauge("corral_requests_in_flight", "Requests being processed now.")
        in_flight.add(total.in_flight)
        conns = ex.gauge("corral_connections_open", "Client connections open now.")
        conns.add(total.connections_open)
        accepted = ex.counter("corral_connections_accepted_total",
                              "Client connections accepted by all workers, including exited ones.")
        accepted.add(total.connections_accepted)
        return [requests, received, duration, in_flight, conns, accepted]

    def _worker_families(self) -> list[ex.Family]:
        now = self._clock()
        f = {
            "req": ex.counter("corral_worker_requests_total",
                              "Responses sent by one worker, by status class."),
            "in_flight": ex.gauge("corral_worker_requests_in_flight",
                                  "Requests one worker is processing now."),
            "oldest": ex.gauge("corral_worker_oldest_request_age_seconds",
                               "Age of the oldest request in flight on one worker (0 when idle)."),
            "open": ex.gauge("corral_worker_connections_open", "Connections one worker holds open."),
            "accepted": ex.counter("corral_worker_connections_accepted_total",
                                   "Connections one worker accepted."),
            "rss": ex.gauge("corral_worker_resident_memory_bytes", "Resident set size of one worker."),
            "uss": ex.gauge("corral_worker_unique_memory_bytes",
                            "Unique set size of one worker: memory freed if it exits."),
            "cpu": ex.counter("corral_worker_cpu_seconds_total",
                              "User and system CPU time of one worker."),
            "fds": ex.gauge("corral_worker_open_fds", "Open file descriptors of one worker."),
            "gen": ex.gauge("corral_worker_generation", "Generation one worker belongs to."),
            "ready": ex.gauge("corral_worker_ready", "1 when the worker is ready and serving."),
            "start": ex.gauge("corral_worker_start_time_seconds",
                              "Unix time one worker was spawned."),
            "hb": ex.gauge("corral_worker_heartbeat_age_seconds",
                           "Seconds since one worker's last heartbeat."),
        }
        mono = time.monotonic()
        for w in sorted(self._workers.values(), key=lambda w: (w.slot, w.pid)):
            lb = {"worker": str(w.slot), "pid": str(w.pid)}
            c = w.counters
            for cls, n in zip(STATUS_CLASSES, c.responses, strict=True):
                f["req"].add(n, {**lb, "status": cls})
            f["in_flight"].add(c.in_flight, lb)
            age = 0.0
            if c.in_flight and c.oldest_in_flight_start is not None:
                age = max(0.0, mono - c.oldest_in_flight_start)
            f["oldest"].add(round(age, 3), lb)
            f["open"].add(c.connections_open, lb)
            f["accepted"].add(c.connections_accepted, lb)
            if w.rss_bytes is not None:
                f["rss"].add(w.rss_bytes, lb)
            if w.uss_bytes is not None:
                f["uss"].add(w.uss_bytes, lb)
            if w.cpu_seconds is not None:
                f["cpu"].add(round(w.cpu_seconds, 3), lb)
            if w.open_fds is not None:
                f["fds"].add(w.open_fds, lb)
            f["gen"].add(w.generation, lb)
            f["ready"].add(w.state == "ready", lb)
            f["start"].add(round(w.started_wall, 3), lb)
            if w.last_heartbeat is not None:
                f["hb"].add(round(now - w.last_heartbeat, 3), lb)
        return list(f.values())

    def _websocket_families(self) -> list[ex.Family]:
        live = sorted(self._workers.values(), key=lambda w: (w.slot, w.pid))
        return ws_families(self._total().ws,
                           [({"worker": str(w.slot), "pid": str(w.pid)}, w.counters.ws) for w in live])

    def _lifecycle_families(self) -> list[ex.Family]:
        workers = ex.gauge("corral_workers", "Worker processes by state.")
        states = dict.fromkeys(WORKER_STATES, 0)
        for w in self._workers.values():
            states[w.state] += 1
        for state, n in states.items():
            workers.add(n, {"state": state})
        desired = ex.gauge("corral_workers_desired", "Workers corral keeps running.")
        desired.add(self._desired)
        restarts = ex.counter("corral_worker_restarts_total",
                              "Workers replaced, by reason: crash, hung (missed heartbeats), "
                              "memory, fds, max_requests, lifetime, deadline, reload, "
                              "boot_failed, boot_timeout.")
        for reason, n in self._restarts.items():
            restarts.add(n, {"reason": reason})
        cpu = ex.counter("corral_workers_cpu_seconds_total",
                         "CPU time of all workers, including exited ones (as last sampled).")
        cpu.add(round(self._retired_cpu + sum(w.cpu_seconds or 0.0
                                              for w in self._workers.values()), 3))
        generation = ex.gauge("corral_generation", "Generation of workers now serving; "
                                                   "each successful reload adds one.")
        generation.add(self._generation)
        rl = self._reloads
        reloads = ex.histogram("corral_reload_duration_seconds",
                               "Reload transactions by outcome (success, rolled_back, aborted) "
                               "and how long each took.")
        for outcome in RELOAD_OUTCOMES:
            reloads.add(ex.Histogram(RELOAD_BUCKETS, rl.counts[outcome], rl.sums[outcome]),
                        {"outcome": outcome})
        fams = [workers, desired, restarts, cpu, generation, reloads]
        if rl.last_outcome is not None:
            last = ex.gauge("corral_last_reload_success", "1 if the last reload succeeded.")
            last.add(rl.last_outcome == "success")
            last_t = ex.gauge("corral_last_reload_timestamp_seconds",
                              "Unix time the last reload ended.")
            last_t.add(round(rl.last_time, 3))
            last_d = ex.gauge("corral_last_reload_duration_seconds",
                              "How long the last reload took.")
            last_d.add(round(rl.last_duration, 3))
            fams += [last, last_t, last_d]
        return fams

    def _queue_families(self) -> list[ex.Family]:
        depth = ex.gauge("corral_listen_queue_depth",
                         "Connections waiting in a listening socket's accept queue.")
        limit = ex.gauge("corral_listen_queue_max",
                         "Accept-queue limit (listen backlog) of a listening socket.")
        for li, q in self.queue_depths():
            lb = {"name": li.name, "address": li.address}
            depth.add(q.depth, lb)
            limit.add(q.max, lb)
        return [depth, limit]

    def _supervisor_families(self) -> list[ex.Family]:
        lag = ex.gauge("corral_supervisor_event_loop_lag_seconds",
                       "How late the supervisor's event loop ran its last timer.")
        lag.add(round(self._loop_lag, 6))
        me = self_process()
        info = ex.gauge("corral_build_info", "corral's version; always 1.")
        info.add(1, {"version": __version__})
        return [
            lag,
            ex.gauge("process_resident_memory_bytes", "Supervisor resident memory.").add(me.rss_bytes),
            ex.counter("process_cpu_seconds_total", "Supervisor CPU time.").add(round(me.cpu_seconds, 3)),
            ex.gauge("process_open_fds", "Supervisor open file descriptors.").add(me.open_fds),
            ex.gauge("process_max_fds", "Supervisor file descriptor limit.").add(me.max_fds),
            ex.gauge("process_start_time_seconds", "Unix time the supervisor started.").add(
                round(me.start_time_seconds, 2)),
            info,
        ]

    # ---- helpers -------------------------------------------------------------------------

    def _worker(self, pid: int) -> _Worker:
        try:
            return self._workers[pid]
        except KeyError:
            raise KeyError(f"worker pid {pid} is unknown to metrics; call worker_started() "
                           f"when spawning it") from None

    def _histogram_matches(self, c: WorkerCounters) -> bool:
        if c.duration_bounds == self._bounds:
            return True
        if not self._warned_bounds:
            self._warned_bounds = True
            log.warning("a worker reports request-duration buckets %s that differ from %s; its "
                        "durations are left out of the histogram until corral is restarted",
                        c.duration_bounds, self._bounds)
        return False

    def _total(self) -> WorkerCounters:
        """Retired plus live counters; the gauges only from live workers."""
        r = self._retired
        t = WorkerCounters(requests=r.requests, connections_accepted=r.connections_accepted)
        t.responses = list(r.responses)
        t.duration_sum = r.duration_sum
        t.ws.add(r.ws)
        if self._bounds is not None:
            t.duration_counts = list(r.duration_counts or [0] * (len(self._bounds) + 1))
        for w in self._workers.values():
            c = w.counters
            t.requests += c.requests
            t.responses = [a + b for a, b in zip(t.responses, c.responses, strict=True)]
            t.in_flight += c.in_flight
            t.connections_open += c.connections_open
            t.connections_accepted += c.connections_accepted
            t.ws.add(c.ws)
            if c.duration_counts is not None and t.duration_counts is not None \
                    and c.duration_bounds is not None and self._histogram_matches(c):
                t.duration_counts = [a + b for a, b in zip(t.duration_counts, c.duration_counts, strict=True)]
                t.duration_sum += c.duration_sum
        return t

