"""Selectors: which identities a policy's subject or peer clause means.

Three kinds, as in Cilium: label selectors (`endpointSelector`, `fromEndpoints`, Kubernetes
`podSelector`/`namespaceSelector`), entities (`world`, `host`, `cluster`, ...) and prefixes
(`toCIDR`, `toCIDRSet`, Kubernetes `ipBlock`). A selector is a value: equal selectors share
one selector-cache entry however many rules use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Literal, TypeAlias

from membrane.identity import reserved
from membrane.labels import ANY, RESERVED, Labels
from membrane.types import Identity

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    """`source:key OP values`; source `any` matches the key from every source."""

    source: str
    key: str
    op: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        found = [
            lbl.value for lbl in labels
            if lbl.key == self.key and self.source in (ANY, lbl.source)
        ]
        if self.op == "In":
            return any(v in self.values for v in found)
        if self.op == "NotIn":
            return not any(v in self.values for v in found)
        if self.op == "Exists":
            return bool(found)
        return not found

    def __str__(self) -> str:
        key = self.key if self.source == ANY else f"{self.source}:{self.key}"
        if self.op == "In" and len(self.values) == 1:
            return f"{key}={self.values[0]}"
        if self.op in ("Exists", "DoesNotExist"):
            return f"{key} {self.op}"
        return f"{key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """All requirements must hold. With no requirement it selects every workload identity.

    Reserved identities (host, world, ...) are selected only by a selector that names a
    `reserved:` label, so `fromEndpoints: [{}]` means "every pod", not "everything".
    """

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def of(cls, requirements: list[Requirement]) -> LabelSelector:
        return cls(tuple(sorted(set(requirements))))

    def and_(self, other: LabelSelector) -> LabelSelector:
        return LabelSelector.of([*self.requirements, *other.requirements])

    @property
    def names_reserved(self) -> bool:
        return any(r.source == RESERVED for r in self.requirements)

    def matches(self, labels: Labels) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return "{" + ", ".join(str(r) for r in self.requirements) + "}"


Entity = Literal["world", "host", "cluster", "all", "remote-node", "init", "health",
                 "unmanaged", "kube-apiserver"]
ENTITIES: tuple[Entity, ...] = ("world", "host", "cluster", "all", "remote-node", "init",
                                "health", "unmanaged", "kube-apiserver")
# Reserved identities each entity contains (cluster also contains every workload identity,
# world every CIDR identity; `all` is the wildcard and handled by the rule, not a selection).
ENTITY_RESERVED: dict[str, frozenset[Identity]] = {
    "world": frozenset({reserved.WORLD}),
    "host": frozenset({reserved.HOST}),
    "remote-node": frozenset({reserved.REMOTE_NODE}),
    "init": frozenset({reserved.INIT}),
    "health": frozenset({reserved.HEALTH}),
    "unmanaged": frozenset({reserved.UNMANAGED}),
    "kube-apiserver": frozenset({reserved.KUBE_APISERVER}),
    "cluster": frozenset({reserved.HOST, reserved.REMOTE_NODE, reserved.INIT, reserved.HEALTH,
                          reserved.UNMANAGED, reserved.KUBE_APISERVER}),
}


@dataclass(frozen=True, slots=True)
class EntitySelector:
    entity: Entity

    def __str__(self) -> str:
        return f"entity:{self.entity}"


PrefixKind = Literal["cidr", "ipblock"]


@dataclass(frozen=True, slots=True)
class PrefixSelector:
    """Addresses in `cidr` but in none of `excepts`.

    `cidr` (CiliumNetworkPolicy toCIDR) selects the CIDR identities of mb_ipcache: addresses
    no endpoint or node owns. `ipblock` (NetworkPolicy ipBlock) selects the identities of
    mb_ipblock, which match by address whoever owns it, pods included.
    """

    kind: PrefixKind
    cidr: IPv4Network
    excepts: tuple[IPv4Network, ...] = field(default=())

    @property
    def prefixes(self) -> tuple[IPv4Network, ...]:
        return (self.cidr, *self.excepts)

    def selects_prefix(self, prefix: IPv4Network) -> bool:
        return prefix.subnet_of(self.cidr) and not any(prefix.subnet_of(e) for e in self.excepts)

    def __str__(self) -> str:
        text = f"{self.kind}:{self.cidr}"
        return text + (f" except {','.join(map(str, self.excepts))}" if self.excepts else "")


Selector: TypeAlias = LabelSelector | EntitySelector | PrefixSelector
