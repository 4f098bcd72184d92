"""Cluster IPs from the service CIDR and node ports from the node port range, by owner.

An owner is a service key (``namespace/name``). Dynamic allocation walks round-robin from just
after the last address or port handed out, so a just-released one is not given straight to the
next service (clients and conntrack entries of the old service would reach the new one).
`assign` allocates everything a `ServiceSpec` needs, all or nothing.

In memory, not thread-safe: one reconciler owns the allocators and rebuilds them on restart
from the services it restores (`allocate` with each service's addresses and ports).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from membrane.errors import Conflict, InputError
from membrane.loadbalancer.model import NODE_PORT_RANGE
from membrane.loadbalancer.parse import ServiceSpec


class IPAllocator:
    """Hands out cluster IPs of *cidr*, one per owner; never the network or broadcast address."""

    def __init__(self, cidr: IPv4Network) -> None:
        if cidr.prefixlen > 30:
            raise InputError("service CIDR", f"{cidr} is too small: it needs at least a /30 "
                             "(the network and broadcast addresses are never used)")
        self.cidr = cidr
        self._first = int(cidr.network_address) + 1
        self._last = int(cidr.broadcast_address) - 1
        self._next = self._first
        self._by_ip: dict[IPv4Address, str] = {}
        self._by_owner: dict[str, IPv4Address] = {}

    @property
    def capacity(self) -> int:
        return self._last - self._first + 1

    def owner_of(self, ip: IPv4Address) -> str | None:
        return self._by_ip.get(ip)

    def held_by(self, owner: str) -> IPv4Address | None:
        return self._by_owner.get(owner)

    def allocate(self, requested: IPv4Address | None, owner: str,
                 where: str = "spec.clusterIP") -> IPv4Address:
        """*requested* (or any free address when None) for *owner*; idempotent per owner.

        InputError at *where* for an address outside the CIDR or reserved, or one that differs
        from the address *owner* already holds (a cluster IP is immutable); Conflict when
        another owner holds it or the CIDR is full.
        """
        held = self._by_owner.get(owner)
        if requested is None:
            return held if held is not None else self._take(self._free(), owner)
        if requested not in self.cidr:
            raise InputError(where, f"{requested} is not in the service CIDR {self.cidr}")
        if not self._first <= int(requested) <= self._last:
            what = "network" if requested == self.cidr.network_address else "broadcast"
            raise InputError(where, f"{requested} is the {what} address of the service CIDR "
                             f"{self.cidr}")
        if held is not None and held != requested:
            raise InputError(where, f"may not change from {held} to {requested}: the field is "
                             f"immutable (delete service {owner} to give it another address)")
        other = self._by_ip.get(requested)
        if other is not None and other != owner:
            raise Conflict(f"{where}: {requested} is already allocated to service {other}")
        return self._take(requested, owner)

    def release(self, ip: IPv4Address) -> str | None:
        """Free *ip*; returns the owner it had (None: it was free)."""
        owner = self._by_ip.pop(ip, None)
        if owner is not None:
            del self._by_owner[owner]
        return owner

    def release_owner(self, owner: str) -> IPv4Address | None:
        """Free the address of *owner*; returns it (None: it held none)."""
        ip = self._by_owner.get(owner)
        if ip is not None:
            self.release(ip)
        return ip

    def snapshot(self) -> tuple[dict[IPv4Address, str], int]:
        """The state, for `restore` after a failed multi-step change."""
        return dict(self._by_ip), self._next

    def restore(self, state: tuple[dict[IPv4Address, str], int]) -> None:
        by_ip, self._next = state
        self._by_ip = dict(by_ip)
        self._by_owner = {owner: ip for ip, owner in self._by_ip.items()}

    def _free(self) -> IPv4Address:
        if len(self._by_ip) >= self.capacity:
            raise Conflict(f"the service CIDR {self.cidr} is full: all {self.capacity} "
                           "addresses are allocated (delete a service or use a larger CIDR)")
        candidate = self._next
        while IPv4Address(candidate) in self._by_ip:
            candidate = self._first if candidate >= self._last else candidate + 1
        return IPv4Address(candidate)

    def _take(self, ip: IPv4Address, owner: str) -> IPv4Address:
        if self._by_owner.get(owner) != ip:
            self._by_ip[ip] = owner
            self._by_owner[owner] = ip
            self._next = self._first if int(ip) >= self._last else int(ip) + 1
        return ip


PortKey = tuple[int, str]
"""(node port, protocol)"""


class NodePortAllocator:
    """Hands out (port, protocol) pairs of *range*; an owner may hold several."""

    def __init__(self, range: tuple[int, int] = NODE_PORT_RANGE) -> None:
        low, high = range
        if not 1 <= low <= high <= 65535:
            raise InputError("node port range", f"{low}-{high} is not a range of ports 1-65535")
        self.low, self.high = low, high
        self._next: dict[str, int] = {}
        self._owners: dict[PortKey, str] = {}

    @property
    def capacity(self) -> int:
        """Ports per protocol."""
        return self.high - self.low + 1

    def owner_of(self, port: int, protocol: str) -> str | None:
        return self._owners.get((port, protocol))

    def held_by(self, owner: str) -> list[PortKey]:
        return sorted(k for k, o in self._owners.items() if o == owner)

    def allocate(self, requested: int | None, protocol: str, owner: str,
                 where: str = "nodePort") -> int:
        """*requested* (or any free port when None) for *owner*; idempotent for its holder.

        InputError at *where* for a port outside the range; Conflict when another owner holds
        it or every port of *protocol* is taken.
        """
        if requested is None:
            requested = self._free(protocol)
        elif not self.low <= requested <= self.high:
            raise InputError(where, f"{requested} is not in the node port range "
                             f"{self.low}-{self.high}")
        other = self._owners.get((requested, protocol))
        if other is not None and other != owner:
            raise Conflict(f"{where}: {requested}/{protocol} is already allocated to service "
                           f"{other}")
        if other is None:
            self._owners[requested, protocol] = owner
            self._next[protocol] = self.low if requested >= self.high else requested + 1
        return requested

    def release(self, port: int, protocol: str) -> str | None:
        """Free (port, protocol); returns the owner it had (None: it was free)."""
        return self._owners.pop((port, protocol), None)

    def release_owner(self, owner: str) -> list[PortKey]:
        """Free every port of *owner*; returns them."""
        held = self.held_by(owner)
        for key in held:
            del self._owners[key]
        return held

    def snapshot(self) -> tuple[dict[PortKey, str], dict[str, int]]:
        """The state, for `restore` after a failed multi-step change."""
        return dict(self._owners), dict(self._next)

    def restore(self, state: tuple[dict[PortKey, str], dict[str, int]]) -> None:
        owners, next_ = state
        self._owners, self._next = dict(owners), dict(next_)

    def _free(self, protocol: str) -> int:
        used = sum(1 for _, p in self._owners if p == protocol)
        if used >= self.capacity:
            raise Conflict(f"the node port range {self.low}-{self.high} is full for {protocol}: "
                           f"all {self.capacity} ports are allocated (delete a NodePort service)")
        candidate = self._next.get(protocol, self.low)
        while (candidate, protocol) in self._owners:
            candidate = self.low if candidate >= self.high else candidate + 1
        return candidate


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    cluster_ip: IPv4Address
    node_ports: tuple[int, ...]
    """One per spec port, 0 for none: pass to `resolve_backends`."""


def assign(spec: ServiceSpec, ips: IPAllocator, node_ports: NodePortAllocator) -> Assignment:
    """Allocate the cluster IP and node ports of *spec*; all or nothing.

    Applying a service again keeps its address and the node ports it was given (a port with no
    nodePort reuses one the service holds for the protocol); node ports it no longer uses are
    released. Errors name the document and the field of *spec*.
    """
    owner = spec.key
    saved_ips, saved_ports = ips.snapshot(), node_ports.snapshot()
    try:
        ip = ips.allocate(spec.cluster_ip, owner, f"{spec.where}: spec.clusterIP")
        held = node_ports.held_by(owner)
        explicit = {(p.node_port, p.protocol) for p in spec.ports if p.node_port}
        reusable = [k for k in held if k not in explicit]
        out: list[int] = []
        for i, sp in enumerate(spec.ports):
            where = f"{spec.where}: spec.ports[{i}].nodePort"
            if sp.node_port:
                out.append(node_ports.allocate(sp.node_port, sp.protocol, owner, where))
            elif spec.allocate_node_ports:
                reuse = next((k for k in reusable if k[1] == sp.protocol), None)
                if reuse is not None:
                    reusable.remove(reuse)
                out.append(node_ports.allocate(reuse[0] if reuse else None, sp.protocol, owner,
                                               where))
            else:
                out.append(0)
        for port, protocol in reusable:
            node_ports.release(port, protocol)
    except BaseException:
        ips.restore(saved_ips)
        node_ports.restore(saved_ports)
        raise
    return Assignment(cluster_ip=ip, node_ports=tuple(out))


def unassign(owner: str, ips: IPAllocator, node_ports: NodePortAllocator) -> None:
    """Release the cluster IP and node ports of service *owner* (``namespace/name``)."""
    ips.release_owner(owner)
    node_ports.release_owner(owner)
