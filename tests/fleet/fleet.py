"""A fleet of three corral hosts behind HAProxy, each host a real systemd in its own namespaces.

Topology (every address lives only inside namespaces this module creates; nothing touches the
host's network, and the namespaces vanish at teardown)::

      lb namespace (SystemdNamespace, overlay)          host namespaces (overlay, systemd PID 1)
      br0 10.213.0.1/24  --- fl-h1 <-> eth0 10.213.0.11   h1: corral@app from the .deb
      HAProxy :8080          fl-h2 <-> eth0 10.213.0.12   h2
      load generator         fl-h3 <-> eth0 10.213.0.13   h3

- The bridge and the host-side veth ends are made inside the lb namespace's network namespace
  (``nsenter --net``), and each peer end is moved straight into its host's namespace, so no
  interface ever exists in the machine's own network namespace.
- Each host installs corral from the built ``.deb`` (``dpkg -i``, as tests/packaging does),
  makes a venv for the app, and runs ``corral@app.socket``/``.service`` with a socket drop-in
  that listens on TCP port 8000 (the app answers its version: ``v1 <pid>``). Its corral config
  serves /livez and /readyz on the metrics port (9100) and HAProxy's agent protocol on the
  agent port (9101), and says it is leaving ``drain_delay`` before it stops.
- HAProxy (Debian's package, 2.6) runs in the lb namespace with its stats socket in the lb
  workdir, which the test process reaches directly (a unix socket path, not the network).
  How it checks the hosts (``GET /readyz`` and ``agent-check``) is ``CHECK`` below, in one
  place; docs/fleet.md shows the same stanza.
- The load generator (``loadgen.py``) runs in the lb namespace against HAProxy's frontend.
- ``StatsRecorder`` polls ``show stat`` all along and keeps each server's state changes, from
  which ``out_of_pool`` says how long a host was out of the pool and ``marked_down`` whether a
  check ever marked it DOWN; ``rollout_report`` sums up one rolling deploy.
- A host can be upgraded to a newer ``.deb`` (``apt install ./corral_<newer>.deb``).
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from harness.nsload import NamespaceLoad
from harness.systemd import SystemdNamespace
from util import wait_until

SUBNET = "10.213.0"
LB_ADDRESS = f"{SUBNET}.1"
APP_PORT = 8000
FRONTEND = ("127.0.0.1", 8080)  # inside the lb namespace
HOSTS = ("h1", "h2", "h3")
APP = "app"
SERVICE = f"corral@{APP}.service"
SOCKET = f"corral@{APP}.socket"
DPKG_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
LOADGEN = Path(__file__).with_name("loadgen.py")


@dataclass(frozen=True)
class HealthCheck:
    """How HAProxy checks a host: the backend's check lines, and the arguments each ``server``
    line gets (its address and weight come before them)."""

    backend_lines: tuple[str, ...]
    server_args: str


# The probes each host's corral serves (its config below): /livez and /readyz on the metrics
# listener, HAProxy's agent protocol on the agent listener.
METRICS_PORT = 9100
AGENT_PORT = 9101
# HAProxy checks both every CHECK_INTERVAL; a host that is about to stop says so (readyz 503,
# agent "drain") for DRAIN_DELAY first, while still serving: at least twice the interval, so
# HAProxy has seen it and moved its traffic before the host stops taking any.
CHECK_INTERVAL = 0.5
DRAIN_DELAY = 4 * CHECK_INTERVAL

# The backend stanza docs/fleet.md shows, line for line:
# - `GET /readyz` on the metrics port decides whether the host gets new requests.
# - A 503 from /readyz is the host itself saying "send me nothing new" (starting, draining for
#   a stop, a reload cut-over, saturated): `error-status L7OKC` makes that a *conditional pass*,
#   which HAProxy treats as a soft stop (status NOLB: no new traffic, open connections finish),
#   never as a failed check. Anything else (no answer, refused, a 500) fails the check, and
#   `fall` failures mark the host DOWN as they should.
# - `agent-check` on the agent port: "up ready N%" sets the weight from free capacity,
#   "drain" takes the host out of rotation at once (no waiting for `fall` checks), and
#   "down #why" marks it DOWN when no worker can serve.
CHECK = HealthCheck(
    backend_lines=("option httpchk",
                   "http-check send meth GET uri /readyz ver HTTP/1.1 hdr host fleet",
                   "http-check expect ! status 503 error-status L7OKC",
                   "http-check expect status 200"),
    server_args=(f"check port {METRICS_PORT} inter {int(CHECK_INTERVAL * 1000)}ms fall 3 rise 1 "
                 f"agent-check agent-port {AGENT_PORT} agent-inter {int(CHECK_INTERVAL * 1000)}ms"),
)

APP_SOURCE = '''\
"""The fleet's app: answers its version (set when deployed) and its pid."""
import os
{imports}
VERSION = {version!r}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    body = f"{{VERSION}} {{os.getpid()}}".encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
'''

APP_CONFIG = f"""\
app: fleetapp:app
app_dir: /srv/{APP}/src
virtualenv: /srv/{APP}/venv
workers: 2
# The probes HAProxy checks (CHECK above); docs/fleet.md shows the same setup. /livez and
# /readyz are on the metrics socket (METRICS_SOCKET), the agent answers here.
agent_bind: ["0.0.0.0:{AGENT_PORT}"]
drain_delay: {DRAIN_DELAY}
"""

# The metrics listener (/metrics, /livez, /readyz) from a socket unit of its own rather than
# metrics_bind: systemd keeps it listening while the service restarts, so HAProxy's health
# checks wait in its queue and get an answer ("starting") instead of a refused connection. With
# metrics_bind the new supervisor binds it only once it runs, and a restart showed HAProxy two
# refused checks in a row (L4CON): one more would have marked the host DOWN during a planned
# restart. (The agent may refuse meanwhile: HAProxy ignores an agent it cannot reach.)
METRICS_SOCKET_UNIT = f"{APP}-metrics.socket"
METRICS_SOCKET = f"""\
[Socket]
ListenStream=0.0.0.0:{METRICS_PORT}
FileDescriptorName=metrics
Service={SERVICE}
FreeBind=yes

[Install]
WantedBy=sockets.target
"""
SERVICE_DROPIN = f"""\
[Service]
Sockets={SOCKET} {METRICS_SOCKET_UNIT}
"""

# A release that needs a library its venv may lack: the bad deploy's host 2 does not have it,
# so the new code fails to import there (and only there), as a forgotten dependency would.
DEPENDENCY = "fleet_release_dependency"

SOCKET_DROPIN = f"""\
[Socket]
ListenStream=
ListenStream=0.0.0.0:{APP_PORT}
"""


def haproxy_config(servers: Sequence[tuple[str, str]], stats_socket: Path,
                   check: HealthCheck = CHECK) -> str:
    """HAProxy's configuration: the frontend, one backend of ``(name, address)`` servers, the
    stats socket. ``X-Served-By`` names the server that answered; a request with
    ``X-Fleet-Server: <name>`` goes to that server (to ask one host through HAProxy)."""
    lines = [
        "global",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    stats timeout 30s",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-keep-alive 10s",
        # A check may take longer than the interval on a loaded machine; only a host that
        # does not answer within this fails it.
        "    timeout check 2s",
        "    retries 3",
        "    option redispatch",
        "frontend fleet",
        f"    bind {FRONTEND[0]}:{FRONTEND[1]}",
        "    default_backend app",
        "backend app",
        "    balance roundrobin",
        *(f"    {line}" for line in check.backend_lines),
        "    http-response set-header X-Served-By %s",
        *(f"    use-server {name} if {{ req.hdr(x-fleet-server) -m str {name} }}" for name, _ in servers),
        *(f"    server {name} {address} weight 100 {check.server_args}" for name, address in servers),
    ]
    return "\n".join(lines) + "\n"


# -- HAProxy's stats socket ----------------------------------------------------------------------

@dataclass(frozen=True)
class ServerStat:
    """One server's row of ``show stat``: its state ("UP", "DOWN", "UP 1/3" while going down,
    "DRAIN (agent)" or "DOWN (agent)" when the agent set it, "MAINT", ...),
    current weight, and the last health check and agent check results."""

    status: str
    weight: int
    check_status: str
    check_desc: str
    agent_status: str
    agent_desc: str
    last_agent: str  # the agent's last answer as HAProxy understood it

    @property
    def in_pool(self) -> bool:
        """Takes new requests: UP (or going down but not yet DOWN) with a weight above 0."""
        return self.status.startswith("UP") and self.weight > 0


def stats_command(stats_socket: Path, command: str, timeout: float = 10) -> str:
    """Send one command to HAProxy's stats socket and return its whole answer."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(timeout)
        conn.connect(str(stats_socket))
        conn.sendall(command.encode() + b"\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data.decode()


def haproxy_server_states(stats_socket: Path, backend: str = "app") -> dict[str, ServerStat]:
    """Each server of ``backend`` by name, from ``show stat`` (CSV, header line ``# pxname,...``)."""
    text = stats_command(stats_socket, "show stat").lstrip("# ")
    states = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row["pxname"] != backend or row["svname"] in ("FRONTEND", "BACKEND"):
            continue
        states[row["svname"]] = ServerStat(
            # "* L7OK": the leading "* " only says a check is running now.
            status=row["status"], weight=int(row["weight"] or 0),
            check_status=row["check_status"].removeprefix("* "),
            check_desc=row.get("check_desc", ""), agent_status=row.get("agent_status", "").removeprefix("* "),
            agent_desc=row.get("agent_desc", ""), last_agent=row.get("last_agt", ""))
    return states


@dataclass
class Change:
    """A server's state from ``at`` (CLOCK_MONOTONIC) on."""

    at: float
    stat: ServerStat


class StatsRecorder:
    """Polls ``show stat`` in a thread and keeps each server's changes of state and weight."""

    def __init__(self, stats_socket: Path, interval: float = 0.1) -> None:
        self.stats_socket = stats_socket
        self.interval = interval
        self.changes: dict[str, list[Change]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="haproxy-stats")
        self._lock = threading.Lock()

    def start(self) -> StatsRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                states = haproxy_server_states(self.stats_socket)
            except OSError as exc:
                if len(self.errors) < 20:
                    self.errors.append(f"{now:.3f} {exc!r}")
            else:
                with self._lock:
                    for name, stat in states.items():
                        history = self.changes.setdefault(name, [])
                        if not history or history[-1].stat != stat:
                            history.append(Change(now, stat))
            self._stop.wait(self.interval)

    def history(self, server: str) -> list[Change]:
        with self._lock:
            return list(self.changes.get(server, []))

    def out_of_pool(self, server: str, since: float, until: float) -> float:
        """Seconds between ``since`` and ``until`` that ``server`` took no new requests."""
        total = 0.0
        history = self.history(server)
        for i, change in enumerate(history):
            end = history[i + 1].at if i + 1 < len(history) else until
            start, end = max(change.at, since), min(end, until)
            if end > start and not change.stat.in_pool:
                total += end - start
        return total

    def marked_down(self, server: str, since: float, until: float) -> list[Change]:
        """The changes that marked ``server`` DOWN (from any other state) between ``since`` and
        ``until``."""
        history = self.history(server)
        return [c for prev, c in pairwise(history)
                if since <= c.at <= until and c.stat.status.startswith("DOWN")
                and not prev.stat.status.startswith("DOWN")]


# -- the fleet ------------------------------------------------------------------------------------

@dataclass
class Host:
    name: str
    address: str
    ns: SystemdNamespace

    def run(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.ns.run(argv, **kwargs)  # type: ignore[arg-type]

    def write(self, path: str, text: str) -> None:
        self.ns.run(["sh", "-c", f'mkdir -p "$(dirname {path})" && cat > {path}'], input=text)

    def deploy(self, version: str, *, needs: str = "") -> None:
        """Put version ``version`` of the app on disk (a reload or restart then serves it);
        ``needs`` names a module the new code imports."""
        imports = f"import {needs}  # new in {version}\n" if needs else ""
        self.write(f"/srv/{APP}/src/fleetapp.py", APP_SOURCE.format(version=version, imports=imports))

    def provide(self, module: str) -> None:
        """Install ``module`` (an empty one) into the app's venv."""
        proc = self.run(["/srv/app/venv/bin/python", "-c",
                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        self.write(f"{proc.stdout.strip()}/{module}.py", f'"""{module}: a dependency of a release."""\n')

    def probe(self, path: str) -> tuple[int, str]:
        """(status, body) of ``path`` on the host's metrics listener, from the host itself
        (as the rolling-deploy playbook's wait for /readyz asks); (0, why) without an answer."""
        proc = self.run(["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}",
                         f"http://127.0.0.1:{METRICS_PORT}{path}"], check=False, timeout=30)
        if proc.returncode != 0:
            return 0, proc.stderr.strip()
        body, _, code = proc.stdout.rpartition("\n")
        return int(code), body

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until(lambda: self.probe("/readyz")[0] == 200, timeout=timeout,
                   what=f"{self.name}: /readyz 200 (now {self.probe('/readyz')})")

    def package_version(self) -> str:
        return self.run(["dpkg-query", "-W", "-f", "${Version}", "corral"]).stdout.strip()

    def install_package(self, deb: Path) -> subprocess.CompletedProcess[str]:
        """``apt install ./corral_<version>.deb``, as an operator upgrades a host (its postinst
        reloads the running app onto the new corral)."""
        shutil.copy(deb, self.ns.workdir / deb.name)
        return self.run(["sh", "-c", f"cd {self.ns.workdir} && apt install -y ./{deb.name}"],
                        env=DPKG_ENV, timeout=300, check=False)

    def systemctl(self, *args: str, timeout: float = 180, check: bool = True
                  ) -> subprocess.CompletedProcess[str]:
        return self.ns.systemctl(*args, timeout=timeout, check=check)

    def local_version(self) -> str:
        """The version the host's app answers on its own loopback (bypassing HAProxy)."""
        proc = self.run(["curl", "-sS", "--max-time", "30", f"http://127.0.0.1:{APP_PORT}/"],
                        check=False, timeout=60)
        return proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout else ""

    def corral_code_mapped(self, pid: int) -> dict[str, bool]:
        """The files under /usr/lib/corral (the package's venv: uvloop's and httptools' native
        code among them) that process ``pid`` maps, each with whether it is gone from disk:
        code of a corral package that an upgrade has since replaced."""
        maps = self.run(["cat", f"/proc/{pid}/maps"]).stdout
        mapped: dict[str, bool] = {}
        for line in maps.splitlines():
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith("/usr/lib/corral/"):
                path, deleted = fields[5].removesuffix(" (deleted)"), fields[5].endswith(" (deleted)")
                mapped[path] = mapped.get(path, False) or deleted
        return mapped

    def journal(self) -> str:
        return self.ns.journal(SERVICE)

    def logged_at(self, *texts: str) -> list[float]:
        """When (CLOCK_MONOTONIC, as the test's own time.monotonic(): no time namespace is
        involved) the service logged each line containing all of ``texts``."""
        stamps = []
        for line in self.journal().splitlines():
            if all(text in line for text in texts) and line.startswith("["):
                stamps.append(float(line[1:line.index("]")]))
        return stamps


def haproxy_load(lb: SystemdNamespace) -> NamespaceLoad:
    """``loadgen.py`` running in the lb namespace against HAProxy's frontend."""
    return NamespaceLoad(lb, ["/usr/bin/python3", str(LOADGEN), FRONTEND[0], str(FRONTEND[1])], "through HAProxy")


@dataclass
class Step:
    """One host's turn in a rolling deploy."""

    host: Host
    started: float
    ended: float
    ok: bool
    error: str = ""


def rolling(hosts: Iterable[Host], action: Callable[[Host], None]) -> list[Step]:
    """Run ``action`` on one host at a time, as Ansible's ``serial: 1`` with
    ``max_fail_percentage: 0`` does: the first host whose action raises ends the rollout (its
    step says why), and the hosts after it are left untouched."""
    steps = []
    for host in hosts:
        started = time.monotonic()
        try:
            action(host)
        except Exception as exc:  # noqa: BLE001 - like Ansible, any failure of the action stops the rollout and is reported
            steps.append(Step(host, started, time.monotonic(), False, f"{type(exc).__name__}: {exc}"))
            break
        steps.append(Step(host, started, time.monotonic(), True))
    return steps


# HAProxy's check_status values that are not failures: passed, conditionally passed (the host
# said 503: a soft stop), and the states before a first result.
PASSED_CHECKS = frozenset({"L7OK", "L7OKC", "INI", ""})


def rollout_report(name: str, steps: Sequence[Step], recorder: StatsRecorder, hosts: Sequence[Host],
                   before: dict, after: dict, since: float, until: float) -> dict:
    """What one rollout did, as the lead's notes want it: the requests the load generator sent
    through HAProxy meanwhile and how many failed, and per host its step and how HAProxy saw it
    (seconds out of the pool, the states it was in while out, DOWN marks)."""
    counts = {key: after.get(key, 0) - before.get(key, 0)
              for key in ("ok", "failed", "connect_errors", "retried_stale_keepalive")}
    stepped = {s.host.name: s for s in steps}
    per_host = {}
    for host in hosts:
        window = [c for c in recorder.history(host.name) if since <= c.at <= until]
        step = stepped.get(host.name)
        per_host[host.name] = {
            "step": "skipped" if step is None else ("ok" if step.ok else f"failed: {step.error[:300]}"),
            "step_s": None if step is None else round(step.ended - step.started, 2),
            "out_of_pool_s": round(recorder.out_of_pool(host.name, since, until), 2),
            "states_while_out": sorted({f"{c.stat.status} (check {c.stat.check_status}, agent "
                                        f"{c.stat.last_agent or c.stat.agent_status})"
                                        for c in window if not c.stat.in_pool}),
            # Health checks that failed (refused, timed out, a wrong status): each brings the
            # host one step closer to DOWN. A planned event should cause none.
            "failed_checks": sorted({f"{c.stat.check_status} {c.stat.check_desc}" for c in window
                                     if c.stat.check_status not in PASSED_CHECKS}),
            "marked_down": [f"{c.stat.status}: check {c.stat.check_status} {c.stat.check_desc}, agent "
                            f"{c.stat.agent_status} {c.stat.last_agent}"
                            for c in recorder.marked_down(host.name, since, until)],
        }
    return {"rollout": name, "requests_sent": sum(counts.values()), "requests_ok": counts["ok"],
            "failed": counts["failed"], "connect_errors": counts["connect_errors"],
            "stale_keepalive_retries": counts["retried_stale_keepalive"],
            "seconds": round(until - since, 1), "hosts": per_host}


@dataclass
class Fleet:
    """Three hosts, HAProxy and the load generator; ``start()`` builds it all, ``close()``
    tears it down (SIGKILL of each namespace's systemd)."""

    deb: Path
    newer_deb: Path | None = None  # a newer build of the same code, for the package upgrade
    hosts: list[Host] = field(default_factory=list)
    lb: SystemdNamespace | None = None
    haproxy: subprocess.Popen[bytes] | None = None
    recorder: StatsRecorder | None = None
    load: NamespaceLoad | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def stats_socket(self) -> Path:
        assert self.lb is not None
        return self.lb.workdir / "haproxy.sock"

    def start(self) -> Fleet:
        try:
            t0 = time.monotonic()
            namespaces = self._boot_all()
            self.lb = namespaces[0]
            self.hosts = [Host(name, f"{SUBNET}.{11 + i}", ns)
                          for i, (name, ns) in enumerate(zip(HOSTS, namespaces[1:], strict=True))]
            self.timings["boot"] = time.monotonic() - t0
            self._network()
            t0 = time.monotonic()
            with ThreadPoolExecutor(len(self.hosts)) as pool:
                list(pool.map(self._install, self.hosts))
            self.timings["install"] = time.monotonic() - t0
            self._start_haproxy()
        except BaseException:
            self.close()
            raise
        return self

    def start_load(self) -> NamespaceLoad:
        assert self.lb is not None
        self.load = haproxy_load(self.lb)
        return self.load

    def close(self) -> None:
        if self.load is not None:
            self.load.stop_file.touch()
        if self.recorder is not None:
            self.recorder.stop()
        for ns in [*(h.ns for h in self.hosts), *([self.lb] if self.lb else [])]:
            ns.close()
        self.hosts, self.lb, self.haproxy = [], None, None

    def dump(self) -> str:
        """Journals and consoles for a failing test's output."""
        parts = []
        for host in self.hosts:
            if host.ns.pid is not None:
                parts.append(f"--- {host.name}: journal of {SERVICE} ---\n{host.journal()[-4000:]}")
        if self.lb is not None and self.lb.pid is not None:
            log = self.lb.workdir / "haproxy.log"
            parts.append(f"--- haproxy ---\n{log.read_text()[-4000:] if log.exists() else ''}")
        return "\n".join(parts)

    def via_haproxy(self, server: str | None = None) -> tuple[str, str]:
        """One request through HAProxy (to ``server`` if named): (X-Served-By, body)."""
        assert self.lb is not None
        argv = ["curl", "-sS", "--max-time", "30", "-D", "-", f"http://{FRONTEND[0]}:{FRONTEND[1]}/"]
        if server is not None:
            argv[1:1] = ["-H", f"X-Fleet-Server: {server}"]
        proc = self.lb.run(argv, check=False, timeout=60)
        head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
        served_by = next((line.split(":", 1)[1].strip() for line in head.splitlines()
                          if line.lower().startswith("x-served-by:")), "")
        return served_by, body

    def server_states(self) -> dict[str, ServerStat]:
        return haproxy_server_states(self.stats_socket)

    def wait_in_pool(self, *names: str, timeout: float = 60) -> None:
        """Until HAProxy sends new requests to each of ``names`` (UP with a weight)."""
        names = names or tuple(h.name for h in self.hosts)
        wait_until(lambda: all(self.server_states()[n].in_pool for n in names), timeout=timeout,
                   what=f"HAProxy taking {', '.join(names)} back into its pool (now "
                        f"{ {n: self.server_states()[n] for n in names} })")

    # -- building it -------------------------------------------------------------------------

    def _boot_all(self) -> list[SystemdNamespace]:
        # Booted one after another: on a loaded 2-core machine parallel boots only queue up.
        booted: list[SystemdNamespace] = []
        try:
            for journald in (False, True, True, True):  # the lb needs no journal
                booted.append(SystemdNamespace({}, overlay=True, journald=journald).start())
        except BaseException:
            for ns in booted:
                ns.close()
            raise
        return booted

    def _lb_net(self, *argv: str) -> None:
        """``ip ...`` in the lb namespace's network namespace only: pids named in it (``netns
        <pid>``) are then the machine's pids, which is how a veth end reaches its host."""
        assert self.lb is not None and self.lb.pid is not None
        cmd = ["nsenter", "-t", str(self.lb.pid), "-n", "--", *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{' '.join(argv)} failed in the lb namespace: {proc.stderr}"

    def _network(self) -> None:
        self._lb_net("ip", "link", "add", "br0", "type", "bridge")
        self._lb_net("ip", "addr", "add", f"{LB_ADDRESS}/24", "dev", "br0")
        self._lb_net("ip", "link", "set", "br0", "up")
        for host in self.hosts:
            assert host.ns.pid is not None
            veth = f"fl-{host.name}"
            self._lb_net("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                         "netns", str(host.ns.pid))
            self._lb_net("ip", "link", "set", veth, "master", "br0")
            self._lb_net("ip", "link", "set", veth, "up")
            host.run(["ip", "addr", "add", f"{host.address}/24", "dev", "eth0"])
            host.run(["ip", "link", "set", "eth0", "up"])

    def _install(self, host: Host) -> None:
        ns = host.ns
        # As tests/packaging: no man-db index rebuild, and no container policy-rc.d forbidding
        # maintainer scripts to act on services.
        ns.run(["rm", "-f", "/var/lib/man-db/auto-update", "/usr/sbin/policy-rc.d"])
        target = ns.workdir / self.deb.name
        shutil.copy(self.deb, target)
        proc = ns.run(["dpkg", "-i", str(target)], env=DPKG_ENV, timeout=300, check=False)
        assert proc.returncode == 0, f"{host.name}: dpkg -i failed:\n{proc.stdout}\n{proc.stderr}"
        ns.run(["/usr/bin/python3.11", "-m", "venv", "--without-pip", f"/srv/{APP}/venv"], timeout=120)
        host.deploy("v1")
        host.write(f"/etc/corral/{APP}.yaml", APP_CONFIG)
        host.write(f"/etc/systemd/system/{SOCKET}.d/fleet.conf", SOCKET_DROPIN)
        host.write(f"/etc/systemd/system/{METRICS_SOCKET_UNIT}", METRICS_SOCKET)
        host.write(f"/etc/systemd/system/{SERVICE}.d/fleet.conf", SERVICE_DROPIN)
        ns.daemon_reload()
        ns.systemctl("enable", "--now", SOCKET, METRICS_SOCKET_UNIT)
        ns.systemctl("start", SERVICE, timeout=180)
        wait_until(lambda: host.local_version() == "v1", timeout=120,
                   what=f"{host.name} answering v1 on port {APP_PORT}")

    def _start_haproxy(self) -> None:
        assert self.lb is not None
        config = self.lb.workdir / "haproxy.cfg"
        config.write_text(haproxy_config([(h.name, f"{h.address}:{APP_PORT}") for h in self.hosts],
                                         self.stats_socket))
        check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, f"haproxy rejects its config:\n{check.stdout}{check.stderr}"
        log = open(self.lb.workdir / "haproxy.log", "wb")  # noqa: SIM115 - owned by the process
        self.haproxy = self.lb.popen(["haproxy", "-db", "-f", str(config)], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_until(self.stats_socket.exists, timeout=60, what="HAProxy's stats socket")
        wait_until(lambda: all(s.status == "UP" for s in self.server_states().values())
                   and len(self.server_states()) == len(self.hosts), timeout=90,
                   what="HAProxy seeing every host UP")
        self.recorder = StatsRecorder(self.stats_socket).start()
