"""The deploy walk-through (docs/systemd.md), on the points a newcomer trips over that the
end-to-end tests cannot see (those run its secret file, drop-ins and migrate command as written)."""

from __future__ import annotations

import re
from pathlib import Path

from pkgns import SERVICE_DROPIN, SOCKET_DROPIN, readme_block, readme_blocks

from util import REPO

SECTION_START = "## Deploying with systemd"


def deploy_section() -> str:
    text = (REPO / "docs" / "systemd.md").read_text()
    start = text.index(SECTION_START)
    return text[start:text.index("\n## ", start + 1)]


def test_install_command_names_the_file_make_deb_writes(deb) -> None:
    commands = [line for block in readme_blocks() for line in block.splitlines()
                if line.startswith("apt install ")]
    assert len(commands) == 1, commands
    path = Path(commands[0].split()[2])
    # The fixture built with OUT=deb.out; `make deb` uses OUT=packaging/out by default.
    assert 'OUT=${OUT:-$repo/packaging/out}' in (REPO / "packaging/build-deb.sh").read_text()
    assert path == Path("packaging/out") / deb.path.relative_to(deb.out), \
        f"docs/systemd.md installs {path}, make deb writes packaging/out/{deb.path.relative_to(deb.out)}"


def test_drop_ins_are_written_before_the_socket_starts() -> None:
    """A socket takes new addresses or owners only on a restart, which refuses connections;
    the service's credentials must be there before its first start."""
    section = deploy_section()
    enable = section.index("systemctl enable --now corral@blog.socket")
    for dropin in (SOCKET_DROPIN, SERVICE_DROPIN):
        assert section.index(f"# {dropin}") < enable, f"{dropin} comes after enable --now"


def test_nginx_snippet_proxies_to_the_socket_the_unit_listens_on() -> None:
    nginx = [b for b in readme_blocks() if "proxy_pass" in b]
    assert len(nginx) == 1
    socket_unit = (REPO / "units/corral@.socket").read_text()
    listen = re.search(r"^ListenStream=(/\S+)$", socket_unit, re.M)[1].replace("%i", "blog")
    assert re.search(rf"^\s*server unix:{re.escape(listen)};", nginx[0], re.M), nginx[0]
    # Keep-alive to corral needs HTTP/1.1 and no "Connection: close" from nginx.
    assert "proxy_http_version 1.1;" in nginx[0] and 'proxy_set_header Connection "";' in nginx[0]
    # The socket drop-in lets nginx's group (Debian: www-data) connect.
    assert re.search(r"^SocketGroup=www-data$", readme_block(f"# {SOCKET_DROPIN}", "blog"), re.M)


def test_adding_nginx_to_a_group_says_nginx_must_restart() -> None:
    for where, text in (("docs/systemd.md", deploy_section()),
                        ("corral@.socket", (REPO / "units/corral@.socket").read_text()),
                        ("README.Debian", (REPO / "packaging/debian/README.Debian").read_text())):
        for match in re.finditer(r"usermod -aG", text):
            after = re.sub(r"\s+", " ", text[match.end():match.end() + 300].replace("#", ""))
            assert "systemctl restart nginx" in after, f"{where}: usermod without the restart"


def test_secret_file_is_root_only_and_reaches_the_service_as_a_credential() -> None:
    commands = readme_block("install -m 0600 /dev/null /etc/corral/blog.secret-key", "blog")
    dropin = readme_block(f"# {SERVICE_DROPIN}", "blog")
    secret = re.search(r"^LoadCredential=([\w-]+):(\S+)$", dropin, re.M)
    assert secret and secret[2] == "/etc/corral/blog.secret-key", dropin
    assert f"> {secret[2]}" in commands  # written after install made it 0600
    assert re.search(r"^ReadWritePaths=/srv/blog/media$", dropin, re.M), dropin
