"""conf/corral.yaml, docs/configuration.md and the man page are generated from the key table
(corral.keydoc): each must be what the table gives now, every key must be documented there,
and the man page must render without a warning."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from util import REPO

from corral import keydoc
from corral.config import all_keys


@pytest.mark.parametrize("name", [str(keydoc.CONF), str(keydoc.REFERENCE), str(keydoc.MAN)])
def test_generated_file_is_up_to_date(name: str) -> None:
    path = REPO / name
    expected = keydoc.generated(REPO)[path]
    assert path.exists(), f"{name} is missing: run `{keydoc.COMMAND}` (make docs)"
    actual = path.read_text(encoding="utf-8")
    if actual != expected:
        old, new = actual.splitlines(), expected.splitlines()
        first = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
        pytest.fail(f"{name} is stale (first difference at line {first + 1}: "
                    f"{old[first] if first < len(old) else '<end>'!r} should be "
                    f"{new[first] if first < len(new) else '<end>'!r}): it is generated from the key table "
                    f"in daemon/corral/config.py and daemon/corral/engine/settings.py; edit the key's doc/details "
                    f"there, then run `{keydoc.COMMAND}` (make docs)")


def test_the_check_command_names_a_stale_file(tmp_path) -> None:
    for path, text in keydoc.generated(tmp_path).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    check = [sys.executable, "-m", "corral.keydoc", "--check", "--root", str(tmp_path)]
    assert subprocess.run(check, capture_output=True, text=True, timeout=60).returncode == 0
    conf = tmp_path / keydoc.CONF
    conf.write_text(conf.read_text().replace("#workers: auto", "#workers: 4"))
    done = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{conf} is stale: run `{keydoc.COMMAND}`" in done.stderr
    assert str(tmp_path / keydoc.MAN) not in done.stderr


def test_every_key_has_a_doc() -> None:
    """--help, the config reference and conf/corral.yaml all say what a key is from its doc."""
    undocumented = sorted(name for name, spec in all_keys().items() if not spec.doc.strip())
    assert not undocumented, (f"keys without a doc: {undocumented}; give each a doc in its KeySpec "
                              "(corral.config) or its EngineSettings field's metadata")


def test_conf_and_reference_show_every_key_with_its_default() -> None:
    conf = (REPO / keydoc.CONF).read_text()
    reference = (REPO / keydoc.REFERENCE).read_text()
    for name, spec in all_keys().items():
        match = re.search(rf"^#{name}: (.*)$", conf, re.M)
        assert match, f"conf/corral.yaml has no #{name}: line"
        shown = yaml.safe_load(match[1])
        assert (spec.kind.coerce(shown) if shown is not None else None) == spec.default
        section = reference[reference.index(f"\n### {name}\n"):]
        assert f"**environment** `CORRAL_{name.upper()}`" in section.split("\n### ")[1]


def test_reference_keeps_the_long_explanations() -> None:
    """The details moved from the hand-written conf/corral.yaml into the key table reach both files."""
    conf = " ".join((REPO / keydoc.CONF).read_text().replace("#", " ").split())
    reference = " ".join((REPO / keydoc.REFERENCE).read_text().split())
    for text in ("reset unless net.ipv4.tcp_migrate_req=1",
                 "the old code is gone from disk",
                 "$XDG_RUNTIME_DIR/corral/<name>/control.sock",
                 "about ws_max_queue x ws_max_message_size",
                 "${CREDENTIALS_DIRECTORY}/ for keys passed by systemd's LoadCredential="):
        assert text in conf
        assert text.replace("<", r"\<") in reference


def test_man_page_names_every_flag() -> None:
    page = (REPO / keydoc.MAN).read_text()
    for spec in all_keys().values():
        if not spec.positional:
            assert "\\fB" + spec.flag.replace("-", "\\-") in page, spec.flag


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed (apt install groff-base)")
def test_man_page_renders_without_warnings() -> None:
    done = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(REPO / keydoc.MAN)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_renders_the_page() -> None:
    done = subprocess.run(["man", "--warnings", "-l", str(REPO / keydoc.MAN)], capture_output=True, text=True,
                          timeout=60, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "MANPAGER": "cat",
                                           "PAGER": "cat", "LANG": "C.UTF-8"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "corral - systemd-native application server" in done.stdout
    for heading in ("SYNOPSIS", "DESCRIPTION", "CONFIGURATION", "OPTIONS", "ENVIRONMENT", "FILES", "SEE ALSO"):
        assert re.search(rf"^{heading}$", done.stdout, re.M), heading
