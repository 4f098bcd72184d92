"""Per-packet cost of mb_from_container through BPF_PROG_TEST_RUN, against a pass-through
program measured in the same run (the cost of the test-run harness itself).

The kernel times `repeat` runs of the program on the same frame and reports ns per run. Cases:
a new connection to the world, an established one, delivery to a local endpoint (redirect with
MAC/TTL rewrite), and a spoofed source (drop). Prints JSON; not asserted anywhere.
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "privileged"))

from bpfrun import WORLD, A, B, C, add_endpoints  # noqa: E402
from packets import ACK, ETH_P_IP, SYN, eth, ipv4, tcp  # noqa: E402

from membrane.agent.app import DEFAULT_BPF_DIR  # noqa: E402
from membrane.datapath import libbpf  # noqa: E402
from membrane.datapath.abi import SkBuff  # noqa: E402
from membrane.datapath.loader import PIN_ROOT, PROG_FROM, Datapath  # noqa: E402

REPEAT = 200_000
ROUNDS = 7
PASS_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("tc") int mb_pass(struct __sk_buff *skb) { return 0; }
char _license[] SEC("license") = "GPL";
"""


def pass_program(tmp: Path) -> tuple[libbpf.BpfObject, int]:
    src, obj = tmp / "pass.c", tmp / "pass.o"
    src.write_text(PASS_C)
    subprocess.run(["clang", "-O2", "-target", "bpf", f"-I{REPO / 'bpf/lib'}", "-c", str(src),
                    "-o", str(obj)], check=True)
    o = libbpf.BpfObject(str(obj))
    o.load()
    return o, o.prog_fd("mb_pass")


def ns_per_packet(fd: int, frame: bytes) -> float:
    ctx = SkBuff(ifindex=1)
    runs = [libbpf.prog_test_run(fd, frame, ctx=ctx, repeat=REPEAT)[2] for _ in range(ROUNDS)]
    return statistics.median(runs)


def main() -> None:
    node = f"bench{secrets.token_hex(3)}"
    gw = A.node_mac
    frames = {
        "new_connection_to_world": eth(gw, A.mac, ETH_P_IP, ipv4(str(A.ip), WORLD, 6,
                                                                 tcp(40000, 80, SYN))),
        "established_to_world": eth(gw, A.mac, ETH_P_IP, ipv4(str(A.ip), WORLD, 6,
                                                              tcp(40001, 80, ACK))),
        "to_local_endpoint_redirect": eth(gw, A.mac, ETH_P_IP, ipv4(str(A.ip), str(B.ip), 6,
                                                                    tcp(40002, 80, ACK))),
        "spoofed_source_drop": eth(gw, C.mac, ETH_P_IP, ipv4(str(C.ip), WORLD, 6,
                                                             tcp(40003, 80, SYN))),
    }
    dp = Datapath.open(node, DEFAULT_BPF_DIR, PIN_ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        obj, pass_fd = pass_program(Path(tmp))
        try:
            add_endpoints(dp)
            fd = dp.prog_fd(PROG_FROM)
            baseline = ns_per_packet(pass_fd, frames["established_to_world"])
            results = {}
            for name, frame in frames.items():
                if name == "new_connection_to_world":
                    # Every run after the first finds the entry: time the miss path by clearing.
                    dp.ct.delete_all()
                    ctx = SkBuff(ifindex=1)
                    samples = []
                    for _ in range(2000):
                        dp.ct.delete_all()
                        samples.append(libbpf.prog_test_run(fd, frame, ctx=ctx, repeat=1)[2])
                    ns = statistics.median(samples)
                else:
                    libbpf.prog_test_run(fd, frame, ctx=SkBuff(ifindex=1))  # create the entry
                    ns = ns_per_packet(fd, frame)
                results[name] = {"ns_per_packet": round(ns, 1),
                                 "over_baseline_ns": round(ns - baseline, 1),
                                 "ratio_to_baseline": round(ns / baseline, 2)}
        finally:
            obj.close()
            dp.close()
            Datapath.remove_pins(node, PIN_ROOT)
    print(json.dumps({"bench": "bpf_from_container", "repeat": REPEAT, "rounds": ROUNDS,
                      "baseline_pass_program_ns": round(baseline, 1), "cases": results},
                     indent=2))


if __name__ == "__main__":
    main()
