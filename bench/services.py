"""Service scaling, one run on a lab: membrane against kube-proxy's iptables and nftables layouts.

At each scale (default 1, 1,000, 10,000, 50,000 ClusterIP services, 2 backends each, port 80 ->
9000 on two lab pods) it measures:

- latency of TCP connect + one request/echo to the first, middle and last service (median, p99
  in µs), through (a) membrane: a client in a pod namespace, tc from_container translates;
  (b) kube-proxy's iptables layout (`_kubeproxy.iptables_sync`, loaded with iptables-restore in
  the node namespace) and (c) its nftables layout (`_kubeproxy.nft_*`, loaded with nft -f): a
  client in the node namespace (netfilter's OUTPUT nat hook DNATs; membrane's tc programs on the
  pods' veths just deliver). One C client (bench/rr.c) measures every mode against a C echo
  server in each backend pod, so an interpreter's ~200 µs per request does not hide the path.
  Each scale has three phases: membrane alone (the node as membrane runs it, no kube-proxy rules
  anywhere), then each kube-proxy layout loaded on its own. Every phase interleaves `direct`
  (pod to backend pod, no service), the same-run baseline that shows how much of a change is the
  machine drifting; the kube-proxy phases interleave membrane too (`membrane_median_by_phase`:
  walking 50,000 iptables rules evicts the caches, so whatever runs between the walks slows,
  pod-to-pod traffic that never meets netfilter included). Client and servers share one CPU
  (`--cpu`): a request is then handled start to end on it, without the cross-CPU wake-ups whose
  cost (~20 µs on this VM) comes and goes with where the scheduler puts them.
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
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
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
PORT, TARGET_PORT = 80, 9000  # 9000: bench/rr.c's echo server in each backend pod
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


class Probe:
    """bench/rr.c, built here: a C echo server in each backend pod and a C client, so the
    measured time is the path (and the service translation on it), not an interpreter."""

    def __init__(self, workdir: Path, cpus: set[int] | None = None) -> None:
        self.exe = workdir / "rr"
        subprocess.run(["clang", "-O2", "-Wall", "-Werror", "-o", str(self.exe),
                        str(Path(__file__).resolve().parent / "rr.c")], check=True)
        self.servers: list[subprocess.Popen[str]] = []
        self.cpus = cpus

    def _pin(self) -> None:
        """In the child before exec: client and servers on the same CPU(s), so where the
        scheduler happens to put them (and the cross-CPU wake-ups that go with it) does not
        move the numbers between phases."""
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def serve(self, netns_name: str, port: int) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", netns_name, str(self.exe), "server",
                              str(port)], stdout=subprocess.PIPE, text=True,
                             preexec_fn=self._pin)
        self.servers.append(p)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"rr server in {netns_name} did not start (exit {p.wait()})")

    def run(self, targets: dict[str, tuple[str, str, int]], rounds: int,
            warmup: int = 0) -> dict[str, list[float]]:
        """label -> (netns path, ip, port); rounds interleave the targets; samples in µs."""
        argv = [str(self.exe), "client", str(warmup), str(rounds)]
        argv += [f"{label}={ns},{ip},{port}" for label, (ns, ip, port) in targets.items()]
        r = subprocess.run(argv, capture_output=True, text=True, preexec_fn=self._pin)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip()[:400])
        out: dict[str, list[float]] = json.loads(r.stdout)
        return out

    def check(self, ns: str, ip: str, port: int = PORT) -> None:
        """One request must get its echo (a service just added serves)."""
        self.run({"check": (ns, ip, port)}, 1)

    def close(self) -> None:
        for p in self.servers:  # by pid: ip netns exec execs rr
            p.terminate()
        for p in self.servers:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_us": round(statistics.median(xs), 1),
            "p99_us": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 1), "n": len(xs)}


def interleaved(probe: Probe, clients: dict[str, str], targets: dict[str, str],
                direct: tuple[str, str, int], samples: int) -> dict[str, dict[str, list[float]]]:
    """samples per (mode, target), round-robin over targets and modes, after a warm-up; plus
    `direct`: pod to backend pod without a service, the same-run baseline for drift."""
    spec = {f"{m}/{t}": (ns, ip, PORT) for t, ip in targets.items() for m, ns in clients.items()}
    spec["direct/pod"] = direct
    got = probe.run(spec, samples, warmup=20)
    out: dict[str, dict[str, list[float]]] = {m: {} for m in [*clients, "direct"]}
    for label, xs in got.items():
        m, t = label.split("/")
        out[m][t] = xs
    return out


def phase_medians(got: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """membrane's median per target in one phase, and the phase's pod-to-pod baseline."""
    out = {t: stats(v)["median_us"] for t, v in got["membrane"].items()}
    out["direct"] = stats(got["direct"]["pod"])["median_us"]
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
    ap.add_argument("--agent-arg", action="append", default=[], metavar="OPTION",
                    help="pass an option to the lab's agent, e.g. --agent-arg=--no-visibility "
                         "(repeatable)")
    ap.add_argument("--cpu", default="last",
                    help="CPU the client and the echo servers run on: a number, `last` (the "
                         "highest this process may use) or `none` (wherever the scheduler puts "
                         "them; numbers then move with cross-CPU wake-ups)")
    ap.add_argument("--table", metavar="JSON", type=Path,
                    help="print the README's markdown table of a saved result and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    scales = sorted({int(s) for s in args.scales.split(",")})
    if not scales or scales[0] < 1 or scales[-1] > ADD_BASE - 1:
        ap.error(f"--scales must be within 1..{ADD_BASE - 1}")
    restore = f"iptables-{args.iptables}-restore"
    allowed = os.sched_getaffinity(0)
    if args.cpu == "none":
        cpus = None
    elif args.cpu == "last":
        cpus = {max(allowed)}
    elif args.cpu.isdigit() and int(args.cpu) in allowed:
        cpus = {int(args.cpu)}
    else:
        ap.error(f"--cpu {args.cpu}: not one of {sorted(allowed)}, `last` or `none`")

    lab = f"bsvc{secrets.token_hex(3)}"
    node_ns = f"mb-{lab}.node"
    result: dict[str, Any] = {"benchmark": "services_scaling", "lab": lab, "scales": scales,
                              "samples": args.samples, "iptables_backend": args.iptables,
                              "agent_args": args.agent_arg,
                              "client_cpu": sorted(cpus) if cpus else "any",
                              "per_scale": {}}
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-services-"))
    probe: Probe | None = None
    try:
        probe = Probe(workdir, cpus)
        membrane_cli("lab", "up", "--name", lab, *(f"--agent-arg={a}" for a in args.agent_arg))
        membrane_cli("lab", "apply", "-f", "-", "--name", lab, stdin=PODS)
        pods = json.loads(membrane_cli("lab", "get", "pods", "-o", "json", "--name", lab))
        ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods["items"]}
        svcs = Services([ips["backend-0"], ips["backend-1"]])
        for b in ("backend-0", "backend-1"):
            probe.serve(f"mb-{lab}.default.{b}", TARGET_PORT)
        client_ns = str(netns.path_of(f"mb-{lab}.default.client"))
        node_path = str(netns.path_of(node_ns))
        # Node-namespace clients need a route to the ClusterIPs before OUTPUT's DNAT reroutes.
        in_node(node_ns, ["ip", "route", "add", str(SERVICE_CIDR), "dev", "mb_host"])
        api = Client(RUN_DIR / f"{lab}.sock", timeout=600.0)
        # A fresh lab answers its first few thousand connections slower (all modes alike):
        # warm it up pod to pod, so the first scale is not penalised.
        direct = (client_ns, ips["backend-0"], TARGET_PORT)
        probe.run({"warmup": direct}, 0, warmup=WARMUP)
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
            lat: dict[str, dict[str, list[float]]] = {}
            mem_by_phase: dict[str, dict[str, float]] = {}

            # membrane: add one (end to end through the API, and the agent's map-write time)
            adds = []
            keys = []
            for k in range(args.adds):
                idx = ADD_BASE + si * 100 + k
                ms, r = timed(lambda i=idx: api.post(  # type: ignore[misc]
                    "/v1/services", {"services": [svcs.api(i)]}))
                probe.check(client_ns, cluster_ip(idx))  # it serves
                adds.append((ms, r["datapath_us"], r["map_writes"]))
                keys.append(f"default/svc-{idx}")
            api.post("/v1/services/delete", {"keys": keys})
            row["add_one_membrane"] = {
                "measured": "POST /v1/services with one service (end to end, client side); "
                            "datapath_us = the agent's BPF map writes",
                "end_to_end_ms": round(statistics.median(a[0] for a in adds), 3),
                "datapath_us": round(statistics.median(a[1] for a in adds), 1),
                "map_writes": adds[0][2]}

            # membrane phase: the node as membrane runs it, no kube-proxy rules anywhere
            got = interleaved(probe, {"membrane": client_ns}, targets, direct, args.samples)
            lat["membrane"], lat["direct"] = got["membrane"], got["direct"]
            mem_by_phase["alone"] = phase_medians(got)

            # iptables phase
            in_node(node_ns, [restore, "--noflush"], kp.iptables_jumps())
            gen_ms, text = timed(lambda p=ports: kp.iptables_sync(p, POD_CIDR))  # type: ignore[misc]
            load_ms = in_node(node_ns, [restore, "--noflush"], text)
            row["iptables_full_sync"] = {"generate_ms": round(gen_ms, 1),
                                         "restore_ms": round(load_ms, 1),
                                         "restore_bytes": len(text)}
            got = interleaved(probe, {"membrane": client_ns, "iptables": node_path}, targets,
                              direct, args.samples)
            lat["iptables"] = got["iptables"]
            mem_by_phase["iptables_loaded"] = phase_medians(got)
            adds_i = []
            extra: list[kp.ServicePort] = []
            for k in range(args.adds):
                new = svcs.port(ADD_BASE + si * 100 + k)
                extra.append(new)
                every = ports + extra
                g, text = timed(lambda e=every, nw=new: kp.iptables_sync(  # type: ignore[misc]
                    e, POD_CIDR, changed=[nw]))
                rs = in_node(node_ns, [restore, "--noflush"], text)
                probe.check(node_path, new.cluster_ip)
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
            got = interleaved(probe, {"membrane": client_ns, "nftables": node_path}, targets,
                              direct, args.samples)
            lat["nftables"] = got["nftables"]
            mem_by_phase["nftables_loaded"] = phase_medians(got)
            adds_n = []
            for k in range(args.adds):
                new = svcs.port(ADD_BASE + si * 100 + k)
                g, text = timed(lambda nw=new: kp.nft_services([nw], POD_CIDR))  # type: ignore[misc]
                adds_n.append((g, in_node(node_ns, ["nft", "-f", "-"], text)))
                probe.check(node_path, new.cluster_ip)
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
        if probe is not None:
            probe.close()
        with contextlib.suppress(Exception):
            membrane_cli("lab", "down", "--name", lab)
        shutil.rmtree(workdir, ignore_errors=True)
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
        "the client closes each connection with a reset (no TIME_WAIT left behind) and shares "
        "client_cpu with the echo servers",
    ]
    summarize(result, scales)
    print(json.dumps(result, indent=1))


def summarize(result: dict[str, Any], scales: list[int]) -> None:
    ps = result["per_scale"]
    big, small = str(scales[-1]), str(scales[0])

    def med(n: int | str, mode: str, t: str) -> float:
        v: float = ps[str(n)]["latency"][mode][t]["median_us"]
        return v

    positions = ("first", "middle", "last")
    mem = [med(n, "membrane", t) for n in scales for t in positions]
    # membrane over the same run's pod-to-pod baseline: the service's cost, drift divided out
    rel = [med(n, "membrane", t) / med(n, "direct", "pod") for n in scales for t in positions]
    variation = max(mem) / min(mem)
    variation_rel = max(rel) / min(rel)
    within = max(max(med(n, "membrane", t) for t in positions)
                 / min(med(n, "membrane", t) for t in positions) for n in scales)
    last_m, last_i, last_n = (med(big, m, "last") for m in ("membrane", "iptables", "nftables"))
    add_ms = ps[big]["add_one_membrane"]["datapath_us"] / 1e3
    result["summary"] = {
        "membrane_median_max_over_min_across_scales_and_positions": round(variation, 3),
        "membrane_over_direct_max_over_min_across_scales_and_positions": round(variation_rel, 3),
        "membrane_first_to_last_max_over_min_within_a_scale": round(within, 3),
        "membrane_last_large_over_small": round(last_m / med(small, "membrane", "last"), 3),
        "direct_large_over_small": round(med(big, "direct", "pod") / med(small, "direct", "pod"),
                                         3),
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
        "membrane_variation_le_10pct (over direct)": variation_rel <= 1.10,
        "membrane_beats_iptables_last_by_5x": last_i / last_m >= 5.0,
        "membrane_add_one_lt_1ms (datapath)": add_ms < 1.0,
    }


def table(result: dict[str, Any]) -> str:
    """Markdown: latency medians (p99) per scale and position, and the cost of adding one."""
    ps = result["per_scale"]

    def cell(lat: dict[str, Any]) -> str:
        return f"{lat['median_us']:.0f} ({lat['p99_us']:.0f})"

    rows = ["| services | path | first | middle | last | add one service |",
            "|---:|---|---:|---:|---:|---:|"]
    for n, row in ps.items():
        lat, n_fmt = row["latency"], f"{int(n):,}"
        add = {"membrane": f"{row['add_one_membrane']['datapath_us']:.0f} us in maps "
                           f"({row['add_one_membrane']['map_writes']} writes), "
                           f"{row['add_one_membrane']['end_to_end_ms']:.1f} ms via the API",
               "iptables": f"{row['add_one_iptables']['total_ms']:,.1f} ms",
               "nftables": f"{row['add_one_nftables']['nft_ms']:,.1f} ms"}
        for mode in ("membrane", "iptables", "nftables"):
            rows.append(f"| {n_fmt} | {mode} | " + " | ".join(
                cell(lat[mode][t]) for t in ("first", "middle", "last")) + f" | {add[mode]} |")
        rows.append(f"| {n_fmt} | pod to pod, no service | {cell(lat['direct']['pod'])} | | | |")
    return "\n".join(rows)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench/services.py needs root (lab namespaces, BPF, netfilter in the lab node)")
    main()
