"""The PROXY protocol header (versions 1 and 2) a balancer sends before the charger's bytes.

HAProxy's `send-proxy` / `send-proxy-v2` open each connection to Levity with the charger's
address in a header, ahead of the HTTP request; its health checks send the LOCAL command.
This follows HAProxy's doc/proxy-protocol.txt: version 1 is one ASCII line of at most 107
bytes ending in CRLF, version 2 a 16-byte binary header and an address block whose length
it announces; anything that does not match exactly is refused, and so is a connection that
ends in the middle of a header.

Written by hand: the one library on PyPI (proxy-protocol) parses a LOCAL header's address
block as TLVs (refusing HAProxy health checks that carry addresses), raises struct errors on
short address blocks and leaves the 107-byte line limit to the caller; the format is small
enough that following the spec here is shorter than working around it. Sans-I/O: fed bytes,
it says "need more", "here is the header and its length", or refuses with a reason.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY"
V1_MAX_LINE = 107  # "PROXY TCP6 <39> <39> 65535 65535\r\n"
_V2_FIXED = struct.Struct("!12sBBH")
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")  # decimal, no heading zeroes

# Version 2, byte 14: address family (high nibble) and transport protocol (low nibble).
_UNSPEC, _INET, _INET6, _UNIX = 0x0, 0x1, 0x2, 0x3
_ADDRESS_BLOCK = {_INET: struct.Struct("!4s4sHH"), _INET6: struct.Struct("!16s16sHH")}


class ProxyHeaderError(ValueError):
    """The connection must be dropped; `reason` is short and fit for a metrics label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class ProxyHeader:
    version: int
    length: int  # bytes of the header, to skip before the charger's own bytes
    source: tuple[str, int] | None  # the charger's address; None: LOCAL or unknown, use the peer's


def starts_with_header(data: bytes) -> bool | None:
    """Whether the bytes begin like a PROXY header; None while too few bytes arrived to tell."""
    for signature in (V2_SIGNATURE, V1_PREFIX):
        common = min(len(data), len(signature))
        if data[:common] == signature[:common]:
            if common == len(signature):
                return True
            return None
    return False


def parse_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, or None until all of it arrived."""
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)] and len(data) < 16:
        return None
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)] and len(data) < 8:
        return None
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    raise ProxyHeaderError("missing", "the connection does not start with a PROXY protocol header")


def _malformed(detail: str) -> ProxyHeaderError:
    return ProxyHeaderError("malformed", f"malformed PROXY protocol header: {detail}")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LINE)
    if end < 0:
        if len(data) >= V1_MAX_LINE:
            raise _malformed(f"version 1 line without CRLF in its first {V1_MAX_LINE} bytes")
        return None
    fields = data[:end].split(b" ")
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise _malformed("version 1 line does not start with 'PROXY '")
    family = fields[1]
    if family == b"UNKNOWN":  # the rest of the line is to be ignored
        return ProxyHeader(1, end + 2, None)
    if family not in (b"TCP4", b"TCP6") or len(fields) != 6:
        raise _malformed("version 1 needs 'PROXY TCP4|TCP6 source destination source-port destination-port'")
    version = ipaddress.IPv4Address if family == b"TCP4" else ipaddress.IPv6Address
    try:
        source, _destination = (version(field.decode("ascii")) for field in fields[2:4])
    except (UnicodeDecodeError, ValueError):
        raise _malformed(f"version 1 addresses are not {family.decode()} addresses") from None
    if b"%" in fields[2] or b"%" in fields[3]:
        raise _malformed("version 1 addresses carry a scope")
    ports = fields[4:6]
    if not all(_PORT.fullmatch(port) and int(port) <= 65535 for port in ports):
        raise _malformed("version 1 ports must be decimal 0-65535 without heading zeroes")
    return ProxyHeader(1, end + 2, (str(source), int(ports[0])))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    _, version_command, family_protocol, block_length = _V2_FIXED.unpack_from(data)
    if version_command >> 4 != 0x2:
        raise _malformed(f"version 2 signature with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0x0, 0x1):
        raise _malformed(f"version 2 command {command} is neither LOCAL nor PROXY")
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family > _UNIX or protocol > 0x2:
        raise _malformed(f"version 2 address family {family} or protocol {protocol} is not defined")
    length = 16 + block_length
    if len(data) < length:
        return None  # the address block must be whole before any of it is read
    if command == 0x0:  # LOCAL: the balancer's own connection (health check): the real endpoints
        return ProxyHeader(2, length, None)
    layout = _ADDRESS_BLOCK.get(family)
    if layout is None or protocol == 0x0:  # UNSPEC or UNIX: no client IP address to record
        return ProxyHeader(2, length, None)
    if block_length < layout.size:
        raise _malformed(f"version 2 address block of {block_length} bytes, its family needs {layout.size}")
    source, _destination, source_port, _destination_port = layout.unpack_from(data, 16)
    return ProxyHeader(2, length, (str(ipaddress.ip_address(source)), source_port))
