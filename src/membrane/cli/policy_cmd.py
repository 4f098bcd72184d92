"""`membrane policy import|list|get|delete|trace` and `membrane identity list|get`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from membrane.cli.client import Client
from membrane.cli.common import add_node, add_output
from membrane.cli.output import emit, emit_json
from membrane.errors import InputError

POLICY_COLUMNS = [("POLICY", "key"), ("RULES", "rules"), ("SELECTS", "selects")]
IDENTITY_COLUMNS = [("ID", "id"), ("KIND", "kind"), ("REFS", "refcount"), ("LABELS", "labels")]


def read_file(filename: str) -> tuple[str, str]:
    if filename == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(filename).read_text(), filename
    except OSError as e:
        raise InputError(filename, e.strerror or str(e)) from e


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="network policies of a node")
    verbs = p.add_subparsers(dest="verb", required=True)
    imp = verbs.add_parser("import", help="import policies from YAML (all or nothing)")
    imp.add_argument("-f", "--filename", required=True, help="file, or - for stdin")
    add_node(imp)
    imp.set_defaults(func=import_)
    ls = verbs.add_parser("list", help="list policies")
    add_node(ls)
    add_output(ls)
    ls.set_defaults(func=list_)
    get = verbs.add_parser("get", help="show a policy as imported")
    get.add_argument("key", nargs="+", help='e.g. CiliumNetworkPolicy x/allow-web')
    add_node(get)
    get.set_defaults(func=get_)
    de = verbs.add_parser("delete", help="delete policies by name or by file")
    de.add_argument("key", nargs="*", help='e.g. NetworkPolicy x/deny-all')
    de.add_argument("-f", "--filename", help="delete the policies this file defines")
    add_node(de)
    de.set_defaults(func=delete)
    tr = verbs.add_parser("trace", help="would a new connection be allowed, and why")
    tr.add_argument("--from", dest="src", required=True,
                    help="NS/POD, labels (k=v,...), an address, host or world")
    tr.add_argument("--to", dest="dst", required=True,
                    help="NS/POD, labels (k=v,...), an address or CIDR, host or world")
    tr.add_argument("--port", type=int, required=True)
    tr.add_argument("--protocol", default="TCP", choices=("TCP", "UDP", "SCTP", "ICMP"))
    add_node(tr)
    add_output(tr)
    tr.set_defaults(func=trace)

    ip = sub.add_parser("identity", help="security identities of a node")
    iverbs = ip.add_subparsers(dest="verb", required=True)
    ils = iverbs.add_parser("list", help="list identities")
    add_node(ils)
    add_output(ils)
    ils.set_defaults(func=identity_list)
    ig = iverbs.add_parser("get", help="show one identity")
    ig.add_argument("id")
    add_node(ig)
    add_output(ig)
    ig.set_defaults(func=identity_get)


def import_(args: argparse.Namespace) -> int:
    text, source = read_file(args.filename)
    res = Client.for_node(args.node).post("/v1/policies", {"text": text, "source": source})
    for key in res["imported"]:
        print(f"{key} imported")
    return 0


def list_(args: argparse.Namespace) -> int:
    emit(Client.for_node(args.node).get("/v1/policies"), args.output, POLICY_COLUMNS)
    return 0


def get_(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    import yaml

    key = " ".join(args.key)
    obj = Client.for_node(args.node).get(f"/v1/policy?key={quote(key)}")
    sys.stdout.write(yaml.safe_dump(obj, sort_keys=False))
    return 0


def delete(args: argparse.Namespace) -> int:
    client = Client.for_node(args.node)
    if args.filename:
        text, source = read_file(args.filename)
        body: dict[str, Any] = {"text": text, "source": source}
    elif args.key:
        # "Kind ns/name" arrives as two words; pair them up again
        words, keys = list(args.key), []
        while words:
            w = words.pop(0)
            keys.append(f"{w} {words.pop(0)}" if words and "/" not in w and " " not in w
                        else w)
        body = {"keys": keys}
    else:
        raise InputError("policy delete", "give policy names or -f FILE")
    for key in client.post("/v1/policies/delete", body)["deleted"]:
        print(f"{key} deleted")
    return 0


def trace(args: argparse.Namespace) -> int:
    res = Client.for_node(args.node).post("/v1/policy/trace", {
        "from": args.src, "to": args.dst, "port": args.port, "protocol": args.protocol,
    })
    if args.output == "json":
        emit_json(res)
        return 0
    print(f"{res['from']} -> {res['to']} {res['port']}/{res['protocol']}: {res['verdict']}")
    for step in res["steps"]:
        print(f"  {step['direction']} at {step['endpoint']}: {step['verdict']}")
        for what, key in (("selected by", "selected_by"), ("allowed by", "allowed_by"),
                          ("denied by", "denied_by")):
            for name in step[key]:
                print(f"    {what}: {name}")
    return 0


def identity_list(args: argparse.Namespace) -> int:
    emit(Client.for_node(args.node).get("/v1/identities"), args.output, IDENTITY_COLUMNS)
    return 0


def identity_get(args: argparse.Namespace) -> int:
    if not args.id.isdigit():
        raise InputError("identity", f"{args.id!r} is not a number")
    emit(Client.for_node(args.node).get(f"/v1/identities/{args.id}"), args.output)
    return 0



