"""`membrane lab ...`: the embedded lab node — up, down, apply, delete, get, label, probe, exec."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from membrane.cli.client import Client
from membrane.cli.output import emit, emit_json, table
from membrane.errors import InputError, MembraneError, NotFound
from membrane.lab import node
from membrane.lab.node import DEFAULT_POD_CIDR, LabPaths

DEMO = Path(__file__).resolve().parents[1] / "lab" / "demo" / "farm.yaml"
DEMO_POLICY = DEMO.with_name("policy.yaml")


def register(sub: Any) -> None:
    p = sub.add_parser("lab", help="the embedded lab node")
    verbs = p.add_subparsers(dest="verb", required=True)

    def verb(name: str, help_: str, func: Any, *, hidden: bool = False) -> argparse.ArgumentParser:
        v: argparse.ArgumentParser = verbs.add_parser(name, help=None if hidden else help_)
        v.add_argument("--name", default=os.environ.get("MEMBRANE_LAB", "lab"),
                       help="lab name (default: lab)")
        v.set_defaults(func=func)
        return v

    up = verb("up", "make the lab node, its world and its agent", cmd_up)
    up.add_argument("--pod-cidr", default=DEFAULT_POD_CIDR)
    up.add_argument("--agent-arg", dest="agent_args", action="append", default=[],
                    metavar="OPTION", help="pass an option to the lab's agent, e.g. "
                    "--agent-arg=--metrics-addr=127.0.0.1:9962 (repeatable)")
    verb("down", "remove everything the lab made", cmd_down)
    for name, func in (("apply", cmd_apply), ("delete", cmd_delete)):
        v = verb(name, f"{name} Kubernetes objects from YAML", func)
        v.add_argument("-f", "--filename", required=True, help="YAML file ('-' for stdin)")
    g = verb("get", "list pods, namespaces or services", cmd_get)
    g.add_argument("what", choices=("pods", "namespaces", "services", "pod", "namespace",
                                    "service", "po", "ns", "svc"))
    g.add_argument("-o", "--output", choices=("table", "json"), default="table")
    lb = verb("label", "set (k=v) or remove (k-) labels, like kubectl label --overwrite", cmd_label)
    lb.add_argument("kind", choices=("pod", "pods", "namespace", "namespaces", "ns"))
    lb.add_argument("target", help="NS/POD for a pod, NS for a namespace")
    lb.add_argument("labels", nargs="+", help="k=v to set, k- to remove")
    pr = verb("probe", "try every (from, to) pair over real traffic", cmd_probe)
    pr.add_argument("--port", type=int, required=True)
    pr.add_argument("--protocol", default="TCP", type=str.upper, choices=("TCP", "UDP"))
    pr.add_argument("--from", dest="sources", action="append", help="NS/POD (repeatable)")
    pr.add_argument("--to", dest="targets", action="append", help="NS/POD (repeatable)")
    pr.add_argument("--timeout", type=float, default=1.0, help="seconds per attempt")
    pr.add_argument("--service", action="store_true",
                    help="reach each destination pod through its service s-NS-POD (the "
                    "Kubernetes e2e model's naming) instead of its address")
    pr.add_argument("-o", "--output", choices=("table", "json"), default="table")
    ex = verb("exec", "run a command inside a pod, or on the node (in its namespace and "
              "socket-LB cgroup)", cmd_exec)
    ex.add_argument("pod", help="NS/POD, or node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    verb("demo", "bring up the talk's tiny web farm and show its connectivity", cmd_demo)
    verb("runtime", "run the lab runtime (started by lab up)", cmd_runtime, hidden=True)
    verb("restart-agent", "restart the lab's agent (as an upgrade would)", cmd_restart_agent)


def _runtime(name: str) -> Client:
    paths = LabPaths(node.validate_name(name))
    if not paths.state.exists():
        raise NotFound(f"no lab named {name!r} (start it with `membrane lab up --name {name}`)")
    return Client(paths.runtime_socket, timeout=300.0)


def cmd_up(args: argparse.Namespace) -> int:
    state = node.up(args.name, args.pod_cidr, args.agent_args)
    print(f"lab {args.name} is up: node namespace {LabPaths(args.name).node_ns}, "
          f"pod CIDR {state['pod_cidr']}, agent pid {state['agent_pid']}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if not node.down(args.name):
        print(f"lab {args.name}: nothing to remove")
    return 0


def _read(filename: str) -> tuple[str, str]:
    if filename == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(filename).read_text(), filename
    except OSError as e:
        raise InputError(filename, e.strerror or str(e)) from e


def cmd_apply(args: argparse.Namespace) -> int:
    text, source = _read(args.filename)
    # Validate here first, so a bad file fails before anything is sent.
    from membrane.k8s.manifests import load_manifests

    load_manifests(text, source)
    for line in _runtime(args.name).post("/v1/apply", {"text": text, "source": source})["applied"]:
        print(f"{line} applied")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    text, source = _read(args.filename)
    for line in _runtime(args.name).post("/v1/delete", {"text": text, "source": source})["deleted"]:
        print(f"{line} deleted")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    what = {"pod": "pods", "po": "pods", "ns": "namespaces", "namespace": "namespaces",
            "service": "services", "svc": "services"}.get(args.what, args.what)
    items = _runtime(args.name).get(f"/v1/{what}")
    if args.output == "json":
        emit_json({"apiVersion": "v1", "kind": "List", "items": items})
        return 0
    if what == "pods":
        rows = [{"ns": i["metadata"]["namespace"], "name": i["metadata"]["name"],
                 "ip": i["status"]["podIP"], "labels": i["metadata"].get("labels", {})}
                for i in items]
        print(table(rows, [("NAMESPACE", "ns"), ("NAME", "name"), ("IP", "ip"),
                           ("LABELS", "labels")]))
    elif what == "services":
        rows = [{"ns": i["metadata"]["namespace"], "name": i["metadata"]["name"],
                 "type": i["spec"]["type"], "ip": i["spec"]["clusterIP"],
                 "ext": ",".join(i["spec"].get("externalIPs", [])) or "<none>",
                 "ports": ",".join(
                     f"{p['port']}{':' + str(p['nodePort']) if p.get('nodePort') else ''}"
                     f"/{p['protocol']}" for p in i["spec"]["ports"]),
                 "endpoints": ",".join(i.get("endpoints", [])) or "<none>"}
                for i in items]
        print(table(rows, [("NAMESPACE", "ns"), ("NAME", "name"), ("TYPE", "type"),
                           ("CLUSTER-IP", "ip"), ("EXTERNAL-IP", "ext"), ("PORT(S)", "ports"),
                           ("ENDPOINTS", "endpoints")]))
    else:
        rows = [{"name": i["metadata"]["name"], "labels": i["metadata"].get("labels", {})}
                for i in items]
        print(table(rows, [("NAME", "name"), ("LABELS", "labels")]))
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from membrane.k8s.manifests import parse_label_args

    kind = "pod" if args.kind.startswith("pod") else "namespace"
    if kind == "pod" and "/" not in args.target:
        raise InputError("lab label pod", f"{args.target!r}: expected NS/POD")
    set_, remove = parse_label_args(args.labels, "labels")
    _runtime(args.name).post(
        "/v1/label", {"kind": kind, "target": args.target, "set": set_, "remove": sorted(remove)}
    )
    print(f"{kind}/{args.target} labeled")
    return 0


def probe_matrix(result: dict[str, Any]) -> str:
    """The Kubernetes e2e truth table: '.' connected, 'X' not."""
    froms = list(dict.fromkeys(r["from"] for r in result["results"]))
    tos = list(dict.fromkeys(r["to"] for r in result["results"]))
    ok = {(r["from"], r["to"]): r["connected"] for r in result["results"]}
    head = f"{result['protocol']}/{result['port']}"
    rows = [{"from": f, **{t: "." if ok[(f, t)] else "X" for t in tos}} for f in froms]
    return table(rows, [(head, "from"), *((t, t) for t in tos)])


def cmd_probe(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise InputError("--port", f"{args.port} is out of range 1-65535")
    if args.timeout <= 0:
        raise InputError("--timeout", "must be positive")
    result = _runtime(args.name).post("/v1/probe", {
        "port": args.port, "protocol": args.protocol, "from": args.sources,
        "to": args.targets, "timeout": args.timeout, "service": args.service,
    })
    if args.output == "json":
        emit_json(result)
    else:
        print(probe_matrix(result))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise InputError("lab exec", "no command given (membrane lab exec NS/POD -- CMD ...)")
    paths = LabPaths(node.validate_name(args.name))
    cgroup: Path | None = None
    if args.pod == "node":
        state = node.load_state(paths)
        path = Path("/run/netns") / paths.node_ns
        cgroup = Path(state["cgroup"]) if state.get("cgroup") else None
        if cgroup is None or not cgroup.is_dir():
            raise MembraneError(f"lab {args.name} has no socket-LB cgroup (made by an older "
                                "membrane: `membrane lab down` and up again)")
    elif "/" in args.pod:
        ns, pod = args.pod.split("/", 1)
        path = Path("/run/netns") / paths.pod_ns(ns, pod)
        if not path.exists():
            raise NotFound(f'pod "{args.pod}" not found in lab {args.name}')
    else:
        raise InputError("lab exec", f"{args.pod!r}: expected NS/POD or node")
    from membrane.datapath import netns

    def enter() -> None:
        netns.preexec_enter(str(path))
        if cgroup is not None:  # the node's processes: socket-LB translates their connect()
            (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")

    try:
        return subprocess.call(cmd, preexec_fn=enter)
    except FileNotFoundError:
        raise MembraneError(f"lab exec: command not found: {cmd[0]}") from None


def cmd_runtime(args: argparse.Namespace) -> int:
    import logging

    from membrane.lab.runtime import serve

    logging.getLogger().setLevel("INFO")
    asyncio.run(serve(node.validate_name(args.name)))
    return 0


def cmd_restart_agent(args: argparse.Namespace) -> int:
    print(f"agent restarted: pid {node.restart_agent(args.name)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    paths = LabPaths(node.validate_name(args.name))
    if not paths.state.exists():
        node.up(args.name)
        print(f"lab {args.name} is up")
    rt = _runtime(args.name)
    rt.post("/v1/apply", {"text": DEMO.read_text(), "source": str(DEMO)})
    print(f"\nThe tiny web farm ({DEMO.name}):\n")
    emit(Client(paths.agent_socket).get("/v1/endpoints"), "table",
         [("ID", "id"), ("POD", "pod"), ("IPV4", "ipv4"), ("IDENTITY", "identity"),
          ("LABELS", "labels")])
    for port in (80, 3306):
        res = rt.post("/v1/probe", {"port": port, "protocol": "TCP", "timeout": 1.0})
        print(f"\nconnectivity on TCP {port} ('.' connected, 'X' refused):\n")
        print(probe_matrix(res))
    rt.post("/v1/apply", {"text": DEMO_POLICY.read_text(), "source": str(DEMO_POLICY)})
    print(f"\nNow the talk's policy ({DEMO_POLICY.name}): role=backend accepts only "
          "role=frontend, on 3306.")
    dbs = [p["metadata"]["namespace"] + "/" + p["metadata"]["name"]
           for p in rt.get("/v1/pods")
           if p["metadata"].get("labels", {}).get("role") == "backend"]
    agent = Client(paths.agent_socket)
    print("\nThe policy log while traffic flows (membrane observe -o policy --follow):\n")
    with PolicyLog(agent):
        res = rt.post("/v1/probe", {"port": 3306, "protocol": "TCP", "timeout": 1.0,
                                    "to": dbs})
    print("\nconnectivity on TCP 3306 with the policy:\n")
    print(probe_matrix(res))
    for src in ("farm/web-1", "farm/other"):
        tr = agent.post("/v1/policy/trace", {"from": src, "to": "farm/db-1", "port": 3306,
                                             "protocol": "TCP"})
        why = "; ".join(n for s in tr["steps"] for n in s["allowed_by"] + s["denied_by"])
        print(f"\npolicy trace {src} -> farm/db-1 3306/TCP: {tr['verdict']}"
              + (f" ({why})" if why else " (no rule allows it: default deny)"))
    print("\nExplore: .venv/bin/membrane endpoint list | policy list | identity list | "
          "bpf policy list ID | lab probe --port 3306 | observe --pod farm/db-1 | "
          "observe -o policy --follow | monitor\n"
          f"Remove everything: make down (membrane lab down --name {args.name})")
    return 0


class PolicyLog:
    """Print the agent's policy log (`observe -o policy --follow`) while a block runs, and a
    moment after, so the verdicts of its last connections show too. The follower is a daemon
    thread: once stopped it prints nothing more and ends with the process."""

    def __init__(self, agent: Client, linger: float = 0.5) -> None:
        self.agent = agent
        self.linger = linger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
        try:
            for line in self.agent.stream(f"/v1/flows?output=policy&follow=1&since={since}"):
                if self._stop.is_set():
                    return
                print(f"  {line}", flush=True)
        except (OSError, MembraneError):
            return

    def __enter__(self) -> PolicyLog:
        self._thread.start()
        time.sleep(0.1)  # subscribed before the traffic starts
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(self.linger)
        self._stop.set()
