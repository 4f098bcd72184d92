"""Anti-spoofing, the delivery decision and the counters of mb_from_container/mb_to_container,
on crafted frames through BPF_PROG_TEST_RUN."""

from __future__ import annotations

import pytest
from bpfrun import (
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    WORLD,
    A,
    B,
    C,
    add_endpoints,
    from_container,
    to_container,
)
from packets import (
    ACK,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    SYN,
    arp,
    eth,
    hop_of,
    icmp_echo,
    ipv4,
    tcp,
    udp,
)

from membrane.datapath.loader import Datapath
from membrane.datapath.maps.metrics import MetricsRow

pytestmark = pytest.mark.privileged

GW = A.node_mac


@pytest.fixture(params=[True, False], ids=["redirect_peer", "redirect"])
def dp(request: pytest.FixtureRequest, datapath: Datapath) -> Datapath:
    add_endpoints(datapath)
    datapath.config.set(redirect_peer=request.param)
    return datapath


@pytest.fixture
def peer_dp(datapath: Datapath) -> Datapath:
    add_endpoints(datapath)
    datapath.config.set(redirect_peer=True)
    return datapath


def a_to(dst: str, l4: bytes, proto: int = 6, ttl: int = 64, src_ip: str = str(A.ip),
         src_mac: str = A.mac) -> bytes:
    return eth(GW, src_mac, ETH_P_IP, ipv4(src_ip, dst, proto, l4, ttl=ttl))


def drops(dp: Datapath) -> list[tuple[int, str, int, int]]:
    return [(r.ep_id, r.direction, r.reason, r.packets) for r in dp.metrics.dump()
            if r.verdict == "dropped"]


def row(dp: Datapath, ep_id: int, direction: str, verdict: str, reason: int = 0) -> MetricsRow:
    for r in dp.metrics.dump():
        if (r.ep_id, r.direction, r.verdict, r.reason) == (ep_id, direction, verdict, reason):
            return r
    raise AssertionError(f"no metrics row {ep_id}/{direction}/{verdict}/{reason}: "
                         f"{dp.metrics.dump()}")


# --- delivery -----------------------------------------------------------------------------------

def test_packet_to_a_local_endpoint_is_redirected_with_the_hop_rewritten(dp: Datapath) -> None:
    res = from_container(dp, a_to(str(B.ip), tcp(40000, 80, SYN)))
    assert res.verdict == TC_ACT_REDIRECT
    hop = hop_of(res.frame)
    # Routed as the node would: B's gateway MAC as source, B's MAC as destination, TTL - 1.
    assert (hop.dst_mac, hop.src_mac, hop.ttl, hop.ip_csum_ok) == (B.mac, B.node_mac, 63, True)


def test_redirect_peer_does_the_receivers_conntrack_in_from_container(peer_dp: Datapath) -> None:
    from_container(peer_dp, a_to(str(B.ip), tcp(40000, 80, SYN)))
    entries = sorted((e.direction, str(e.src), str(e.dst)) for e in peer_dp.ct.dump())
    # bpf_redirect_peer skips B's host-veth egress, so B's ingress side runs before the redirect.
    assert entries == [("egress", str(A.ip), str(B.ip)), ("ingress", str(A.ip), str(B.ip))]
    assert row(peer_dp, B.ep_id, "ingress", "forwarded").packets == 1


def test_plain_redirect_leaves_the_receivers_side_to_to_container(datapath: Datapath) -> None:
    add_endpoints(datapath)
    datapath.config.set(redirect_peer=False)
    from_container(datapath, a_to(str(B.ip), tcp(40000, 80, SYN)))
    assert [e.direction for e in datapath.ct.dump()] == ["egress"]


def test_packet_to_the_world_goes_to_the_stack_unchanged(dp: Datapath) -> None:
    frame = a_to(WORLD, tcp(40000, 443, SYN))
    res = from_container(dp, frame)
    assert res.verdict == TC_ACT_OK
    assert res.frame == frame
    assert row(dp, A.ep_id, "egress", "forwarded").bytes == len(frame)


def test_expiring_ttl_goes_to_the_stack_which_answers_time_exceeded(dp: Datapath) -> None:
    frame = a_to(str(B.ip), udp(5000, 53), proto=17, ttl=1)
    res = from_container(dp, frame)
    assert res.verdict == TC_ACT_OK
    assert res.frame == frame


def test_icmp_echo_between_endpoints_is_redirected(dp: Datapath) -> None:
    res = from_container(dp, a_to(str(B.ip), icmp_echo(9), proto=1))
    assert res.verdict == TC_ACT_REDIRECT


def test_to_container_counts_ingress_of_the_destination(dp: Datapath) -> None:
    frame = eth(A.mac, GW, ETH_P_IP, ipv4(WORLD, str(A.ip), 6, tcp(80, 40000, SYN | ACK)))
    assert to_container(dp, frame).verdict == TC_ACT_OK
    r = row(dp, A.ep_id, "ingress", "forwarded")
    assert (r.packets, r.bytes) == (1, len(frame))


def test_counters_sum_packets_and_bytes(dp: Datapath) -> None:
    frame = a_to(WORLD, udp(1000, 2000, b"y" * 100), proto=17)
    for _ in range(5):
        from_container(dp, frame)
    r = row(dp, A.ep_id, "egress", "forwarded")
    assert (r.packets, r.bytes) == (5, 5 * len(frame))


# --- anti-spoofing and malformed input ----------------------------------------------------------

def test_source_ip_of_another_endpoint_is_dropped_as_invalid_source_ip(dp: Datapath) -> None:
    # C exists but lives behind another veth: A's veth may not send as C.
    res = from_container(dp, a_to(str(B.ip), tcp(1, 80, SYN), src_ip=str(C.ip), src_mac=C.mac))
    assert res.verdict == TC_ACT_SHOT
    assert drops(dp) == [(0, "egress", 132, 1)]
    assert dp.ct.dump() == []


def test_source_ip_of_no_endpoint_is_dropped(dp: Datapath) -> None:
    res = from_container(dp, a_to(WORLD, udp(1, 53), proto=17, src_ip="10.200.9.9"))
    assert res.verdict == TC_ACT_SHOT
    assert drops(dp) == [(0, "egress", 132, 1)]


def test_own_ip_with_a_foreign_mac_is_dropped_as_invalid_source_mac(dp: Datapath) -> None:
    res = from_container(dp, a_to(WORLD, tcp(1, 80, SYN), src_mac="02:de:ad:be:ef:01"))
    assert res.verdict == TC_ACT_SHOT
    assert drops(dp) == [(A.ep_id, "egress", 130, 1)]


def test_arp_for_another_endpoints_address_is_dropped(dp: Datapath) -> None:
    frame = eth("ff:ff:ff:ff:ff:ff", C.mac, ETH_P_ARP, arp(C.mac, str(C.ip), "10.200.0.1"))
    assert from_container(dp, frame).verdict == TC_ACT_SHOT
    assert drops(dp) == [(0, "egress", 132, 1)]


def test_arp_with_a_foreign_sender_mac_is_dropped(dp: Datapath) -> None:
    frame = eth("ff:ff:ff:ff:ff:ff", A.mac, ETH_P_ARP,
                arp("02:de:ad:be:ef:01", str(A.ip), "10.200.0.1"))
    assert from_container(dp, frame).verdict == TC_ACT_SHOT
    assert drops(dp) == [(A.ep_id, "egress", 130, 1)]


def test_own_arp_passes(dp: Datapath) -> None:
    frame = eth("ff:ff:ff:ff:ff:ff", A.mac, ETH_P_ARP, arp(A.mac, str(A.ip), "10.200.0.1"))
    assert from_container(dp, frame).verdict == TC_ACT_OK
    assert row(dp, A.ep_id, "egress", "forwarded").packets == 1


def test_ipv6_is_dropped_as_unknown_l3_until_dual_stack(dp: Datapath) -> None:
    frame = eth(GW, A.mac, ETH_P_IPV6, bytes(40))
    assert from_container(dp, frame).verdict == TC_ACT_SHOT
    assert to_container(dp, eth(A.mac, GW, ETH_P_IPV6, bytes(40))).verdict == TC_ACT_SHOT
    assert drops(dp) == [(0, "egress", 139, 1), (0, "ingress", 139, 1)]


@pytest.mark.parametrize("frame", [
    pytest.param(eth(GW, A.mac, ETH_P_IP, b"\x4f" + ipv4(str(A.ip), WORLD, 6, tcp(1, 2, SYN))[1:]),
                 id="ihl-past-the-end-of-the-frame"),
    pytest.param(eth(GW, A.mac, ETH_P_IP, ipv4(str(A.ip), WORLD, 6, b"\x00\x50"))[:40],
                 id="truncated-tcp"),
    pytest.param(eth(GW, A.mac, ETH_P_IP, b"\x65" + ipv4(str(A.ip), WORLD, 6, tcp(1, 2, SYN))[1:]),
                 id="ip-version-6-in-ipv4-frame"),
    pytest.param(eth(GW, A.mac, ETH_P_IP, b"\x44" + ipv4(str(A.ip), WORLD, 6, tcp(1, 2, SYN))[1:]),
                 id="ihl-below-5"),
])
def test_malformed_packets_are_dropped_as_invalid(dp: Datapath, frame: bytes) -> None:
    assert from_container(dp, frame).verdict == TC_ACT_SHOT
    assert drops(dp) == [(0, "egress", 134, 1)]
    assert dp.ct.dump() == []


def test_non_first_fragment_is_dropped_not_passed_unchecked(dp: Datapath) -> None:
    pkt = bytearray(ipv4(str(A.ip), WORLD, 17, udp(1, 2)))
    pkt[6:8] = (0x0010).to_bytes(2, "big")  # fragment offset 16 * 8 bytes
    assert from_container(dp, eth(GW, A.mac, ETH_P_IP, bytes(pkt))).verdict == TC_ACT_SHOT
    assert drops(dp) == [(0, "egress", 134, 1)]
