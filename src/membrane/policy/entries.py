"""Policy map entries as values, and the datapath's decision over them, in Python.

`Key`/`Value` are what `mb_policy`/`mb_policy_ranges` hold (membrane/policy.h), without the C
layout: a port prefix of `bits` bits (0-16) of `port`, protocol 0 for any. `decide` is the same
decision as `mb_policy_decide` in bpf/lib/policy.h; the differential test holds them to each
other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from membrane.identity import HOST
from membrane.types import Identity

INGRESS, EGRESS = 1, 2
DIRECTION_NUMBER = {"ingress": INGRESS, "egress": EGRESS}
DIRECTION_NAME = {INGRESS: "ingress", EGRESS: "egress"}
ANY_PEER = Identity(0)
F_DENY = 1 << 0
F_DEFAULT_DENY = 1 << 1

REASON_ALLOWED = 0
REASON_DEFAULT_DENY = 133
REASON_DENY = 181


class Key(NamedTuple):
    subject: int
    peer: int
    direction: int
    proto: int
    port: int
    bits: int
    """How many leading bits of `port` must match (16 an exact port, 0 any port)."""

    def covers(self, proto: int, port: int) -> bool:
        if self.proto == 0:
            return True
        if self.proto != proto:
            return False
        shift = 16 - self.bits
        return (port >> shift) == (self.port >> shift)

    def covers_key(self, other: Key) -> bool:
        """Every packet `other` matches, this matches too (same subject, peer, direction)."""
        if self.proto == 0:
            return True
        if other.proto != self.proto or other.bits < self.bits:
            return False
        return self.covers(other.proto, other.port)

    @property
    def length(self) -> int:
        return 0 if self.proto == 0 else 8 + self.bits


class Value(NamedTuple):
    flags: int
    cookie: int

    @property
    def deny(self) -> bool:
        return bool(self.flags & F_DENY)

    @property
    def default_deny(self) -> bool:
        return bool(self.flags & F_DEFAULT_DENY)


def port_prefixes(start: int, end: int) -> list[tuple[int, int]]:
    """The fewest (port, bits) prefixes covering start..end inclusive."""
    out: list[tuple[int, int]] = []
    while start <= end:
        size = 1
        while start % (size * 2) == 0 and start + size * 2 - 1 <= end and size * 2 <= 65536:
            size *= 2
        out.append((start, 16 - size.bit_length() + 1))
        start += size
    return out


def longest_match(entries: Mapping[Key, Value], subject: int, peer: int, direction: int,
                  proto: int, port: int) -> tuple[Key, Value] | None:
    """The LPM trie's answer for one lookup."""
    best: tuple[Key, Value] | None = None
    for key, value in _group(entries, subject, peer, direction):
        if key.covers(proto, port) and (best is None or key.length > best[0].length):
            best = (key, value)
    return best


def _group(entries: Mapping[Key, Value], subject: int, peer: int,
           direction: int) -> Iterable[tuple[Key, Value]]:
    if isinstance(entries, IndexedEntries):
        return entries.group(subject, peer, direction)
    return ((k, v) for k, v in entries.items()
            if k.subject == subject and k.peer == peer and k.direction == direction)


class IndexedEntries(dict[Key, Value]):
    """A dict of entries that can list one (subject, peer, direction) group fast."""

    def group(self, subject: int, peer: int, direction: int) -> list[tuple[Key, Value]]:
        idx = self.__dict__.get("_idx")
        if idx is None:
            idx = {}
            for k, v in self.items():
                idx.setdefault((k.subject, k.peer, k.direction), []).append((k, v))
            self.__dict__["_idx"] = idx
        return list(idx.get((subject, peer, direction), ()))


def in_hash(key: Key) -> bool:
    """Whether the datapath keeps this entry in the hash (exact port, any port, any protocol)
    or in the port-range trie (ranges, and ICMP type 0, which the hash would read as "any").
    The same rule as membrane.datapath.maps.policy."""
    return key.proto == 0 or key.bits == 0 or (key.bits == 16 and key.port != 0)


def _found(entries: Mapping[Key, Value], subject: int, peer: int, direction: int, proto: int,
           port: int) -> list[Value]:
    """What the datapath's four lookups for one peer identity find."""
    out = []
    probes = [Key(subject, peer, direction, proto, 0, 0), Key(subject, peer, direction, 0, 0, 0)]
    if port:
        probes.insert(0, Key(subject, peer, direction, proto, port, 16))
    for k in probes:
        v = entries.get(k)
        if v is not None:
            out.append(v)
    best: tuple[Key, Value] | None = None
    for k, v in _group(entries, subject, peer, direction):
        if not in_hash(k) and k.covers(proto, port) and (best is None or k.bits > best[0].bits):
            best = (k, v)
    if best is not None:
        out.append(best[1])
    return out


def decide(entries: Mapping[Key, Value], *, subject: int, peer: int, block: int,
           direction: int, proto: int, port: int) -> tuple[int, Value | None]:
    """(drop reason or 0, the deciding entry's value) for a new connection's first packet."""
    found = _found(entries, subject, peer, direction, proto, port)
    found += _found(entries, subject, ANY_PEER, direction, proto, port)
    if block:
        found += _found(entries, subject, block, direction, proto, port)
    for v in found:
        if v.deny:
            return REASON_DENY, v
    for v in found:
        if not v.default_deny:
            return REASON_ALLOWED, v
    if found:
        return REASON_DEFAULT_DENY, found[0]
    return REASON_ALLOWED, None


def host_allow_key(subject: int) -> Key:
    """Traffic from the node into its endpoints is allowed, as Cilium's allow-localhost."""
    return Key(subject, HOST, INGRESS, 0, 0, 0)
