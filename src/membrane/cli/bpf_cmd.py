"""`membrane bpf <map> list`: the pinned maps as the kernel sees them."""

from __future__ import annotations

import argparse
from typing import Any

from membrane.cli.client import Client
from membrane.cli.common import add_node, add_output
from membrane.cli.output import emit
from membrane.errors import InputError

MAPS: dict[str, list[tuple[str, str]] | None] = {
    "endpoint": [("IP", "ip"), ("ID", "ep_id"), ("IFINDEX", "ifindex"), ("MAC", "mac"),
                 ("NODE-MAC", "node_mac"), ("IDENTITY", "identity")],
    "ct": None,
    "ipcache": [("PREFIX", "prefix"), ("IDENTITY", "identity")],
    "ipblock": [("PREFIX", "prefix"), ("IDENTITY", "identity")],
    "policy": [("DIRECTION", "direction"), ("PEER", "peer"), ("PEER-LABELS", "peer_labels"),
               ("PROTO", "protocol"), ("PORT", "port"), ("BITS", "port_bits"),
               ("VERDICT", "verdict"), ("POLICY", "policy")],
    "metrics": [("ENDPOINT", "ep_id"), ("DIRECTION", "direction"), ("VERDICT", "verdict"),
                ("REASON", "reason"), ("PACKETS", "packets"), ("BYTES", "bytes")],
    "lb": None,
}
LB_TABLES: dict[str, list[tuple[str, str]]] = {
    "services": [("FRONTEND", "frontend"), ("PROTO", "protocol"), ("SLOT", "slot"),
                 ("COUNT", "count"), ("REV-NAT", "rev_nat"), ("FLAGS", "flags"),
                 ("BACKEND-ID", "backend_id")],
    "backends": [("ID", "id"), ("ADDRESS", "address"), ("PROTO", "protocol"),
                 ("STATE", "state")],
    "reverse_nat": [("REV-NAT", "rev_nat"), ("FRONTEND", "frontend")],
    "maglev": [("REV-NAT", "rev_nat"), ("ENTRIES", "entries")],
    "affinity": [("CLIENT", "client"), ("REV-NAT", "rev_nat"), ("BACKEND-ID", "backend_id"),
                 ("LAST-USED", "last_used")],
    "reverse_sk": [("COOKIE", "cookie"), ("BACKEND", "backend"), ("FRONTEND", "frontend")],
}


def register(sub: Any) -> None:
    p = sub.add_parser("bpf", help="inspect BPF maps")
    maps = p.add_subparsers(dest="map", required=True)
    for name in MAPS:
        m = maps.add_parser(name, help=f"the {name} map")
        verbs = m.add_subparsers(dest="verb", required=True)
        ls = verbs.add_parser("list")
        if name == "policy":
            ls.add_argument("endpoint", help="endpoint id")
        add_node(ls)
        add_output(ls)
        ls.set_defaults(func=list_, map_name=name)


def list_(args: argparse.Namespace) -> int:
    path = f"/v1/bpf/{args.map_name}"
    if args.map_name == "policy":
        if not args.endpoint.isdigit():
            raise InputError("endpoint id", f"{args.endpoint!r} is not a number")
        path += f"?endpoint={args.endpoint}"
    rows = Client.for_node(args.node).get(path)
    if args.map_name == "lb":
        if args.output == "json":
            emit(rows, "json")
            return 0
        for name, cols in LB_TABLES.items():
            print(f"{name}:")
            emit(rows[name], "table", cols)
            print()
        return 0
    columns = MAPS[args.map_name]
    if columns is None and rows:
        columns = [(k.upper(), k) for k in rows[0]]
    emit(rows, args.output, columns or [])
    return 0
