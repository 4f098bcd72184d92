"""`membrane agent`: run the node agent in the foreground."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from membrane.agent.app import (
    DEFAULT_BPF_DIR,
    DEFAULT_PIN_ROOT,
    DEFAULT_RUN_DIR,
    AgentConfig,
    run_agent,
)
from membrane.agent.flows import FlowConfig
from membrane.endpoint.ipam import validate_pod_cidr
from membrane.errors import InputError
from membrane.flows.store import DEFAULT_CAPACITY
from membrane.loadbalancer.maglev import DEFAULT_SIZE as MAGLEV_DEFAULT_SIZE
from membrane.loadbalancer.maglev import SUPPORTED_SIZES, check_size


def register(sub: Any) -> None:
    p = sub.add_parser("agent", help="run the node agent (foreground daemon)")
    p.add_argument("--node", required=True, help="node name")
    p.add_argument("--state-dir", required=True, type=Path, help="where the agent persists state")
    p.add_argument("--pod-cidr", required=True, help="IPv4 CIDR the node's pods get addresses from")
    p.add_argument("--netns", help="network namespace (name or path) to run in")
    p.add_argument("--bpf-dir", type=Path, default=DEFAULT_BPF_DIR, help="compiled BPF objects")
    p.add_argument("--pin-root", type=Path, default=DEFAULT_PIN_ROOT)
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    p.add_argument("--ct-gc-interval", type=float, default=30.0, help="seconds")
    p.add_argument("--labels", action="append", default=[], metavar="PATTERN",
                   help="identity label filter, Cilium's --labels: 'app' keeps only keys "
                   "matching, '!pod-template-hash' excludes (added to the defaults); repeatable")
    p.add_argument("--metrics-addr", metavar="HOST:PORT",
                   help="serve Prometheus metrics here (e.g. 127.0.0.1:9962), bound in the "
                   "namespace the agent is started in")
    p.add_argument("--flow-capacity", type=int, default=DEFAULT_CAPACITY,
                   help="recent flows kept in memory")
    p.add_argument("--flow-export", type=Path, metavar="FILE",
                   help="also append every flow as a JSON line to FILE")
    p.add_argument("--flow-export-max-size", type=int, default=64, metavar="MIB",
                   help="rotate the export file past this size")
    p.add_argument("--flow-export-backups", type=int, default=3)
    p.add_argument("--events-ring-size", type=int, metavar="BYTES",
                   help="kernel events ring buffer size, a power of two (default 4 MiB)")
    p.add_argument("--drop-notify-interval", type=int, default=1000, metavar="MS",
                   help="at most one drop event per flow per interval (0: every drop)")
    p.add_argument("--flow-flush-interval", type=int, default=10, metavar="MS",
                   help="drain the events ring at least this often; the kernel wakes the agent "
                   "early only when an eighth of the ring is waiting (0: at every event)")
    p.add_argument("--no-visibility", action="store_true",
                   help="no trace or policy-verdict events (drops are still reported)")
    p.add_argument("--maglev-table-size", type=int, default=MAGLEV_DEFAULT_SIZE,
                   help="entries of each NodePort/external frontend's Maglev table, a prime "
                   f"({', '.join(map(str, SUPPORTED_SIZES))})")
    p.add_argument("--devices", action="append", default=[], metavar="IFNAME",
                   help="the node's external interface(s): NodePort and external IPs are "
                   "served there; repeatable")
    p.add_argument("--socket-lb-cgroup", type=Path, metavar="DIR",
                   help="a cgroup v2 directory the agent owns for the node (created if "
                   "missing; never a hierarchy's root): sockets of processes in it reach "
                   "services through socket-LB, translated at connect() and sendmsg()")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(args.log_level.upper())
    if args.flow_capacity < 1:
        raise InputError("--flow-capacity", f"{args.flow_capacity} must be at least 1")
    if args.drop_notify_interval < 0:
        raise InputError("--drop-notify-interval", "must not be negative")
    if not 0 <= args.flow_flush_interval <= 1000:
        raise InputError("--flow-flush-interval",
                         f"{args.flow_flush_interval} is not in 0..1000 ms")
    if args.flow_export_max_size < 1:
        raise InputError("--flow-export-max-size", "must be at least 1 MiB")
    ring = args.events_ring_size
    if ring is not None and (ring < 4096 or ring & (ring - 1)):
        raise InputError("--events-ring-size", f"{ring} is not a power of two >= 4096")
    flows = FlowConfig(
        capacity=args.flow_capacity, visibility=not args.no_visibility,
        drop_notify_ms=args.drop_notify_interval, flush_ms=args.flow_flush_interval,
        export_path=args.flow_export,
        export_max_bytes=args.flow_export_max_size << 20,
        export_backups=args.flow_export_backups,
    )
    config = AgentConfig(
        node=args.node, state_dir=args.state_dir, pod_cidr=validate_pod_cidr(args.pod_cidr),
        netns=args.netns, bpf_dir=args.bpf_dir, pin_root=args.pin_root, run_dir=args.run_dir,
        ct_gc_interval=args.ct_gc_interval, label_patterns=tuple(args.labels), flows=flows,
        events_ring_bytes=ring, metrics_addr=_addr(args.metrics_addr),
        maglev_size=check_size(args.maglev_table_size), devices=tuple(args.devices),
        socket_lb_cgroup=args.socket_lb_cgroup,
    )
    run_agent(config)
    return 0


def _addr(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("--metrics-addr", f"{text!r} is not HOST:PORT")
    return host or "127.0.0.1", int(port)
