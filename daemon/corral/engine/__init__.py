"""corral's HTTP/1.1 engine: serves an ASGI 3 (or WSGI) app on already-listening sockets.

The engine knows nothing of the supervisor, of systemd, or of who created its
sockets. The worker process (``corral.worker``) drives it through this API:

    from corral.engine import Server, EngineSettings, LifespanError

    server = Server(app, settings, interface="asgi")   # or "wsgi"
    await server.startup()          # lifespan startup; raises LifespanError(app's message)
    await server.serve(sockets)     # start accepting on listening sockets; returns at once
    server.stats                    # EngineStats: counters the worker puts in its heartbeat
    server.pause_accepting() / server.resume_accepting()
    server.max_connections          # at this many open connections the engine stops accepting
    server.connection_count         # connections open or being set up
    server.on_accept = callback     # called after each accepted connection (accept balancing)
    await server.begin_drain()      # stop accepting; later responses say Connection: close
    await server.shutdown(timeout)  # graceful drain, then lifespan shutdown
                                    # (restart=True: WebSockets close with 1012, not 1001)

Contract details:

* ``EngineSettings`` (``corral.engine.settings``): frozen dataclass, one field
  per limit/option, simple types, safe defaults; the config key is the field
  name. Invalid values raise ValueError with the fix in the message.
* ``serve(socks)``: TCP (v4/v6) or unix stream sockets, already bound and
  listening. The engine sets them non-blocking and accepts on them; it never
  calls bind()/listen() and never closes them (the caller owns them).
* ``pause_accepting()``/``resume_accepting()``: for accept balancing between
  workers. Independently, at ``max_connections`` open connections the engine
  stops accepting and resumes below it (the kernel backlog, and other
  workers, take the overflow: no storm of 503s).
* ``stats`` (``corral.engine.stats.EngineStats``): ``requests_total``,
  ``responses`` (index = status class; ``responses_by_class()``), ``in_flight``,
  ``oldest_in_flight`` (time.monotonic() or None), ``connections_open``,
  ``connections_accepted``, ``duration_counts`` (per bucket of
  ``DURATION_BUCKETS``, plus +Inf), ``duration_sum``; ``snapshot()`` gives a
  JSON-able dict. Cheap to update; ``in_flight``/``oldest_in_flight`` are
  computed when read.
* ``shutdown(timeout)``: stop accepting; close idle keep-alive connections at
  once; busy ones send ``Connection: close`` on their current response; wait
  up to ``timeout`` for in-flight requests, then close what remains and cancel
  app tasks; then lifespan shutdown.
* ``request_timeout`` (setting): an ASGI request running longer is cancelled:
  504 if its response has not started, else the connection is closed.
* Interfaces: "asgi" (``corral.engine.asgi``) and "wsgi" (``corral.engine.wsgi``,
  class ``WSGIInterface``). The contracts between the engine's parts (the
  interface adapter, the per-request cycle, the connection it talks to) are
  ``typing.Protocol`` classes in ``corral.engine.contracts``.

The names above are imported on first use (module ``__getattr__``): importing
``corral.engine.settings`` (the config loader does) loads neither httptools,
uvloop nor the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.engine.lifespan import LifespanError
    from corral.engine.server import Server
    from corral.engine.settings import EngineSettings
    from corral.engine.stats import DURATION_BUCKETS, EngineStats

# Public name -> the module that defines it.
_HOMES = {
    "DURATION_BUCKETS": "corral.engine.stats",
    "EngineSettings": "corral.engine.settings",
    "EngineStats": "corral.engine.stats",
    "LifespanError": "corral.engine.lifespan",
    "Server": "corral.engine.server",
}

__all__ = ["DURATION_BUCKETS", "EngineSettings", "EngineStats", "LifespanError", "Server"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found directly next time
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
