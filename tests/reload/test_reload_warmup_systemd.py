"""The issue's own scenario under a real systemd: socket activation, a Django project, then
``raise RuntimeError`` appended to its ``urls.py`` and ``systemctl reload``. It used to exit 0,
after which every request got 500; the warm-up makes it fail while the old code keeps serving.
"""

from __future__ import annotations

import shutil
from typing import Iterator

import pytest

from harness.fixtures import require_systemd_namespace
from harness.systemd import SystemdNamespace
from reload_util import Load, Site, service_unit, socket_unit
from test_reload_warmup import migrated  # noqa: F401  (the module-scoped fixture)
from util import free_port


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    require_systemd_namespace()
    port = free_port()
    ns = SystemdNamespace({})
    ns.units["app.socket"] = socket_unit(port)
    ns.units["app.service"] = service_unit(ns.workdir / "app.service.json")
    with ns:
        try:
            yield Site(ns, port)
        finally:
            print(f"--- console ---\n{ns.console()[-10000:]}")


def _write(site: Site, relative: str, text: str) -> None:
    (site.app_dir / relative).write_text(text)
    for cache in site.app_dir.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


def test_systemctl_reload_of_a_django_project_with_a_broken_urls_py_fails_and_the_old_code_serves(
        site, migrated):  # noqa: F811
    shutil.copytree(migrated, site.app_dir)
    site.configure(app="djsite.wsgi:application", workers=2)
    site.ns.systemctl("start", "app.socket")
    site.ns.systemctl("start", "app.service", timeout=120)
    before = site.wait_serving()
    urls = (site.app_dir / "djsite" / "urls.py").read_text()
    with Load(site.port, clients=4) as load:
        load.wait_for_more(50)
        _write(site, "site_app/version.py", "VERSION = 'v2'\n")
        _write(site, "djsite/urls.py", urls + "\nraise RuntimeError('broken urls.py')\n")
        proc, _started, _returned = site.reload()
        assert proc.returncode != 0, (proc.stdout, proc.stderr)
        load.wait_for_more(50)
    assert not load.failures(), load.failures()[:5]
    assert {r.version for r in load.done()} == {"v1"}
    data = site.status()
    assert data["generation"] == before["generation"] and not data["last_reload"]["ok"]
    assert "warm-up GET / (Host: blog.example.test) answered 500" in data["last_reload"]["message"]
    assert site.show("ActiveState") == "active"
    status_text = site.show("StatusText")
    assert "last reload failed" in status_text, status_text
    assert "RuntimeError: broken urls.py" in site.ns.console()  # the app's traceback (no journald here)
