"""mb_endpoints: the node's local endpoints by IPv4 address (bpf/include/membrane/endpoint.h)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from ipaddress import IPv4Address

from membrane.datapath.abi import EndpointInfo, EndpointKey, Family
from membrane.datapath.maps._conv import ip4_from_be, ip4_to_be, mac_from_bytes, mac_to_bytes
from membrane.datapath.maps.base import BpfMap


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointEntry:
    ip: IPv4Address
    ep_id: int
    ifindex: int
    mac: str
    node_mac: str
    identity: int
    flags: int = 0

    def to_c(self) -> tuple[EndpointKey, EndpointInfo]:
        info = EndpointInfo(ifindex=self.ifindex, ep_id=self.ep_id, flags=self.flags,
                            identity=self.identity)
        ctypes.memmove(info.mac, mac_to_bytes(self.mac), 6)
        ctypes.memmove(info.node_mac, mac_to_bytes(self.node_mac), 6)
        return endpoint_key(self.ip), info

    @classmethod
    def from_c(cls, key: EndpointKey, info: EndpointInfo) -> EndpointEntry:
        return cls(ip=ip4_from_be(key.ip4), ep_id=info.ep_id, ifindex=info.ifindex,
                   mac=mac_from_bytes(bytes(info.mac)),
                   node_mac=mac_from_bytes(bytes(info.node_mac)), identity=info.identity,
                   flags=info.flags)


def endpoint_key(ip: IPv4Address) -> EndpointKey:
    return EndpointKey(ip4=ip4_to_be(ip), family=Family.IPV4)


class EndpointMap(BpfMap[EndpointKey, EndpointInfo]):
    key_type = EndpointKey
    value_type = EndpointInfo

    def update(self, entry: EndpointEntry) -> None:
        key, info = entry.to_c()
        self.update_c(key, info)

    def delete(self, ip: IPv4Address) -> bool:
        return self.delete_c(endpoint_key(ip))

    def get(self, ip: IPv4Address) -> EndpointEntry | None:
        key = endpoint_key(ip)
        info = self.lookup_c(key)
        return None if info is None else EndpointEntry.from_c(key, info)

    def update_many(self, entries: list[EndpointEntry]) -> int:
        return self.update_batch(e.to_c() for e in entries)

    def dump(self) -> dict[IPv4Address, EndpointEntry]:
        out: dict[IPv4Address, EndpointEntry] = {}
        for key, info in self.items_c():
            if key.family == Family.IPV4:
                entry = EndpointEntry.from_c(key, info)
                out[entry.ip] = entry
        return out
