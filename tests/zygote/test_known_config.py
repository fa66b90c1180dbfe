"""A worker forked from a zygote takes the config the zygote already read when its hello carries
the same data (corral.worker.main.config_of): reading it again would write to the pages it
shares with the zygote. A hello with other data is read afresh, and bad data still fails."""

from __future__ import annotations

import pytest

from corral.config import ConfigError, load
from corral.worker.main import config_of
from corral.worker.protocol import KnownConfig


def _known(tmp_path) -> KnownConfig:
    config = load(None, {"app": "demo:app", "app_dir": str(tmp_path), "workers": 2}, environ={})
    return KnownConfig(config.to_json(), config)


def test_the_same_data_gives_the_zygotes_config_object(tmp_path):
    known = _known(tmp_path)
    hello = {"config": known.config.to_json()}  # equal data, not the same dict
    assert hello["config"] is not known.data
    assert config_of(hello, known) is known.config


def test_other_data_is_read_afresh(tmp_path):
    known = _known(tmp_path)
    data = {**known.data, "workers": 3}
    config = config_of({"config": data}, known)
    assert config is not known.config
    assert config.workers == 3


def test_without_a_zygote_the_hello_is_read(tmp_path):
    known = _known(tmp_path)
    config = config_of({"config": known.data}, None)
    assert config is not known.config
    assert config == known.config


def test_bad_data_still_fails_when_a_zygote_config_is_known(tmp_path):
    known = _known(tmp_path)
    with pytest.raises(ConfigError):
        config_of({"config": {**known.data, "workers": "many"}}, known)
