"""forwarded_allow_ips, in process: parsed once per process, and trusted hosts found without ipaddress.

A worker forked from a zygote must not run ipaddress's code to learn that 127.0.0.1 is trusted:
the zygote parsed the settings before the fork, and running that code again would copy the pages
it and its objects sit on in every worker (corral.engine.proxy.trusted_peers)."""

from __future__ import annotations

import ipaddress

import pytest

from corral.engine import proxy
from corral.engine.proxy import TrustedPeers, trusted_peers
from corral.engine.settings import EngineSettings


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("ipaddress was asked to parse")

    monkeypatch.setattr(proxy.ipaddress, "ip_address", refuse)
    monkeypatch.setattr(proxy.ipaddress, "ip_network", refuse)


def test_a_peer_at_a_trusted_host_is_answered_without_parsing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    peers = TrustedPeers(("127.0.0.1", "::1", "10.0.0.0/8", "2001:db8::7/128"))
    _no_parsing(monkeypatch)
    assert peers.trusts("127.0.0.1")
    assert peers.trusts("::1")
    assert peers.trusts("2001:db8::7")


def test_networks_and_other_peers_are_still_looked_up() -> None:
    peers = TrustedPeers(("127.0.0.1", "10.0.0.0/8", "2001:db8::/32"))
    assert peers.trusts("10.200.3.4")
    assert peers.trusts("2001:db8::99")
    assert peers.trusts("::ffff:127.0.0.1")  # an IPv4 peer on a dual-stack socket
    assert not peers.trusts("192.0.2.1")
    assert not peers.trusts("127.0.0.2")
    assert not peers.trusts("not an address")
    assert not peers.trusts(None)  # a unix-socket peer, and "unix" is not listed
    assert TrustedPeers(("unix",)).trusts(None)


def test_settings_parse_them_once_and_the_engine_finds_that(monkeypatch: pytest.MonkeyPatch) -> None:
    allow = ("192.0.2.0/24", "198.51.100.9", "unix")  # values no other test uses: not parsed before
    settings = EngineSettings(forwarded_allow_ips=allow)
    _no_parsing(monkeypatch)
    peers = trusted_peers(settings.forwarded_allow_ips, settings.forwarded_headers)
    assert peers is trusted_peers(list(allow), list(settings.forwarded_headers))
    assert peers.trusts("198.51.100.9") and peers.trusts(None)
    assert EngineSettings(forwarded_allow_ips=allow) == settings


def test_bad_entries_are_still_named() -> None:
    with pytest.raises(ValueError, match=r"forwarded_allow_ips: '10\.0\.0\.300' is not an IP address"):
        EngineSettings(forwarded_allow_ips=("10.0.0.300",))
    with pytest.raises(ValueError, match=r"forwarded_allow_ips: \{'a': 1\} is not a string"):
        EngineSettings(forwarded_allow_ips=({"a": 1},))  # unhashable: not memoised, still named
    with pytest.raises(ValueError, match="forwarded_headers: 'x-real-ip' is not one of"):
        trusted_peers(("127.0.0.1",), ("x-real-ip",))


def test_the_memo_of_a_host_entry_agrees_with_ipaddress() -> None:
    for entry in ("127.0.0.1", "::1", "2001:0db8:0000::0001", "::ffff:10.0.0.1", "fe80::1"):
        canonical = str(ipaddress.ip_address(entry))
        assert TrustedPeers((entry,)).trusts(canonical), entry


def test_the_parses_kept_are_bounded() -> None:
    early = ("203.0.113.0/24",)
    kept = trusted_peers(early)
    assert trusted_peers(early) is kept
    for n in range(100):  # many configs in one process: the memo keeps the latest few
        trusted_peers((f"192.0.2.{n}",))
    again = trusted_peers(early)
    assert again is not kept  # dropped, then parsed again
    assert again.trusts("203.0.113.7") and kept.trusts("203.0.113.7")
