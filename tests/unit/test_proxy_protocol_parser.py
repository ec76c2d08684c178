"""The PROXY protocol parser's edges (levity/proxy_protocol.py): when it waits for more bytes,
the longest version 1 line, and what it takes from a version 2 address block."""

from __future__ import annotations

import pytest

from levity.proxy import read_proxy_header
from levity.proxy_protocol import ProxyHeader, ProxyHeaderError, parse_header

LONGEST_V1 = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"


def test_the_longest_version_1_line_is_accepted_and_one_byte_more_is_not():
    assert len(LONGEST_V1) == 107
    assert parse_header(LONGEST_V1 + b"GET") == ProxyHeader(1, 107, None)
    longest_tcp6 = LONGEST_V1.replace(b"UNKNOWN", b"TCP6")
    assert parse_header(longest_tcp6) == ProxyHeader(1, 104, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))
    with pytest.raises(ProxyHeaderError, match="first 107 bytes"):
        parse_header(LONGEST_V1.replace(b" 65535\r\n", b" 655350\r\n"))


@pytest.mark.parametrize("partial", [b"", b"P", b"PROXY T", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
                                     b"\r\n\r\n\x00", b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00",
                                     b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes(11)])
def test_an_incomplete_header_waits_for_more(partial):
    assert parse_header(partial) is None


def test_a_version_2_header_takes_the_source_and_skips_tlvs():
    block = bytes([10, 1, 2, 3, 10, 0, 0, 1]) + (4000).to_bytes(2, "big") + (9000).to_bytes(2, "big")
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    data = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + len(block + tlv).to_bytes(2, "big") + block + tlv + b"GET /"
    assert parse_header(data) == ProxyHeader(2, 16 + 12 + 6, ("10.1.2.3", 4000))


def test_an_untrusted_peer_passes_without_a_header_and_is_refused_with_one():
    assert read_proxy_header(b"GET / HTTP/1.1\r\n", peer_trusted=False) == ProxyHeader(0, 0, None)
    assert read_proxy_header(b"PRO", peer_trusted=False) is None
    with pytest.raises(ProxyHeaderError) as refused:
        read_proxy_header(b"\r\n\r\n\x00\r\nQUIT\n", peer_trusted=False)
    assert refused.value.reason == "untrusted"
    with pytest.raises(ProxyHeaderError) as missing:
        read_proxy_header(b"GET / HTTP/1.1\r\n", peer_trusted=True)
    assert missing.value.reason == "missing"
