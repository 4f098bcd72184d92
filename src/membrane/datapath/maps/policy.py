"""mb_policy (hash) and mb_policy_ranges (LPM trie): the policy entries (membrane/policy.h).

`PolicyMaps` takes the entries as plain tuples, `(subject, peer, direction, proto, port, bits)`
and `(flags, cookie)` (so `membrane.policy.entries.Key`/`Value`, named tuples, fit as they are)
and puts each in its map: exact ports (`bits` 16, port not 0), any port of a protocol (`bits` 0)
and any protocol (proto 0) in the hash; port ranges, and the ICMP type 0 that the hash's
"any port" spelling cannot hold, in the trie.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from membrane.datapath.abi import (
    POLICY_RANGE_PREFIX_BASE,
    PolicyKey,
    PolicyRangeKey,
    PolicyValue,
)
from membrane.datapath.maps.base import BpfMap

KeyTuple = tuple[int, int, int, int, int, int]
ValueTuple = tuple[int, int]


def in_hash(key: KeyTuple) -> bool:
    _, _, _, proto, port, bits = key
    return proto == 0 or bits == 0 or (bits == 16 and port != 0)


def hash_key(key: KeyTuple) -> PolicyKey:
    subject, peer, direction, proto, port, bits = key
    if proto == 0 or bits == 0:
        port = 0
    return PolicyKey(subject=subject, peer=peer, direction=direction, proto=proto,
                     dport=socket.htons(port))


def range_key(key: KeyTuple) -> PolicyRangeKey:
    subject, peer, direction, proto, port, bits = key
    port &= (0xFFFF << (16 - bits)) & 0xFFFF
    return PolicyRangeKey(prefixlen=POLICY_RANGE_PREFIX_BASE + bits, subject=subject, peer=peer,
                          direction=direction, proto=proto, dport=socket.htons(port))


class PolicyHashMap(BpfMap[PolicyKey, PolicyValue]):
    key_type = PolicyKey
    value_type = PolicyValue


class PolicyRangeMap(BpfMap[PolicyRangeKey, PolicyValue]):
    key_type = PolicyRangeKey
    value_type = PolicyValue


def _value(v: ValueTuple) -> PolicyValue:
    return PolicyValue(flags=v[0], cookie=v[1])


class PolicyMaps:
    """Both policy maps behind one map-like interface (update, delete, dump, count)."""

    def __init__(self, exact: PolicyHashMap, ranges: PolicyRangeMap) -> None:
        self.exact = exact
        self.ranges = ranges
        self.name = "mb_policy"
        self.max_entries = exact.max_entries

    @classmethod
    def from_pins(cls, exact: str, ranges: str) -> PolicyMaps:
        return cls(PolicyHashMap.from_pin(exact), PolicyRangeMap.from_pin(ranges))

    def update(self, key: KeyTuple, value: ValueTuple) -> None:
        if in_hash(key):
            self.exact.update_c(hash_key(key), _value(value))
        else:
            self.ranges.update_c(range_key(key), _value(value))

    def delete(self, key: KeyTuple) -> bool:
        if in_hash(key):
            return self.exact.delete_c(hash_key(key))
        return self.ranges.delete_c(range_key(key))

    def update_many(self, entries: Iterable[tuple[KeyTuple, ValueTuple]]) -> int:
        exact, ranges = [], []
        for k, v in entries:
            if in_hash(k):
                exact.append((hash_key(k), _value(v)))
            else:
                ranges.append((range_key(k), _value(v)))
        return self.exact.update_batch(exact) + self.ranges.update_batch(ranges)

    def dump(self) -> dict[KeyTuple, ValueTuple]:
        out: dict[KeyTuple, ValueTuple] = {}
        for k, v in self.exact.items_c():
            port = socket.ntohs(k.dport)
            bits = 16 if port else 0
            out[(int(k.subject), int(k.peer), int(k.direction), int(k.proto), port, bits)] = \
                (int(v.flags), int(v.cookie))
        for rk, v in self.ranges.items_c():
            bits = rk.prefixlen - POLICY_RANGE_PREFIX_BASE
            out[(int(rk.subject), int(rk.peer), int(rk.direction), int(rk.proto),
                 socket.ntohs(rk.dport), bits)] = (int(v.flags), int(v.cookie))
        return out

    def count(self) -> int:
        return self.exact.count() + self.ranges.count()

    def clear(self) -> int:
        return self.exact.clear() + self.ranges.clear()

    def close(self) -> None:
        self.exact.close()
        self.ranges.close()
