"""The instance name: `-n/--name` on run, check, status and reload, and a default that lets two
apps on one machine run side by side without naming them (issue 12, defect 3).

As root with no RUNTIME_DIRECTORY the control socket is /run/corral/<name>/control.sock, so
every name here is unique to the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from control_util import Instance, clean_env, corral, probe_args, probe_env, unique

from corral.config import ConfigError, default_name, load

# Other uids (and /run/corral) need root, as `make test` runs.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

WSGI_APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [{body!r}]
'''


def test_name_flag_on_run_status_and_reload(tmp_path):
    name = unique("named")
    with Instance(probe_args(name), tmp_path / "corral.log", env=probe_env()) as inst:
        data = inst.wait_running("-n", name)
        assert data["name"] == name and data["pid"] == inst.proc.pid
        assert os.path.exists(f"/run/corral/{name}/control.sock")
        reload = corral("reload", "--name", name, env=inst.env)
        assert reload.returncode == 0, reload.stderr
        assert inst.status("-n", name)["generation"] == 2
    assert not os.path.exists(f"/run/corral/{name}")


def test_name_flag_beats_the_environment_and_the_config_file(tmp_path):
    config = tmp_path / "site.yaml"
    config.write_text(f"name: {unique('from-file')}\napp: probe:app\n")
    name = unique("flag")
    env = probe_env(CORRAL_NAME=unique("from-env"))
    with Instance(["--config", str(config), "-n", name], tmp_path / "corral.log", env=env) as inst:
        assert inst.wait_running("--config", str(config), "-n", name)["name"] == name


def test_check_rejects_a_bad_name_and_says_which_characters_are_allowed(tmp_path):
    out = corral("check", "-n", "my app", "probe:app", env=probe_env())
    assert out.returncode == 2, out.stderr
    assert "'my app'" in out.stderr and "letters, digits" in out.stderr


def _app_dir(tmp_path: Path, prefix: str) -> Path:
    path = tmp_path / unique(prefix)
    path.mkdir()
    (path / "app.py").write_text(WSGI_APP.format(body=prefix.encode()))
    return path


def test_two_apps_without_names_run_side_by_side_and_each_answers_status(tmp_path):
    """No config file and no name: the name is the app directory's, so two apps on one machine
    just work, and `corral status` in an app's directory finds that app."""
    blog, shop = _app_dir(tmp_path, "blog"), _app_dir(tmp_path, "shop")
    env = clean_env()
    with Instance(["app:app"], tmp_path / "blog.log", env=env, cwd=blog) as first, \
            Instance(["app:app"], tmp_path / "shop.log", env=env, cwd=shop) as second:
        for inst, where in ((first, blog), (second, shop)):
            data = inst.wait_running()
            assert data["name"] == where.name and data["pid"] == inst.proc.pid
            # The same name from anywhere with -n; the reload reaches the right app.
            assert inst.status("-n", where.name, cwd="/")["pid"] == inst.proc.pid
            reload = corral("reload", env=env, cwd=where)
            assert reload.returncode == 0, reload.stderr
        assert first.status()["generation"] == 2 and second.status()["generation"] == 2
        # From a directory where no app runs: the error names the instances that do.
        lost = corral("status", env=env, cwd=tmp_path)
        assert lost.returncode == 1
        assert blog.name in lost.stderr and shop.name in lost.stderr and "-n NAME" in lost.stderr


def test_the_config_file_name_is_the_default_name(tmp_path):
    config = tmp_path / f"{unique('site')}.yaml"
    config.write_text("app: probe:app\n")
    with Instance(["--config", str(config)], tmp_path / "corral.log", env=probe_env()) as inst:
        assert inst.wait_running("--config", str(config))["name"] == config.stem


def test_default_name_rule():
    assert default_name("/etc/corral/blog.yaml", "/srv/shop") == "blog"  # the config file first
    assert default_name(None, "/home/me/src/blog") == "blog"
    assert default_name(None, "/home/me/My Site (v2)") == "My-Site-v2"  # made a valid name
    assert default_name(None, "/") == "corral"  # nothing to go by
    assert default_name(None, "/srv/...") == "corral"


def test_name_of_only_dots_is_refused():
    """'..' would put the control socket one directory up (/run/corral/../control.sock)."""
    with pytest.raises(ConfigError, match="only dots"):
        load(None, {"name": ".."}, environ={})
