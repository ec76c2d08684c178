"""The charger's own address when a balancer (HAProxy, docs/scaling.md) stands in front.

Behind a balancer every connection comes from the balancer's address, which would make the
audit trail's remote_address and the per-address authentication limits useless. When the peer
is one of LEVITY_TRUSTED_PROXIES, the address the balancer appended to X-Forwarded-For is the
charger's; from anyone else the header is ignored (a charger could write any address in it).
"""

from __future__ import annotations

import ipaddress

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


def forwarded_client(peer_host: str | None, headers, trusted: tuple[Network, ...]) -> str | None:
    """The client address the trusted proxy reports, or None (use the peer's own)."""
    if not trusted or not peer_host or headers is None:
        return None
    try:
        peer = ipaddress.ip_address(peer_host)
    except ValueError:
        return None
    if not any(peer in network for network in trusted):
        return None
    values = headers.get_all("X-Forwarded-For")
    if not values:
        return None
    last = values[-1].split(",")[-1].strip()  # the proxy appends: the last entry is the one it saw
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return None
