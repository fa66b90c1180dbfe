"""A forked worker's logging set-up leaves the loggers it inherited alone when their level holds.

``Logger.setLevel`` clears the level cache of every logger in the process. In a worker forked from a
zygote that writes to every logger object (Django alone has dozens), copying the pages they sit on;
``setup_logging`` with the level the zygote already set must not do it (corral.logs).
"""

from __future__ import annotations

import logging
import os

import pytest

from corral.logs import ACCESS_LOGGER, install_logging, log_setup, setup_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


def test_the_same_level_again_keeps_every_loggers_cache(restore_logging):
    setup_logging("warning", role="corral-zygote")
    app_logger = logging.getLogger("someapp.views")
    assert app_logger.isEnabledFor(logging.INFO) is False  # fills its cache
    assert app_logger._cache == {logging.INFO: False}
    setup_logging("warning", role="corral-worker")  # what a forked worker does
    assert app_logger._cache == {logging.INFO: False}
    record = logging.LogRecord("someapp.views", logging.WARNING, __file__, 1, "hello", None, None)
    assert "corral-worker[" in logging.getLogger().handlers[0].format(record)  # the handler is the worker's


def test_another_level_still_takes_effect(restore_logging):
    setup_logging("warning", role="corral-zygote")
    app_logger = logging.getLogger("someapp.views")
    assert app_logger.isEnabledFor(logging.INFO) is False
    setup_logging("info", role="corral-worker")
    assert app_logger.isEnabledFor(logging.INFO) is True


def test_handlers_built_ahead_install_as_setup_logging_does(restore_logging):
    # A zygote builds its workers' handlers before forking (KnownConfig.logging); a worker installs them.
    setup_logging("warning", role="corral-zygote")
    built = log_setup("info", role="corral-worker")
    assert logging.getLogger().handlers[0] is not built.handler  # building installs nothing
    install_logging(built)
    root = logging.getLogger()
    assert root.handlers == [built.handler] and root.level == logging.INFO
    access = logging.getLogger(ACCESS_LOGGER)
    assert access.handlers == [built.access_handler] and not access.propagate
    record = logging.LogRecord("someapp.views", logging.WARNING, __file__, 1, "hello", None, None)
    assert f"corral-worker[{os.getpid()}]: hello" in built.handler.format(record)
