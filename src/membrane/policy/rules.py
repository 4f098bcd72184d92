"""The policy model every input kind is translated into: rules of subject, peers and ports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from membrane.policy.selector import LabelSelector, Selector

Direction = Literal["ingress", "egress"]
DIRECTIONS: tuple[Direction, ...] = ("ingress", "egress")

TCP, UDP, SCTP, ICMP = 6, 17, 132, 1
PROTOCOLS: dict[str, int] = {"TCP": TCP, "UDP": UDP, "SCTP": SCTP, "ICMP": ICMP}
PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOLS.items()} | {0: "ANY"}


@dataclass(frozen=True, slots=True, order=True)
class PortMatch:
    """A protocol and a port range; 0 means any. `name` is a named port, resolved against the
    destination pod's container ports (its `proto` then says which declaration). For ICMP the
    port is the ICMP type."""

    proto: int
    port: int = 0
    end_port: int = 0
    name: str = ""

    def __str__(self) -> str:
        proto = PROTOCOL_NAMES.get(self.proto, str(self.proto))
        if self.name:
            return f"{self.name}/{proto}"
        if not self.port:
            return proto
        if self.end_port and self.end_port != self.port:
            return f"{self.port}-{self.end_port}/{proto}"
        return f"{self.port}/{proto}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One allow or deny clause of one policy.

    `peers` None is any peer (no L3 clause, or the `all` entity); an empty tuple selects no
    peer: the rule only puts its subjects into default deny (Cilium's `ingress: [{}]`,
    NetworkPolicy's `policyTypes` without rules). `ports` None is every protocol and port.
    """

    policy: str
    """The policy's name as users write it: `CiliumNetworkPolicy x/allow-web`."""
    path: str
    """Where in the policy: `spec.ingress[0]`."""
    direction: Direction
    subject: LabelSelector
    peers: tuple[Selector, ...] | None
    ports: tuple[PortMatch, ...] | None
    deny: bool = False
    default_deny: bool = True
    cookie: int = 0
    """The policy's number, which the datapath reports as the deciding policy."""

    @property
    def name(self) -> str:
        return f"{self.policy} {self.path}"


@dataclass(frozen=True, slots=True)
class Policy:
    kind: str
    namespace: str | None
    name: str
    rules: tuple[Rule, ...]
    source: dict[str, object]
    """The object as imported, for `policy get`."""

    @property
    def key(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else \
            f"{self.kind} {self.name}"
