"""Service scaling, one run on a lab: membrane against kube-proxy's iptables and nftables layouts.

At each scale (default 1, 1,000, 10,000, 50,000 ClusterIP services, 2 backends each, port 80 ->
8080 on two lab pods) it measures:

- latency of TCP connect + one request/echo to the first, middle and last service (median, p99
  in µs), through (a) membrane: a client in a pod namespace, tc from_container translates;
  (b) kube-proxy's iptables layout (`_kubeproxy.iptables_sync`, loaded with iptables-restore in
  the node namespace) and (c) its nftables layout (`_kubeproxy.nft_*`, loaded with nft -f): a
  client in the node namespace (netfilter's OUTPUT nat hook DNATs; membrane's tc programs on the
  pods' veths just deliver). Only one kube-proxy layout is loaded at a time; membrane samples are
  taken interleaved with each of them (pod traffic never meets the node's netfilter), so drift
  hits all modes alike. The same client code measures every mode.
- the time to add one more service: membrane's `POST /v1/services` (end to end and the agent's
  datapath_us); iptables as kube-proxy (>= 1.27, MinimizeIPTablesRestore) syncs: regenerate and
  `iptables-restore --noflush` with KUBE-SERVICES rewritten in full plus the new service's
  chains; nftables as kube-proxy's incremental sync: one `nft -f` transaction with the new
  chains, the cluster-ips and service-ips elements.
Prints one JSON object; targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _kubeproxy as kp
from membrane.cli.client import RUN_DIR, Client
from membrane.datapath import netns

SERVICE_CIDR = IPv4Network("10.96.0.0/16")
POD_CIDR = "10.200.0.0/16"
PORT, TARGET_PORT = 80, 8080
ADD_BASE = 60000  # add-one services take ClusterIPs from here, out of the scales' range
BATCH = 5000
WARMUP = 3000
PAYLOAD = b"membrane-bench\n"
PODS = """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {containers: [{name: c, image: bench}]}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-0, namespace: default, labels: {app: backend}}
spec: {containers: [{name: c, image: bench, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-1, namespace: default, labels: {app: backend}}
spec: {containers: [{name: c, image: bench, ports: [{containerPort: 8080}]}]}
"""


def membrane_cli(*args: str, stdin: str | None = None) -> str:
    r = subprocess.run([sys.executable, "-m", "membrane", *args], input=stdin, text=True,
                       capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"membrane {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def in_node(node_ns: str, argv: list[str], stdin: str = "") -> float:
    """Run a command in the node namespace; its wall time in ms."""
    t0 = time.perf_counter()
    r = subprocess.run(["ip", "netns", "exec", node_ns, *argv], input=stdin, text=True,
                       capture_output=True)
    ms = (time.perf_counter() - t0) * 1e3
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {node_ns}: {r.stderr.strip()[:400]}")
    return ms


def cluster_ip(i: int) -> str:
    return str(SERVICE_CIDR[i + 1])


class Services:
    def __init__(self, backends: list[str]) -> None:
        self.eps = tuple((b, TARGET_PORT) for b in backends)

    def port(self, i: int) -> kp.ServicePort:
        return kp.ServicePort(namespace="default", name=f"svc-{i}", port_name="http",
                              cluster_ip=cluster_ip(i), port=PORT, endpoints=self.eps)

    def api(self, i: int) -> dict[str, Any]:
        return {"namespace": "default", "name": f"svc-{i}", "cluster_ip": cluster_ip(i),
                "ports": [{"name": "http", "protocol": "TCP", "port": PORT,
                           "backends": [{"ip": ip, "port": p} for ip, p in self.eps]}]}


def rr(ns_path: str, ip: str, port: int = PORT) -> float:
    """One sample: connect, one request, its echo; µs. The socket is made in the namespace."""
    with netns.inside(ns_path):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(3.0)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter_ns()
        s.connect((ip, port))
        s.sendall(PAYLOAD)
        got = b""
        while len(got) < len(PAYLOAD):
            chunk = s.recv(64)
            if not chunk:
                raise ConnectionError(f"{ip}:{port} closed before the echo")
            got += chunk
        return (time.perf_counter_ns() - t0) / 1e3
    finally:
        s.close()


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_us": round(statistics.median(xs), 1),
            "p99_us": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 1), "n": len(xs)}


def interleaved(clients: dict[str, str], targets: dict[str, str],
                samples: int) -> dict[str, dict[str, list[float]]]:
    """samples per (mode, target), round-robin over targets and modes, after a warm-up."""
    out: dict[str, dict[str, list[float]]] = {m: {t: [] for t in targets} for m in clients}
    for ns in clients.values():
        for ip in targets.values():
            for _ in range(5):
                rr(ns, ip)
    gc.disable()
    try:
        for _ in range(samples):
            for t, ip in targets.items():
                for m, ns in clients.items():
                    out[m][t].append(rr(ns, ip))
    finally:
        gc.enable()
    return out


def timed(f: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = f()
    return (time.perf_counter() - t0) * 1e3, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,1000,10000,50000")
    ap.add_argument("--samples", type=int, default=400, help="per mode, target and scale")
    ap.add_argument("--adds", type=int, default=3, help="add-one repetitions per mode and scale")
    ap.add_argument("--iptables", choices=("legacy", "nft"), default="legacy",
                    help="iptables backend (Debian 12's default `iptables` is nft)")
    args = ap.parse_args()
    scales = sorted({int(s) for s in args.scales.split(",")})
    if not scales or scales[0] < 1 or scales[-1] > ADD_BASE - 1:
        ap.error(f"--scales must be within 1..{ADD_BASE - 1}")
    restore = f"iptables-{args.iptables}-restore"

    lab = f"bsvc{secrets.token_hex(3)}"
    node_ns = f"mb-{lab}.node"
    result: dict[str, Any] = {"benchmark": "services_scaling", "lab": lab, "scales": scales,
                              "samples": args.samples, "iptables_backend": args.iptables,
                              "per_scale": {}}
    started = time.perf_counter()
    try:
        membrane_cli("lab", "up", "--name", lab)
        membrane_cli("lab", "apply", "-f", "-", "--name", lab, stdin=PODS)
        pods = json.loads(membrane_cli("lab", "get", "pods", "-o", "json", "--name", lab))
        ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods["items"]}
        svcs = Services([ips["backend-0"], ips["backend-1"]])
        client_ns = str(netns.path_of(f"mb-{lab}.default.client"))
        node_path = str(netns.path_of(node_ns))
        # Node-namespace clients need a route to the ClusterIPs before OUTPUT's DNAT reroutes.
        in_node(node_ns, ["ip", "route", "add", str(SERVICE_CIDR), "dev", "mb_host"])
        api = Client(RUN_DIR / f"{lab}.sock", timeout=600.0)
        # A fresh lab answers its first few thousand connections slower (all modes alike):
        # warm it up pod to pod, so the first scale is not penalised.
        for _ in range(WARMUP):
            rr(client_ns, ips["backend-0"], TARGET_PORT)
        have = 0
        for si, n in enumerate(scales):
            row: dict[str, Any] = {}
            ingest_ms = 0.0
            for lo in range(have, n, BATCH):
                batch = [svcs.api(i) for i in range(lo, min(n, lo + BATCH))]
                ms, _ = timed(lambda b=batch: api.post("/v1/services",  # type: ignore[misc]
                                                       {"services": b}))
                ingest_ms += ms
            row["membrane_load_ms"] = {"services_added": n - have, "ms": round(ingest_ms, 1)}
            have = n
            targets = {"first": cluster_ip(0), "middle": cluster_ip(n // 2),
                       "last": cluster_ip(n - 1)}
            ports = [svcs.port(i) for i in range(n)]
            lat: dict[str, dict[str, list[float]]] = {"membrane": {t: [] for t in targets}}
            mem_by_phase: dict[str, dict[str, float]] = {}

            # membrane: add one (end to end through the API, and the agent's map-write time)
            adds = []
            keys = []
            for k in range(args.adds):
                idx = ADD_BASE + si * 100 + k
                ms, r = timed(lambda i=idx: api.post(  # type: ignore[misc]
                    "/v1/services", {"services": [svcs.api(i)]}))
                rr(client_ns, cluster_ip(idx))  # it serves
                adds.append((ms, r["datapath_us"], r["map_writes"]))
                keys.append(f"default/svc-{idx}")
            api.post("/v1/services/delete", {"keys": keys})
            row["add_one_membrane"] = {
                "measured": "POST /v1/services with one service (end to end, client side); "
                            "datapath_us = the agent's BPF map writes",
                "end_to_end_ms": round(statistics.median(a[0] for a in adds), 3),
                "datapath_us": round(statistics.median(a[1] for a in adds), 1),
                "map_writes": adds[0][2]}

            # iptables phase
            in_node(node_ns, [restore, "--noflush"], kp.iptables_jumps())
            gen_ms, text = timed(lambda p=ports: kp.iptables_sync(p, POD_CIDR))  # type: ignore[misc]
            load_ms = in_node(node_ns, [restore, "--noflush"], text)
            row["iptables_full_sync"] = {"generate_ms": round(gen_ms, 1),
                                         "restore_ms": round(load_ms, 1),
                                         "restore_bytes": len(text)}
            got = interleaved({"membrane": client_ns, "iptables": node_path}, targets,
                              args.samples)
            lat["iptables"] = got["iptables"]
            for t in targets:
                lat["membrane"][t] += got["membrane"][t]
            mem_by_phase["iptables_loaded"] = {t: stats(v)["median_us"]
                                               for t, v in got["membrane"].items()}
            adds_i = []
            extra: list[kp.ServicePort] = []
            for k in range(args.adds):
                new = svcs.port(ADD_BASE + si * 100 + k)
                extra.append(new)
                every = ports + extra
                g, text = timed(lambda e=every, nw=new: kp.iptables_sync(  # type: ignore[misc]
                    e, POD_CIDR, changed=[nw]))
                rs = in_node(node_ns, [restore, "--noflush"], text)
                rr(node_path, new.cluster_ip)
                adds_i.append((g, rs))
            row["add_one_iptables"] = {
                "measured": f"kube-proxy partial sync: regenerate (Python here; kube-proxy's Go "
                            f"is faster) + `{restore} --noflush` of KUBE-SERVICES in full and "
                            "the new service's chains",
                "generate_ms": round(statistics.median(a[0] for a in adds_i), 1),
                "restore_ms": round(statistics.median(a[1] for a in adds_i), 1),
                "total_ms": round(statistics.median(a[0] + a[1] for a in adds_i), 1)}
            in_node(node_ns, [restore], kp.iptables_empty())

            # nftables phase (loaded in transactions of BATCH services: see the report)
            nft_ms = in_node(node_ns, ["nft", "-f", "-"], kp.nft_setup())
            for lo in range(0, n, BATCH):
                nft_ms += in_node(node_ns, ["nft", "-f", "-"],
                                  kp.nft_services(ports[lo:lo + BATCH], POD_CIDR))
            row["nftables_load_ms"] = round(nft_ms, 1)
            got = interleaved({"membrane": client_ns, "nftables": node_path}, targets,
                              args.samples)
            lat["nftables"] = got["nftables"]
            for t in targets:
                lat["membrane"][t] += got["membrane"][t]
            mem_by_phase["nftables_loaded"] = {t: stats(v)["median_us"]
                                               for t, v in got["membrane"].items()}
            adds_n = []
            for k in range(args.adds):
                new = svcs.port(ADD_BASE + si * 100 + k)
                g, text = timed(lambda nw=new: kp.nft_services([nw], POD_CIDR))  # type: ignore[misc]
                adds_n.append((g, in_node(node_ns, ["nft", "-f", "-"], text)))
                rr(node_path, new.cluster_ip)
            row["add_one_nftables"] = {
                "measured": "kube-proxy incremental sync: one `nft -f` transaction (new chains "
                            "+ cluster-ips and service-ips elements)",
                "generate_ms": round(statistics.median(a[0] for a in adds_n), 3),
                "nft_ms": round(statistics.median(a[1] for a in adds_n), 1)}
            in_node(node_ns, ["nft", "-f", "-"], kp.nft_teardown())

            row["latency"] = {m: {t: stats(v) for t, v in per.items()}
                              for m, per in lat.items()}
            row["membrane_median_by_phase"] = mem_by_phase
            result["per_scale"][str(n)] = row
            print(f"scale {n} done at {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            membrane_cli("lab", "down", "--name", lab)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    result["iptables_version"] = subprocess.run(
        [restore.removesuffix("-restore"), "-V"], capture_output=True, text=True).stdout.strip()
    result["notes"] = [
        "position = order of the service's rule in KUBE-SERVICES (creation order here; "
        "kube-proxy writes it in Go map order, so in a cluster it is shuffled every sync)",
        "node-namespace clients' source (mb_host, 10.200.0.1) is inside the cluster CIDR, so "
        "kube-proxy's off-cluster masquerade rule does not fire",
        "nftables is loaded in transactions of 5,000 services; kube-proxy's first sync is one "
        "transaction",
    ]
    summarize(result, scales)
    print(json.dumps(result, indent=1))


def summarize(result: dict[str, Any], scales: list[int]) -> None:
    ps = result["per_scale"]
    big, small = str(scales[-1]), str(scales[0])
    mem = [ps[str(n)]["latency"]["membrane"][t]["median_us"]
           for n in scales for t in ("first", "middle", "last")]
    variation = max(mem) / min(mem)
    last_m = ps[big]["latency"]["membrane"]["last"]["median_us"]
    last_i = ps[big]["latency"]["iptables"]["last"]["median_us"]
    last_n = ps[big]["latency"]["nftables"]["last"]["median_us"]
    add_ms = ps[big]["add_one_membrane"]["datapath_us"] / 1e3
    result["summary"] = {
        "membrane_median_max_over_min_across_scales_and_positions": round(variation, 3),
        "membrane_last_small_vs_large": round(
            last_m / ps[small]["latency"]["membrane"]["last"]["median_us"], 3),
        f"iptables_last_over_membrane_last_at_{big}": round(last_i / last_m, 2),
        f"nftables_last_over_membrane_last_at_{big}": round(last_n / last_m, 2),
        f"membrane_add_one_at_{big}_datapath_ms": round(add_ms, 3),
        f"membrane_add_one_at_{big}_end_to_end_ms": ps[big]["add_one_membrane"]["end_to_end_ms"],
        f"iptables_add_one_at_{big}_ms": ps[big]["add_one_iptables"]["total_ms"],
        f"nftables_add_one_at_{big}_ms": ps[big]["add_one_nftables"]["nft_ms"],
    }
    full = scales[0] == 1 and scales[-1] >= 50000
    result["targets"] = {
        "at_full_scale": full,
        "membrane_variation_le_10pct": variation <= 1.10,
        "membrane_beats_iptables_last_by_5x": last_i / last_m >= 5.0,
        "membrane_add_one_lt_1ms (datapath)": add_ms < 1.0,
    }


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench/services.py needs root (lab namespaces, BPF, netfilter in the lab node)")
    main()
