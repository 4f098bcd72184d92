"""The agent's flow pipeline: the events ring -> enrichment -> the flow store, metrics and export.

The ring is read on the event loop thread a bounded batch at a time (`BATCH`): its fd is
pollable and level-triggered, so when a batch leaves events behind the loop runs every other
ready callback (API requests, timers) before it reads the next one.

The kernel does not wake the reader for every event (that is a context switch per connection,
~20 µs of a request's latency on a small machine): with `flush_ms` set the datapath wakes it
only when an eighth of the ring is waiting, and a timer drains the ring every `flush_ms`
meanwhile, so a flow reaches the store at most that late when traffic is light.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from membrane.datapath.events import Event, EventRing
from membrane.datapath.maps.config import NodeConfigValue
from membrane.flows.enrich import EndpointView, Enricher
from membrane.flows.metrics import NodeMetrics, NodeSnapshot
from membrane.flows.model import PolicyRef
from membrane.flows.store import DEFAULT_CAPACITY, FlowStore, JsonlExporter
from membrane.types import Identity

if TYPE_CHECKING:
    from membrane.agent.app import Agent

log = logging.getLogger(__name__)
BATCH = 2048
"""Events per read: ~2 ms of work, so the loop never waits longer than that for a turn."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowConfig:
    capacity: int = DEFAULT_CAPACITY
    visibility: bool = True
    """Trace and policy-verdict events; drops are always reported."""
    drop_notify_ms: int = 1000
    flush_ms: int = 10
    """Drain the ring at least this often; the kernel wakes the reader early only when an eighth
    of the ring is waiting. 0: woken at every event."""
    export_path: Path | None = None
    export_max_bytes: int = 64 << 20
    export_backups: int = 3


class AgentDirectory:
    """The Directory the enricher reads: endpoints, identities and policies of this agent.
    Called on the loop thread while the datapath thread changes them: it copies what it reads
    (a dict copy is atomic under the GIL) and the enricher caches are dropped after changes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._by_ip: dict[int, EndpointView] | None = None
        self._by_ifindex: dict[int, EndpointView] = {}

    def invalidate(self) -> None:
        self._by_ip = None

    def _index(self) -> dict[int, EndpointView]:
        if self._by_ip is None:
            by_ip: dict[int, EndpointView] = {}
            by_ifindex: dict[int, EndpointView] = {}
            for ep in list(self.agent.endpoints.endpoints.values()):
                ns, _, pod = (ep.pod or "").partition("/")
                view = EndpointView(id=int(ep.id), namespace=ns if pod else "",
                                    pod_name=pod or ns, ifname=ep.ifname)
                by_ip[int(ep.ipv4)] = view
                by_ifindex[ep.ifindex] = view
            self._by_ip, self._by_ifindex = by_ip, by_ifindex
        return self._by_ip

    def endpoint_by_ip(self, ip: int) -> EndpointView | None:
        return self._index().get(ip)

    def endpoint_by_ifindex(self, ifindex: int) -> EndpointView | None:
        self._index()
        return self._by_ifindex.get(ifindex)

    def identity_labels(self, identity: int) -> tuple[str, ...]:
        return tuple(self.agent.policy.identity_labels(Identity(identity)))

    def policy_of_cookie(self, cookie: int) -> PolicyRef | None:
        engine = self.agent.policy.engine
        key = engine.cookie_names().get(cookie)
        p = engine.policies.get(key) if key else None
        if p is None:
            return None
        return PolicyRef(p.kind, p.namespace or "", p.name)


class FlowService:
    def __init__(self, agent: Agent, config: FlowConfig) -> None:
        self.agent = agent
        self.config = config
        self.directory = AgentDirectory(agent)
        self.enricher = Enricher(self.directory, agent.config.node)
        self.store = FlowStore(config.capacity)
        self.metrics = NodeMetrics(self.snapshot)
        self.monitors: set[asyncio.Queue[Event]] = set()
        self.monitor_lost = 0
        self._ring: EventRing | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    # --- set-up (datapath thread) ------------------------------------------------------------
    def configure_datapath(self) -> None:
        dp = self.agent.datapath
        cur = dp.config.get()
        self._ring = dp.events()
        dp.config.put(NodeConfigValue(
            redirect_peer=cur.redirect_peer, maglev_size=cur.maglev_size,
            trace_events=self.config.visibility,
            policy_events=self.config.visibility, drop_notify_ms=self.config.drop_notify_ms,
            wakeup_bytes=self._ring.size // 8 if self.config.flush_ms else 0,
        ))
        if self.config.export_path is not None:
            self.store.exporter = JsonlExporter(self.config.export_path,
                                                self.config.export_max_bytes,
                                                self.config.export_backups)

    # --- reading (loop thread) -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._ring is not None, "configure_datapath() first"
        self._loop = loop
        loop.add_reader(self._ring.fileno(), self.drain)
        if self.config.flush_ms:
            self._timer = loop.call_later(self.config.flush_ms / 1e3, self._flush)

    def _flush(self) -> None:
        """The timer's drain: one batch, then the next turn soon if it left events behind."""
        if self._loop is None:
            return
        full = self.drain() == BATCH
        delay = 0.0 if full else self.config.flush_ms / 1e3
        self._timer = self._loop.call_later(delay, self._flush)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None and self._ring is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._ring.fileno())
        self._loop = None
        self.store.close()

    def drain(self, limit: int = BATCH) -> int:
        """Read, enrich and store one bounded batch; the number of events read."""
        if self._ring is None:
            return 0
        events = self._ring.read(limit)
        if not events:
            return 0
        for q in self.monitors:
            for ev in events:
                try:
                    q.put_nowait(ev)
                except asyncio.QueueFull:
                    self.monitor_lost += 1
        flows = self.enricher.enrich(events)
        self.metrics.counters.count(flows)
        self.store.add(flows)
        return len(events)

    def invalidate(self) -> None:
        """Endpoints, identities or policies changed: flows re-read them."""
        self.directory.invalidate()
        self.enricher.invalidate()

    # --- accounting ----------------------------------------------------------------------------
    def lost(self) -> dict[str, int]:
        return {
            "kernel": self.agent.datapath.events_lost.total(),
            "subscriber": self.store.subscriber_lost + self.monitor_lost,
        }

    def status(self) -> dict[str, Any]:
        ring = self._ring
        return {
            "flows": len(self.store),
            "capacity": self.store.capacity,
            "seen": self.store.seen,
            "events_read": ring.read_events if ring else 0,
            "ring_bytes": ring.size if ring else 0,
            "ring_pending_bytes": ring.pending_bytes() if ring else 0,
            "lost": self.lost(),
            "visibility": self.config.visibility,
            "export": str(self.config.export_path) if self.config.export_path else None,
        }

    def snapshot(self) -> NodeSnapshot:
        agent = self.agent
        dp = agent.datapath
        maps = {m.name: (m.count(), m.max_entries)
                for m in (dp.endpoints, dp.ipcache, dp.ipblock, dp.policy, dp.ct)}
        packets = [(r.direction, r.verdict, r.reason, r.packets, r.bytes)
                   for r in dp.metrics.dump()]
        return NodeSnapshot(
            endpoints=len(agent.endpoints.endpoints),
            identities=len(agent.identities.all()),
            policies=len(agent.policy.engine.policies),
            maps=maps, packets=packets, lost=self.lost(),
            events_read=self._ring.read_events if self._ring else 0,
        )


def event_json(ev: Event) -> dict[str, Any]:
    """A raw event for `membrane monitor -o json`: the C fields, addresses as text."""
    out = ev._asdict()
    out["saddr"] = str(IPv4Address(ev.saddr))
    out["daddr"] = str(IPv4Address(ev.daddr))
    return out
