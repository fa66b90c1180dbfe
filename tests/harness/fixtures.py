"""pytest fixtures for the systemd namespace harness.

Import them into a test directory's conftest.py::

    from harness.fixtures import systemd_ns  # noqa: F401  (re-exported fixture)

then boot one or more namespaces in a test::

    def test_socket_activation(systemd_ns):
        ns = systemd_ns({"app.socket": SOCKET, "app.service": SERVICE}, journald=True)
        ns.systemctl("start", "app.socket")

Every namespace a test booted is torn down after it, pass or fail; its console log (and journal)
are printed at teardown, so pytest shows them for a failing test.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import pytest

from harness.systemd import SystemdNamespace, unavailable_reason

Boot = Callable[..., SystemdNamespace]


def require_systemd_namespace(overlay: bool = False) -> None:
    """Skip the calling test, with the reason, where namespaces cannot be used."""
    reason = unavailable_reason(overlay)
    if reason is not None:
        pytest.skip(f"systemd namespace harness unavailable: {reason}")


@pytest.fixture
def systemd_ns() -> Iterator[Boot]:
    """A factory: ``systemd_ns(units, overlay=False, journald=False)`` -> a started namespace."""
    booted: list[SystemdNamespace] = []

    def boot(units: Mapping[str, str], **kwargs: object) -> SystemdNamespace:
        require_systemd_namespace(bool(kwargs.get("overlay", False)))
        ns = SystemdNamespace(units, **kwargs)  # type: ignore[arg-type]
        booted.append(ns)
        return ns.start()

    try:
        yield boot
    finally:
        for ns in reversed(booted):
            if ns.pid is not None:
                if ns.journald:
                    print(f"--- journal of {ns.workdir} ---\n{ns.journal(None)[-8000:]}")
                print(f"--- console of {ns.workdir} ---\n{ns.console()[-8000:]}")
            ns.close()
