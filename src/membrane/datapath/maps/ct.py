"""mb_ct: the IPv4 connection tracking table (bpf/include/membrane/conntrack.h)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from ipaddress import IPv4Address

from membrane.datapath.abi import CT_F_CLOSING, CTEntryC, CTFlags, CTKey, Direction, Family
from membrane.datapath.maps._conv import ip4_from_be, ip4_to_be, port_from_be, port_to_be
from membrane.datapath.maps.base import BpfMap

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP"}


def boot_seconds() -> float:
    """The datapath's clock: bpf_ktime_get_boot_ns() is CLOCK_BOOTTIME."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True, slots=True, kw_only=True)
class CTEntry:
    """One tracked connection, as its first packet was seen (`direction` at that endpoint).

    For ICMP echo `sport` is the echo id of a request (dport 0), `dport` that of a reply.
    """

    src: IPv4Address
    dst: IPv4Address
    sport: int
    dport: int
    proto: int
    direction: str
    lifetime: int
    flags: int
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    @property
    def flag_names(self) -> tuple[str, ...]:
        return tuple(f.name or "" for f in CTFlags if self.flags & f)

    @property
    def state(self) -> str:
        """SYN_SENT / ESTABLISHED / CLOSING for TCP; ACTIVE for datagrams."""
        if self.flags & CT_F_CLOSING:
            return "CLOSING"
        if self.proto == 6:
            return "ESTABLISHED" if self.flags & CTFlags.SEEN_NON_SYN else "SYN_SENT"
        return "ACTIVE"

    def expired(self, now: float) -> bool:
        return self.lifetime < now

    def key(self) -> CTKey:
        return CTKey(saddr=ip4_to_be(self.src), daddr=ip4_to_be(self.dst),
                     sport=port_to_be(self.sport), dport=port_to_be(self.dport), proto=self.proto,
                     direction=Direction[self.direction.upper()], family=Family.IPV4)

    @classmethod
    def from_c(cls, key: CTKey, v: CTEntryC) -> CTEntry:
        return cls(
            src=ip4_from_be(key.saddr), dst=ip4_from_be(key.daddr),
            sport=port_from_be(key.sport), dport=port_from_be(key.dport), proto=key.proto,
            direction=Direction(key.direction).name.lower(), lifetime=v.lifetime, flags=v.flags,
            tx_packets=v.tx_packets, tx_bytes=v.tx_bytes, rx_packets=v.rx_packets,
            rx_bytes=v.rx_bytes,
        )


class CTMap(BpfMap[CTKey, CTEntryC]):
    key_type = CTKey
    value_type = CTEntryC

    def dump(self) -> list[CTEntry]:
        return [CTEntry.from_c(k, v) for k, v in self.items_c() if k.family == Family.IPV4]

    def gc(self, now: float | None = None) -> int:
        """Remove entries whose lifetime has passed; returns how many were removed."""
        now = boot_seconds() if now is None else now
        removed = 0
        for key, value in self.items_c():
            if value.lifetime < now and self.delete_c(key):
                removed += 1
        return removed

    def delete_all(self) -> int:
        return self.clear()
