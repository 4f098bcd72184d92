"""mb_policy: (subject, peer, direction, protocol, port prefix) -> allow/deny (membrane/policy.h).

Keys and values are plain tuples here, `(subject, peer, direction, proto, port, bits)` and
`(flags, cookie)`, so `membrane.policy.entries.Key`/`Value` (named tuples) fit as they are.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from membrane.datapath.abi import POLICY_FULL_PREFIX, POLICY_PREFIX_BASE, PolicyKey, PolicyValue
from membrane.datapath.maps.base import BpfMap

KeyTuple = tuple[int, int, int, int, int, int]
ValueTuple = tuple[int, int]


def policy_key(key: KeyTuple) -> PolicyKey:
    subject, peer, direction, proto, port, bits = key
    if proto == 0:
        prefixlen, port, bits = POLICY_PREFIX_BASE, 0, 0
    else:
        prefixlen = POLICY_PREFIX_BASE + 8 + bits
        port &= (0xFFFF << (16 - bits)) & 0xFFFF
    return PolicyKey(prefixlen=prefixlen, subject=subject, peer=peer, direction=direction,
                     proto=proto, dport=socket.htons(port))


def _tuple_of(key: PolicyKey) -> KeyTuple:
    bits = max(0, key.prefixlen - POLICY_PREFIX_BASE - 8)
    proto = key.proto if key.prefixlen > POLICY_PREFIX_BASE else 0
    port = socket.ntohs(key.dport) if proto else 0
    return (int(key.subject), int(key.peer), int(key.direction), int(proto), port, bits)


class PolicyMap(BpfMap[PolicyKey, PolicyValue]):
    key_type = PolicyKey
    value_type = PolicyValue

    def update(self, key: KeyTuple, value: ValueTuple) -> None:
        self.update_c(policy_key(key), PolicyValue(flags=value[0], cookie=value[1]))

    def delete(self, key: KeyTuple) -> bool:
        return self.delete_c(policy_key(key))

    def lookup(self, subject: int, peer: int, direction: int, proto: int,
               port: int) -> ValueTuple | None:
        """What the datapath's lookup finds (the longest matching prefix)."""
        key = PolicyKey(prefixlen=POLICY_FULL_PREFIX, subject=subject, peer=peer,
                        direction=direction, proto=proto, dport=socket.htons(port))
        v = self.lookup_c(key)
        return None if v is None else (int(v.flags), int(v.cookie))

    def update_many(self, entries: Iterable[tuple[KeyTuple, ValueTuple]]) -> int:
        return self.update_batch(
            (policy_key(k), PolicyValue(flags=v[0], cookie=v[1])) for k, v in entries
        )

    def dump(self) -> dict[KeyTuple, ValueTuple]:
        return {_tuple_of(k): (int(v.flags), int(v.cookie)) for k, v in self.items_c()}
