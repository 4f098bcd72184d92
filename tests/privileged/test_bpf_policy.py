"""Policy in the datapath: random policies and packets through BPF_PROG_TEST_RUN agree with the
Python model (`entries.decide`) and with `policy trace`; plus the fixed cases that matter."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from bpfrun import LO, TC_ACT_OK, TC_ACT_SHOT, from_container, to_container
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packets import ACK, ETH_P_IP, SYN, eth, icmp_echo, ipv4, tcp, udp

from membrane.datapath.abi import EventType
from membrane.datapath.loader import Datapath
from membrane.datapath.maps.endpoints import EndpointEntry
from membrane.identity import HOST, WORLD
from membrane.ipcache import desired as desired_ipcache
from membrane.policy.engine import PolicyEngine
from membrane.policy.entries import DIRECTION_NUMBER, decide
from membrane.policy.trace import Party, Tracer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from policygen import (
    block_identity,
    packets,
    parse_all,
    peer_party,
    policy_sets,
    workloads,
)

pytestmark = pytest.mark.privileged

HOST_IP = IPv4Address("10.0.0.1")
POD_MAC, GW_MAC, PEER_MAC = "02:00:00:00:00:0a", "02:00:00:00:01:0a", "02:00:00:00:02:0a"
SEEN: Counter[int] = Counter()


def install(dp: Datapath, engine: PolicyEngine) -> None:
    """The maps as the agent writes them, for the generated workloads (none is local yet)."""
    for m in (dp.policy, dp.ipcache, dp.ipblock, dp.ct, dp.endpoints, dp.metrics):
        m.clear()
    dp.ipcache.update_many(desired_ipcache(
        node_addresses=[HOST_IP],
        endpoints=[(w.ip, w.identity) for w in workloads()],
        cidrs=engine.prefix_identities("cidr"),
    ))
    dp.ipblock.update_many(engine.prefix_identities("ipblock"))
    dp.policy.update_many(engine.all_entries().items())
    dp.config.put(replace(dp.config.get(), trace_events=True, policy_events=True,
                          drop_notify_ms=0))
    dp.events().read(1 << 20)


def drop_reason(dp: Datapath) -> int:
    rows = [r for r in dp.metrics.dump() if r.verdict == "dropped"]
    assert len(rows) <= 1, rows
    return rows[0].reason if rows else 0


def send(dp: Datapath, direction: str, subject_ip: IPv4Address, peer_ip: IPv4Address,
         proto: int, port: int, sport: int) -> int:
    """One first packet, out of (egress) or into (ingress) the subject; its drop reason."""
    dp.metrics.clear()
    l4 = tcp(sport, port, SYN) if proto == 6 else udp(sport, port)
    if direction == "egress":
        res = from_container(dp, eth(GW_MAC, POD_MAC, ETH_P_IP,
                                     ipv4(str(subject_ip), str(peer_ip), proto, l4)))
    else:
        res = to_container(dp, eth(POD_MAC, GW_MAC, ETH_P_IP,
                                   ipv4(str(peer_ip), str(subject_ip), proto, l4)))
    reason = drop_reason(dp)
    assert res.verdict == (TC_ACT_SHOT if reason else TC_ACT_OK)
    return reason


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(docs=policy_sets(), pkts=st.lists(packets(), min_size=1, max_size=10))
def test_datapath_agrees_with_model_and_trace(datapath: Datapath, docs: list[dict],  # type: ignore[type-arg]
                                              pkts: list[dict]) -> None:  # type: ignore[type-arg]
    engine = PolicyEngine(capacity=1 << 16)
    engine.upsert(parse_all(docs))
    wl = workloads()
    for w in wl:
        engine.identity_added(w.identity, w.labels)
    install(datapath, engine)
    entries = engine.all_entries()
    tracer = Tracer(engine)
    for n, p in enumerate(pkts):
        subj = wl[p["subject"]]
        if isinstance(p["peer"], int) and p["peer"] == p["subject"]:
            continue  # a pod talking to itself never leaves it
        datapath.endpoints.clear()
        datapath.endpoints.update(EndpointEntry(ip=subj.ip, ep_id=10, ifindex=LO, mac=POD_MAC,
                                                node_mac=GW_MAC, identity=subj.identity))
        peer = peer_party(engine, wl, p["peer"], HOST_IP)
        assert peer.ip is not None
        want, deciding = decide(entries, subject=subj.identity, peer=int(peer.identity or 0),
                         block=block_identity(engine, peer.ip),
                         direction=DIRECTION_NUMBER[p["direction"]], proto=p["proto"],
                         port=p["port"])
        got = send(datapath, p["direction"], subj.ip, peer.ip, p["proto"], p["port"],
                   sport=20000 + n)
        me = Party(identity=subj.identity, labels=subj.labels, ip=subj.ip, local=True)
        traced = tracer.direction(p["direction"], me, peer, p["proto"], p["port"]).reason
        SEEN[got] += 1
        assert got == want == traced, (docs, p, got, want, traced)
        # The events name the same deciding entry: a verdict when the subject is enforced
        # (with the cookie of the policy that decided), a drop with the same reason.
        events = datapath.events().read()
        verdicts = [e for e in events if e.type == EventType.POLICY]
        drops = [e for e in events if e.type == EventType.DROP]
        if deciding is None:
            assert verdicts == [], (docs, p, verdicts)
        else:
            assert [(e.reason, e.cookie) for e in verdicts] == [(got, deciding.cookie)], \
                (docs, p, verdicts, deciding)
        assert [(e.reason, e.cookie) for e in drops] == \
            ([(got, deciding.cookie if deciding else 0)] if got else [])


def test_the_generator_reaches_every_verdict() -> None:
    # runs after the property test (file order): the random cases were not all one verdict
    if not SEEN:
        pytest.skip("property test did not run first")
    assert {0, 133, 181} <= set(SEEN), SEEN


# -- fixed cases ------------------------------------------------------------------------------

TALK = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "db", "namespace": "x"},
    "spec": {"endpointSelector": {"matchLabels": {"role": "b"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "a"}}],
                          "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]},
}


@pytest.fixture
def talk(datapath: Datapath) -> tuple[Datapath, PolicyEngine]:
    engine = PolicyEngine(capacity=1 << 16)
    engine.upsert(parse_all([TALK]))
    for w in workloads():
        engine.identity_added(w.identity, w.labels)
    install(datapath, engine)
    wl = workloads()
    b = wl[1]  # x/b
    datapath.endpoints.update(EndpointEntry(ip=b.ip, ep_id=10, ifindex=LO, mac=POD_MAC,
                                            node_mac=GW_MAC, identity=b.identity))
    return datapath, engine


def test_refused_first_packet_leaves_no_conntrack_entry(talk: tuple[Datapath, PolicyEngine]
                                                        ) -> None:
    dp, _ = talk
    wl = workloads()
    b, c = wl[1], wl[2]
    assert send(dp, "ingress", b.ip, c.ip, 6, 80, 30000) == 133
    assert dp.ct.dump() == []
    # a later non-SYN packet of the same 5-tuple is still a first packet, still refused
    dp.metrics.clear()
    res = to_container(dp, eth(POD_MAC, GW_MAC, ETH_P_IP,
                               ipv4(str(c.ip), str(b.ip), 6, tcp(30000, 80, ACK))))
    assert res.verdict == TC_ACT_SHOT and drop_reason(dp) == 133


def test_allowed_connection_replies_and_continues_without_policy(
        talk: tuple[Datapath, PolicyEngine]) -> None:
    dp, _ = talk
    wl = workloads()
    a, b = wl[0], wl[1]
    assert send(dp, "ingress", b.ip, a.ip, 6, 80, 30001) == 0
    # b's reply leaves through from_container: a reply, no egress policy needed
    dp.metrics.clear()
    res = from_container(dp, eth(GW_MAC, POD_MAC, ETH_P_IP,
                                 ipv4(str(b.ip), str(a.ip), 6, tcp(80, 30001, SYN | ACK))))
    assert res.verdict == TC_ACT_OK and drop_reason(dp) == 0
    dp.policy.clear()  # even with every entry gone the established connection goes on
    dp.metrics.clear()
    res = to_container(dp, eth(POD_MAC, GW_MAC, ETH_P_IP,
                               ipv4(str(a.ip), str(b.ip), 6, tcp(30001, 80, ACK))))
    assert res.verdict == TC_ACT_OK


def test_icmp_echo_is_policy_checked_by_type(talk: tuple[Datapath, PolicyEngine]) -> None:
    dp, _ = talk
    a, b = workloads()[0], workloads()[1]
    dp.metrics.clear()
    res = to_container(dp, eth(POD_MAC, GW_MAC, ETH_P_IP,
                               ipv4(str(a.ip), str(b.ip), 1, icmp_echo(7))))
    assert res.verdict == TC_ACT_SHOT and drop_reason(dp) == 133  # only TCP 80 is allowed


def test_host_and_world_identities(talk: tuple[Datapath, PolicyEngine]) -> None:
    dp, _ = talk
    b = workloads()[1]
    assert send(dp, "ingress", b.ip, HOST_IP, 6, 22, 30002) == 0  # allow-localhost
    assert send(dp, "ingress", b.ip, IPv4Address("203.0.113.9"), 6, 80, 30003) == 133
    assert dp.ipcache.resolve(IPv4Address("203.0.113.9")) == WORLD
    assert dp.ipcache.resolve(HOST_IP) == HOST
    assert IPv4Network("0.0.0.0/0") in dp.ipcache.dump()


def test_policy_change_revokes_established_connections(datapath: Datapath,
                                                       tmp_path: Path) -> None:
    from membrane.agent.policy import PolicyService
    from membrane.identity import LocalIdentityAllocator

    wl = workloads()
    a, b, c = wl[0], wl[1], wl[2]
    alloc = LocalIdentityAllocator()
    svc = PolicyService(datapath=datapath, identities=alloc, state_dir=tmp_path,
                        endpoints=lambda: [], reconcile_ipcache=lambda: 0)
    svc.loading = False
    install(datapath, svc.engine)
    for w in wl:
        svc.identity_added(w.identity, w.labels)
    datapath.endpoints.update(EndpointEntry(ip=b.ip, ep_id=10, ifindex=LO, mac=POD_MAC,
                                            node_mac=GW_MAC, identity=b.identity))
    svc.upsert([(None, p) for p in parse_all([TALK])])  # type: ignore[misc]
    assert send(datapath, "ingress", b.ip, a.ip, 6, 80, 31000) == 0
    assert len(datapath.ct.dump()) == 1
    # the same policy, now for pod=c: a's established connection is refused from here on
    moved = dict(TALK, spec=dict(TALK["spec"], ingress=[{  # type: ignore[arg-type]
        "fromEndpoints": [{"matchLabels": {"role": "c"}}],
        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]))
    svc.upsert([(None, p) for p in parse_all([moved])])  # type: ignore[misc]
    assert svc.ct_revoked == 1 and datapath.ct.dump() == []
    datapath.metrics.clear()
    res = to_container(datapath, eth(POD_MAC, GW_MAC, ETH_P_IP,
                                     ipv4(str(a.ip), str(b.ip), 6, tcp(31000, 80, ACK))))
    assert res.verdict == TC_ACT_SHOT and drop_reason(datapath) == 133
    assert send(datapath, "ingress", b.ip, c.ip, 6, 80, 31001) == 0
