"""Prometheus metrics of the node: flows by verdict, type, direction and protocol; policy
verdicts by action; datapath packet counters (summed over CPUs from mb_metrics: the kernel
aggregates, user space exports); endpoints, identities, map fill; lost events; reconcile
latency. One registry per agent, no module-level state."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from membrane.datapath.abi import DROP_REASON_DESC, Direction, EventType
from membrane.flows.model import (
    DROPPED,
    FORWARDED,
    MATCH_NAMES,
    PROTO_NAMES,
    TYPE_NAMES,
    Flow,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
POLICY, DROP = int(EventType.POLICY), int(EventType.DROP)


@dataclass(slots=True)
class FlowCounters:
    """Counted as flows pass the pipeline, on the events' raw numbers (named at scrape time):
    one dict increment per flow, cheap at 200k flows/s."""

    flows: Counter[tuple[int, bool, int, int]] = field(default_factory=Counter)
    """(event type, dropped, direction, protocol) -> flows."""
    policy: Counter[tuple[bool, int, int]] = field(default_factory=Counter)
    """(denied, direction, match type) -> policy verdicts."""
    drops: Counter[tuple[int, int, int]] = field(default_factory=Counter)
    """(reason, direction, protocol) -> dropped packets the drop events stand for."""

    def count(self, flows: list[Flow]) -> None:
        fl, pol = self.flows, self.policy
        for f in flows:
            ev = f.event
            t = ev.type
            if t == POLICY:
                fl[(t, ev.reason != 0, ev.direction, ev.proto)] += 1
                pol[(ev.reason != 0, ev.direction, ev.match)] += 1
            else:
                fl[(t, t == DROP, ev.direction, ev.proto)] += 1
                if t == DROP:
                    self.drops[(ev.reason, ev.direction, ev.proto)] += ev.drops

    def named_flows(self) -> Counter[tuple[str, str, str, str]]:
        out: Counter[tuple[str, str, str, str]] = Counter()
        for (t, dropped, d, p), n in self.flows.items():
            out[(TYPE_NAMES.get(t, str(t)), DROPPED if dropped else FORWARDED,
                 _direction(d), PROTO_NAMES.get(p, str(p)))] += n
        return out

    def named_policy(self) -> Counter[tuple[str, str, str]]:
        out: Counter[tuple[str, str, str]] = Counter()
        for (denied, d, m), n in self.policy.items():
            out[("deny" if denied else "allow", _direction(d),
                 MATCH_NAMES.get(m, str(m)))] += n
        return out


def _direction(d: int) -> str:
    return "INGRESS" if d == Direction.INGRESS else "EGRESS"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSnapshot:
    """What the collector reads from the agent at scrape time."""

    endpoints: int
    identities: int
    policies: int
    maps: dict[str, tuple[int, int]]
    """name -> (entries, max_entries)."""
    packets: list[tuple[str, str, int, int, int]]
    """(direction, verdict, reason, packets, bytes), summed over CPUs."""
    lost: dict[str, int]
    """where -> events lost (kernel: the ring was full; subscriber: a follower was slow)."""
    events_read: int


class _Collector(Collector):
    def __init__(self, counters: FlowCounters, snapshot: Callable[[], NodeSnapshot]) -> None:
        self.counters = counters
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        flows = CounterMetricFamily("membrane_flows_processed", "Flows seen by the agent",
                                    labels=["type", "verdict", "direction", "protocol"])
        for (t, v, d, p), n in sorted(self.counters.named_flows().items()):
            flows.add_metric([t, v, d, p], n)
        yield flows
        pol = CounterMetricFamily("membrane_policy_verdicts", "Policy verdicts on new "
                                  "connections of enforced endpoints",
                                  labels=["action", "direction", "match"])
        for (a, d, m), n in sorted(self.counters.named_policy().items()):
            pol.add_metric([a, d, m], n)
        yield pol
        drops = CounterMetricFamily("membrane_drop", "Dropped packets by reason, as drop "
                                    "events report them (a rate-limited event counts the drops "
                                    "it stands for)", labels=["reason", "direction", "protocol"])
        for (reason, dirn, proto), n in sorted(self.counters.drops.items()):
            drops.add_metric([DROP_REASON_DESC.get(reason, str(reason)), _direction(dirn),
                              PROTO_NAMES.get(proto, str(proto))], n)
        yield drops
        snap = self.snapshot()
        pk = CounterMetricFamily("membrane_datapath_packets", "Packets by direction, verdict "
                                 "and drop reason (per-CPU BPF counters, summed)",
                                 labels=["direction", "verdict", "reason"])
        by = CounterMetricFamily("membrane_datapath_bytes", "Bytes, as packets",
                                 labels=["direction", "verdict", "reason"])
        agg: Counter[tuple[str, str, str]] = Counter()
        aggb: Counter[tuple[str, str, str]] = Counter()
        for d, v, r, packets, nbytes in snap.packets:
            key = (d, v, DROP_REASON_DESC.get(r, str(r)) if r else "")
            agg[key] += packets
            aggb[key] += nbytes
        for key in sorted(agg):
            pk.add_metric(list(key), agg[key])
            by.add_metric(list(key), aggb[key])
        yield pk
        yield by
        lost = CounterMetricFamily("membrane_events_lost", "Datapath events lost, by where",
                                   labels=["where"])
        for where, n in sorted(snap.lost.items()):
            lost.add_metric([where], n)
        yield lost
        yield CounterMetricFamily("membrane_events_read", "Datapath events read from the ring",
                                  value=snap.events_read)
        for name, value, text in (("membrane_endpoints", snap.endpoints, "Local endpoints"),
                                  ("membrane_identities", snap.identities,
                                   "Security identities in use"),
                                  ("membrane_policies", snap.policies, "Imported policies")):
            yield GaugeMetricFamily(name, text, value=value)
        fill = GaugeMetricFamily("membrane_map_fill_ratio", "Entries / capacity of each BPF map",
                                 labels=["map"])
        ent = GaugeMetricFamily("membrane_map_entries", "Entries of each BPF map",
                                labels=["map"])
        for name, (n, cap) in sorted(snap.maps.items()):
            fill.add_metric([name], n / cap if cap else 0.0)
            ent.add_metric([name], n)
        yield fill
        yield ent


class NodeMetrics:
    def __init__(self, snapshot: Callable[[], NodeSnapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.counters = FlowCounters()
        self.registry.register(_Collector(self.counters, snapshot))
        self.reconcile = Histogram(
            "membrane_reconcile_duration_seconds",
            "Time to apply a change (endpoint, policy, ...) to the datapath",
            ["operation"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )

    @contextmanager
    def timed(self, operation: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.reconcile.labels(operation).observe(time.perf_counter() - t0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


