"""The service load-balancer maps (bpf/include/membrane/lb.h), as host-order tuples.

`LBMaps` holds them all and speaks the load-balancer's own values:
- services: `(address, port, proto, slot)` -> `(backend_id, count, rev_nat, affinity_timeout,
  flags)` (slot 0 the master entry, 1..count a backend each);
- backends: `id` -> `(address, port, proto, state)`;
- reverse NAT: `rev_nat` -> `(address, port)`;
- Maglev: `(rev_nat, index)` -> `backend_id`.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path
from typing import NamedTuple

from membrane.datapath.abi import (
    LB4AffinityKey,
    LB4AffinityValue,
    LB4Backend,
    LB4Key,
    LB4MaglevKey,
    LB4MaglevValue,
    LB4ReverseNat,
    LB4Service,
    LB4SockKey,
    LB4SockValue,
    U32Key,
)
from membrane.datapath.maps._conv import ip4_from_be, ip4_to_be, port_from_be, port_to_be
from membrane.datapath.maps.base import BpfMap


class SvcKey(NamedTuple):
    address: IPv4Address
    port: int
    proto: int
    slot: int


class SvcValue(NamedTuple):
    backend_id: int = 0
    nbackends: int = 0
    rev_nat: int = 0
    affinity_timeout: int = 0
    flags: int = 0


class BackendValue(NamedTuple):
    address: IPv4Address
    port: int
    proto: int
    state: int


class RevNatValue(NamedTuple):
    address: IPv4Address
    port: int


MaglevKey = tuple[int, int]


def svc_key(k: SvcKey) -> LB4Key:
    return LB4Key(address=ip4_to_be(k.address), dport=port_to_be(k.port), slot=k.slot,
                  proto=k.proto)


class ServicesMap(BpfMap[LB4Key, LB4Service]):
    key_type = LB4Key
    value_type = LB4Service

    def update(self, k: SvcKey, v: SvcValue) -> None:
        self.update_c(svc_key(k), _svc_value(v))

    def delete(self, k: SvcKey) -> bool:
        return self.delete_c(svc_key(k))

    def dump(self) -> dict[SvcKey, SvcValue]:
        return {
            SvcKey(ip4_from_be(k.address), port_from_be(k.dport), int(k.proto), int(k.slot)):
            SvcValue(int(v.backend_id), int(v.count), int(v.rev_nat), int(v.affinity_timeout),
                     int(v.flags))
            for k, v in self.items_c()
        }


def _svc_value(v: SvcValue) -> LB4Service:
    return LB4Service(backend_id=v.backend_id, count=v.nbackends, rev_nat=v.rev_nat,
                      affinity_timeout=v.affinity_timeout, flags=v.flags)


class BackendsMap(BpfMap[U32Key, LB4Backend]):
    key_type = U32Key
    value_type = LB4Backend

    def update(self, k: int, v: BackendValue) -> None:
        self.update_c(U32Key(id=k), LB4Backend(address=ip4_to_be(v.address),
                                               port=port_to_be(v.port), proto=v.proto,
                                               state=v.state))

    def delete(self, k: int) -> bool:
        return self.delete_c(U32Key(id=k))

    def dump(self) -> dict[int, BackendValue]:
        return {int(k.id): BackendValue(ip4_from_be(v.address), port_from_be(v.port),
                                        int(v.proto), int(v.state))
                for k, v in self.items_c()}


class RevNatMap(BpfMap[U32Key, LB4ReverseNat]):
    key_type = U32Key
    value_type = LB4ReverseNat

    def update(self, k: int, v: RevNatValue) -> None:
        self.update_c(U32Key(id=k), LB4ReverseNat(address=ip4_to_be(v.address),
                                                  port=port_to_be(v.port)))

    def delete(self, k: int) -> bool:
        return self.delete_c(U32Key(id=k))

    def dump(self) -> dict[int, RevNatValue]:
        return {int(k.id): RevNatValue(ip4_from_be(v.address), port_from_be(v.port))
                for k, v in self.items_c()}


class MaglevMap(BpfMap[LB4MaglevKey, LB4MaglevValue]):
    key_type = LB4MaglevKey
    value_type = LB4MaglevValue

    def update(self, k: MaglevKey, v: int) -> None:
        self.update_c(LB4MaglevKey(rev_nat=k[0], index=k[1]), LB4MaglevValue(backend_id=v))

    def delete(self, k: MaglevKey) -> bool:
        return self.delete_c(LB4MaglevKey(rev_nat=k[0], index=k[1]))

    def update_many(self, entries: Iterable[tuple[MaglevKey, int]]) -> int:
        return self.update_batch((LB4MaglevKey(rev_nat=k[0], index=k[1]),
                                  LB4MaglevValue(backend_id=v)) for k, v in entries)

    def dump(self) -> dict[MaglevKey, int]:
        return {(int(k.rev_nat), int(k.index)): int(v.backend_id) for k, v in self.items_c()}


class AffinityMap(BpfMap[LB4AffinityKey, LB4AffinityValue]):
    key_type = LB4AffinityKey
    value_type = LB4AffinityValue

    def dump(self) -> list[dict[str, object]]:
        return [{"client": str(ip4_from_be(k.client)), "rev_nat": int(k.rev_nat),
                 "backend_id": int(v.backend_id), "last_used": int(v.last_used)}
                for k, v in self.items_c()]


class ReverseSockMap(BpfMap[LB4SockKey, LB4SockValue]):
    key_type = LB4SockKey
    value_type = LB4SockValue

    def dump(self) -> list[dict[str, object]]:
        return [{"cookie": int(k.cookie), "backend": f"{ip4_from_be(k.address)}:"
                 f"{port_from_be(k.port)}", "frontend": f"{ip4_from_be(v.address)}:"
                 f"{port_from_be(v.port)}", "rev_nat": int(v.rev_nat)}
                for k, v in self.items_c()]


class LBMaps:
    """Every load-balancer map of a node, opened from its pins."""

    def __init__(self, pin_dir: Path) -> None:
        self.services = ServicesMap.from_pin(str(pin_dir / "mb_lb4_services"))
        self.backends = BackendsMap.from_pin(str(pin_dir / "mb_lb4_backends"))
        self.rev_nat = RevNatMap.from_pin(str(pin_dir / "mb_lb4_reverse_nat"))
        self.affinity = AffinityMap.from_pin(str(pin_dir / "mb_lb4_affinity"))
        self.maglev = MaglevMap.from_pin(str(pin_dir / "mb_lb4_maglev"))
        self.reverse_sk = ReverseSockMap.from_pin(str(pin_dir / "mb_lb4_reverse_sk"))

    def all(self) -> tuple[BpfMap, ...]:  # type: ignore[type-arg]
        return (self.services, self.backends, self.rev_nat, self.affinity, self.maglev,
                self.reverse_sk)

    def close(self) -> None:
        for m in self.all():
            m.close()
