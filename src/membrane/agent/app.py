"""The agent's composition root: builds every part from one config, starts them in order."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from membrane.agent.flows import FlowConfig, FlowService
from membrane.agent.policy import PolicyService
from membrane.agent.services import ServiceManager
from membrane.datapath import netns
from membrane.datapath.loader import Datapath
from membrane.datapath.netlink import Netlink, write_sysctl
from membrane.datapath.reconcile import reconcile
from membrane.endpoint.ipam import IPAM
from membrane.endpoint.manager import EndpointManager
from membrane.endpoint.model import EndpointStore, write_json_atomic
from membrane.errors import Conflict, MembraneError
from membrane.identity import LocalIdentityAllocator
from membrane.ipcache import desired as desired_ipcache
from membrane.labels import LabelFilter
from membrane.loadbalancer.maglev import DEFAULT_SIZE as MAGLEV_DEFAULT_SIZE

log = logging.getLogger(__name__)
T = TypeVar("T")

ROUTER_IFNAME = "mb_host"
DEFAULT_BPF_DIR = Path(__file__).resolve().parents[3] / "build" / "bpf"
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/membrane")
DEFAULT_RUN_DIR = Path("/run/membrane")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    node: str
    state_dir: Path
    pod_cidr: IPv4Network
    netns: str | None = None
    bpf_dir: Path = DEFAULT_BPF_DIR
    pin_root: Path = DEFAULT_PIN_ROOT
    run_dir: Path = DEFAULT_RUN_DIR
    ct_gc_interval: float = 30.0
    label_patterns: tuple[str, ...] = ()
    """Identity label filter (Cilium's --labels syntax); empty: the defaults."""
    flows: FlowConfig = field(default_factory=FlowConfig)
    events_ring_bytes: int | None = None
    """Size of the kernel's events ring buffer; None: as pinned, else the object's default."""
    metrics_addr: tuple[str, int] | None = None
    """Serve Prometheus metrics over TCP here (bound in the namespace the agent starts in)."""
    maglev_size: int = MAGLEV_DEFAULT_SIZE
    """Entries of each NodePort/external frontend's Maglev table (a prime)."""
    devices: tuple[str, ...] = ()
    """The node's external interfaces: NodePort and external IPs are served on them."""
    socket_lb_cgroup: Path | None = None
    """A cgroup v2 directory the agent owns for the node (created if missing, never a hierarchy's
    root): processes in it reach services through socket-LB, translated at connect()."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def socket_path(self) -> Path:
        return self.run_dir / f"{self.node}.sock"


class Agent:
    """One node's agent. Kernel work runs on one thread that lives in the node's namespace."""

    def __init__(self, config: AgentConfig, metrics_sock: socket.socket | None = None) -> None:
        self.config = config
        self.metrics_sock = metrics_sock
        self.started = time.time()
        self._dp_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dp")
        self.lock = asyncio.Lock()
        self.restore_stats: dict[str, int] = {}
        self.ct_gc_removed = 0
        self.datapath: Datapath
        self.netlink: Netlink
        self.ipam: IPAM
        self.endpoints: EndpointManager
        self.identities: LocalIdentityAllocator
        self.policy: PolicyService
        self.flows: FlowService
        self.services: ServiceManager

    # --- running kernel work -----------------------------------------------------------
    async def run_dp(self, fn: Callable[..., T], *args: Any, op: str | None = None) -> T:
        """Run blocking datapath work on the datapath thread, one change at a time. A change
        names its `op`: its latency is measured and flows re-read what it changed."""
        loop = asyncio.get_running_loop()
        async with self.lock:
            if op is None:
                return await loop.run_in_executor(self._dp_thread, fn, *args)
            try:
                with self.flows.metrics.timed(op):
                    return await loop.run_in_executor(self._dp_thread, fn, *args)
            finally:
                self.flows.invalidate()

    # --- state -------------------------------------------------------------------------
    def _check_node_state(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        path = cfg.state_dir / "node.json"
        if path.exists():
            saved = json.loads(path.read_text())
            ep_file = cfg.state_dir / "endpoints.json"
            if saved.get("pod_cidr") != str(cfg.pod_cidr) and ep_file.exists():
                eps = json.loads(ep_file.read_text())["endpoints"]
                if eps:
                    raise Conflict(
                        f"node {cfg.node} has {len(eps)} endpoints in pod CIDR "
                        f"{saved.get('pod_cidr')}; --pod-cidr {cfg.pod_cidr} differs: delete them "
                        "first or keep the CIDR"
                    )
        write_json_atomic(path, {"node": cfg.node, "pod_cidr": str(cfg.pod_cidr)})

    def _load_identities(self) -> LocalIdentityAllocator:
        path = self.config.state_dir / "identities.json"
        if path.exists():
            return LocalIdentityAllocator.restore(json.loads(path.read_text()))
        return LocalIdentityAllocator()

    def save_identities(self) -> None:
        write_json_atomic(self.config.state_dir / "identities.json", self.identities.snapshot())

    # --- start / stop ------------------------------------------------------------------
    def setup(self) -> None:
        """Synchronous start-up on the datapath thread (already in the node's namespace)."""
        cfg = self.config
        self._check_node_state()
        self.netlink = Netlink()
        self.ipam = IPAM(cfg.pod_cidr, cfg.state_dir / "ipam.json")
        self.netlink.ensure_router(ROUTER_IFNAME, self.ipam.gateway)
        write_sysctl("net.ipv4.ip_forward", "1")
        self.datapath = Datapath.open(cfg.node, cfg.bpf_dir, cfg.pin_root,
                                      events_ring_bytes=cfg.events_ring_bytes)
        self.flows = FlowService(self, cfg.flows)
        self.flows.configure_datapath()
        # Identities are re-taken from the endpoints; the snapshot keeps their numbers stable.
        self.identities = self._load_identities()
        self.policy = PolicyService(
            datapath=self.datapath, identities=self.identities, state_dir=cfg.state_dir,
            endpoints=lambda: self.endpoints.list(), reconcile_ipcache=self.reconcile_ipcache,
        )
        self.policy.load()
        self.endpoints = EndpointManager(
            node=cfg.node, datapath=self.datapath, netlink=self.netlink, ipam=self.ipam,
            identities=self.identities, store=EndpointStore(cfg.state_dir / "endpoints.json"),
            on_identities_changed=self.save_identities, listener=self.policy,
            label_filter=LabelFilter.from_args(list(cfg.label_patterns)),
        )
        self.restore_stats = self.endpoints.restore()
        self.policy.endpoints_changed({ep.identity for ep in self.endpoints.list()})
        self.identities.forget_remembered()
        self.restore_stats["ipcache_writes"] = self.reconcile_ipcache()
        self.restore_stats["policy_writes"] = self.policy.finish_loading()
        self.setup_services()
        self.save_identities()
        log.info("node %s ready: %s", cfg.node, self.restore_stats)

    def setup_services(self) -> None:
        cfg = self.config
        cur = self.datapath.config.get()
        if cur.maglev_size != cfg.maglev_size:
            self.datapath.config.put(replace(cur, maglev_size=cfg.maglev_size))
        self.services = ServiceManager(datapath=self.datapath, state_dir=cfg.state_dir,
                                       node_ips=self.netlink.addresses(),
                                       maglev_size=cfg.maglev_size)
        self.restore_stats |= self.services.load()
        for dev in cfg.devices:
            link = self.netlink.link(dev)
            if link is None:
                raise MembraneError(f"--devices: no interface {dev!r} in the node's namespace")
            self.datapath.attach_netdev(link.ifindex)
        if cfg.socket_lb_cgroup is not None:
            self._setup_socket_lb(cfg.socket_lb_cgroup)

    def _setup_socket_lb(self, path: Path) -> None:
        """Create the node's cgroup below an existing cgroup2 directory and attach socket-LB.
        Left attached when the agent stops, like the tc programs: sockets keep reaching
        services while it restarts, and the next start swaps in its programs atomically."""
        if not path.parent.is_dir():
            raise MembraneError(f"--socket-lb-cgroup {path}: {path.parent} does not exist "
                                "(give a directory inside a mounted cgroup2 hierarchy)")
        try:
            path.mkdir(exist_ok=True)
        except OSError as e:
            raise MembraneError(f"--socket-lb-cgroup {path}: cannot create it: "
                                f"{e.strerror}") from e
        self.datapath.attach_cgroup(path)
        log.info("socket-LB attached to cgroup %s", path)

    def reconcile_ipcache(self) -> int:
        want = desired_ipcache(
            node_addresses=self.netlink.addresses(),
            endpoints=[(ep.ipv4, ep.identity) for ep in self.endpoints.list()],
            cidrs=self.policy.engine.prefix_identities("cidr"),
        )
        res = reconcile(desired=want, actual=self.datapath.ipcache.dump(),
                        ops=self.datapath.ipcache)
        return res.updated + res.deleted

    def gc_conntrack(self) -> int:
        removed = self.datapath.ct.gc()
        self.ct_gc_removed += removed
        return removed

    def status(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "node": cfg.node,
            "pod_cidr": str(cfg.pod_cidr),
            "gateway": str(self.ipam.gateway),
            "endpoints": len(self.endpoints.endpoints),
            "identities": len(self.identities.all()),
            "policies": len(self.policy.engine.policies),
            "policy_writes": self.policy.writes,
            "conntrack_revoked_by_policy": self.policy.ct_revoked,
            "uptime_s": round(time.time() - self.started, 1),
            "pid": os.getpid(),
            "pin_dir": str(cfg.pin_root / cfg.node),
            "restore": self.restore_stats,
            "conntrack_gc_removed": self.ct_gc_removed,
            "flows": self.flows.status(),
            "load_balancer": self.services.status() | {
                "socket_lb_cgroup": str(cfg.socket_lb_cgroup) if cfg.socket_lb_cgroup else None,
            },
            "maps": {
                m.name: {"entries": m.count(), "max_entries": m.max_entries}
                for m in (self.datapath.endpoints, self.datapath.ipcache, self.datapath.ipblock,
                          self.datapath.policy, self.datapath.ct)
            } | {
                m.name: {"entries": m.count(), "max_entries": m.max_entries}
                for m in self.datapath.lb.all()
            },
        }

    async def _ct_gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.ct_gc_interval)
            try:
                removed = await self.run_dp(self.gc_conntrack)
                if removed:
                    log.info("conntrack gc removed %d expired entries", removed)
            except MembraneError as e:
                log.warning("conntrack gc failed: %s", e)

    async def serve(self) -> None:
        from membrane.agent.api import start_api, start_metrics

        await self.run_dp(self.setup)
        # What start-up built lives as long as the agent: keep it out of every collection,
        # and collect the young generation less often (the flow pipeline allocates two
        # objects per event, few of them cyclic).
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        self.flows.start(asyncio.get_running_loop())
        runner = await start_api(self)
        metrics_runner = await start_metrics(self, self.metrics_sock) if self.metrics_sock \
            else None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        gc_task = asyncio.create_task(self._ct_gc_loop())
        (self.config.run_dir / f"{self.config.node}.ready").write_text(str(os.getpid()))
        try:
            await stop.wait()
        finally:
            log.info("shutting down; the datapath keeps running")
            gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gc_task
            self.flows.stop()
            await runner.cleanup()
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            for suffix in (".sock", ".ready"):
                with contextlib.suppress(FileNotFoundError):
                    (self.config.run_dir / f"{self.config.node}{suffix}").unlink()
            await self.run_dp(self.close)
            self._dp_thread.shutdown()

    def close(self) -> None:
        self.datapath.close()
        self.netlink.close()


def run_agent(config: AgentConfig) -> None:
    """Entry point: enter the node namespace before any thread exists, then serve."""
    if os.geteuid() != 0:
        raise MembraneError("membrane agent must run as root (it loads BPF programs)")
    sock = None
    if config.metrics_addr is not None:
        # Bound before entering the node's namespace: Prometheus scrapes from where it runs.
        try:
            sock = socket.create_server(config.metrics_addr)
        except OSError as e:
            raise MembraneError(f"--metrics-addr {config.metrics_addr[0]}:"
                                f"{config.metrics_addr[1]}: {e.strerror}") from e
    if config.netns:
        netns.enter(config.netns)
    config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        asyncio.run(Agent(config, sock).serve())
    finally:
        if sock is not None:
            sock.close()
