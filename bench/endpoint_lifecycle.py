"""Endpoint creation and deletion latency through the agent API, p50/p95 over N endpoints.

Brings up a throw-away lab, creates N endpoints (each in a new namespace the agent makes: netns,
veth, addresses, routes, neighbours, attach, map writes), deletes them, and prints JSON.
Target (issue 2): creation p50 <= 25 ms.
"""

from __future__ import annotations

import json
import secrets
import statistics
import sys
import time

from membrane.cli.client import Client
from membrane.lab import node
from membrane.lab.node import LabPaths


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(count: int = 100) -> None:
    name = "b" + secrets.token_hex(3)
    node.up(name, "10.210.0.0/20")
    try:
        agent = Client(LabPaths(name).agent_socket)
        create_ms: list[float] = []
        delete_ms: list[float] = []
        ids = []
        for i in range(count):
            t = time.perf_counter()
            ep = agent.post("/v1/endpoints", {"netns_name": f"mb-{name}.bench{i}",
                                               "pod": f"bench/p{i}", "labels": {"app": "bench"}})
            create_ms.append((time.perf_counter() - t) * 1000)
            ids.append(ep["id"])
        for ep_id in ids:
            t = time.perf_counter()
            agent.delete(f"/v1/endpoints/{ep_id}")
            delete_ms.append((time.perf_counter() - t) * 1000)
    finally:
        node.down(name)
    print(json.dumps({
        "benchmark": "endpoint_lifecycle",
        "endpoints": count,
        "create_ms": {"p50": round(pct(create_ms, 0.5), 2), "p95": round(pct(create_ms, 0.95), 2),
                      "mean": round(statistics.mean(create_ms), 2)},
        "delete_ms": {"p50": round(pct(delete_ms, 0.5), 2), "p95": round(pct(delete_ms, 0.95), 2),
                      "mean": round(statistics.mean(delete_ms), 2)},
        "target_create_p50_ms": 25,
        "create_p50_vs_target": round(pct(create_ms, 0.5) / 25, 3),
    }))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
