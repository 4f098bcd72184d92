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
from membrane.endpoint.ipam import validate_pod_cidr


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
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(args.log_level.upper())
    config = AgentConfig(
        node=args.node, state_dir=args.state_dir, pod_cidr=validate_pod_cidr(args.pod_cidr),
        netns=args.netns, bpf_dir=args.bpf_dir, pin_root=args.pin_root, run_dir=args.run_dir,
        ct_gc_interval=args.ct_gc_interval, label_patterns=tuple(args.labels),
    )
    run_agent(config)
    return 0
