"""The flow: one datapath event with the labels, pods and policies it is about, and its outputs
(Hubble's JSON shape, the compact line of `hubble observe`, and the talk's policy log)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any

from membrane.datapath.abi import (
    DROP_REASON_DESC,
    EVENT_F_REPLY,
    HUBBLE_DROP_REASON,
    Direction,
    DropReason,
    EventType,
    PolicyMatch,
    TracePoint,
)
from membrane.datapath.events import Event

FORWARDED = "FORWARDED"
DROPPED = "DROPPED"
TYPE_NAMES: dict[int, str] = {EventType.DROP: "drop", EventType.TRACE: "trace",
              EventType.POLICY: "policy-verdict"}
TYPES_BY_NAME: dict[str, int] = {v: k for k, v in TYPE_NAMES.items()}
# Cilium's monitor message types, which Hubble reports in event_type.type.
MONITOR_TYPE: dict[int, int] = {EventType.DROP: 1, EventType.TRACE: 4, EventType.POLICY: 5}
PROTO_NAMES: dict[int, str] = {6: "TCP", 17: "UDP", 1: "ICMPv4", 132: "SCTP"}
MATCH_NAMES: dict[int, str] = {PolicyMatch.NONE: "none", PolicyMatch.L3_ONLY: "L3-Only",
               PolicyMatch.L3_L4: "L3-L4", PolicyMatch.L4_ONLY: "L4-Only",
               PolicyMatch.ALL: "all"}
TRACE_NAMES: dict[int, str] = {TracePoint.NEW: "new", TracePoint.REPLY: "reply",
                               TracePoint.CLOSE: "close"}
# Where the event was seen, as Hubble's trace_observation_point names it.
OBS_POINT: dict[int, str] = {Direction.INGRESS: "TO_ENDPOINT",
                             Direction.EGRESS: "FROM_ENDPOINT"}
TCP_FLAG_NAMES = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10),
                  ("URG", 0x20), ("ECE", 0x40), ("CWR", 0x80))
ICMP_NAMES: dict[int, str] = {0: "EchoReply", 3: "DestinationUnreachable", 8: "EchoRequest",
              11: "TimeExceeded", 12: "ParameterProblem"}


@dataclass(frozen=True, slots=True)
class Party:
    """One end of a flow, as Hubble's Endpoint: the local endpoint id (0 when not local), the
    security identity, and for pods their namespace, name and labels."""

    ID: int
    identity: int
    namespace: str
    pod_name: str
    labels: tuple[str, ...]
    ip: str = ""

    @property
    def name(self) -> str:
        """`ns/pod`, else the identity's entity (`world`, `host`, a CIDR), else the address."""
        if self.pod_name:
            return f"{self.namespace}/{self.pod_name}"
        for label in self.labels:
            if label.startswith("reserved:"):
                return label.split(":", 1)[1]
        return self.ip

    def short_labels(self) -> str:
        """The pod's own labels as the talk prints them (`role=frontend`), else its name."""
        own = [lbl.split(":", 1)[1] for lbl in self.labels if lbl.startswith("k8s:")
               and not lbl.startswith(("k8s:io.kubernetes.pod.namespace=",
                                       "k8s:io.cilium.k8s.namespace.labels."))]
        return ",".join(own) if own else self.name

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.ID:
            out["ID"] = self.ID
        out["identity"] = self.identity
        if self.namespace:
            out["namespace"] = self.namespace
        out["labels"] = list(self.labels)
        if self.pod_name:
            out["pod_name"] = self.pod_name
        return out


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """A policy named by a flow, as Hubble's Policy (`kind` CiliumNetworkPolicy, ...)."""

    kind: str
    namespace: str
    name: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        out["kind"] = self.kind
        return out

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else \
            f"{self.kind} {self.name}"


class Flow:
    """An enriched event. A plain slotted class: the pipeline builds hundreds of thousands a
    second, and each refers to shared Party objects instead of copying labels."""

    __slots__ = ("destination", "event", "interface", "node", "policies", "source", "time")

    def __init__(self, event: Event, time: float, source: Party, destination: Party,
                 node: str, interface: str, policies: tuple[PolicyRef, ...]) -> None:
        self.event = event
        self.time = time
        self.source = source
        self.destination = destination
        self.node = node
        self.interface = interface
        self.policies = policies

    # --- properties the filters and formats share ---------------------------------------------
    @property
    def type(self) -> str:
        return TYPE_NAMES.get(self.event.type, str(self.event.type))

    @property
    def verdict(self) -> str:
        ev = self.event
        if ev.type == EventType.DROP or (ev.type == EventType.POLICY and ev.reason):
            return DROPPED
        return FORWARDED

    @property
    def direction(self) -> str:
        return "INGRESS" if self.event.direction == Direction.INGRESS else "EGRESS"

    @property
    def is_reply(self) -> bool:
        return bool(self.event.flags & EVENT_F_REPLY)

    @property
    def protocol(self) -> str:
        return PROTO_NAMES.get(self.event.proto, str(self.event.proto))

    @property
    def has_ports(self) -> bool:
        return self.event.proto in (6, 17, 132)

    def tcp_flags(self) -> list[str]:
        f = self.event.tcp_flags
        return [name for name, bit in TCP_FLAG_NAMES if f & bit]

    def summary(self) -> str:
        ev = self.event
        if ev.proto == 6:
            return "TCP Flags: " + ", ".join(self.tcp_flags())
        if ev.proto == 1:
            return "ICMPv4 " + ICMP_NAMES.get(ev.icmp_type, f"type {ev.icmp_type}")
        return self.protocol

    def allowed(self) -> tuple[PolicyRef, ...]:
        return self.policies if self.verdict == FORWARDED else ()

    def denied(self) -> tuple[PolicyRef, ...]:
        """Policies deny only with their reasons: a drop for another reason (conntrack full,
        ...) after policy allowed names no policy."""
        if self.verdict == DROPPED and self.event.reason in (DropReason.POLICY,
                                                             DropReason.POLICY_DENY):
            return self.policies
        return ()

    def iso_time(self) -> str:
        return _iso(self.time)

    # --- outputs --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Hubble's GetFlowsResponse: {"flow": {...}, "node_name", "time"}."""
        ev = self.event
        t = self.iso_time()
        flow: dict[str, Any] = {"time": t, "verdict": self.verdict}
        if self.verdict == DROPPED:
            flow["drop_reason"] = ev.reason
            flow["drop_reason_desc"] = HUBBLE_DROP_REASON.get(ev.reason, str(ev.reason))
        if ev.saddr or ev.daddr:
            flow["IP"] = {"source": str(IPv4Address(ev.saddr)),
                          "destination": str(IPv4Address(ev.daddr)), "ipVersion": "IPv4"}
        l4 = self._l4()
        if l4:
            flow["l4"] = l4
        flow["source"] = self.source.to_json()
        flow["destination"] = self.destination.to_json()
        flow["Type"] = "L3_L4"
        flow["node_name"] = self.node
        flow["event_type"] = {"type": MONITOR_TYPE.get(ev.type, 0),
                              "sub_type": ev.reason if ev.type == EventType.DROP else ev.subtype}
        flow["traffic_direction"] = self.direction
        if ev.type == EventType.POLICY:
            flow["policy_match_type"] = ev.match
        if ev.type == EventType.TRACE:
            flow["trace_observation_point"] = OBS_POINT.get(ev.direction, "UNKNOWN_POINT")
            flow["trace_reason"] = TRACE_NAMES.get(ev.subtype, "unknown").upper()
        if ev.ifindex:
            flow["interface"] = {"index": ev.ifindex, "name": self.interface}
        flow["is_reply"] = self.is_reply
        flow["Summary"] = self.summary()
        if ev.drops > 1:
            flow["drops"] = ev.drops
        key = "ingress" if ev.direction == Direction.INGRESS else "egress"
        for what, refs in (("allowed", self.allowed()), ("denied", self.denied())):
            if refs:
                flow[f"{key}_{what}_by"] = [p.to_json() for p in refs]
        return {"flow": flow, "node_name": self.node, "time": t}

    def _l4(self) -> dict[str, Any]:
        ev = self.event
        if ev.proto == 6:
            return {"TCP": {"source_port": ev.sport, "destination_port": ev.dport,
                            "flags": {name: True for name in self.tcp_flags()}}}
        if ev.proto == 17:
            return {"UDP": {"source_port": ev.sport, "destination_port": ev.dport}}
        if ev.proto == 132:
            return {"SCTP": {"source_port": ev.sport, "destination_port": ev.dport}}
        if ev.proto == 1:
            return {"ICMPv4": {"type": ev.icmp_type}}
        return {}

    def compact(self) -> str:
        """`hubble observe`'s line: time, source (port, identity), destination, what, verdict."""
        ev = self.event
        src = self._end(self.source, ev.sport)
        dst = self._end(self.destination, ev.dport)
        if ev.type == EventType.DROP:
            what = DROP_REASON_DESC.get(ev.reason, f"drop reason {ev.reason}")
        elif ev.type == EventType.POLICY:
            what = f"policy-verdict:{MATCH_NAMES.get(ev.match, ev.match)} {self.direction}"
            if ev.reason:
                what += f" {DROP_REASON_DESC.get(ev.reason, ev.reason)}"
        else:
            what = ("to-endpoint" if ev.direction == Direction.INGRESS else "from-endpoint") + \
                f" {TRACE_NAMES.get(ev.subtype, '')}"
        by = ""
        if self.policies:
            by = " by " + ", ".join(str(p) for p in self.policies)
        reply = " reply" if self.is_reply and not (
            ev.type == EventType.TRACE and ev.subtype == TracePoint.REPLY) else ""
        return (f"{_stamp(self.time)}: {src} -> {dst} {what} {self.verdict}{reply}"
                f" ({self.summary()}){by}")

    def _end(self, party: Party, port: int) -> str:
        where = party.name or "?"
        if self.has_ports and port:
            where += f":{port}"
        return f"{where} (ID:{party.identity})"

    def policy_line(self) -> str | None:
        """The talk's log, `23:15:01: allow: role=frontend -> role=backend`, for policy
        verdicts; None for other flows."""
        if self.event.type != EventType.POLICY:
            return None
        action = "allow" if self.verdict == FORWARDED else "deny"
        clock = time.strftime("%H:%M:%S", time.localtime(self.time))
        return f"{clock}: {action}: {self.source.short_labels()} -> " \
               f"{self.destination.short_labels()}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def _stamp(t: float) -> str:
    lt = time.localtime(t)
    return time.strftime("%b %e %H:%M:%S", lt) + f".{int((t % 1) * 1000):03d}"


def monitor_line(ev: Event) -> str:
    """A raw event the way `cilium monitor` prints it."""
    tup = _tuple(ev)
    ids = f"identity {ev.src_identity}->{ev.dst_identity}"
    direction = "ingress" if ev.direction == Direction.INGRESS else "egress"
    if ev.type == EventType.DROP:
        why = DROP_REASON_DESC.get(ev.reason, f"reason {ev.reason}")
        count = f" ({ev.drops} drops)" if ev.drops > 1 else ""
        return (f"xx drop ({why}) {direction} of endpoint {ev.ep_id}, ifindex {ev.ifindex}, "
                f"{ids}{count}: {tup}")
    if ev.type == EventType.POLICY:
        remote = ev.src_identity if ev.direction == Direction.INGRESS else ev.dst_identity
        action = "deny" if ev.reason else "allow"
        return (f"Policy verdict log: local EP ID {ev.ep_id}, remote ID {remote}, proto "
                f"{ev.proto}, {direction}, action {action}, match "
                f"{MATCH_NAMES.get(ev.match, ev.match)}, {tup}")
    arrow = "->" if ev.direction == Direction.INGRESS else "<-"
    state = TRACE_NAMES.get(ev.subtype, str(ev.subtype))
    reply = " reply" if ev.flags & EVENT_F_REPLY else ""
    return (f"{arrow} endpoint {ev.ep_id} {ids} state {state}{reply} ifindex {ev.ifindex}: "
            f"{tup}")


def _tuple(ev: Event) -> str:
    src, dst = IPv4Address(ev.saddr), IPv4Address(ev.daddr)
    proto = PROTO_NAMES.get(ev.proto, str(ev.proto)).lower()
    if ev.proto in (6, 17, 132):
        text = f"{src}:{ev.sport} -> {dst}:{ev.dport} {proto}"
    else:
        text = f"{src} -> {dst} {proto}"
    if ev.proto == 6:
        text += " " + ",".join(n for n, bit in TCP_FLAG_NAMES if ev.tcp_flags & bit)
    elif ev.proto == 1:
        text += " " + ICMP_NAMES.get(ev.icmp_type, f"type {ev.icmp_type}")
    return text
