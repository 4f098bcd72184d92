"""`membrane observe` (flows, as `hubble observe`), `membrane monitor` (raw datapath events, as
`cilium monitor`) and `membrane metrics` (the agent's Prometheus metrics)."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import urlencode

from membrane.cli.client import Client
from membrane.cli.common import add_node

FILTERS = (
    ("--verdict", "verdict", "FORWARDED or DROPPED"),
    ("--from-pod", "from_pod", "[namespace/]pod-name prefix the flow comes from"),
    ("--to-pod", "to_pod", "[namespace/]pod-name prefix the flow goes to"),
    ("--pod", "pod", "either end is this pod"),
    ("--namespace", "namespace", "either end is in this namespace"),
    ("--from-label", "from_label", "source has these labels (k=v, k, !k; comma-separated)"),
    ("--to-label", "to_label", "destination has these labels"),
    ("--label", "label", "either end has these labels"),
    ("--port", "port", "source or destination port"),
    ("--protocol", "protocol", "tcp, udp, icmp or sctp"),
    ("--identity", "identity", "either end has this security identity"),
    ("--type", "type", "drop, trace or policy-verdict"),
)


def register(sub: Any) -> None:
    p = sub.add_parser("observe", help="show flows: who talked to whom, allowed or dropped, "
                       "and which policy decided")
    add_node(p)
    for flag, dest, text in FILTERS:
        p.add_argument(flag, dest=dest, action="append", default=[], help=text + " (repeatable)")
    p.add_argument("--since", help="flows since a duration ago (30s, 5m, 1h) or an RFC 3339 time")
    p.add_argument("--last", type=int, help="only the last N matching flows")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    p.add_argument("-o", "--output", choices=("compact", "json", "policy"), default="compact",
                   help="compact lines, Hubble's JSON (one object per line), or the policy log")
    p.set_defaults(func=run_observe)

    m = sub.add_parser("monitor", help="print raw datapath events as they happen")
    add_node(m)
    m.add_argument("-o", "--output", choices=("text", "json"), default="text")
    m.set_defaults(func=run_monitor)

    x = sub.add_parser("metrics", help="print the agent's Prometheus metrics")
    add_node(x)
    x.set_defaults(func=run_metrics)


def query_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    q: list[tuple[str, str]] = [(dest, v) for _, dest, _ in FILTERS for v in getattr(args, dest)]
    if args.since:
        q.append(("since", args.since))
    if args.last is not None:
        q.append(("last", str(args.last)))
    if args.follow:
        q.append(("follow", "1"))
    q.append(("output", args.output))
    return q


def run_observe(args: argparse.Namespace) -> int:
    client = Client.for_node(args.node)
    for line in client.stream("/v1/flows?" + urlencode(query_of(args))):
        sys.stdout.write(line + "\n")
        if args.follow:
            sys.stdout.flush()
    return 0


def run_monitor(args: argparse.Namespace) -> int:
    client = Client.for_node(args.node)
    for line in client.stream("/v1/monitor?" + urlencode({"output": args.output})):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return 0


def run_metrics(args: argparse.Namespace) -> int:
    sys.stdout.write(Client.for_node(args.node).get_text("/metrics"))
    return 0
