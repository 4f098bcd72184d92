"""`membrane service create|update|delete|list|get`: services with explicit backends.

Outside the lab (which resolves backends from pods itself) a service is given whole:
    membrane service create default/web --cluster-ip 10.96.0.10 --port http:80:8080/TCP \\
        --backend 10.200.0.2 --backend 10.200.0.3@terminating
or as the agent API's JSON with `-f FILE` (a service object or a list of them).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from membrane.cli.client import Client
from membrane.cli.common import add_node, add_output
from membrane.cli.output import emit
from membrane.errors import Conflict, InputError, NotFound

COLUMNS = [("NAMESPACE", "namespace"), ("NAME", "name"), ("TYPE", "type"),
           ("CLUSTER-IP", "cluster_ip"), ("PORTS", "ports_text"), ("BACKENDS", "backends_text")]
PORT_RE = re.compile(r"^(?:(?P<name>[a-z][a-z0-9-]*):)?(?P<port>\d+)(?::(?P<target>\d+))?"
                     r"(?:/(?P<proto>[A-Za-z]+))?$")


def register(sub: Any) -> None:
    p = sub.add_parser("service", help="load-balanced services of a node")
    verbs = p.add_subparsers(dest="verb", required=True)
    for name, helptext in (("create", "create a service (refused if it exists)"),
                           ("update", "replace a service (refused if it does not exist)")):
        v = verbs.add_parser(name, help=helptext)
        v.add_argument("service", nargs="?", help="NAMESPACE/NAME (not with -f)")
        v.add_argument("-f", "--filename", help="the API's service JSON ('-' for stdin)")
        v.add_argument("--cluster-ip", help="the frontend address")
        v.add_argument("--type", default="ClusterIP", choices=("ClusterIP", "NodePort"))
        v.add_argument("--port", action="append", default=[],
                       metavar="[NAME:]PORT[:TARGET][/PROTO]",
                       help="a service port; TARGET defaults to PORT, PROTO to TCP (repeatable)")
        v.add_argument("--node-port", action="append", type=int, default=[],
                       help="node port of the --port at the same position (NodePort)")
        v.add_argument("--backend", action="append", default=[], metavar="IP[@terminating]",
                       help="a backend address (each port's TARGET on it); repeatable")
        v.add_argument("--external-ip", action="append", default=[])
        v.add_argument("--affinity-timeout", type=int, default=0, metavar="SECONDS",
                       help="sessionAffinity ClientIP with this timeout (0: none)")
        add_node(v)
        add_output(v)
        v.set_defaults(func=upsert, must_exist=name == "update")
    de = verbs.add_parser("delete", help="delete services")
    de.add_argument("services", nargs="+", metavar="NAMESPACE/NAME")
    add_node(de)
    de.set_defaults(func=delete)
    ls = verbs.add_parser("list", help="list services")
    add_node(ls)
    add_output(ls)
    ls.set_defaults(func=list_)
    get = verbs.add_parser("get", help="show one service")
    get.add_argument("service", metavar="NAMESPACE/NAME")
    add_node(get)
    add_output(get, ("json",))
    get.set_defaults(func=get_)


def _key(text: str, where: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise InputError(where, f"{text!r} is not NAMESPACE/NAME")
    return ns, name


def from_flags(args: argparse.Namespace) -> dict[str, Any]:
    if not args.service:
        raise InputError("service", "give NAMESPACE/NAME (or -f FILE)")
    ns, name = _key(args.service, "service")
    if not args.cluster_ip:
        raise InputError("--cluster-ip", "required (without -f)")
    if not args.port:
        raise InputError("--port", "give at least one")
    if len(args.node_port) > len(args.port):
        raise InputError("--node-port", "more node ports than --port")
    backends: list[tuple[str, str]] = []
    for b in args.backend:
        ip, _, state = b.partition("@")
        backends.append((ip, state or "active"))
    ports = []
    for i, text in enumerate(args.port):
        m = PORT_RE.match(text)
        if m is None:
            raise InputError(f"--port {text}", "expected [NAME:]PORT[:TARGET][/PROTO]")
        port = int(m["port"])
        target = int(m["target"] or port)
        p: dict[str, Any] = {"name": m["name"] or "", "port": port,
                             "protocol": (m["proto"] or "TCP").upper(),
                             "backends": [{"ip": ip, "port": target, "state": st}
                                          for ip, st in backends]}
        if i < len(args.node_port):
            p["node_port"] = args.node_port[i]
        ports.append(p)
    svc: dict[str, Any] = {"namespace": ns, "name": name, "type": args.type,
                           "cluster_ip": args.cluster_ip, "ports": ports,
                           "external_ips": args.external_ip}
    if args.affinity_timeout:
        svc |= {"session_affinity": "ClientIP", "affinity_timeout": args.affinity_timeout}
    return svc


def _read(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise InputError(path, e.strerror or str(e)) from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"not JSON: {e}") from e
    return data if isinstance(data, list) else [data]


def upsert(args: argparse.Namespace) -> int:
    if args.filename:
        if args.service:
            raise InputError("service", "not with -f (the file names its services)")
        services = _read(args.filename)
    else:
        services = [from_flags(args)]
    client = Client.for_node(args.node)
    for i, s in enumerate(services):
        if not isinstance(s, dict):
            raise InputError(f"services[{i}]", "must be an object")
        key = f"{s.get('namespace')}/{s.get('name')}"
        try:
            client.get(f"/v1/services/{key}")
            exists = True
        except NotFound:
            exists = False
        if exists and not args.must_exist:
            raise Conflict(f"service {key} already exists: use `membrane service update`")
        if not exists and args.must_exist:
            raise NotFound(f"service {key} not found: use `membrane service create`")
    emit(client.post("/v1/services", {"services": services}), args.output)
    return 0


def delete(args: argparse.Namespace) -> int:
    keys = ["/".join(_key(k, "service")) for k in args.services]
    res = Client.for_node(args.node).post("/v1/services/delete", {"keys": keys})
    for k in res["deleted"]:
        print(f"service/{k} deleted")
    missing = sorted(set(keys) - set(res["deleted"]))
    if missing:
        raise NotFound(f"service {missing[0]!r} not found")
    return 0


def rows_of(services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in services:
        ports = ",".join(f"{p['port']}{':' + str(p['node_port']) if p.get('node_port') else ''}"
                         f"/{p['protocol']}" for p in s["ports"])
        backends = sorted({f"{b['ip']}:{b['port']}" + ("" if b["state"] == "active"
                                                       else "(terminating)")
                           for p in s["ports"] for b in p["backends"]})
        out.append(s | {"ports_text": ports, "backends_text": ",".join(backends) or "<none>"})
    return out


def list_(args: argparse.Namespace) -> int:
    services = Client.for_node(args.node).get("/v1/services")
    emit(services if args.output == "json" else rows_of(services), args.output, COLUMNS)
    return 0


def get_(args: argparse.Namespace) -> int:
    ns, name = _key(args.service, "service")
    emit(Client.for_node(args.node).get(f"/v1/services/{ns}/{name}"), "json")
    return 0
