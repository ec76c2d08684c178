"""The charger's own address when a balancer (HAProxy, docs/scaling.md) stands in front.

Behind a balancer every connection comes from the balancer's address, which would make the
audit trail's remote_address and the per-address authentication limits useless. When the peer
is one of LEVITY_TRUSTED_PROXIES, the address the balancer appended to X-Forwarded-For is the
charger's; from anyone else the header is ignored (a charger could write any address in it).

With LEVITY_PROXY_PROTOCOL on, the balancer states the address in a PROXY protocol header
ahead of the request instead (levity/proxy_protocol.py): a trusted peer must send one, and a
connection from anyone else that starts with one is dropped (it would be a forged address).
"""

from __future__ import annotations

import ipaddress

from levity.proxy_protocol import ProxyHeader, ProxyHeaderError, parse_header, starts_with_header

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """'10.0.0.5, 10.1.0.0/16' -> networks; ValueError names a bad entry."""
    networks = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"expected addresses or networks separated by commas, got {entry!r}") from None
    return tuple(networks)


def is_trusted(peer_host: str | None, trusted: tuple[Network, ...]) -> bool:
    if not trusted or not peer_host:
        return False
    try:
        peer = ipaddress.ip_address(peer_host)
    except ValueError:
        return False
    return any(peer in network for network in trusted)


def forwarded_client(peer_host: str | None, headers, trusted: tuple[Network, ...]) -> str | None:
    """The client address the trusted proxy reports, or None (use the peer's own)."""
    if headers is None or not is_trusted(peer_host, trusted):
        return None
    values = headers.get_all("X-Forwarded-For")
    if not values:
        return None
    last = values[-1].split(",")[-1].strip()  # the proxy appends: the last entry is the one it saw
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return None


def read_proxy_header(data: bytes, peer_trusted: bool) -> ProxyHeader | None:
    """What starts a connection when LEVITY_PROXY_PROTOCOL is on: from a trusted balancer, its
    header (None: not all of it arrived yet); from anyone else, no header at all (a ProxyHeader
    of length 0 and no source). ProxyHeaderError: drop the connection."""
    if peer_trusted:
        return parse_header(data)
    looks_like_header = starts_with_header(data)
    if looks_like_header is None:
        return None
    if looks_like_header:
        raise ProxyHeaderError("untrusted", "a PROXY protocol header from an address not in LEVITY_TRUSTED_PROXIES")
    return ProxyHeader(0, 0, None)
