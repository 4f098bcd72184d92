"""The ipcache's desired state: which prefix maps to which security identity, and why."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network

from membrane.types import Identity

HOST = Identity(1)
WORLD = Identity(2)
WORLD_PREFIX = IPv4Network("0.0.0.0/0")


def node_entries(node_addresses: Iterable[IPv4Address]) -> dict[IPv4Network, Identity]:
    """The node's own addresses are `host`; everything not known otherwise is `world`."""
    entries: dict[IPv4Network, Identity] = {WORLD_PREFIX: WORLD}
    for addr in node_addresses:
        entries[IPv4Network(f"{addr}/32")] = HOST
    return entries


def desired(
    *,
    node_addresses: Iterable[IPv4Address],
    endpoints: Iterable[tuple[IPv4Address, Identity]],
    cidrs: Mapping[IPv4Network, Identity] | None = None,
) -> dict[IPv4Network, Identity]:
    """The full ipcache: policy CIDRs, node addresses, endpoint addresses, the world default.

    A node's or endpoint's own address wins over a CIDR identity of the same prefix: toCIDR
    selects what is outside the cluster.
    """
    entries = dict(cidrs or {})
    entries.update(node_entries(node_addresses))
    for ip, identity in endpoints:
        entries[IPv4Network(f"{ip}/32")] = identity
    return entries
