"""Python 3.11's missing eager task start, built on CPython internals, and the check that guards it.

Python 3.12 has ``asyncio.Task(..., eager_start=True)``: a request's first step
runs at once, inside the callback that parsed it, and a handler that never
waits answers in the same loop iteration. Python 3.11 lacks it, so corral
builds it (:func:`build`) on the stdlib's pure-Python Task,
``asyncio.tasks._PyTask``. That leans on private details any patch release may
change: the name-mangled ``_Task__step``/``_Task__wakeup``, the fields
``Task.__init__`` sets (an eager task is set up field by field instead), the
futures' state strings and the shape of their callback list.

:func:`internals_problem` checks those at start-up; when one is not what this
code expects, the ASGI cycle runs requests as standard asyncio tasks instead
(``corral.engine.asgi.select_task_path``), a little slower and otherwise the same.
"""

from __future__ import annotations

import dis
import inspect
import sys
from asyncio import base_futures, futures
from asyncio import tasks as _tasks
from contextvars import copy_context
from typing import Any

# What the eager task sets itself: per request in ASGICycle.run() (_loop, _callbacks,
# _context, _coro), or as class-level defaults (the rest; Future's and Task's own
# class attributes give _state, _source_traceback, _log_destroy_pending). A field that
# Future.__init__ or Task.__init__ sets beyond these would be missing from an eager task.
EXPECTED_FIELDS = frozenset((
    "_loop", "_callbacks", "_source_traceback", "_context", "_coro",
    "_name", "_num_cancels_requested", "_must_cancel", "_fut_waiter", "_log_destroy_pending",
))
# Names the eager task uses: (owner, attribute).
_NAMES = (
    ("asyncio.tasks", ("_PyTask", "_enter_task", "_leave_task", "_register_task")),
    ("asyncio.futures", ("_get_loop",)),
    ("asyncio.tasks._PyTask", ("_Task__step", "_Task__wakeup", "__del__", "_state", "_cancel_message",
                               "_asyncio_future_blocking", "add_done_callback")),
)


def internals_problem() -> str | None:
    """Why the 3.11 eager task cannot run on this interpreter, or None when it can."""
    if sys.version_info[:2] != (3, 11):
        return f"it is built for Python 3.11's asyncio, and this is Python {sys.version.split()[0]}"
    owners: dict[str, Any] = {"asyncio.tasks": _tasks, "asyncio.futures": futures,
                              "asyncio.tasks._PyTask": vars(_tasks).get("_PyTask")}
    for owner, names in _NAMES:
        for name in names:
            if not hasattr(owners[owner], name):
                return f"{owner}.{name} is missing"
    py_task = owners["asyncio.tasks._PyTask"]
    states = (vars(base_futures).get("_PENDING"), vars(base_futures).get("_FINISHED"))
    if states != ("PENDING", "FINISHED"):
        return f"asyncio's future states are {states!r}, not ('PENDING', 'FINISHED')"
    try:
        params = list(inspect.signature(py_task._Task__step).parameters)
    except (TypeError, ValueError) as exc:
        return f"the signature of Task.__step cannot be read ({exc})"
    if params != ["self", "exc"]:
        return f"Task.__step takes ({', '.join(params)}), not (self, exc)"
    unknown = _fields_set_by_init(py_task) - EXPECTED_FIELDS
    if unknown:
        return f"Task.__init__ sets {', '.join(sorted(unknown))}, which the eager task would lack"
    return _callbacks_problem(py_task)


def _fields_set_by_init(py_task: type) -> set[str]:
    """The attributes the __init__ of the Task class and its bases store (from their bytecode)."""
    stored: set[str] = set()
    for cls in py_task.__mro__:
        init = vars(cls).get("__init__")
        if init is not None and cls is not object:
            stored.update(str(ins.argval) for ins in dis.get_instructions(init) if ins.opname == "STORE_ATTR")
    return stored


def _callbacks_problem(py_task: type) -> str | None:
    """ASGICycle.run() appends (callback, context) to ``_callbacks`` itself: check that is their shape."""
    probe: Any = object.__new__(py_task)
    probe._callbacks = []
    context = copy_context()
    probe.add_done_callback(_callbacks_problem, context=context)
    if probe._callbacks != [(_callbacks_problem, context)]:
        return f"a future keeps its done callbacks as {probe._callbacks!r}, not [(callback, context)]"
    probe._callbacks = []  # the probe is never awaited; nothing to report when it is collected
    probe._state = "FINISHED"
    return None


def build() -> Any:
    """The eager Task class (call it only when :func:`internals_problem` returned None).

    Typed Any: it subclasses ``asyncio.tasks._PyTask``, which typeshed does not
    describe, and ASGICycle.run() sets its private fields directly.
    """
    py_task: Any = vars(_tasks)["_PyTask"]
    py_step = py_task._Task__step
    py_del = py_task.__del__
    register_task = _tasks._register_task
    get_loop = vars(futures)["_get_loop"]
    pending = base_futures._PENDING

    class EagerTask(py_task):  # type: ignore[misc]  # its base is untyped (see the docstring)
        """A stdlib Python Task whose first step runs immediately (Python 3.11's missing eager_start)."""

        _name = "corral-request"
        _coro = None
        _num_cancels_requested = 0
        _must_cancel = False
        _fut_waiter = None

        # Instances are made with object.__new__ and set up field by field in
        # ASGICycle.run(), not through Task.__init__: that would schedule the
        # first step (run at once instead) and register the task (only done if
        # it suspends). run() also does the first step itself, inline: two Python
        # calls less per request.

        def __del__(self) -> None:
            # Hot path: a finished request task has nothing to report.
            if self._state == pending:
                py_del(self)

        def _Task__step(self, exc: BaseException | None = None) -> None:
            # A step of the app that raised SystemExit or KeyboardInterrupt: the
            # stdlib step has stored it in the task, whose done callback answers
            # 500, and re-raises it, which would stop the worker's loop.
            try:
                py_step(self, exc)
            except (SystemExit, KeyboardInterrupt):
                pass  # already the task's outcome (see above): answered as an app error, not lost

        def suspended(self, result: Any) -> None:
            """The first step yielded ``result``: carry on exactly as ``Task.__step`` would."""
            loop = self._loop
            register_task(self)
            blocking = getattr(result, "_asyncio_future_blocking", None)
            if blocking and get_loop(result) is loop:
                result._asyncio_future_blocking = False
                result.add_done_callback(self._Task__wakeup, context=self._context)
                self._fut_waiter = result
                if self._must_cancel and result.cancel(msg=self._cancel_message):
                    self._must_cancel = False
            elif result is None:
                loop.call_soon(self._Task__step, context=self._context)
            else:
                error = RuntimeError(f"Task got bad yield or a Future from another loop: {result!r}")
                loop.call_soon(self._Task__step, error, context=self._context)

    return EagerTask


__all__ = ["EXPECTED_FIELDS", "build", "internals_problem"]
