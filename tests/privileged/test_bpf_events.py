"""Datapath events on crafted packets (BPF_PROG_TEST_RUN): what reaches the ring buffer for
allowed, refused and established traffic, drop rate-limiting, and loss accounting."""

from __future__ import annotations

import ctypes
import secrets
import select
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from bpfrun import LO, TC_ACT_OK, TC_ACT_SHOT, from_container, to_container
from packets import ACK, ETH_P_IP, FIN, SYN, eth, icmp_echo, ipv4, tcp, udp

from membrane.datapath.abi import (
    EVENT_F_REPLY,
    EventC,
    EventType,
    PolicyMatch,
    TracePoint,
    Verdict,
)
from membrane.datapath.events import Event, EventRing
from membrane.datapath.loader import Datapath
from membrane.datapath.maps.config import NodeConfigValue
from membrane.datapath.maps.endpoints import EndpointEntry
from membrane.labels import Labels
from membrane.policy.engine import PolicyEngine
from membrane.types import Identity

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from policygen import parse_all

pytestmark = pytest.mark.privileged

POD_IP, PEER_IP, OTHER_IP = IPv4Address("10.210.0.10"), IPv4Address("10.210.0.20"), \
    IPv4Address("10.210.0.30")
POD_MAC, GW_MAC = "02:00:00:00:00:0a", "02:00:00:00:01:0a"
POD_ID, PEER_ID, OTHER_ID = Identity(300), Identity(301), Identity(302)
PIN_ROOT = Path("/sys/fs/bpf/membrane")


def labels(role: str) -> Labels:
    return Labels.from_dict({"role": role, "io.kubernetes.pod.namespace": "x"})


def policy(name: str, rule: str, role: str, port: int = 80) -> dict:  # type: ignore[type-arg]
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {"endpointSelector": {"matchLabels": {"role": "server"}},
                 rule: [{"fromEndpoints": [{"matchLabels": {"role": role}}],
                         "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}]},
    }


def setup(dp: Datapath, docs: list[dict], **config: object) -> PolicyEngine:  # type: ignore[type-arg]
    engine = PolicyEngine(capacity=1 << 12)
    engine.upsert(parse_all(docs))
    for ident, role in ((POD_ID, "server"), (PEER_ID, "client"), (OTHER_ID, "other")):
        engine.identity_added(ident, labels(role))
    dp.ipcache.update_many({IPv4Network(f"{ip}/32"): ident for ip, ident in
                            ((POD_IP, POD_ID), (PEER_IP, PEER_ID), (OTHER_IP, OTHER_ID))})
    dp.policy.update_many(engine.all_entries().items())
    dp.endpoints.update(EndpointEntry(ip=POD_IP, ep_id=10, ifindex=LO, mac=POD_MAC,
                                      node_mac=GW_MAC, identity=POD_ID))
    cfg = {"trace_events": True, "policy_events": True, "drop_notify_ms": 0,
           "wakeup_bytes": 0} | config
    dp.config.put(replace(dp.config.get(), **cfg))  # type: ignore[arg-type]
    dp.events().read(1 << 20)
    return engine


def into_pod(dp: Datapath, src: IPv4Address, l4: bytes, proto: int = 6) -> int:
    return to_container(dp, eth(POD_MAC, GW_MAC, ETH_P_IP,
                                ipv4(str(src), str(POD_IP), proto, l4))).verdict


def out_of_pod(dp: Datapath, dst: IPv4Address, l4: bytes, proto: int = 6) -> int:
    return from_container(dp, eth(GW_MAC, POD_MAC, ETH_P_IP,
                                  ipv4(str(POD_IP), str(dst), proto, l4))).verdict


def events(dp: Datapath) -> list[Event]:
    return dp.events().read(1 << 16)


def cookie_of(engine: PolicyEngine, name: str) -> int:
    return next(c for c, k in engine.cookie_names().items() if k.endswith("/" + name))


def test_allowed_connection_reports_verdict_naming_policy_and_its_milestones_only(
        datapath: Datapath) -> None:
    engine = setup(datapath, [policy("allow-client", "ingress", "client")])
    assert into_pod(datapath, PEER_IP, tcp(40000, 80, SYN)) == TC_ACT_OK
    verdict, new = events(datapath)
    assert (verdict.type, verdict.subtype, verdict.reason) == \
        (EventType.POLICY, Verdict.FORWARDED, 0)
    assert verdict.cookie == cookie_of(engine, "allow-client")
    assert verdict.match == PolicyMatch.L3_L4
    assert (verdict.src_identity, verdict.dst_identity, verdict.ep_id) == (PEER_ID, POD_ID, 10)
    assert (new.type, new.subtype, new.flags) == (EventType.TRACE, TracePoint.NEW, 0)
    assert (new.sport, new.dport, new.proto, new.tcp_flags) == (40000, 80, 6, SYN)
    assert (IPv4Address(new.saddr), IPv4Address(new.daddr)) == (PEER_IP, POD_IP)

    # the reply is a milestone; the packets after it are not (aggregated, not per packet)
    assert out_of_pod(datapath, PEER_IP, tcp(80, 40000, SYN | ACK)) == TC_ACT_OK
    (reply,) = events(datapath)
    assert (reply.type, reply.subtype) == (EventType.TRACE, TracePoint.REPLY)
    assert reply.flags & EVENT_F_REPLY
    for _ in range(5):
        into_pod(datapath, PEER_IP, tcp(40000, 80, ACK))
        out_of_pod(datapath, PEER_IP, tcp(80, 40000, ACK))
    assert events(datapath) == []
    into_pod(datapath, PEER_IP, tcp(40000, 80, FIN | ACK))
    (close,) = events(datapath)
    assert (close.type, close.subtype, close.tcp_flags) == \
        (EventType.TRACE, TracePoint.CLOSE, FIN | ACK)
    out_of_pod(datapath, PEER_IP, tcp(80, 40000, FIN | ACK))  # closing already reported
    assert events(datapath) == []

    # a new connection reusing the closing one's ports is new again: policy decides anew
    datapath.policy.clear()
    datapath.policy.update_many(
        (k, v) for k, v in engine.all_entries().items() if v.default_deny)
    assert into_pod(datapath, PEER_IP, tcp(40000, 80, SYN)) == TC_ACT_SHOT
    assert [(e.type, e.reason) for e in events(datapath)] == \
        [(EventType.POLICY, 133), (EventType.DROP, 133)]


def test_default_deny_reports_verdict_and_drop_133_without_policy_match(
        datapath: Datapath) -> None:
    setup(datapath, [policy("allow-client", "ingress", "client")])
    assert into_pod(datapath, OTHER_IP, tcp(40001, 80, SYN)) == TC_ACT_SHOT
    verdict, drop = events(datapath)
    assert (verdict.type, verdict.subtype, verdict.reason, verdict.match) == \
        (EventType.POLICY, Verdict.DROPPED, 133, PolicyMatch.NONE)
    assert (drop.type, drop.reason, drop.ep_id, drop.drops) == (EventType.DROP, 133, 10, 1)
    assert (drop.src_identity, drop.dst_identity) == (OTHER_ID, POD_ID)


def test_explicit_deny_names_the_deny_policy_over_an_allow(datapath: Datapath) -> None:
    engine = setup(datapath, [policy("allow-all", "ingress", "client"),
                              policy("deny-client", "ingressDeny", "client")])
    assert into_pod(datapath, PEER_IP, tcp(40002, 80, SYN)) == TC_ACT_SHOT
    verdict, drop = events(datapath)
    assert (verdict.reason, drop.reason) == (181, 181)
    assert verdict.cookie == drop.cookie == cookie_of(engine, "deny-client")


def test_unenforced_endpoint_reports_traces_but_no_verdict(datapath: Datapath) -> None:
    setup(datapath, [])
    assert out_of_pod(datapath, PEER_IP, udp(5353, 53), proto=17) == TC_ACT_OK
    assert out_of_pod(datapath, PEER_IP, icmp_echo(7), proto=1) == TC_ACT_OK
    udp_new, icmp_new = events(datapath)
    assert (udp_new.type, udp_new.subtype, udp_new.proto, udp_new.sport, udp_new.dport) == \
        (EventType.TRACE, TracePoint.NEW, 17, 5353, 53)
    assert (icmp_new.subtype, icmp_new.proto, icmp_new.icmp_type) == (TracePoint.NEW, 1, 8)
    assert udp_new.direction == 2  # egress, seen at the pod's own endpoint


def test_visibility_off_still_reports_drops(datapath: Datapath) -> None:
    setup(datapath, [policy("allow-client", "ingress", "client")], trace_events=False,
          policy_events=False)
    into_pod(datapath, PEER_IP, tcp(40003, 80, SYN))
    into_pod(datapath, OTHER_IP, tcp(40004, 80, SYN))
    assert [(e.type, e.reason) for e in events(datapath)] == [(EventType.DROP, 133)]


def test_drops_of_one_flow_are_rate_limited_but_counted(datapath: Datapath) -> None:
    setup(datapath, [policy("allow-client", "ingress", "client")], policy_events=False,
          drop_notify_ms=200)
    for _ in range(5):
        into_pod(datapath, OTHER_IP, tcp(40005, 80, SYN))
    into_pod(datapath, OTHER_IP, tcp(40006, 80, SYN))  # another flow: its own event
    evs = events(datapath)
    assert [(e.sport, e.drops) for e in evs] == [(40005, 1), (40006, 1)]
    time.sleep(0.25)
    into_pod(datapath, OTHER_IP, tcp(40005, 80, SYN))
    (again,) = events(datapath)
    assert (again.sport, again.drops) == (40005, 5)  # 4 suppressed + this one
    dropped = sum(r.packets for r in datapath.metrics.dump() if r.verdict == "dropped")
    assert dropped == 7  # the counters are exact whatever the events say


def test_spoofed_and_garbage_packets_are_reported_as_drops(datapath: Datapath) -> None:
    setup(datapath, [])
    spoof = eth(GW_MAC, POD_MAC, ETH_P_IP, ipv4(str(OTHER_IP), str(PEER_IP), 6,
                                                 tcp(1, 80, SYN)))
    assert from_container(datapath, spoof).verdict == TC_ACT_SHOT
    garbage = eth(GW_MAC, POD_MAC, ETH_P_IP, b"\x65" + bytes(19))  # IPv4 type, version 6
    assert from_container(datapath, garbage).verdict == TC_ACT_SHOT
    spoofed, garbage = events(datapath)
    assert (spoofed.type, spoofed.reason, spoofed.ep_id, IPv4Address(spoofed.saddr)) == \
        (EventType.DROP, 132, 0, OTHER_IP)
    assert (garbage.type, garbage.reason, garbage.saddr, garbage.src_identity) == \
        (EventType.DROP, 134, 0, 0)


@pytest.fixture
def small_ring(obj_dir: Path) -> Iterator[Datapath]:
    name = f"t{secrets.token_hex(4)}"
    dp = Datapath.open(name, obj_dir, PIN_ROOT, events_ring_bytes=4096)
    try:
        yield dp
    finally:
        dp.close()
        Datapath.remove_pins(name, PIN_ROOT)


def test_events_the_ring_has_no_room_for_are_counted_lost(small_ring: Datapath) -> None:
    dp = small_ring
    dp.config.put(NodeConfigValue(drop_notify_ms=0))
    assert dp.events().size == 4096
    sent = 200
    for port in range(sent):
        out_of_pod(dp, PEER_IP, tcp(port + 1, 80, SYN))  # no endpoint: spoofed, dropped
    read = len(dp.events().read(1 << 16))
    lost = dp.events_lost.total()
    assert read > 0 and lost > 0
    assert read + lost == sent
    # once read, the ring has room again
    out_of_pod(dp, PEER_IP, tcp(9999, 80, SYN))
    assert len(dp.events().read()) == 1 and dp.events_lost.total() == lost


def test_a_pinned_ring_of_another_size_is_replaced(obj_dir: Path) -> None:
    name = f"t{secrets.token_hex(4)}"
    try:
        with Datapath.open(name, obj_dir, PIN_ROOT, events_ring_bytes=8192) as dp:
            assert dp.events().size == 8192
        with Datapath.open(name, obj_dir, PIN_ROOT) as dp:
            assert dp.events().size == 8192  # no size asked: the pinned ring stays
        with Datapath.open(name, obj_dir, PIN_ROOT, events_ring_bytes=16384) as dp:
            assert dp.events().size == 16384
            dp.config.put(NodeConfigValue(drop_notify_ms=0))
            dp.endpoints.clear()
            out_of_pod(dp, PEER_IP, tcp(1, 80, SYN))
            assert len(dp.events().read()) == 1  # the reloaded programs write the new ring
    finally:
        Datapath.remove_pins(name, PIN_ROOT)



def sleeper(ring: EventRing) -> select.epoll:
    """A reader's wait on the drained ring: epoll reports the fd once its wait queue is woken,
    whatever data the ring holds meanwhile."""
    ring.read(1 << 16)
    ep = select.epoll()
    ep.register(ring.fileno(), select.EPOLLIN)
    assert not ep.poll(0)
    return ep


def test_with_wakeup_bytes_the_reader_is_woken_only_when_that_much_waits(
        datapath: Datapath) -> None:
    dp = datapath
    setup(dp, [])
    ring = dp.events()
    ports = iter(range(1, 1000))

    def one() -> None:  # a new connection out of the pod: one trace event
        out_of_pod(dp, PEER_IP, tcp(next(ports), 80, SYN))

    with sleeper(ring) as ep:  # the ring's own policy: a wake-up per event
        one()
        assert ep.poll(0.5)
    assert len(ring.read()) == 1
    dp.config.put(replace(dp.config.get(), wakeup_bytes=1024))
    with sleeper(ring) as ep:
        one()
        assert not ep.poll(0.3)
        assert len(ring.read()) == 1  # not woken, but not lost
    with sleeper(ring) as ep:
        # Events come without a wake-up until 1 KiB waits; the next one wakes the reader.
        sent = 0
        while ring.pending_bytes() < 1024:
            one()
            sent += 1
            assert not ep.poll(0)
        assert sent == -(-1024 // ((ctypes.sizeof(EventC) + 8 + 7) & ~7))
        one()
        assert ep.poll(0.5)
    assert len(ring.read(1 << 16)) == sent + 1
