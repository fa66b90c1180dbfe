"""A worker forked from a zygote takes the config the zygote already read when its hello carries
the same data (corral.worker.main.config_of): reading it again would write to the pages it
shares with the zygote. A hello with other data is read afresh, and bad data still fails."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import pytest

from corral.config import ConfigError, load
from corral.engine import Server
from corral.engine.settings import EngineSettings
from corral.worker.main import config_of, zygote_built
from corral.worker.protocol import KnownConfig, config_text
from corral.worker.zygote import engine_for_app, engine_settings


def _known(tmp_path) -> KnownConfig:
    config = load(None, {"app": "demo:app", "app_dir": str(tmp_path), "workers": 2}, environ={})
    return KnownConfig(config_text(config.to_json()), config)


def test_the_same_data_gives_the_zygotes_config_object(tmp_path):
    known = _known(tmp_path)
    hello = {"config": known.config.to_json()}  # equal data, not the same dict
    assert config_of(hello, known) is known.config


def test_other_data_is_read_afresh(tmp_path):
    known = _known(tmp_path)
    data = {**known.config.to_json(), "workers": 3}
    config = config_of({"config": data}, known)
    assert config is not known.config
    assert config.workers == 3


def test_without_a_zygote_the_hello_is_read(tmp_path):
    known = _known(tmp_path)
    config = config_of({"config": known.config.to_json()}, None)
    assert config is not known.config
    assert config == known.config


def test_bad_data_still_fails_when_a_zygote_config_is_known(tmp_path):
    known = _known(tmp_path)
    with pytest.raises(ConfigError):
        config_of({"config": {**known.config.to_json(), "workers": "many"}}, known)


# What the zygote builds from its config (the engine's settings: zygote.engine_settings; the log
# handlers) is taken by each worker whose config is the zygote's (corral.worker.main.zygote_built).
# Building them in a worker would copy pages it shares with the zygote.


def test_a_worker_on_the_zygotes_config_takes_what_the_zygote_built(tmp_path):
    config = load(None, {"app": "demo:app", "app_dir": str(tmp_path), "max_connections": 7}, environ={})
    settings = engine_settings(config)
    assert settings == EngineSettings(max_connections=7)
    known = KnownConfig(config_text(config.to_json()), config, settings)
    assert zygote_built(config_of({"config": config.to_json()}, known), known) is known


def test_a_worker_on_another_config_builds_its_own(tmp_path):
    known = _known(tmp_path)
    known = known._replace(settings=engine_settings(known.config))
    other = config_of({"config": {**known.config.to_json(), "workers": 3}}, known)
    assert zygote_built(other, known) is None
    assert zygote_built(known.config, None) is None


def test_settings_the_zygote_cannot_build_are_left_to_each_worker(tmp_path):
    # A TLS file removed since the config was loaded: the zygote builds nothing, so each worker
    # fails its boot with the error itself (the supervisor reports it) rather than serving.
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    config = load(None, {"app": "demo:app", "app_dir": str(tmp_path)}, environ={})
    broken = dataclasses.replace(config, engine={**config.engine, "ssl_certfile": str(cert)})
    with pytest.raises(ValueError):
        EngineSettings(**broken.engine)
    assert engine_settings(broken) is None


def test_the_comparison_ignores_the_order_of_keys(tmp_path):
    # JSON objects have no order: a hello built in another order is still the zygote's config.
    known = _known(tmp_path)
    data = known.config.to_json()
    reordered = dict(reversed(list(data.items())))
    assert list(reordered) != list(data)
    assert config_of({"config": reordered}, known) is known.config


# With preload, the zygote also makes the engine for the app object (zygote.engine_for_app), which
# each worker on its config starts (corral.worker.main.WorkerRuntime): made in a worker, it copied
# the pages it touched doing so.

APP_MODULE = '''
async def app(scope, receive, send):
    pass

def wsgi(environ, start_response):
    return []

def make():
    return app
'''


def _preloaded(tmp_path, spec: str, monkeypatch) -> tuple[Any, EngineSettings | None]:
    (tmp_path / "zapp_known.py").write_text(APP_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zapp_known", raising=False)
    config = load(None, {"app": spec, "app_dir": str(tmp_path)}, environ={})
    settings = engine_settings(config)
    return config, settings


@pytest.mark.parametrize("spec, interface", [("zapp_known:app", "asgi"), ("zapp_known:wsgi", "wsgi")])
def test_the_zygote_makes_the_engine_for_the_app_object(tmp_path, monkeypatch, spec, interface):
    config, settings = _preloaded(tmp_path, spec, monkeypatch)
    server = engine_for_app(config, settings)
    assert isinstance(server, Server)
    assert server.app is getattr(sys.modules["zapp_known"], spec.split(":")[1])
    assert server.interface == interface and server.settings is settings
    assert server.connection_count == 0 and not server.accepting  # made, not started


@pytest.mark.parametrize("spec", ["zapp_known:make()", "zapp_known:missing"])
def test_a_factory_or_an_app_that_does_not_load_is_left_to_each_worker(tmp_path, monkeypatch, spec):
    # A factory is called in each worker; a missing attribute is each worker's boot error to report.
    config, settings = _preloaded(tmp_path, spec, monkeypatch)
    assert engine_for_app(config, settings) is None


def test_without_engine_settings_the_zygote_makes_no_engine(tmp_path, monkeypatch):
    config, _ = _preloaded(tmp_path, "zapp_known:app", monkeypatch)
    assert engine_for_app(config, None) is None
