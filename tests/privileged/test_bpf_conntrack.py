"""Connection tracking in mb_from_container / mb_to_container on crafted packets."""

from __future__ import annotations

import pytest
from bpfrun import TC_ACT_OK, WORLD, A, add_endpoints, from_container, to_container
from packets import ACK, ETH_P_IP, FIN, RST, SYN, eth, icmp_echo, ipv4, tcp, udp

from membrane.datapath.abi import CTEntryC
from membrane.datapath.loader import Datapath
from membrane.datapath.maps.ct import CTEntry, boot_seconds

pytestmark = pytest.mark.privileged

GW = "02:00:00:00:01:0a"


def out_tcp(flags: int) -> bytes:
    return eth(GW, A.mac, ETH_P_IP, ipv4(str(A.ip), WORLD, 6, tcp(40000, 80, flags)))


def in_tcp(flags: int) -> bytes:
    return eth(A.mac, GW, ETH_P_IP, ipv4(WORLD, str(A.ip), 6, tcp(80, 40000, flags)))


def only_entry(dp: Datapath) -> CTEntry:
    entries = dp.ct.dump()
    assert len(entries) == 1, entries
    return entries[0]


@pytest.fixture
def dp(datapath: Datapath) -> Datapath:
    add_endpoints(datapath)
    return datapath


def test_tcp_handshake_moves_from_syn_timeout_to_established_then_closing(dp: Datapath) -> None:
    assert from_container(dp, out_tcp(SYN)).verdict == TC_ACT_OK
    e = only_entry(dp)
    assert (e.src, e.dst, e.sport, e.dport, e.proto_name, e.direction) == (
        A.ip, e.dst, 40000, 80, "TCP", "egress")
    assert str(e.dst) == WORLD
    assert e.state == "SYN_SENT"
    assert abs(e.lifetime - (boot_seconds() + 60)) <= 2

    # SYN-ACK from the stack into the pod reverses onto the client's entry: a reply.
    assert to_container(dp, in_tcp(SYN | ACK)).verdict == TC_ACT_OK
    e = only_entry(dp)
    assert (e.tx_packets, e.rx_packets) == (1, 1)
    assert "SEEN_REPLY" in e.flag_names

    assert from_container(dp, out_tcp(ACK)).verdict == TC_ACT_OK
    e = only_entry(dp)
    assert e.state == "ESTABLISHED"
    assert e.tx_packets == 2
    assert abs(e.lifetime - (boot_seconds() + 21600)) <= 2

    assert from_container(dp, out_tcp(FIN | ACK)).verdict == TC_ACT_OK
    e = only_entry(dp)
    assert e.state == "CLOSING"
    assert "TX_FIN" in e.flag_names
    assert abs(e.lifetime - (boot_seconds() + 10)) <= 2


def test_rst_from_the_peer_closes_the_connection(dp: Datapath) -> None:
    from_container(dp, out_tcp(SYN))
    to_container(dp, in_tcp(RST | ACK))
    e = only_entry(dp)
    assert e.state == "CLOSING" and "RX_RST" in e.flag_names


def test_udp_reply_follows_the_request(dp: Datapath) -> None:
    req = eth(GW, A.mac, ETH_P_IP, ipv4(str(A.ip), WORLD, 17, udp(5353, 53)))
    rep = eth(A.mac, GW, ETH_P_IP, ipv4(WORLD, str(A.ip), 17, udp(53, 5353)))
    assert from_container(dp, req).verdict == TC_ACT_OK
    assert to_container(dp, rep).verdict == TC_ACT_OK
    e = only_entry(dp)
    assert (e.proto_name, e.sport, e.dport, e.tx_packets, e.rx_packets) == ("UDP", 5353, 53, 1, 1)
    assert e.tx_bytes == len(req) and e.rx_bytes == len(rep)
    assert abs(e.lifetime - (boot_seconds() + 60)) <= 2


def test_icmp_echo_reply_reverses_onto_the_request(dp: Datapath) -> None:
    req = eth(GW, A.mac, ETH_P_IP, ipv4(str(A.ip), WORLD, 1, icmp_echo(77)))
    rep = eth(A.mac, GW, ETH_P_IP, ipv4(WORLD, str(A.ip), 1, icmp_echo(77, reply=True)))
    assert from_container(dp, req).verdict == TC_ACT_OK
    assert to_container(dp, rep).verdict == TC_ACT_OK
    e = only_entry(dp)
    assert (e.proto_name, e.sport, e.dport, e.tx_packets, e.rx_packets) == ("ICMP", 77, 0, 1, 1)


def test_icmp_errors_pass_untracked(dp: Datapath) -> None:
    unreach = bytes([3, 1, 0, 0, 0, 0, 0, 0])
    frame = eth(A.mac, GW, ETH_P_IP, ipv4(WORLD, str(A.ip), 1, unreach))
    assert to_container(dp, frame).verdict == TC_ACT_OK
    assert dp.ct.dump() == []


def test_connection_from_the_world_is_tracked_at_the_receiver(dp: Datapath) -> None:
    assert to_container(dp, in_tcp(SYN)).verdict == TC_ACT_OK
    assert from_container(dp, out_tcp(SYN | ACK)).verdict == TC_ACT_OK
    e = only_entry(dp)
    assert (e.direction, str(e.src), e.dst, e.tx_packets, e.rx_packets) == (
        "ingress", WORLD, A.ip, 1, 1)


def test_expired_entry_is_treated_as_new(dp: Datapath) -> None:
    req = eth(GW, A.mac, ETH_P_IP, ipv4(str(A.ip), WORLD, 17, udp(5353, 53)))
    from_container(dp, req)
    old = only_entry(dp)
    stale = CTEntryC(tx_packets=500, tx_bytes=5000, lifetime=int(boot_seconds()) - 5)
    dp.ct.update_c(old.key(), stale)

    from_container(dp, req)
    e = only_entry(dp)
    assert e.tx_packets == 1  # a fresh entry, not 501
    assert e.lifetime >= boot_seconds() + 55


def test_gc_removes_only_expired_entries(dp: Datapath) -> None:
    from_container(dp, out_tcp(SYN))
    from_container(dp, eth(GW, A.mac, ETH_P_IP, ipv4(str(A.ip), WORLD, 17, udp(1, 2))))
    assert dp.ct.gc(boot_seconds()) == 0
    assert len(dp.ct.dump()) == 2
    assert dp.ct.gc(boot_seconds() + 120) == 2
    assert dp.ct.dump() == []
