"""Pod-to-pod TCP request/response through membrane against plain kernel routing, one run.

The same topology twice: a node namespace routing between two pod namespaces over veths. The
baseline has no programs attached (the kernel routes through the node's stack); membrane has
bpf_lxc attached on both veths and delivers by redirect. Rounds alternate A/B/A/B so drift on a
busy machine hits both alike. Prints JSON with the rates and latencies and their ratio.
Target (issue 2): membrane's request/response rate >= 100% of the baseline.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from membrane.agent.app import DEFAULT_BPF_DIR
from membrane.datapath import netns
from membrane.datapath.loader import Datapath
from membrane.datapath.maps.endpoints import EndpointEntry
from membrane.datapath.netlink import Netlink, write_sysctl

PIN_ROOT = Path("/sys/fs/bpf/membrane")
SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(16)
while True:
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (d := c.recv(64)):
        c.sendall(d)
    c.close()
"""


def rr(ns_a: str, ip_b: str, seconds: float) -> dict[str, float]:
    with netns.inside(ns_a):
        sock = socket.create_connection((ip_b, 5001), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    try:
        while (t := time.perf_counter()) < end:
            sock.sendall(b"x")
            sock.recv(64)
            lat.append(time.perf_counter() - t)
    finally:
        sock.close()
    lat.sort()
    return {"rate_per_s": len(lat) / seconds, "p50_us": lat[len(lat) // 2] * 1e6,
            "p99_us": lat[int(len(lat) * 0.99)] * 1e6}


def main(rounds: int = 4, seconds: float = 2.0) -> None:
    tag = secrets.token_hex(3)
    node_name = f"rr{tag}"
    node_ns, ns_a, ns_b = f"mb-{node_name}.node", f"mb-{node_name}.a", f"mb-{node_name}.b"
    cidr = IPv4Network("10.211.0.0/24")
    gw, ip_a, ip_b = cidr[1], cidr[2], cidr[3]
    server: subprocess.Popen[bytes] | None = None
    dp: Datapath | None = None
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "membrane": []}
    try:
        for n in (node_ns, ns_a, ns_b):
            netns.create(n)
        with netns.inside(node_ns):
            nl = Netlink()
            nl.ensure_router("mb_host", gw)
            write_sysctl("net.ipv4.ip_forward", "1")
            links = {}
            for ns, ip, ifname in ((ns_a, ip_a, "lxca"), (ns_b, ip_b, "lxcb")):
                links[ns] = nl.create_endpoint_veth(
                    host_ifname=ifname, pod_netns=netns.path_of(ns), ip=IPv4Address(ip),
                    gateway=IPv4Address(gw))
            nl.close()
        server = subprocess.Popen(
            ["nsenter", f"--net={netns.path_of(ns_b)}", sys.executable, "-c", SERVER])
        time.sleep(0.3)
        with netns.inside(node_ns):
            dp = Datapath.open(node_name, DEFAULT_BPF_DIR, PIN_ROOT)
            for i, (ns, ip) in enumerate(((ns_a, ip_a), (ns_b, ip_b))):
                host, pod = links[ns]
                dp.endpoints.update(EndpointEntry(ip=IPv4Address(ip), ep_id=i + 1,
                                                  ifindex=host.ifindex, mac=pod.mac,
                                                  node_mac=host.mac, identity=256))
        for _ in range(rounds):
            for mode in ("baseline", "membrane"):
                with netns.inside(node_ns):
                    for host, _pod in links.values():
                        if mode == "membrane":
                            dp.attach(host.ifindex)
                        else:
                            dp.detach(host.ifindex)
                results[mode].append(rr(ns_a, str(ip_b), seconds))
    finally:
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGKILL)
            server.wait()
        if dp is not None:
            dp.close()
        for n in (ns_a, ns_b, node_ns):
            netns.remove(n)
        Datapath.remove_pins(node_name, PIN_ROOT)

    def summary(runs: list[dict[str, float]]) -> dict[str, float]:
        return {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}

    base, mem = summary(results["baseline"]), summary(results["membrane"])
    print(json.dumps({
        "benchmark": "pod_to_pod_tcp_rr",
        "rounds": rounds, "seconds_per_round": seconds,
        "baseline_plain_routing": base,
        "membrane": mem,
        "rate_ratio_membrane_vs_baseline": round(mem["rate_per_s"] / base["rate_per_s"], 3),
        "p50_ratio_membrane_vs_baseline": round(mem["p50_us"] / base["p50_us"], 3),
        "target_rate_ratio": 1.0,
    }))


if __name__ == "__main__":
    main()
