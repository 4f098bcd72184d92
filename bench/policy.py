"""Policy benchmarks, JSON on stdout (not asserted anywhere):

1. computing 1,000 rules against 10,000 identities (time, peak Python memory), against a
   baseline measured in the same run: the same rules evaluated without the selector cache
   (every rule's selectors matched against every identity);
2. adding the 10,001st pod whose labels already have an identity: time and map writes through
   the agent's own code path (allocator -> policy service -> real pinned maps), against a full
   recompute-and-diff of every entry (a non-incremental control plane);
3. the datapath's policy lookup with 16 and with 16,384 entries in mb_policy, through
   BPF_PROG_TEST_RUN on a first packet that policy refuses (so every run does the lookups).
"""

from __future__ import annotations

import json
import secrets
import statistics
import sys
import tempfile
import time
import tracemalloc
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "privileged"))

from packets import ETH_P_IP, SYN, eth, ipv4, tcp  # noqa: E402

from membrane.agent.app import DEFAULT_BPF_DIR  # noqa: E402
from membrane.agent.policy import PolicyService  # noqa: E402
from membrane.datapath import libbpf  # noqa: E402
from membrane.datapath.abi import SkBuff  # noqa: E402
from membrane.datapath.loader import PIN_ROOT, PROG_TO, Datapath  # noqa: E402
from membrane.datapath.maps.endpoints import EndpointEntry  # noqa: E402
from membrane.identity import LocalIdentityAllocator  # noqa: E402
from membrane.k8s.manifests import RawObject  # noqa: E402
from membrane.labels import Labels, security_labels  # noqa: E402
from membrane.policy.engine import PolicyEngine  # noqa: E402
from membrane.policy.parse import parse_policy  # noqa: E402
from membrane.policy.rules import Policy  # noqa: E402
from membrane.types import Identity  # noqa: E402

NAMESPACES = 100
APPS = 100  # per namespace: 10,000 identities
RULES = 1000


def policies() -> list[Policy]:
    """1,000 CiliumNetworkPolicies: app-k in ns-n accepts app-(k+1) of its namespace on 8080."""
    out = []
    for i in range(RULES):
        ns, app = i % NAMESPACES, i // NAMESPACES
        body = {
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": f"p{i}", "namespace": f"ns-{ns}"},
            "spec": {"endpointSelector": {"matchLabels": {"app": f"app-{app}"}},
                     "ingress": [{"fromEndpoints": [{"matchLabels": {"app": f"app-{app + 1}"}}],
                                  "toPorts": [{"ports": [{"port": "8080",
                                                          "protocol": "TCP"}]}]}]},
        }
        out.append(parse_policy(RawObject(kind="CiliumNetworkPolicy", api_version="cilium.io/v2",
                                          namespace=f"ns-{ns}", name=f"p{i}", body=body,
                                          where=f"p{i}")))
    return out


def identity_labels() -> list[Labels]:
    return [security_labels({"app": f"app-{a}", "pod-template-hash": "abc"}, f"ns-{n}", {})
            for n in range(NAMESPACES) for a in range(APPS)]


def naive_selections(pols: list[Policy], labels: list[Labels]) -> int:
    """Baseline: every selector of every rule matched against every identity."""
    n = 0
    for p in pols:
        for r in p.rules:
            subjects = [i for i, lbl in enumerate(labels) if r.subject.matches(lbl)]
            peers = [i for i, lbl in enumerate(labels)
                     if any(s.matches(lbl) for s in r.peers or ()  # type: ignore[union-attr]
                            if hasattr(s, "matches"))]
            n += len(subjects) * max(1, len(peers))
    return n


def bench_compute() -> dict[str, object]:
    pols, labels = policies(), identity_labels()
    t0 = time.perf_counter()
    naive = naive_selections(pols, labels)
    t_naive = time.perf_counter() - t0

    tracemalloc.start()
    t0 = time.perf_counter()
    engine = PolicyEngine(capacity=1 << 20)
    for i, lbl in enumerate(labels):
        engine.identity_added(Identity(256 + i), lbl)
    t_ids = time.perf_counter() - t0
    t1 = time.perf_counter()
    engine.upsert(pols)
    t_rules = time.perf_counter() - t1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "rules": RULES, "identities": len(labels), "entries": engine.total,
        "identities_then_rules_s": round(t_ids + t_rules, 3),
        "identities_s": round(t_ids, 3), "rules_s": round(t_rules, 3),
        "peak_python_memory_mib": round(peak / (1 << 20), 1),
        "baseline_no_selector_cache_s": round(t_naive, 3),
        "baseline_pairs": naive,
        "ratio_to_baseline": round((t_ids + t_rules) / t_naive, 3),
    }


class CountingMap:
    """Counts writes on the way to a real map."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.writes = 0

    def update(self, *a: object) -> None:
        self.writes += 1
        self.inner.update(*a)  # type: ignore[attr-defined]

    def delete(self, *a: object) -> object:
        self.writes += 1
        return self.inner.delete(*a)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def bench_pod_add(dp: Datapath, tmp: Path) -> dict[str, object]:
    for m in (dp.policy, dp.ipcache, dp.endpoints):
        m.clear()
    alloc = LocalIdentityAllocator()
    svc = PolicyService(datapath=dp, identities=alloc, state_dir=tmp, endpoints=lambda: [],
                        reconcile_ipcache=lambda: 0)
    svc.loading = False
    svc.engine.upsert(policies())
    labels = identity_labels()
    for lbl in labels:  # 10,000 pods, one per identity, as the endpoint manager does it
        ident = alloc.allocate(lbl)
        svc.identity_added(ident, lbl)
    dp.policy.update_many(svc.engine.all_entries().items())
    entries = dp.policy.count()

    counting = CountingMap(dp.policy)
    svc.dp = type("DP", (), {"policy": counting, "ipblock": dp.ipblock})()  # type: ignore[assignment]
    samples, writes = [], []
    for k in range(200):  # the 10,001st pod (and 199 more like it), labels already known
        lbl = labels[k * 37 % len(labels)]
        ip = IPv4Address(f"10.99.{k // 200}.{k % 200 + 1}")
        t0 = time.perf_counter()
        ident = alloc.allocate(lbl)
        if alloc.refcount(ident) == 1:
            svc.identity_added(ident, lbl)
        dp.endpoints.update(EndpointEntry(ip=ip, ep_id=1000 + k, ifindex=1, mac="02:00:00:00:00:01",
                                          node_mac="02:00:00:00:00:02", identity=ident))
        dp.ipcache.update(IPv4Network(f"{ip}/32"), ident)
        samples.append(time.perf_counter() - t0)
        writes.append(counting.writes)
    # the first pod of a new identity that rules select (as subject and as peer)
    new = security_labels({"app": "app-5"}, "ns-0", {"tier": "new"})
    before = counting.writes
    t0 = time.perf_counter()
    ident = alloc.allocate(new)
    svc.identity_added(ident, new)
    t_new = time.perf_counter() - t0
    new_writes = counting.writes - before
    # baseline: a control plane that recomputes every entry and diffs against the map
    t0 = time.perf_counter()
    full = {}
    for s in list(svc.engine.labels):
        full.update(svc.engine.compute(s))
    actual = dp.policy.dump()
    diff = sum(1 for k, v in full.items() if actual.get(k) != v)
    t_full = time.perf_counter() - t0
    p50 = statistics.median(samples)
    return {
        "policy_map_entries": entries,
        "existing_labels_pod_add_p50_us": round(p50 * 1e6, 1),
        "existing_labels_pod_add_p95_us": round(sorted(samples)[int(len(samples) * .95)] * 1e6, 1),
        "existing_labels_policy_writes": writes[-1],
        "new_identity_pod_add_us": round(t_new * 1e6, 1),
        "new_identity_policy_writes": new_writes,
        "baseline_full_recompute_s": round(t_full, 3),
        "baseline_full_recompute_diff": diff,
        "ratio_to_baseline": round(p50 / t_full, 6),
    }


def _lookup_setup(dp: Datapath, size: int) -> bytes:
    subject, peer = 300, 301
    dp.endpoints.update(EndpointEntry(ip=IPv4Address("10.98.0.2"), ep_id=5, ifindex=1,
                                      mac="02:00:00:00:00:0a", node_mac="02:00:00:00:01:0a",
                                      identity=subject))
    dp.ipcache.update(IPv4Network("10.98.0.3/32"), peer)
    dp.ipcache.update(IPv4Network("0.0.0.0/0"), 2)
    entries = [((subject, 0, 1, 0, 0, 0), (2, 0))]  # default deny for the subject
    # other peers' exact-port entries, as NetworkPolicies with ports write them
    entries += [((subject, 1000 + i, 1, 6, 80, 16), (0, 1)) for i in range(size - 1)]
    dp.policy.update_many(entries)
    assert dp.policy.count() == size
    return eth("02:00:00:00:00:0a", "02:00:00:00:01:0a", ETH_P_IP,
               ipv4("10.98.0.3", "10.98.0.2", 6, tcp(40000, 3306, SYN)))


def bench_lookup(small: Datapath, large: Datapath) -> dict[str, object]:
    """Two nodes' datapaths side by side, 16 and 16,384 entries, measured in alternation."""
    frames = {16: _lookup_setup(small, 16), 16384: _lookup_setup(large, 16384)}
    dps = {16: small, 16384: large}
    runs: dict[int, list[float]] = {16: [], 16384: []}
    ctx = SkBuff(ifindex=1)
    for _ in range(9):
        for size in (16, 16384):
            fd = dps[size].prog_fd(PROG_TO)
            runs[size].append(libbpf.prog_test_run(fd, frames[size], ctx=ctx,
                                                   repeat=100_000)[2])
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "case": "first packet refused by default deny (every run does all lookups)",
        "entries_16_ns_per_packet": round(med[16], 1),
        "entries_16384_ns_per_packet": round(med[16384], 1),
        "spread_16_ns": [round(min(runs[16]), 1), round(max(runs[16]), 1)],
        "spread_16384_ns": [round(min(runs[16384]), 1), round(max(runs[16384]), 1)],
        "ratio_16384_to_16": round(med[16384] / med[16], 3),
    }


def main() -> None:
    nodes = [f"bench{secrets.token_hex(3)}" for _ in range(2)]
    dps = [Datapath.open(n, DEFAULT_BPF_DIR, PIN_ROOT) for n in nodes]
    try:
        result: dict[str, object] = {"bench": "policy"}
        result["datapath_lookup"] = bench_lookup(dps[0], dps[1])
        result["compute"] = bench_compute()
        with tempfile.TemporaryDirectory() as tmp:
            result["pod_add"] = bench_pod_add(dps[0], Path(tmp))
    finally:
        for dp, n in zip(dps, nodes, strict=True):
            dp.close()
            Datapath.remove_pins(n, PIN_ROOT)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
