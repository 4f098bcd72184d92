"""`policy trace`: would a new connection be allowed, and which rules decided?

Works on rules and labels, not on map entries, so it can name the policies; the differential
test holds it to the entries (`entries.decide`) and to the datapath itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from membrane.identity import HOST, WORLD
from membrane.identity.reserved import RESERVED_IDENTITIES, reserved_labels
from membrane.labels import Labels
from membrane.policy.engine import PolicyEngine
from membrane.policy.entries import REASON_ALLOWED, REASON_DEFAULT_DENY, REASON_DENY
from membrane.policy.rules import PROTOCOL_NAMES, Direction, Rule
from membrane.policy.selector import (
    ENTITY_RESERVED,
    EntitySelector,
    LabelSelector,
    PrefixSelector,
    Selector,
)
from membrane.types import Identity


@dataclass(frozen=True, slots=True, kw_only=True)
class Party:
    """One side of a connection: its identity (when known), labels and address."""

    identity: Identity | None
    labels: Labels
    ip: IPv4Address | None = None
    name: str = ""
    local: bool = False
    """An endpoint of this node: its policy is enforced here."""

    @property
    def is_workload(self) -> bool:
        return self.identity is None or (self.identity >= 256 and not self.is_prefix)

    @property
    def is_prefix(self) -> bool:
        return self.identity is not None and self.identity >= (1 << 24)


@dataclass(slots=True, kw_only=True)
class DirectionVerdict:
    direction: Direction
    endpoint: str
    enforced: bool
    reason: int
    selected_by: list[str] = field(default_factory=list)
    matched_allow: list[str] = field(default_factory=list)
    matched_deny: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.reason == REASON_ALLOWED

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction, "endpoint": self.endpoint,
            "enforced": self.enforced, "allowed": self.allowed, "reason": self.reason,
            "verdict": _verdict_text(self), "selected_by": self.selected_by,
            "allowed_by": self.matched_allow, "denied_by": self.matched_deny,
        }


def _verdict_text(v: DirectionVerdict) -> str:
    if v.reason == REASON_DENY:
        return "denied by an explicit deny rule (181)"
    if v.reason == REASON_DEFAULT_DENY:
        return "denied: no rule allows it (default deny, 133)"
    if not v.enforced and not v.matched_allow:
        return "allowed: no policy selects the endpoint in this direction"
    return "allowed"


class Tracer:
    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine

    # --- matching ----------------------------------------------------------------------------
    def _peer_matches(self, sel: Selector, peer: Party) -> bool:
        ident = peer.identity
        if isinstance(sel, LabelSelector):
            if peer.is_workload:
                return sel.matches(peer.labels)
            if ident is not None and ident in RESERVED_IDENTITIES and sel.names_reserved:
                lbl = reserved_labels(ident)
                return lbl is not None and sel.matches(lbl)
            return False
        if isinstance(sel, EntitySelector):
            if ident is not None and ident in ENTITY_RESERVED.get(sel.entity, ()):
                return True
            if sel.entity == "cluster":
                return peer.is_workload
            if sel.entity == "world":
                return peer.is_prefix or ident == WORLD
            return False
        assert isinstance(sel, PrefixSelector)
        if peer.ip is None:
            return False
        if sel.kind == "cidr" and not (peer.is_prefix or ident == WORLD):
            return False  # toCIDR does not select endpoints or nodes
        if sel.kind == "cidr" and sel.cidr.prefixlen == 0 and not sel.excepts:
            return True
        return peer.ip in sel.cidr and not any(peer.ip in e for e in sel.excepts)

    def _port_matches(self, rule: Rule, dest: Party, proto: int, port: int) -> bool:
        if rule.ports is None:
            return True
        for pm in rule.ports:
            if pm.proto != proto:
                continue
            if pm.name:
                ports = self.engine.named_ports.get(dest.identity or Identity(0), {})
                if port in ports.get((pm.name, pm.proto), frozenset()):
                    return True
            elif not pm.port or pm.port <= port <= (pm.end_port or pm.port):
                return True
        return False

    def _rule_matches(self, rule: Rule, subject: Party, peer: Party, proto: int,
                      port: int) -> bool:
        if rule.peers is not None and not any(self._peer_matches(s, peer) for s in rule.peers):
            return False
        dest = subject if rule.direction == "ingress" else peer
        return self._port_matches(rule, dest, proto, port)

    # --- one direction -------------------------------------------------------------------------
    def direction(self, direction: Direction, subject: Party, peer: Party, proto: int,
                  port: int) -> DirectionVerdict:
        rules = [
            r for rs in self.engine._subject_rules.values() for r in rs
            if r.direction == direction and r.subject.matches(subject.labels)
        ]
        enforced = any(r.default_deny for r in rules)
        v = DirectionVerdict(direction=direction, endpoint=subject.name, enforced=enforced,
                             reason=REASON_ALLOWED,
                             selected_by=sorted({r.name for r in rules}))
        for r in rules:
            if self._rule_matches(r, subject, peer, proto, port):
                (v.matched_deny if r.deny else v.matched_allow).append(r.name)
        host_allowed = (direction == "ingress" and enforced and self.engine.allow_host_ingress
                        and peer.identity == HOST)
        if host_allowed:
            v.matched_allow.append("from the node itself (allow-localhost)")
        if v.matched_deny:
            v.reason = REASON_DENY
        elif not v.matched_allow and enforced:
            v.reason = REASON_DEFAULT_DENY
        return v

    def trace(self, src: Party, dst: Party, proto: int, port: int) -> dict[str, Any]:
        steps = []
        if src.local:
            steps.append(self.direction("egress", src, dst, proto, port))
        if dst.local:
            steps.append(self.direction("ingress", dst, src, proto, port))
        allowed = all(s.allowed for s in steps)
        return {
            "from": src.name, "to": dst.name,
            "protocol": PROTOCOL_NAMES.get(proto, str(proto)), "port": port,
            "verdict": "allowed" if allowed else "denied",
            "allowed": allowed,
            "steps": [s.to_json() for s in steps],
        }
