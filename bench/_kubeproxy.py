"""kube-proxy's two Linux layouts as text, for bench/services.py: the iptables one (an
`iptables-restore` input, as `pkg/proxy/iptables/proxier.go` writes it) and the nftables one (an
`nft -f` transaction, as `pkg/proxy/nftables/proxier.go` writes it, KEP-3866).

What is kept is what a ClusterIP packet and a sync meet: the jump rules, KUBE-SERVICES with one
rule per service port and KUBE-NODEPORTS last, KUBE-SVC-* with the off-cluster masquerade rule
(kube-proxy with --cluster-cidr) and the `statistic` rules, KUBE-SEP-* with the hairpin mark and
the DNAT, KUBE-MARK-MASQ and KUBE-POSTROUTING, and the filter chains kube-proxy hooks up; for
nftables the `service-ips` verdict map on `ip daddr . meta l4proto . th dport`, one
`service-*` chain per service port with `numgen random mod N vmap`, one `endpoint-*` chain per
endpoint, and the filter base chains with their (empty) check maps. Session affinity, NodePorts,
external IPs and load-balancer IPs are left out: the benchmark's services have none.
Pure text, no kernel calls.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MASQ_MARK = "0x4000"  # kube-proxy's default --iptables-masquerade-bit 14
LARGE_CLUSTER_ENDPOINTS = 1000  # largeClusterEndpointsThreshold: above it, no SEP comments


@dataclass(frozen=True, slots=True)
class ServicePort:
    namespace: str
    name: str
    port_name: str
    cluster_ip: str
    port: int
    endpoints: tuple[tuple[str, int], ...]
    protocol: str = "tcp"

    @property
    def port_name_string(self) -> str:
        """proxy.ServicePortName.String(): "ns/name:port" ("ns/name" when the port is unnamed)."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base


def _b32_sha256(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """kube-proxy's portProtoHash: base32(sha256(name + protocol))[:16]."""
    return _b32_sha256(service_port_name + protocol)[:16]


def svc_chain(sp: ServicePort) -> str:
    return "KUBE-SVC-" + port_proto_hash(sp.port_name_string, sp.protocol)


def sep_chain(sp: ServicePort, endpoint: tuple[str, int]) -> str:
    """servicePortEndpointChainName: the hash also covers "ip:port"."""
    ep = f"{endpoint[0]}:{endpoint[1]}"
    return "KUBE-SEP-" + _b32_sha256(sp.port_name_string + sp.protocol + ep)[:16]


# --- iptables --------------------------------------------------------------------------------
# iptablesJumpChains (+ kubelet's POSTROUTING jump): kube-proxy adds these with `iptables -I`
# once (EnsureRule Prepend); here one small restore does the same before the first sync.
_FILTER_JUMPS = (
    ("KUBE-EXTERNAL-SERVICES", "INPUT", "kubernetes externally-visible service portals", True),
    ("KUBE-EXTERNAL-SERVICES", "FORWARD", "kubernetes externally-visible service portals", True),
    ("KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", False),
    ("KUBE-SERVICES", "FORWARD", "kubernetes service portals", True),
    ("KUBE-SERVICES", "OUTPUT", "kubernetes service portals", True),
    ("KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", False),
    ("KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall", True),
    ("KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall", True),
    ("KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall", True),
)
_NAT_JUMPS = (
    ("KUBE-SERVICES", "OUTPUT", "kubernetes service portals"),
    ("KUBE-SERVICES", "PREROUTING", "kubernetes service portals"),
    ("KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules"),
)
_FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
                  "KUBE-PROXY-FIREWALL")
_NAT_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")


def iptables_jumps() -> str:
    lines = ["*filter"]
    lines += [f":{c} - [0:0]" for c in _FILTER_CHAINS]
    for dst, src, comment, new_only in _FILTER_JUMPS:
        ct = "-m conntrack --ctstate NEW " if new_only else ""
        lines.append(f'-I {src} 1 {ct}-m comment --comment "{comment}" -j {dst}')
    lines += ["COMMIT", "*nat"]
    lines += [f":{c} - [0:0]" for c in _NAT_CHAINS]
    for dst, src, comment in _NAT_JUMPS:
        lines.append(f'-I {src} 1 -m comment --comment "{comment}" -j {dst}')
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _probability(n: int) -> str:
    return f"{1.0 / n:0.10f}"


def _services_rule(sp: ServicePort) -> str:
    p = sp.protocol
    return (f'-A KUBE-SERVICES -m comment --comment "{sp.port_name_string} cluster IP" '
            f"-m {p} -p {p} -d {sp.cluster_ip} --dport {sp.port} -j {svc_chain(sp)}")


def _service_chains(sp: ServicePort, cluster_cidr: str, large: bool) -> tuple[list[str],
                                                                            list[str]]:
    """The :CHAIN lines and -A lines of one service port's KUBE-SVC and KUBE-SEP chains."""
    p, spn, svc = sp.protocol, sp.port_name_string, svc_chain(sp)
    seps = [sep_chain(sp, ep) for ep in sp.endpoints]
    chains = [f":{svc} - [0:0]", *(f":{s} - [0:0]" for s in seps)]
    rules = [f'-A {svc} -m comment --comment "{spn} cluster IP" -m {p} -p {p} '
             f"-d {sp.cluster_ip} --dport {sp.port} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"]
    n = len(sp.endpoints)
    for i, (ep, sep) in enumerate(zip(sp.endpoints, seps, strict=True)):
        comment = "" if large else f'-m comment --comment "{spn} -> {ep[0]}:{ep[1]}" '
        stat = (f"-m statistic --mode random --probability {_probability(n - i)} "
                if i < n - 1 else "")
        rules.append(f"-A {svc} {comment}{stat}-j {sep}")
    for ep, sep in zip(sp.endpoints, seps, strict=True):
        comment = "" if large else f'-m comment --comment "{spn}" '
        rules.append(f"-A {sep} {comment}-s {ep[0]}/32 -j KUBE-MARK-MASQ")
        rules.append(f"-A {sep} {comment}-m {p} -p {p} -j DNAT --to-destination {ep[0]}:{ep[1]}")
    return chains, rules


def _filter_table() -> list[str]:
    return [
        "*filter", *(f":{c} - [0:0]" for c in _FILTER_CHAINS),
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
        f"-m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
    ]


def iptables_sync(services: Sequence[ServicePort], cluster_cidr: str,
                  changed: Iterable[ServicePort] | None = None) -> str:
    """One syncProxyRules restore input (for `iptables-restore --noflush`).

    changed=None: a full sync, every chain of every service (kube-proxy's first sync, its
    periodic resync, and every sync before 1.27). Otherwise a partial sync
    (MinimizeIPTablesRestore, the default since 1.27): KUBE-SERVICES is still rewritten in full,
    but only the changed services' KUBE-SVC/KUBE-SEP chains are sent."""
    large = sum(len(s.endpoints) for s in services) > LARGE_CLUSTER_ENDPOINTS
    out = _filter_table()
    out += ["*nat", *(f":{c} - [0:0]" for c in _NAT_CHAINS)]
    rules = [
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]
    sent = services if changed is None else list(changed)
    chains: list[str] = []
    for sp in services:
        rules.append(_services_rule(sp))
    for sp in sent:
        c, r = _service_chains(sp, cluster_cidr, large)
        chains += c
        rules += r
    rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: '
                 'this must be the last rule in this chain" -m addrtype --dst-type LOCAL '
                 "-j KUBE-NODEPORTS")
    out += chains + rules + ["COMMIT"]
    return "\n".join(out) + "\n"


def iptables_incremental(sp: ServicePort, cluster_cidr: str, large: bool) -> str:
    """The least an iptables-restore can do to add one service: its new chains and one rule
    appended to KUBE-SERVICES (after the KUBE-NODEPORTS rule, which only matches local
    addresses, so a ClusterIP still reaches it). kube-proxy never does this; a lower bound."""
    chains, rules = _service_chains(sp, cluster_cidr, large)
    return "\n".join(["*nat", *chains, _services_rule(sp), *rules, "COMMIT"]) + "\n"


def iptables_empty() -> str:
    """Restore input (without --noflush) that empties and removes every chain of both tables."""
    return "*filter\nCOMMIT\n*nat\nCOMMIT\n"


# --- nftables --------------------------------------------------------------------------------
NFT_TABLE = "ip kube-proxy"


def _hash_and_truncate(name: str) -> str:
    name = _b32_sha256(name)[:8] + "-" + name
    return name if len(name) <= 240 else name[:237] + "..."


def nft_service_chain(sp: ServicePort) -> str:
    return "service-" + _hash_and_truncate(
        f"{sp.namespace}/{sp.name}/{sp.protocol}/{sp.port_name}")


def nft_endpoint_chain(sp: ServicePort, ep: tuple[str, int]) -> str:
    return "endpoint-" + _hash_and_truncate(
        f"{sp.namespace}/{sp.name}/{sp.protocol}/{sp.port_name}__{ep[0]}/{ep[1]}")


def nft_setup() -> str:
    """setupNFTables: the table, base chains, jump chains, masquerading, the (empty) maps.

    nat-output's priority is written -100: `dstnat` is the same number, but nft 1.0.6 (Debian
    12) refuses the keyword on the output hook."""
    t = NFT_TABLE
    base = (("filter-prerouting", "filter", "prerouting", "-110"),
            ("filter-input", "filter", "input", "-110"),
            ("filter-forward", "filter", "forward", "-110"),
            ("filter-output", "filter", "output", "-110"),
            ("filter-output-post-dnat", "filter", "output", "-90"),
            ("nat-prerouting", "nat", "prerouting", "-100"),
            ("nat-output", "nat", "output", "-100"),
            ("nat-postrouting", "nat", "postrouting", "100"))
    lines = [f'add table {t} {{ comment "rules for kube-proxy" ; }}']
    for name, typ, hook, prio in base:
        lines.append(f"add chain {t} {name} {{ type {typ} hook {hook} priority {prio} ; }}")
    for c in ("endpoints-check", "firewall-check", "cluster-ips-check", "services",
              "masquerading", "mark-for-masquerade", "reject-chain"):
        lines.append(f"add chain {t} {c}")
    lines.append(f"add set {t} cluster-ips {{ type ipv4_addr ; }}")
    verdict_maps = (("no-endpoint-services", "ipv4_addr . inet_proto . inet_service"),
                    ("no-endpoint-nodeports", "inet_proto . inet_service"),
                    ("firewall-ips", "ipv4_addr . inet_proto . inet_service"),
                    ("service-ips", "ipv4_addr . inet_proto . inet_service"),
                    ("service-nodeports", "inet_proto . inet_service"))
    for name, key in verdict_maps:
        lines.append(f"add map {t} {name} {{ type {key} : verdict ; }}")
    lines += [
        f"add rule {t} filter-input ct state new jump endpoints-check",
        f"add rule {t} filter-forward ct state new jump endpoints-check",
        f"add rule {t} filter-output ct state new jump endpoints-check",
        f"add rule {t} filter-forward ct state new jump cluster-ips-check",
        f"add rule {t} filter-output-post-dnat ct state new jump cluster-ips-check",
        f"add rule {t} filter-prerouting ct state new jump firewall-check",
        f"add rule {t} filter-output ct state new jump firewall-check",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}",
        f"add rule {t} masquerading mark and {MASQ_MARK} == 0 return",
        f"add rule {t} masquerading mark set mark xor {MASQ_MARK}",
        f"add rule {t} masquerading masquerade fully-random",
        f"add rule {t} reject-chain reject",
        f"add rule {t} endpoints-check ip daddr . meta l4proto . th dport "
        "vmap @no-endpoint-services",
        f"add rule {t} endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 "
        "meta l4proto . th dport vmap @no-endpoint-nodeports",
        f"add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        # After DNAT a ClusterIP left as destination has no such port: reject it.
        f"add rule {t} cluster-ips-check ip daddr @cluster-ips reject",
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 "
        "meta l4proto . th dport vmap @service-nodeports",
    ]
    return "\n".join(lines) + "\n"


def nft_services(services: Iterable[ServicePort], cluster_cidr: str) -> str:
    """The chains, rules and map/set elements of some (new or changed) service ports, as
    syncProxyRules puts them in one transaction: every chain it touches is added and
    flushed (ensureChain), then its rules written; each ClusterIP goes into `cluster-ips`
    and each service port into the `service-ips` verdict map."""
    t = NFT_TABLE
    lines: list[str] = []
    elements: list[str] = []
    ips: list[str] = []
    for sp in services:
        p, svc = sp.protocol, nft_service_chain(sp)
        eps = [nft_endpoint_chain(sp, ep) for ep in sp.endpoints]
        for chain in (*eps, svc):
            lines += [f"add chain {t} {chain}", f"flush chain {t} {chain}"]
        for ep, chain in zip(sp.endpoints, eps, strict=True):
            lines += [f"add rule {t} {chain} ip saddr {ep[0]} jump mark-for-masquerade",
                      f"add rule {t} {chain} meta l4proto {p} dnat to {ep[0]}:{ep[1]}"]
        vmap = " , ".join(f"{i} : goto {c}" for i, c in enumerate(eps))
        lines += [f"add rule {t} {svc} ip daddr {sp.cluster_ip} {p} dport {sp.port} "
                  f"ip saddr != {cluster_cidr} jump mark-for-masquerade",
                  f"add rule {t} {svc} numgen random mod {len(eps)} vmap {{ {vmap} }}"]
        ips.append(sp.cluster_ip)
        elements.append(f"{sp.cluster_ip} . {p} . {sp.port} : goto {svc}")
    for i in range(0, len(elements), 1000):  # bounded line length for nft's parser
        chunk = " , ".join(dict.fromkeys(ips[i:i + 1000]))
        lines.append(f"add element {t} cluster-ips {{ {chunk} }}")
        lines.append(f"add element {t} service-ips {{ {' , '.join(elements[i:i + 1000])} }}")
    return "\n".join(lines) + "\n"


def nft_teardown() -> str:
    """Remove kube-proxy's table (and with it every chain, map and element)."""
    return f"delete table {NFT_TABLE}\n"
