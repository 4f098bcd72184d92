"""Hypothesis strategies for random policies, identities and packets (shared by the pure
differential test and the one through BPF_PROG_TEST_RUN)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import yaml
from hypothesis import strategies as st

from membrane.identity import HOST, WORLD
from membrane.k8s.manifests import RawObject, load_manifests
from membrane.labels import Labels, security_labels
from membrane.policy.engine import PolicyEngine
from membrane.policy.parse import parse_policy
from membrane.policy.rules import Policy
from membrane.policy.trace import Party
from membrane.types import Identity

NAMESPACES = ("x", "y")
ROLES = ("a", "b", "c")
PORTS = (53, 80, 81, 443, 8080)
CIDRS = ("192.0.2.0/24", "192.0.2.0/25", "198.51.100.0/24", "10.0.0.0/8", "0.0.0.0/0")
WORLD_IPS = ("192.0.2.1", "192.0.2.200", "198.51.100.7", "203.0.113.9")


@dataclass(frozen=True)
class Workload:
    identity: Identity
    labels: Labels
    ip: IPv4Address


def workloads() -> list[Workload]:
    out = []
    n = 256
    for ns in NAMESPACES:
        for role in ROLES:
            out.append(Workload(Identity(n), security_labels({"role": role}, ns,
                                                             {"team": ns}),
                                IPv4Address(f"10.0.{n - 255}.{n - 250}")))
            n += 1
    return out


def _match_labels(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["role", "none", "expr", "ns"]))
    if kind == "role":
        return {"matchLabels": {"role": draw(st.sampled_from(ROLES))}}
    if kind == "expr":
        op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
        expr: dict[str, Any] = {"key": "role", "operator": op}
        if op in ("In", "NotIn"):
            expr["values"] = sorted(draw(st.sets(st.sampled_from(ROLES), min_size=1)))
        return {"matchExpressions": [expr]}
    if kind == "ns":
        return {"matchLabels": {"k8s:io.kubernetes.pod.namespace":
                                draw(st.sampled_from(NAMESPACES))}}
    return {}


def _ports(draw: Any, cilium: bool) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(1, 2))):
        port = draw(st.sampled_from(PORTS))
        p: dict[str, Any] = {"port": str(port) if cilium else port,
                             "protocol": draw(st.sampled_from(["TCP", "UDP"]))}
        if draw(st.booleans()):
            p["endPort"] = port + draw(st.integers(0, 400))
        out.append(p)
    return out


@st.composite
def cilium_rule(draw: Any, direction: str) -> dict[str, Any]:
    p = "from" if direction == "ingress" else "to"
    rule: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 2))):
        what = draw(st.sampled_from(["endpoints", "entities", "cidr"]))
        if what == "endpoints":
            rule.setdefault(f"{p}Endpoints", []).append(_match_labels(draw))
        elif what == "entities":
            rule.setdefault(f"{p}Entities", []).append(
                draw(st.sampled_from(["world", "host", "cluster", "all"])))
        else:
            cidr = draw(st.sampled_from(CIDRS))
            entry: dict[str, Any] = {"cidr": cidr}
            if cidr == "192.0.2.0/24" and draw(st.booleans()):
                entry["except"] = ["192.0.2.128/25"]
            rule.setdefault(f"{p}CIDRSet", []).append(entry)
    if draw(st.booleans()):
        rule["toPorts"] = [{"ports": _ports(draw, True)}]
    return rule


@st.composite
def cilium_policy(draw: Any, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"endpointSelector": _match_labels(draw)}
    for key, direction in (("ingress", "ingress"), ("egress", "egress"),
                           ("ingressDeny", "ingress"), ("egressDeny", "egress")):
        if draw(st.integers(0, 3)) == 0 or (key in ("ingress", "egress") and draw(st.booleans())):
            spec[key] = draw(st.lists(cilium_rule(direction), min_size=1, max_size=2))
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(NAMESPACES))},
            "spec": spec}


@st.composite
def network_policy(draw: Any, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": _match_labels(draw) if draw(st.booleans()) else {}}
    spec["podSelector"].get("matchLabels", {}).pop("k8s:io.kubernetes.pod.namespace", None)
    types = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    spec["policyTypes"] = types
    for t in types:
        key, peer = ("ingress", "from") if t == "Ingress" else ("egress", "to")
        rules = []
        for _ in range(draw(st.integers(0, 2))):
            rule: dict[str, Any] = {}
            peers = []
            for _ in range(draw(st.integers(0, 2))):
                what = draw(st.sampled_from(["pod", "ns", "both", "ipblock"]))
                if what == "ipblock":
                    cidr = draw(st.sampled_from((*CIDRS, "10.0.0.0/16")))
                    blk: dict[str, Any] = {"cidr": cidr}
                    if cidr == "10.0.0.0/8" and draw(st.booleans()):
                        blk["except"] = ["10.0.2.0/24"]
                    peers.append({"ipBlock": blk})
                    continue
                entry: dict[str, Any] = {}
                if what in ("pod", "both"):
                    entry["podSelector"] = {"matchLabels": {"role": draw(st.sampled_from(ROLES))}}
                if what in ("ns", "both"):
                    entry["namespaceSelector"] = {"matchLabels": {
                        "team": draw(st.sampled_from(NAMESPACES))}} if draw(st.booleans()) else {}
                peers.append(entry)
            if peers:
                rule[peer] = peers
            if draw(st.booleans()):
                rule["ports"] = _ports(draw, False)
            rules.append(rule)
        spec[key] = rules
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(NAMESPACES))},
            "spec": spec}


@st.composite
def policy_sets(draw: Any) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 4))
    return [draw(st.one_of(cilium_policy(f"p{i}"), network_policy(f"p{i}"))) for i in range(n)]


def parse_all(docs: list[dict[str, Any]]) -> list[Policy]:
    text = yaml.safe_dump_all(docs)
    out = []
    for m in load_manifests(text, "gen.yaml"):
        assert isinstance(m, RawObject)
        out.append(parse_policy(m))
    return out


@st.composite
def packets(draw: Any) -> dict[str, Any]:
    return {
        "subject": draw(st.integers(0, len(NAMESPACES) * len(ROLES) - 1)),
        "direction": draw(st.sampled_from(["ingress", "egress"])),
        "peer": draw(st.one_of(st.integers(0, len(NAMESPACES) * len(ROLES) - 1),
                               st.sampled_from(["host", *WORLD_IPS]))),
        "proto": draw(st.sampled_from([6, 17])),
        "port": draw(st.sampled_from([*PORTS, 54, 300, 480, 8100, 9000])),
    }


def longest(prefixes: dict[IPv4Network, Identity], ip: IPv4Address) -> Identity | None:
    best = None
    for p, ident in prefixes.items():
        if ip in p and (best is None or p.prefixlen > best[0].prefixlen):
            best = (p, ident)
    return best[1] if best else None


def peer_party(engine: PolicyEngine, wl: list[Workload], peer: Any,
               host_ip: IPv4Address) -> Party:
    if isinstance(peer, int):
        w = wl[peer]
        return Party(identity=w.identity, labels=w.labels, ip=w.ip, name=str(w.identity))
    if peer == "host":
        return Party(identity=HOST, labels=Labels(), ip=host_ip, name="host")
    ip = IPv4Address(peer)
    ident = longest(engine.prefix_identities("cidr"), ip) or WORLD
    return Party(identity=ident, labels=Labels(), ip=ip, name=peer)


def block_identity(engine: PolicyEngine, ip: IPv4Address | None) -> int:
    if ip is None:
        return 0
    return int(longest(engine.prefix_identities("ipblock"), ip) or 0)
