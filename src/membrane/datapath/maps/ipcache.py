"""mb_ipcache: IPv4 prefix -> security identity, longest prefix wins (membrane/ipcache.h)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from membrane.datapath.abi import IPCACHE_PREFIX_BASE, Family, IPCacheKey, IPCacheValue
from membrane.datapath.maps._conv import ip4_from_be, ip4_to_be
from membrane.datapath.maps.base import BpfMap


def ipcache_key(prefix: IPv4Network) -> IPCacheKey:
    return IPCacheKey(prefixlen=IPCACHE_PREFIX_BASE + prefix.prefixlen, family=Family.IPV4,
                      ip4=ip4_to_be(prefix.network_address))


def _prefix_of(key: IPCacheKey) -> IPv4Network:
    return IPv4Network((ip4_from_be(key.ip4), key.prefixlen - IPCACHE_PREFIX_BASE))


class IPCacheMap(BpfMap[IPCacheKey, IPCacheValue]):
    key_type = IPCacheKey
    value_type = IPCacheValue

    def update(self, prefix: IPv4Network, identity: int) -> None:
        self.update_c(ipcache_key(prefix), IPCacheValue(identity=identity))

    def delete(self, prefix: IPv4Network) -> bool:
        return self.delete_c(ipcache_key(prefix))

    def get(self, prefix: IPv4Network) -> int | None:
        value = self.lookup_c(ipcache_key(prefix))
        return None if value is None else int(value.identity)

    def resolve(self, ip: IPv4Address) -> int | None:
        """The identity the datapath sees for an address (longest matching prefix)."""
        return self.get(IPv4Network(f"{ip}/32"))

    def update_many(self, entries: dict[IPv4Network, int]) -> int:
        return self.update_batch(
            (ipcache_key(p), IPCacheValue(identity=i)) for p, i in entries.items()
        )

    def dump(self) -> dict[IPv4Network, int]:
        return {
            _prefix_of(k): int(v.identity) for k, v in self.items_c() if k.family == Family.IPV4
        }
