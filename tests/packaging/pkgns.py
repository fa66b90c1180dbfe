"""Helpers for the end-to-end package tests, which run inside an overlay SystemdNamespace:
requests over an app's unix socket, files and processes inside, the load generator, and the
deploy walk-through (docs/systemd.md), whose snippets (secret file, drop-ins, the migrate command) are
run as the page writes them, for the demo app instead of `blog`."""

from __future__ import annotations

import json
import re
import textwrap

from scenario import DEMO_APP, DEMO_CONFIG, DEMO_MANAGE, LOAD

from harness.nsload import NamespaceLoad
from harness.systemd import SystemdNamespace
from util import REPO, wait_until

APP = "demo"
SOCK = f"/run/corral-{APP}.sock"
SERVICE = f"corral@{APP}.service"
SOCKET = f"corral@{APP}.socket"
DPKG_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
README_SECTION = "## Deploying with systemd"


# -- the README's walk-through ------------------------------------------------------------------

def readme_blocks() -> list[str]:
    """The fenced code blocks of the deploy section (docs/systemd.md), dedented (they sit in a list)."""
    text = (REPO / "docs" / "systemd.md").read_text()
    start = text.index(README_SECTION)
    end = text.find("\n## ", start + len(README_SECTION))
    section = text[start:end if end != -1 else len(text)]
    blocks = re.findall(r"^([ \t]*)```[\w-]*\n(.*?)^\1```", section, re.M | re.S)
    return [textwrap.dedent(body) for _, body in blocks]


def readme_block(first_line: str, app: str = APP) -> str:
    """The one deploy-section block that starts with ``first_line``, with `blog` -> ``app``."""
    found = [b for b in readme_blocks() if b.startswith(first_line)]
    assert len(found) == 1, f"docs/systemd.md's deploy section has {len(found)} blocks starting with " \
        f"{first_line!r} (the package tests run them as written)"
    return found[0].replace("blog", app)


def dropin(first_line_path: str, app: str = APP) -> tuple[str, str]:
    """A drop-in block of the deploy section (its first line is ``# <path>``): (path, text) for ``app``."""
    text = readme_block(f"# {first_line_path}", app)
    return text.splitlines()[0][2:].strip(), text


SERVICE_DROPIN = "/etc/systemd/system/corral@blog.service.d/local.conf"
SOCKET_DROPIN = "/etc/systemd/system/corral@blog.socket.d/local.conf"
SECRET_COMMANDS = "install -m 0600 /dev/null /etc/corral/blog.secret-key"
MIGRATE_COMMAND = "systemd-run "


# -- inside the namespace -----------------------------------------------------------------------

# The system bus, as a real host has it: `systemd-run --wait --pipe` (the README's migrate
# command) talks to PID 1 through it. Debian's own units, minus what the namespace lacks.
DBUS_UNITS = {
    "dbus.socket": """\
[Unit]
Description=D-Bus System Message Bus Socket (test namespace)
DefaultDependencies=no

[Socket]
ListenStream=/run/dbus/system_bus_socket
""",
    "dbus.service": """\
[Unit]
Description=D-Bus System Message Bus (test namespace)
DefaultDependencies=no
Requires=dbus.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile --systemd-activation --syslog-only
""",
}


def boot(systemd_ns) -> SystemdNamespace:
    """An overlay namespace for a package install, with journald and the system bus."""
    ns = systemd_ns(DBUS_UNITS, overlay=True, journald=True)
    # systemd booted by the kernel makes / shared (it leaves propagation alone in a container,
    # which this is). LoadCredential= needs it: PID 1 mounts each unit's credentials in a
    # child mount namespace, and they reach /run/credentials only by propagation; without
    # it they stay a root-only directory. The namespace was cut off from the host's mounts
    # (private) at boot, so its new peer groups never reach the host.
    ns.run(["mount", "--make-rshared", "/"])
    ns.systemctl("start", "dbus.socket")
    return ns


def write(ns: SystemdNamespace, path: str, text: str) -> None:
    ns.run(["sh", "-c", f'mkdir -p "$(dirname {path})" && cat > {path}'], input=text)


def run_as(ns: SystemdNamespace, user: str) -> list[str]:
    """A command prefix that runs as ``user`` with its groups (setpriv: no PAM, no logind)."""
    gid = ns.run(["id", "-g", user]).stdout.strip()
    return ["setpriv", f"--reuid={user}", f"--regid={gid}", "--init-groups"]


def request(ns: SystemdNamespace, path: str = "/", *, method: str = "GET", data: str = "",
            sock: str = SOCK, as_user: str | None = None) -> tuple[int, str]:
    """(status, body) of one request over the unix socket; status 0 if none came back."""
    argv = ["curl", "-sS", "--max-time", "60", "-w", "\n%{http_code}", "--unix-socket", sock,
            "-X", method, f"http://localhost{path}"]
    if method != "GET":
        argv[1:1] = ["--data-binary", "@-"]
    if as_user is not None:
        argv = [*run_as(ns, as_user), *argv]
    proc = ns.run(argv, check=False, timeout=90, input=data)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body + proc.stderr


# Processes inside the namespace as JSON [pid, ppid, uid, cmdline] (no procps needed).
PS = """
import json, os
out = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = open(f"/proc/{pid}/status").read()
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
    except OSError:
        continue
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    out.append([int(pid), int(fields["PPid"]), int(fields["Uid"].split()[0]), cmdline.strip()])
print(json.dumps(out))
"""


def processes(ns: SystemdNamespace) -> list[list]:
    return json.loads(ns.run(["/usr/bin/python3", "-c", PS]).stdout)


def exists(ns: SystemdNamespace, path: str) -> bool:
    return ns.run(["test", "-e", path], check=False).returncode == 0


def enablement_links(ns: SystemdNamespace) -> list[str]:
    """Links `systemctl enable` made for corral@ instances (the walk-through enables one)."""
    return ns.run(["find", "/etc/systemd/system", "-name", "corral@*", "-type", "l"]
                  ).stdout.split()


# -- the demo app, deployed as the README says --------------------------------------------------

def deploy_demo_app(ns: SystemdNamespace) -> str:
    """Steps 2-6 of the walk-through for the demo app; returns the secret's sha256."""
    ns.run(["/usr/bin/python3.11", "-m", "venv", "--without-pip", f"/srv/{APP}/venv"])
    write(ns, f"/srv/{APP}/src/demoapp.py", DEMO_APP)
    write(ns, f"/srv/{APP}/src/manage.py", DEMO_MANAGE)
    write(ns, f"/etc/corral/{APP}.yaml", DEMO_CONFIG)
    ns.run(["install", "-d", "-o", "corral", "-g", "corral", f"/srv/{APP}/media"])
    ns.run(["sh", "-ec", readme_block(SECRET_COMMANDS)])
    secret = f"/etc/corral/{APP}.secret-key"
    assert ns.run(["stat", "-c", "%U %a", secret]).stdout.split() == ["root", "600"]
    # The service user cannot read the file itself: the credential is what gives it the secret.
    assert ns.run([*run_as(ns, "corral"), "cat", secret], check=False).returncode != 0
    for path, text in (dropin(SERVICE_DROPIN), dropin(SOCKET_DROPIN)):
        write(ns, path, text)
    ns.daemon_reload()
    migrate = ns.run(["sh", "-ec", readme_block(MIGRATE_COMMAND)], timeout=120, check=False)
    assert migrate.returncode == 0, f"docs/systemd.md's migrate command failed:\n{migrate.stdout}" \
        f"{migrate.stderr}\n{ns.journal(None)[-3000:]}"
    assert f"migrated /var/lib/corral/{APP}/db.sqlite3" in migrate.stdout
    digest = ns.run(["sh", "-c", f"sha256sum < {secret}"]).stdout.split()[0]
    return digest


def start_demo_app(ns: SystemdNamespace) -> str:
    """Step 7: start the socket; the first request starts the service. Returns its MainPID."""
    ns.systemctl("enable", "--now", SOCKET)
    assert enablement_links(ns), "systemctl enable made no link"
    status, body = request(ns)
    assert status == 200, body
    wait_until(lambda: ns.show(SERVICE, "ActiveState") == "active", timeout=90,
               what=f"{SERVICE} active")
    main_pid = ns.show(SERVICE, "MainPID")
    workers = [cmd for _, ppid, _, cmd in processes(ns) if ppid == int(main_pid)]
    assert len(workers) == 2 and all(w.startswith(f"/srv/{APP}/venv/bin/python ")
                                     for w in workers), \
        f"workers not running in the app's venv: {workers}"
    return main_pid


def check_demo_app_writes_and_reads_its_secret(ns: SystemdNamespace, digest: str) -> None:
    """What the walk-through's steps 4 to 6 promise the app, checked through the app."""
    assert request(ns, "/notes", method="POST", data="first") == (201, "1")
    assert request(ns, "/notes", method="POST", data="second") == (201, "2")
    assert request(ns, "/upload", method="POST", data="x" * 1000) == (201, "1000")
    assert request(ns, "/secret") == (200, digest)
    # The socket drop-in: nginx's group may connect, other users may not.
    assert ns.run(["stat", "-c", "%U %G %a", SOCK]).stdout.split() == ["corral", "www-data", "660"]
    assert request(ns, as_user="www-data")[0] == 200
    assert connect_error(ns, "nobody") == "EACCES"


CONNECT = """
import errno, socket, sys
try:
    socket.socket(socket.AF_UNIX).connect(sys.argv[1])
    print("connected")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


def connect_error(ns: SystemdNamespace, user: str) -> str:
    """The errno name of a connect() to the app's socket as ``user`` ("connected" if none)."""
    return ns.run([*run_as(ns, user), "/usr/bin/python3", "-c", CONNECT, SOCK]
                  ).stdout.strip()


def notes_in_state_dir(ns: SystemdNamespace) -> list[str]:
    db = f"/var/lib/corral/{APP}/db.sqlite3"
    assert exists(ns, db), f"the app's database {db} is gone"
    script = (f"import sqlite3; print('\\n'.join(r[0] for r in sqlite3.connect({db!r})"
              ".execute('SELECT text FROM notes')))")
    return ns.run(["/usr/bin/python3", "-c", script]).stdout.split()


# -- load -----------------------------------------------------------------------------------------

def demo_load(ns: SystemdNamespace) -> NamespaceLoad:
    """The load generator (scenario.LOAD) running inside over the demo app's socket."""
    script = ns.workdir / "load.py"
    script.write_text(LOAD)
    return NamespaceLoad(ns, ["/usr/bin/python3", str(script), SOCK], "over the demo app's socket")
