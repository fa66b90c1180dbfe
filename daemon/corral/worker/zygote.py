"""The zygote: one fresh interpreter per generation that workers are forked from (worker_start: zygote).

Started by the supervisor exactly as a worker is (``boot.py`` by path, the app's interpreter, the
scrubbed environment, ``app_dir`` as cwd, a process group of its own), with ``--zygote``. It:

1. reads its ``zygote_hello`` (the generation's config) from its request channel;
2. imports the runtime every worker needs (uvloop, httptools, the engine) and, with ``preload``,
   the app's module; then checks that no thread was started (a fork copies only the forking
   thread: a preloaded app whose threads hold a lock would deadlock its workers); with
   ``preload_warmup`` too, sends the app its warm-up request (``corral.worker.zygote_warmup``);
   builds what each worker would build alike from the config (``KnownConfig``: the engine's
   settings, the log handlers and, with ``preload``, the engine for the app object, not started);
3. ``gc.freeze()``s what it imported, so that no collection in a worker writes to (and so copies)
   the pages it shares with the zygote, and says ``zygote_ready``;
4. forks one worker per ``fork`` request, with the fds that came with it (SCM_RIGHTS) moved to the
   numbers the supervisor named, so the worker reads the same ``hello`` an exec'd worker does.

It creates no event loop, thread or socket of its own: its only channel is the request socket.

Each worker is forked twice (zygote -> short-lived middle process -> worker) so that, once the middle
one exits, the worker is re-parented to the supervisor, which made itself a child subreaper: the
supervisor waits for its workers' exit statuses itself, as it does for exec'd ones, and workers
outlive a zygote that crashes (corral.supervisor.zygote).

A zygote that cannot import the runtime or the app, or that must refuse to preload, does not exit:
it stays up in a failed state and every worker it forks reports that error as its boot error and
exits with the worker's boot-error status. The supervisor then handles it exactly like a worker
whose import failed (a reload rolls back, a start fails with the app's message).

The zygote exits when its request channel closes: the supervisor closes it once the zygote's
generation is gone, and the kernel closes it when the supervisor dies.

Its request channel's messages are in corral.worker.zygote_protocol.

Only the standard library and corral are imported before the runtime (as in ``boot.py``).
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from corral.worker.protocol import WORKER_LOG_ROLE, KnownConfig, config_text
from corral.worker.zygote_protocol import (
    MAX_MESSAGE,
    Forked,
    ForkFailed,
    ZygoteKind,
    ZygoteReady,
    decode,
    encode,
    kind_of,
)

if TYPE_CHECKING:
    from corral.engine import Server
    from corral.engine.settings import EngineSettings

# corral.worker.main.run (handed in: no import cycle): a worker's life on its channel fd
WorkerMain = Callable[[int, KnownConfig | None], int]

log = logging.getLogger("corral.zygote")

MAX_FDS = 64  # fds one fork request may carry: listeners, balance table, in-flight table, channel
HELLO_TIMEOUT = 30.0
EXIT_BOOT_ERROR = 3  # the worker's status for a failed boot (corral.worker.main)

# With preload: the app's code identity (corral.worker.identity), computed once in the zygote. Its
# workers serve exactly the code the zygote imported, and the lookup (installed distributions'
# metadata) costs each worker 100 ms or more before it is ready.
preloaded_identity: dict[str, Any] | None = None


# ---------------------------------------------------------------------- the zygote process


def run(channel_fd: int, worker_main: WorkerMain) -> int:
    """The zygote's main: returns its exit status once its request channel closes."""
    # No collection in the zygote (the Python docs' advice for fork without exec): a collection
    # frees objects, and the holes it leaves in memory pages are where a worker's first
    # allocations go, copying those pages. Re-enabled in each worker.
    gc.disable()
    sock = socket.socket(fileno=channel_fd)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))  # no core dump on a fast stop
    try:
        sock.settimeout(HELLO_TIMEOUT)
        hello = decode(sock.recv(MAX_MESSAGE))
        sock.settimeout(None)
    except (OSError, ValueError) as exc:
        print(f"corral zygote: no hello from the supervisor: {exc!r}", file=sys.stderr)
        return 2
    from corral.config import Config, ConfigError
    from corral.logs import log_setup, setup_logging

    try:
        config = Config.from_json(hello["config"])
    except (ConfigError, KeyError) as exc:
        error: str | None = f"cannot read the config the supervisor sent: {exc}"
        known = None
        preloaded = False
        seconds = 0.0
    else:
        setup_logging(config.log_level, role="corral-zygote")
        start = time.monotonic()
        error, preloaded = prepare(config)
        seconds = time.monotonic() - start
        settings = None if error else engine_settings(config)
        known = KnownConfig(config_text(hello["config"]), config, settings,
                            log_setup(config.log_level, role=WORKER_LOG_ROLE),
                            engine_for_app(config, settings) if preloaded else None)
    if error:
        log.error("%s", error)
    # What the zygote imported is never collected again: a collection in a worker would write to
    # every object's header, copying the pages it shares with the zygote.
    gc.freeze()
    ready: ZygoteReady = {"t": ZygoteKind.READY, "pid": os.getpid(), "preloaded": preloaded, "error": error,
                          "seconds": round(seconds, 3)}
    sock.send(encode(ready))
    return serve(sock, error, worker_main, known)


def prepare(config: Any) -> tuple[str | None, bool]:
    """Import the runtime and, with preload, the app; (error or None, whether the app is loaded)."""
    from corral.worker.check import DEPENDENCY_HINT

    try:
        import httptools  # noqa: F401  (imported to be shared with the workers)
        import uvloop  # noqa: F401

        import corral.appload
        import corral.engine
        import corral.engine.asgi
        import corral.engine.cycle
        import corral.engine.eagertask
        import corral.engine.settings
        import corral.engine.tls
        import corral.engine.tlsconfig
        import corral.engine.websocket  # with the websockets library: 20-30 ms of each worker's boot
        import corral.engine.wsgi
        import corral.worker.balancer
        import corral.worker.identity
        import corral.worker.inflight
        import corral.worker.probe  # noqa: F401
        from corral.engine import Server  # noqa: F401  (the engine's modules load on first use of a name)
    except ImportError as exc:
        return f"cannot import corral's worker runtime with {sys.executable}: {exc}; {DEPENDENCY_HINT}", False
    if not config.preload:
        return None, False
    threads = _thread_count()
    if threads > 1:  # something in corral's own runtime started one: never fork that
        return f"the zygote runs {threads} threads before importing the app; cannot preload", False
    try:
        _import_app(config)
    except Exception as exc:  # noqa: BLE001  (importing the app runs its code, which may raise anything)
        return _preload_failed("import", exc), False
    _remember_identity(config)
    threads = _thread_count()
    if threads > 1:
        names = ", ".join(sorted(t.name for t in threading.enumerate() if t is not threading.current_thread()))
        return (f"preload refused: importing {config.app} started {threads - 1} thread"
                f"{'s' if threads > 2 else ''} ({names or 'not Python threads'}); a fork copies only the "
                "forking thread, so workers would inherit locks nobody releases. Start threads in the app's "
                "lifespan startup (or on first use) instead of at import, or set preload: false"), False
    if config.preload_warmup and config.warmup is not None:
        error = _warm_up(config)
        if error is not None:
            return error, False
    return None, True


def engine_settings(config: Any) -> EngineSettings | None:
    """The engine's settings, built once here for every worker (KnownConfig); None when they are
    invalid: each worker then builds its own and reports the error as its boot error."""
    from corral.engine.settings import EngineSettings

    try:
        return EngineSettings(**config.engine)
    except (TypeError, ValueError):
        return None


def engine_for_app(config: Any, settings: EngineSettings | None) -> Server | None:
    """With preload, the engine for the app object, made once here for every worker (KnownConfig):
    a worker that made its own would copy the pages it touches doing so (0.14 MiB of the hello
    world tree with 4 workers, the median of 8 paired runs). Not started: no loop, no socket, no
    thread. None for an app factory (each worker calls it) or anything that fails: each worker
    then loads its app and builds its engine itself, and reports the error as its boot error."""
    from corral.appload import interface_of, load_app, parse_spec
    from corral.engine import Server

    if settings is None or parse_spec(config.app)[2]:
        return None
    try:
        app = load_app(config.app, app_dir=config.app_dir)
        return Server(app, settings, interface_of(app, config.interface))
    except Exception as exc:  # noqa: BLE001  (the app's attributes run its code; each worker reports it)
        log.debug("the workers load the app themselves: %s", exc)
        return None


def _preload_failed(step: str, exc: Exception) -> str:
    """The app failed to ``step`` (import, load) in the zygote: its traceback logged, its last line
    the zygote's error."""
    from corral.appload import error_line

    log.error("the app failed to %s in the zygote (preload)", step, exc_info=exc)
    return f"preload: {error_line(exc)}"


def _warm_up(config: Any) -> str | None:
    """preload_warmup: the warm-up request, in the zygote before any fork (corral.worker.zygote_warmup)."""
    from corral.appload import interface_of, load_app, parse_spec
    from corral.worker.zygote_warmup import WarmupRefused, warm_up

    if parse_spec(config.app)[2]:
        return (f"preload_warmup: {config.app} is an app factory, which each worker calls after the fork, so "
                "the zygote has no app to warm up; name the app object (MODULE:ATTR), or set preload_warmup: false")
    try:
        app = load_app(config.app, app_dir=config.app_dir)
    except Exception as exc:  # noqa: BLE001  (as above; logged by _preload_failed)
        return _preload_failed("load", exc)
    try:
        log.info("warm-up in the zygote: %s", warm_up(app, interface_of(app, config.interface), config.warmup))
    except WarmupRefused as exc:
        return str(exc)
    return None


def _import_app(config: Any) -> None:
    """Import the app's module only: a factory (MODULE:FUNC()) is called in each worker, as without preload."""
    import importlib

    from corral.appload import parse_spec

    if config.app is None:
        raise ValueError("no app given: pass MODULE:ATTR or set app: in the config")
    module_name, _attr, _factory = parse_spec(config.app)
    if config.app_dir is not None and config.app_dir not in sys.path:
        sys.path.insert(0, config.app_dir)
    importlib.import_module(module_name)


def _remember_identity(config: Any) -> None:
    global preloaded_identity
    from corral.worker.identity import app_identity

    try:
        preloaded_identity = app_identity(config.app, config.app_dir)
    except Exception as exc:  # noqa: BLE001  (only a label: each worker then looks for itself)
        log.debug("cannot tell the app's code identity: %s", exc)


def _thread_count() -> int:
    """How many threads this process runs, C-level ones included."""
    from corral.metrics.procfs import thread_ids

    try:
        return len(thread_ids("self"))
    except OSError:
        return threading.active_count()


def serve(sock: socket.socket, error: str | None, worker_main: WorkerMain,
          known: KnownConfig | None = None) -> int:
    """Fork workers until the request channel closes."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
        except InterruptedError:
            continue
        except OSError:
            return 0
        if not data:
            for fd in fds:
                os.close(fd)
            return 0
        try:
            message = decode(data)
        except ValueError:
            for fd in fds:
                os.close(fd)
            continue
        if kind_of(message) is not ZygoteKind.FORK:
            for fd in fds:
                os.close(fd)
            continue
        reply: Forked | ForkFailed
        try:
            reply = {"t": ZygoteKind.FORKED, "pid": fork_worker(sock, message, fds, error, worker_main, known)}
        except (OSError, ValueError, KeyError) as exc:
            reply = {"t": ZygoteKind.FORK_FAILED, "error": f"fork failed: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            sock.send(encode(reply))
        except OSError:
            return 0  # the supervisor is gone (its worker, now orphaned, notices on its own channel)


def fork_worker(sock: socket.socket, request: Mapping[str, Any], fds: Sequence[int], error: str | None,
                worker_main: WorkerMain, known: KnownConfig | None = None) -> int:
    """Fork a worker through a middle process that exits at once; returns the worker's pid."""
    targets = [int(t) for t in request["targets"]]
    if len(targets) != len(fds):
        raise ValueError(f"{len(fds)} fds came with a request naming {len(targets)}")
    channel_fd = int(request["channel"])
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        status = 1
        try:
            os.close(read_end)
            worker = os.fork()
            if worker == 0:
                os.close(write_end)
                _become_worker(sock, fds, targets, channel_fd, error, worker_main, known)  # never returns
            os.write(write_end, str(worker).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        data = b""
        while chunk := os.read(read_end, 32):
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(middle, 0)  # once it is reaped, its child (the worker) is the supervisor's
    if not data:
        raise OSError("the middle process exited without forking a worker")
    return int(data)


def _become_worker(sock: socket.socket, fds: Sequence[int], targets: Sequence[int], channel_fd: int,
                   error: str | None, worker_main: WorkerMain, known: KnownConfig | None) -> None:
    code = 1
    try:
        os.setpgid(0, 0)  # a process group of its own, as an exec'd worker has
        sock.close()  # the zygote's channel is the zygote's alone
        move_fds(fds, targets)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        # random's global instance needs no reseeding here: os.fork() ran its os.register_at_fork
        # hook, which reseeds it from the OS even if the app seeded it at import (as it ran the
        # app's own hooks). A Random instance the app made itself is the app's to reseed.
        gc.enable()  # the frozen objects stay out of its collections
        if error is not None:
            code = _report(channel_fd, error)
        else:
            code = worker_main(channel_fd, known)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001  (the worker's last word; the process ends here either way)
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def move_fds(fds: Sequence[int], targets: Sequence[int]) -> None:
    """Give each received fd its target number: first all above every target (so no dup2 closes
    another received fd), then down to the target."""
    floor = max([*targets, *fds, 2]) + 1
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
    for fd in fds:
        os.close(fd)
    for fd, target in zip(high, targets, strict=True):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)


def _report(channel_fd: int, error: str) -> int:
    """A worker of a failed zygote: say the zygote's error as this worker's boot error."""
    from corral.worker import protocol

    channel = protocol.Channel(socket.socket(fileno=channel_fd))
    try:
        channel.receive_blocking(timeout=HELLO_TIMEOUT)  # the hello: the supervisor is listening by now
    except (protocol.ChannelClosed, OSError, ValueError):
        pass
    channel.send(protocol.boot_error(error))
    return EXIT_BOOT_ERROR
