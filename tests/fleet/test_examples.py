"""The fleet examples under examples/ stay true: the Ansible playbook passes
`ansible-playbook --syntax-check` and does what the README says (serial: 1, stop at the first
failure, a reload per host, a wait for /readyz); the container example's probes, ports and
preStop match what corral serves and its drain_delay."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from corral.config import load
from corral.metrics.probes import LIVEZ_PATH, READYZ_PATH
from util import REPO, VENV_BIN

PLAYBOOK = REPO / "examples" / "ansible" / "rolling-deploy.yml"
CONTAINER = REPO / "examples" / "container"


def ansible_playbook() -> str:
    path = VENV_BIN / "ansible-playbook"
    # A test dependency (pyproject's `test` extra): missing means an outdated venv, not a
    # machine that cannot run this, so fail with the fix instead of skipping.
    assert path.exists(), f"{path} missing: ansible-core is a test dependency; run " \
                          f"`{VENV_BIN}/pip install -e '.[test]'` (or `make test`, which does)"
    return str(path)


def test_playbook_passes_ansible_syntax_check(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[corral_app]\nweb1\nweb2\nweb3\n")
    proc = subprocess.run([ansible_playbook(), "--syntax-check", "-i", str(inventory), str(PLAYBOOK)],
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(tmp_path),
                               "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "LANG": "C.UTF-8"})
    assert proc.returncode == 0, f"ansible-playbook --syntax-check failed:\n{proc.stdout}{proc.stderr}"
    assert f"playbook: {PLAYBOOK}" in proc.stdout
    assert "WARNING" not in proc.stderr.replace("CryptographyDeprecationWarning", ""), proc.stderr


def test_playbook_rolls_one_host_at_a_time_and_waits_for_readyz() -> None:
    [play] = yaml.safe_load(PLAYBOOK.read_text())
    assert play["serial"] == 1 and play["max_fail_percentage"] == 0
    modules = [next(k for k in task if k.startswith("ansible.builtin.")) for task in play["tasks"]]
    assert modules == ["ansible.builtin.copy", "ansible.builtin.systemd", "ansible.builtin.uri"]
    reload, wait = play["tasks"][1]["ansible.builtin.systemd"], play["tasks"][2]
    assert reload == {"name": "corral@{{ app }}.service", "state": "reloaded"}
    assert wait["ansible.builtin.uri"]["url"].endswith(f":{{{{ metrics_port }}}}{READYZ_PATH}")
    assert wait["until"] == "readyz.status == 200"


# -- the container example -----------------------------------------------------------------------

def container_spec() -> dict[str, Any]:
    [doc] = list(yaml.safe_load_all((CONTAINER / "deployment.yaml").read_text()))
    assert doc["kind"] == "Deployment"
    pod = doc["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return {"pod": pod, "container": container}


def example_config() -> dict[str, Any]:
    loaded = yaml.safe_load((CONTAINER / "corral.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_deployment_probes_match_what_corral_serves() -> None:
    spec, config = container_spec(), example_config()
    container = spec["container"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": port_of(config["bind"][0]), "metrics": port_of(config["metrics_bind"][0])}
    for probe, path in (("startupProbe", LIVEZ_PATH), ("livenessProbe", LIVEZ_PATH),
                        ("readinessProbe", READYZ_PATH)):
        get = container[probe]["httpGet"]
        assert (get["path"], ports[get["port"]]) == (path, ports["metrics"]), probe


def test_prestop_and_grace_period_match_drain_delay() -> None:
    spec, config = container_spec(), example_config()
    command = spec["container"]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop == config["drain_delay"]
    # preStop, then SIGTERM: drain_delay, then graceful_timeout, then a margin for exit.
    assert spec["pod"]["terminationGracePeriodSeconds"] > pre_stop + config["drain_delay"] + \
        config["graceful_timeout"]


def test_containerfile_runs_corral_with_the_example_config_and_exposes_its_ports() -> None:
    text = (CONTAINER / "Containerfile").read_text()
    config = example_config()
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    assert entry is not None
    assert yaml.safe_load(entry.group(1)) == ["corral", "run", "--config", "/etc/corral/app.yaml"]
    assert "COPY corral.yaml /etc/corral/app.yaml" in text
    exposed = re.search(r"^EXPOSE (.*)$", text, re.M)
    assert exposed is not None
    assert sorted(map(int, exposed.group(1).split())) == \
        sorted([port_of(config["bind"][0]), port_of(config["metrics_bind"][0])])


def test_example_config_keys_other_than_drain_delay_load(tmp_path: Path) -> None:
    config = example_config()
    config.pop("drain_delay")
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load(path, environ={})
    assert [str(b) for b in loaded.bind] == config["bind"]
    assert [str(b) for b in loaded.metrics_bind] == config["metrics_bind"]


def test_example_config_loads_as_is() -> None:
    load(CONTAINER / "corral.yaml", environ={})
