"""`membrane status`: the agent's health and the datapath's state."""

from __future__ import annotations

import argparse
from typing import Any

from membrane.cli.client import Client
from membrane.cli.common import add_node, add_output
from membrane.cli.output import emit


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="show the agent's status")
    add_node(p)
    add_output(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    emit(Client.for_node(args.node).get("/v1/status"), args.output)
    return 0
