"""Run the datapath's programs on crafted frames (BPF_PROG_TEST_RUN) and fixed endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from membrane.datapath import libbpf
from membrane.datapath.abi import SkBuff
from membrane.datapath.loader import PROG_FROM, PROG_TO, Datapath
from membrane.datapath.maps.endpoints import EndpointEntry

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
LO = 1  # test_run needs a device of the current namespace; loopback is always there

A = EndpointEntry(ip=IPv4Address("10.200.0.10"), ep_id=10, ifindex=LO, mac="02:00:00:00:00:0a",
                  node_mac="02:00:00:00:01:0a", identity=256)
B = EndpointEntry(ip=IPv4Address("10.200.0.11"), ep_id=11, ifindex=41, mac="02:00:00:00:00:0b",
                  node_mac="02:00:00:00:01:0b", identity=257)
# An endpoint behind another veth: its address sent from A's veth is spoofed.
C = EndpointEntry(ip=IPv4Address("10.200.0.12"), ep_id=12, ifindex=42, mac="02:00:00:00:00:0c",
                  node_mac="02:00:00:00:01:0c", identity=258)
WORLD = "198.51.100.7"


@dataclass(frozen=True)
class Result:
    verdict: int
    frame: bytes


def run(dp: Datapath, prog: str, frame: bytes, ifindex: int = LO, repeat: int = 1) -> Result:
    ctx = SkBuff(ifindex=ifindex)
    ret, out, _ = libbpf.prog_test_run(dp.prog_fd(prog), frame, ctx=ctx, repeat=repeat)
    return Result(ret, out)


def from_container(dp: Datapath, frame: bytes, ifindex: int = LO) -> Result:
    return run(dp, PROG_FROM, frame, ifindex)


def to_container(dp: Datapath, frame: bytes, ifindex: int = LO) -> Result:
    return run(dp, PROG_TO, frame, ifindex)


def add_endpoints(dp: Datapath) -> None:
    for ep in (A, B, C):
        dp.endpoints.update(ep)
