"""`membrane endpoint list|get|create|delete`."""

from __future__ import annotations

import argparse
from typing import Any

from membrane.cli.client import Client
from membrane.cli.common import add_node, add_output
from membrane.cli.output import emit
from membrane.errors import InputError

COLUMNS = [
    ("ID", "id"), ("POD", "pod"), ("IPV4", "ipv4"), ("IDENTITY", "identity"),
    ("IFNAME", "ifname"), ("STATE", "state"), ("LABELS", "labels"),
]


def register(sub: Any) -> None:
    p = sub.add_parser("endpoint", help="endpoints of a node")
    verbs = p.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="list endpoints")
    add_node(ls)
    add_output(ls)
    ls.set_defaults(func=list_)
    get = verbs.add_parser("get", help="show one endpoint")
    get.add_argument("id")
    add_node(get)
    add_output(get)
    get.set_defaults(func=get_)
    cr = verbs.add_parser("create", help="create an endpoint (idempotent)")
    where = cr.add_mutually_exclusive_group()
    where.add_argument("--netns", help="path of an existing network namespace (as CNI gives)")
    where.add_argument("--netns-name", help="name of a namespace under /run/netns (made if absent)")
    cr.add_argument("--pod", help="NS/NAME of the workload")
    cr.add_argument("--label", "-l", action="append", default=[], help="k=v (repeatable)")
    add_node(cr)
    add_output(cr)
    cr.set_defaults(func=create)
    de = verbs.add_parser("delete", help="delete an endpoint (unknown ids are fine)")
    de.add_argument("id")
    add_node(de)
    de.set_defaults(func=delete)


def _id(raw: str) -> int:
    if not raw.isdigit():
        raise InputError("endpoint id", f"{raw!r} is not a number")
    return int(raw)


def list_(args: argparse.Namespace) -> int:
    emit(Client.for_node(args.node).get("/v1/endpoints"), args.output, COLUMNS)
    return 0


def get_(args: argparse.Namespace) -> int:
    emit(Client.for_node(args.node).get(f"/v1/endpoints/{_id(args.id)}"), args.output)
    return 0


def parse_labels(items: list[str], where: str = "--label") -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(where, f"{item!r} is not k=v")
        labels[key] = value
    return labels


def create(args: argparse.Namespace) -> int:
    if not (args.netns or args.netns_name or args.pod):
        raise InputError("endpoint create", "give --netns, --netns-name or --pod")
    body = {
        "netns": args.netns, "netns_name": args.netns_name, "pod": args.pod,
        "labels": parse_labels(args.label),
    }
    emit(Client.for_node(args.node).post("/v1/endpoints", body), args.output)
    return 0


def delete(args: argparse.Namespace) -> int:
    Client.for_node(args.node).delete(f"/v1/endpoints/{_id(args.id)}")
    return 0
