"""The warm-up gate end to end, with a real Django project (a model, SQLite, templates, the admin).

Django imports its URLconf, and the views that URLconf imports, on the first request: a deploy
whose ``urls.py`` raises imports fine and used to report ready, after which every request got
500 from the new generation. The warm-up (on by default) makes that reload fail while the old
code keeps serving. `corral run` runs as a plain child process (``LocalCorral``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from reload_util import Load, LocalCorral
from util import wait_until

DJSITE = Path(__file__).parent / "apps" / "djsite"


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    """The project with its SQLite database migrated (once per module; each test copies it)."""
    site = tmp_path_factory.mktemp("djsite") / "site"
    shutil.copytree(DJSITE, site, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3"))
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="djsite.settings", PYTHONPATH=str(site))
    subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput"], cwd=site, env=env, check=True,
                   capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-c", "import django; django.setup(); from site_app.models import Post; "
                    "[Post.objects.create(title=f'post {i}') for i in range(3)]"],
                   cwd=site, env=env, check=True, capture_output=True, timeout=120)
    return site


class DjangoCorral(LocalCorral):
    """`corral run` serving a copy of the Django project; a deploy rewrites its files."""

    def __init__(self, tmp_path: Path, template: Path, **config) -> None:
        super().__init__(tmp_path, app="djsite.wsgi:application", **config)
        shutil.copytree(template, self.app_dir)

    def deploy(self, version: str, **_: object) -> None:
        self.write("site_app/version.py", f"VERSION = {version!r}\n")

    def write(self, relative: str, text: str) -> None:
        (self.app_dir / relative).write_text(text)
        # A rewrite within the same second as the last one can leave a stale .pyc: drop them all.
        for cache in self.app_dir.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)

    def read(self, relative: str) -> str:
        return (self.app_dir / relative).read_text()


def _pids(data: dict) -> set[int]:
    return {w["pid"] for w in data["workers"]}


BREAKAGES = {
    # what the deploy breaks: (file, what the app's log then holds)
    "urls": ("djsite/urls.py", "RuntimeError: broken urls.py"),
    "view module": ("site_app/views.py", "RuntimeError: broken views.py"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_django_deploy_fails_the_reload_and_the_old_code_keeps_serving(tmp_path, migrated, breakage):
    relative, error = BREAKAGES[breakage]
    with DjangoCorral(tmp_path, migrated, workers=2).start("v1") as corral:
        before = corral.status()
        good = corral.read(relative)
        with Load(corral.port, clients=4) as load:
            load.wait_for_more(50)
            corral.deploy("v2")
            corral.write(relative, good + f"\nraise RuntimeError({error.partition(': ')[2]!r})\n")
            proc = corral.reload()
            assert proc.returncode == 1, (proc.stdout, proc.stderr)
            # The Host the warm-up sent is one ALLOWED_HOSTS accepts: the view itself ran.
            assert "warm-up GET / (Host: blog.example.test) answered 500 Internal Server Error" in proc.stderr, \
                proc.stderr
            assert "gen 2 rolled back, gen 1 serves" in proc.stderr, proc.stderr
            load.wait_for_more(50)
            # The old workers serve on; the refused new ones are gone once they have exited.
            data = wait_until(lambda: (d := corral.status()) and _pids(d) == _pids(before) and d, 60, 0.1,
                              "only the old workers left")
            assert data["generation"] == 1
        assert not load.failures(), load.failures()[:5]
        assert {r.version for r in load.done()} == {"v1"}
        assert load.ok() >= 100
        assert error in corral.log()  # the app's own traceback, for the operator
        # Fixed: the next reload goes through.
        corral.deploy("v3")
        corral.write(relative, good)
        proc = corral.reload()
        assert proc.returncode == 0, proc.stderr
        response = httpx.get(f"http://127.0.0.1:{corral.port}/", timeout=30)
        assert response.status_code == 200 and response.headers["x-app-version"] == "v3"
        assert "3 posts" in response.text  # the model, through SQLite


def test_the_warmup_uses_a_host_from_allowed_hosts_so_django_logs_no_disallowed_host(tmp_path, migrated):
    with DjangoCorral(tmp_path, migrated, workers=1, log_level="debug").start("v1") as corral:
        corral.deploy("v2")
        assert corral.reload().returncode == 0
        log = corral.log()
        assert "passed the gate: warm-up GET / (Host: blog.example.test) -> 200 OK" in log, log[-3000:]
        assert "DisallowedHost" not in log and "Invalid HTTP_HOST" not in log, log[-3000:]


def test_with_the_warmup_off_the_broken_deploy_goes_through(tmp_path, migrated):
    # What every reload did before the warm-up existed (and what `warmup: false` still does).
    with DjangoCorral(tmp_path, migrated, workers=1, warmup=False).start("v1") as corral:
        corral.deploy("v2")
        corral.write("djsite/urls.py", corral.read("djsite/urls.py") + "\nraise RuntimeError('broken urls.py')\n")
        proc = corral.reload()
        assert proc.returncode == 0, proc.stderr
        assert httpx.get(f"http://127.0.0.1:{corral.port}/", timeout=30).status_code == 500


FAILING_ROOT = '''\
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    status = 500 if scope["path"] == "/" else 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"no"})
'''


def test_a_first_start_that_fails_the_warmup_serves_anyway_but_a_reload_is_refused(tmp_path):
    # At the first start there is nothing older to serve with (uvicorn and gunicorn start too);
    # a reload has the old generation to fall back to.
    corral = LocalCorral(tmp_path, app="rootfails:app", workers=1)
    (tmp_path / "app").mkdir(parents=True)
    (tmp_path / "app" / "rootfails.py").write_text(FAILING_ROOT)
    with corral.start("v1"):
        assert httpx.get(f"http://127.0.0.1:{corral.port}/other", timeout=30).status_code == 200
        log = corral.log()
        assert "warm-up GET / (Host: localhost) answered 500 Internal Server Error" in log and \
            "serving anyway" in log, log[-3000:]
        before = corral.status()
        proc = corral.reload()
        assert proc.returncode == 1 and "warm-up GET / (Host: localhost) answered 500" in proc.stderr, proc.stderr
        wait_until(lambda: _pids(corral.status()) == _pids(before), 60, 0.1, "only the old workers left")


def test_the_warmup_is_not_counted_as_traffic(tmp_path):
    with LocalCorral(tmp_path, workers=2).start("c1") as corral:
        def settled():
            data = corral.status()
            # A heartbeat sent after the worker became ready carries its counters.
            ok = all(w["state"] == "ready" and w["heartbeat_age"] is not None and w["age"] - w["heartbeat_age"] > 1.5
                     for w in data["workers"])
            return data if ok else None

        data = wait_until(settled, 60, 0.1, "a heartbeat from each ready worker")
        assert data["requests_total"] == 0, data
        assert [w["connections_accepted"] for w in data["workers"]] == [0, 0], data["workers"]


NOTHING_AT_ROOT = '''\
VERSION = {version!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    status = 200 if scope["path"] == "/version" else 404
    await send({{"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
'''


def test_an_app_with_nothing_at_the_root_still_reloads(tmp_path):
    # Many apps (APIs, most test apps) answer 404 at "/": that still proves the new code loaded.
    corral = LocalCorral(tmp_path, app="noroot:app", workers=1)
    (tmp_path / "app").mkdir(parents=True)
    (tmp_path / "app" / "noroot.py").write_text(NOTHING_AT_ROOT.format(version="a1"))
    with corral.start("v1"):
        (tmp_path / "app" / "noroot.py").write_text(NOTHING_AT_ROOT.format(version="a2"))
        shutil.rmtree(tmp_path / "app" / "__pycache__", ignore_errors=True)
        proc = corral.reload()
        assert proc.returncode == 0, proc.stderr
        assert httpx.get(f"http://127.0.0.1:{corral.port}/version", timeout=30).text == "a2"
