"""Bind addresses' IP parsing (corral.addresses), compared with the standard library's ipaddress.

corral parses IPs with socket.inet_pton to keep ipaddress out of the supervisor; the two must
agree on what is an IP address and on which spellings name the same one.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from corral.addresses import ip_of, overlap, parse_address

SPELLINGS = ["127.0.0.1", "0.0.0.0", "255.255.255.255", "::", "::1", "0:0::1", "0000:0000::0001",
             "::ffff:1.2.3.4", "2001:db8::8:800:200c:417a", "fe80::1%eth0", "fe80::1%", "1.2.3.4%eth0",
             "1.2.3", "01.2.3.4", "256.1.1.1", "1.2.3.4.5", " 1.2.3.4", "1.2.3.4\0", "[::1]", "1::2::3",
             "::1::", "example.com", "localhost.localdomain", ""]


@pytest.mark.parametrize("text", SPELLINGS)
def test_an_ip_is_what_ipaddress_says_it_is(text):
    try:
        expected = ipaddress.ip_address(text)
    except ValueError:
        assert ip_of(text) is None
        return
    got = ip_of(text)
    assert got is not None
    assert got.packed == expected.packed
    assert got.family == (socket.AF_INET if expected.version == 4 else socket.AF_INET6)
    assert got.is_unspecified == expected.is_unspecified
    assert got.scope == (getattr(expected, "scope_id", None) or "")


def test_localhost_is_the_ipv4_loopback():
    assert ip_of("localhost") == ip_of("127.0.0.1")


@pytest.mark.parametrize("a, b, clash", [
    ("0.0.0.0:80", "127.0.0.1:80", True),  # the wildcard covers every address of its family
    ("[::]:80", "[::1]:80", True),
    ("[::1]:80", "[0:0::1]:80", True),  # one address, two spellings
    ("localhost:80", "127.0.0.1:80", True),
    ("[::]:80", "0.0.0.0:80", False),  # corral binds [::] IPv6-only
    ("127.0.0.1:80", "127.0.0.2:80", False),
    ("127.0.0.1:80", "127.0.0.1:81", False),
    ("127.0.0.1:0", "127.0.0.1:0", False),  # any free port: two different ones
    ("example.com:80", "example.com:80", True),
    ("example.com:80", "127.0.0.1:80", False),
])
def test_overlapping_bind_addresses(a, b, clash):
    assert overlap(a, b) is clash
    assert overlap(b, a) is clash


def test_a_bind_host_that_is_neither_an_ip_nor_a_name_is_refused_with_the_forms():
    with pytest.raises(ValueError, match=r"'1\.2\.3\.4%eth0' is not an IP address or host name"):
        parse_address("1.2.3.4%eth0:80")
    assert parse_address("[fe80::1%eth0]:80").host == "fe80::1%eth0"
