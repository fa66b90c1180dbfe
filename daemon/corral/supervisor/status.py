"""What the supervisor reports: the STATUS= line, the `corral status` snapshot and table."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Protocol

from corral.config import Config
from corral.metrics import procfs
from corral.supervisor.identity import PACKAGE_DIR, CodeIdentity
from corral.supervisor.listeners import Listener, Listeners
from corral.supervisor.slots import Generation
from corral.supervisor.state import Phase, SupervisorState


class Reporting(Protocol):
    """What the status report reads of the supervisor."""

    @property
    def phase(self) -> Phase: ...
    @property
    def state(self) -> SupervisorState: ...
    @property
    def config(self) -> Config: ...
    @property
    def listeners(self) -> Listeners: ...
    @property
    def code_identity(self) -> CodeIdentity: ...

    def code_description(self, generation: Generation | None = None) -> str: ...


def status_line(sup: Reporting) -> str:
    """One line for systemd's STATUS=, e.g. ``4/4 workers ready · gen 1 · 1.2k req/s · queue 0 · rss 180 MiB``.

    The figures come from the metrics registry, as in ``corral status`` and the
    Prometheus scrape; what the supervisor is doing right now is appended.
    """
    metrics = sup.state.metrics
    metrics.set_message(_phase_message(sup))
    return metrics.status_line()


def _phase_message(sup: Reporting) -> str | None:
    # The app's code identity (``app v1.4.2 git 3f2a9c01de``) comes last: a long failure
    # message may be cut, and it matters more.
    code = sup.code_description()
    state = sup.state
    parts = []
    if state.pending is not None:
        pending = state.pending
        parts.append(f"reloading: gen {pending.number} {len(pending.serving())}/{len(pending.slots)} ready")
    elif sup.phase is Phase.STARTING:
        parts.append("starting")
    elif state.last_reload is not None and not state.last_reload.ok:
        parts.append(f"last reload failed: {state.last_reload.message}")
    if code:
        parts.append(f"app {code}")
    return " · ".join(parts) or None


def snapshot(sup: Reporting) -> dict[str, Any]:
    """Everything `corral status --json` shows (plain JSON data)."""
    now = time.monotonic()
    state = sup.state
    generation = state.generation
    rss, uss, _pss = procfs.memory(os.getpid())
    workers = []
    for worker in sorted(state.workers.values(), key=lambda w: (w.generation, w.slot, w.id)):
        stats = worker.stats
        workers.append({
            "id": worker.id,
            "pid": worker.pid,
            "slot": worker.slot,
            "generation": worker.generation,
            "state": worker.state,
            "reason": worker.stop_reason,
            "age": round(worker.age(now), 3),
            "heartbeat_age": _rounded(worker.heartbeat_age(now)),
            "requests": int(stats.get("requests_total", 0) or 0),
            "in_flight": int(stats.get("in_flight", 0) or 0),
            "oldest_in_flight_age": stats.get("oldest_in_flight_age"),
            "connections_open": int(stats.get("connections_open", 0) or 0),
            "connections_accepted": int(stats.get("connections_accepted", 0) or 0),
            "websockets_open": _websockets_open(stats),
            "accept_paused": bool(stats.get("accept_paused", False)),
            "uss": worker.sample.get("uss"),
            "rss": worker.sample.get("rss"),
            "fds": worker.sample.get("fds"),
            "cpu_seconds": (worker.sample["cpu_ms"] / 1000) if "cpu_ms" in worker.sample else None,
            "max_requests": worker.max_requests or None,
            "identity": worker.identity,
            "stats": stats,
        })
    figures = state.metrics.status()
    return {
        "name": sup.config.name,
        "pid": os.getpid(),
        "phase": str(sup.phase),
        "app": sup.config.app,
        "generation": generation.number if generation else 0,
        "workers_wanted": len(generation.slots) if generation else 0,
        "workers_ready": len(generation.serving()) if generation else 0,
        "pending_generation": state.pending.number if state.pending else None,
        "code": sup.code_description(),
        "uptime": round(now - state.started_at, 3),
        "requests_total": figures["requests_total"],
        "requests_per_second": figures["requests_per_second"],
        "in_flight": figures["in_flight"],
        "queue_depth": figures["queue_depth"],
        "queue_max": figures["queue_max"],
        "rss_bytes": figures["rss_bytes"],
        "status": status_line(sup),
        "restarts": {k: v for k, v in figures["restarts"].items() if v},
        "last_reload": None if state.last_reload is None else {
            "ok": state.last_reload.ok, "generation": state.last_reload.generation,
            "message": state.last_reload.message, "duration": round(state.last_reload.duration, 3)},
        "listeners": [{"fd": item.fd, "role": item.role, "address": item.address, "source": item.source,
                       "name": item.name, "group": item.group, **_queue(figures, item)}
                      for item in sup.listeners.items],
        "supervisor": {
            # corral's own code this image runs (a reload re-executes when the installed code differs)
            "code": {"path": str(PACKAGE_DIR), "version": sup.code_identity.version,
                     "digest": sup.code_identity.digest, "reexecs": state.reexecs},
            "rss": rss,
            "uss": uss,
            "python": sys.executable,
            # Top-level packages loaded in the supervisor: proves it never imported the app,
            # uvloop or httptools.
            "modules": sorted({name.partition(".")[0] for name, module in list(sys.modules.items())
                               if _loaded(module)}),
        },
        "workers": workers,
        "zygotes": _zygotes(sup),
    }


def _zygotes(sup: Reporting) -> list[dict[str, Any]]:
    """worker_start: zygote: each generation's zygote (corral.supervisor.zygote); [] otherwise."""
    spawner = getattr(sup, "zygotes", None)  # a test's fake supervisor has none
    report = getattr(spawner, "report", None)
    return list(report()) if callable(report) else []


def _loaded(module: object) -> bool:
    """A real module: sys.modules also holds None for an import that is blocked (corral.supervisor.launch keeps ssl out)."""
    return module is not None


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _websockets_open(stats: dict[str, Any]) -> int:
    """Open WebSockets from a heartbeat's ``ws`` (engine WebSocketStats.snapshot()); 0 before one came."""
    ws = stats.get("ws")
    return int(ws.get("open", 0) or 0) if isinstance(ws, dict) else 0


def _queue(figures: dict[str, Any], listener: Listener) -> dict[str, Any]:
    # Reuse-port sockets share an address: the series name tells them apart (the same
    # rule as Supervisor._watch_listener: role, then /group).
    name = f"{listener.role}/{listener.group}" if listener.group else listener.role
    for item in figures["listeners"]:
        if item["address"] == listener.address and item["name"] == name:
            return {"queue_depth": item["queue_depth"], "queue_max": item["queue_max"]}
    return {"queue_depth": None, "queue_max": None}


def render_table(data: dict[str, Any]) -> str:
    """The human-readable `corral status`."""
    lines = [
        f"{data['name']}: {data['phase']}, pid {data['pid']}, up {_duration(data['uptime'])}, app {data['app']}",
        f"  {data['status']}",
        f"  supervisor rss {_mib(data['supervisor']['rss'])}, uss {_mib(data['supervisor']['uss'])}; "
        f"requests {data['requests_total']}; restarts "
        + (", ".join(f"{k} {v}" for k, v in sorted(data["restarts"].items())) or "none"),
    ]
    if data.get("last_reload"):
        r = data["last_reload"]
        lines.append(f"  last reload: {'ok' if r['ok'] else 'FAILED'}: {r['message']} ({r['duration']:.2f}s)")
    for z in data.get("zygotes") or []:
        what = "app preloaded" if z["preloaded"] else "runtime only"
        lines.append(f"  zygote of generation {z['generation']}: pid {z['pid'] or '-'}, {z['state']}, {what}, "
                     f"{z['forks']} forks, uss {_mib(z['uss'])}, pss {_mib(z['pss'])}"
                     + (f": {z['error']}" if z["error"] else ""))
    for item in data["listeners"]:
        queue = "" if item.get("queue_depth") is None else f", queue {item['queue_depth']}/{item['queue_max']}"
        lines.append(f"  listening on {item['address']} ({item['role']}, {item['source']}, fd {item['fd']}{queue})")
    header = ("PID", "GEN", "SLOT", "STATE", "REQUESTS", "IN-FLIGHT", "CONNS", "WS", "USS", "AGE")
    rows = [header]
    for w in data["workers"]:
        state = w["state"] + (f" ({w['reason']})" if w["reason"] and w["state"] != "ready" else "")
        slot = str(w["slot"]) if w["slot"] >= 0 else "-"  # a standby has no slot yet
        rows.append((str(w["pid"]), str(w["generation"]), slot, state, str(w["requests"]),
                     str(w["in_flight"]), str(w["connections_open"]), str(w.get("websockets_open", 0)),
                     _mib(w["uss"]) if w["uss"] is not None else "-", _duration(w["age"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines.append("")
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(widths[i]) if i in (3,) else cell.rjust(widths[i])
                                      for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1048576:.1f}M"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
