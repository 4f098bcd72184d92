"""The policy engine: entries, incrementality (counted in writes) and agreement with trace."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from policygen import (
    block_identity,
    packets,
    parse_all,
    peer_party,
    policy_sets,
    workloads,
)

from membrane.identity import HOST
from membrane.labels import security_labels
from membrane.policy.engine import PolicyEngine, PolicyMapFull
from membrane.policy.entries import (
    DIRECTION_NUMBER,
    REASON_ALLOWED,
    REASON_DEFAULT_DENY,
    REASON_DENY,
    Key,
    decide,
    port_prefixes,
)
from membrane.policy.trace import Party, Tracer
from membrane.types import Identity

HOST_IP = IPv4Address("10.0.0.1")
BACKEND = security_labels({"role": "backend"}, "farm", {})
FRONTEND = security_labels({"role": "frontend"}, "farm", {})
OTHER = security_labels({"role": "other"}, "farm", {})
TALK = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "db", "namespace": "farm"},
    "spec": {"endpointSelector": {"matchLabels": {"role": "backend"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "frontend"}}],
                          "toPorts": [{"ports": [{"port": "3306", "protocol": "TCP"}]}]}]},
}


def verdict(e: PolicyEngine, subject: int, peer: int, port: int, direction: int = 1) -> int:
    return decide(e.all_entries(), subject=subject, peer=peer, block=0, direction=direction,
                  proto=6, port=port)[0]


@pytest.mark.parametrize(("start", "end"), [(80, 80), (0, 65535), (1000, 2000), (81, 96),
                                            (65535, 65535), (1, 65534)])
def test_port_prefixes_cover_exactly_the_range(start: int, end: int) -> None:
    covered = set()
    for port, bits in port_prefixes(start, end):
        size = 1 << (16 - bits)
        assert port % size == 0
        covered |= set(range(port, port + size))
    assert covered == set(range(start, end + 1))


def test_talks_policy_allows_frontend_and_default_denies_others() -> None:
    e = PolicyEngine(capacity=100)
    e.upsert(parse_all([TALK]))
    for ident, labels in ((256, BACKEND), (257, FRONTEND), (258, OTHER)):
        e.identity_added(Identity(ident), labels)
    assert verdict(e, 256, 257, 3306) == REASON_ALLOWED
    assert verdict(e, 256, 257, 80) == REASON_DEFAULT_DENY
    assert verdict(e, 256, 258, 3306) == REASON_DEFAULT_DENY
    assert verdict(e, 256, HOST, 22) == REASON_ALLOWED  # allow-localhost
    assert verdict(e, 257, 258, 80) == REASON_ALLOWED  # frontend is not selected
    assert e.enforcement(Identity(256)) == {"ingress": True, "egress": False}


def test_a_pod_with_existing_labels_writes_nothing_and_a_new_identity_only_its_entries() -> None:
    e = PolicyEngine(capacity=1000)
    e.upsert(parse_all([TALK]))
    # the backend: its default-deny marker and the host allow (no frontend identity yet)
    assert len(e.identity_added(Identity(256), BACKEND)) == 2
    first_frontend = e.identity_added(Identity(257), FRONTEND)
    # the frontend is a peer of the backend's rule: exactly one new entry, for the backend
    assert list(first_frontend.updates) == [Key(256, 257, 1, 6, 3306, 16)]
    assert not first_frontend.deletes
    # an identity no selector matches writes nothing
    assert len(e.identity_added(Identity(258), OTHER)) == 0
    # (a second pod of an existing identity never reaches the engine: the allocator only
    #  reports the first reference; the agent test counts that path through the API)


def test_deleting_a_policy_removes_exactly_its_entries() -> None:
    other = dict(TALK, metadata={"name": "other", "namespace": "farm"},
                 spec={"endpointSelector": {"matchLabels": {"role": "backend"}},
                       "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "other"}}]}]})
    e = PolicyEngine(capacity=1000)
    e.upsert(parse_all([TALK]))
    for ident, labels in ((256, BACKEND), (257, FRONTEND), (258, OTHER)):
        e.identity_added(Identity(ident), labels)
    before = e.all_entries()
    added = e.upsert(parse_all([other]))
    assert set(added.updates) == {Key(256, 258, 1, 0, 0, 0)} and not added.deletes
    removed = e.delete(["CiliumNetworkPolicy farm/other"])
    assert removed.deletes == {Key(256, 258, 1, 0, 0, 0)} and not removed.updates
    assert e.all_entries() == before
    gone = e.delete(["CiliumNetworkPolicy farm/db"])
    assert gone.deletes == set(before) and e.all_entries() == {}


def test_deny_wins_over_allow_and_hides_covered_allows() -> None:
    deny = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "deny", "namespace": "farm"},
            "spec": {"endpointSelector": {"matchLabels": {"role": "backend"}},
                     "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"role": "frontend"}}]}]}}
    e = PolicyEngine(capacity=1000)
    e.upsert(parse_all([TALK, deny]))
    e.identity_added(Identity(256), BACKEND)
    e.identity_added(Identity(257), FRONTEND)
    assert verdict(e, 256, 257, 3306) == REASON_DENY
    assert Key(256, 257, 1, 6, 3306, 16) not in e.all_entries()  # covered by the deny
    e.delete(["CiliumNetworkPolicy farm/deny"])
    assert verdict(e, 256, 257, 3306) == REASON_ALLOWED


def test_named_ports_resolve_against_the_destination() -> None:
    np = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "np", "namespace": "farm"},
          "spec": {"podSelector": {"matchLabels": {"role": "backend"}},
                   "ingress": [{"ports": [{"port": "mysql"}]}]}}
    e = PolicyEngine(capacity=1000)
    e.upsert(parse_all([np]))
    e.identity_added(Identity(256), BACKEND)
    e.identity_added(Identity(257), FRONTEND)
    assert verdict(e, 256, 257, 3306) == REASON_DEFAULT_DENY  # no such port declared yet
    diff = e.set_named_ports(Identity(256), {("mysql", 6): frozenset({3306})})
    assert set(diff.updates) == {Key(256, 0, 1, 6, 3306, 16)}
    assert verdict(e, 256, 257, 3306) == REASON_ALLOWED


def test_a_full_map_is_refused_and_nothing_changes() -> None:
    e = PolicyEngine(capacity=4)
    e.upsert(parse_all([TALK]))
    e.identity_added(Identity(256), BACKEND)
    e.identity_added(Identity(257), FRONTEND)
    before = e.all_entries()
    many = dict(TALK, metadata={"name": "many", "namespace": "farm"},
                spec={"endpointSelector": {"matchLabels": {"role": "backend"}},
                      "ingress": [{"toPorts": [{"ports": [{"port": str(p)}
                                                          for p in range(1, 20)]}]}]})
    with pytest.raises(PolicyMapFull, match="policy map full"):
        e.upsert(parse_all([many]))
    assert e.all_entries() == before and list(e.policies) == ["CiliumNetworkPolicy farm/db"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=policy_sets(), pkts=packets())
def test_trace_agrees_with_the_entries(docs: list[dict], pkts: dict) -> None:  # type: ignore[type-arg]
    e = PolicyEngine(capacity=1 << 20)
    e.upsert(parse_all(docs))
    wl = workloads()
    for w in wl:
        e.identity_added(w.identity, w.labels)
    subj = wl[pkts["subject"]]
    peer = peer_party(e, wl, pkts["peer"], HOST_IP)
    want, _ = decide(e.all_entries(), subject=subj.identity, peer=int(peer.identity or 0),
                     block=block_identity(e, peer.ip),
                     direction=DIRECTION_NUMBER[pkts["direction"]],
                     proto=pkts["proto"], port=pkts["port"])
    me = Party(identity=subj.identity, labels=subj.labels, ip=subj.ip, local=True)
    got = Tracer(e).direction(pkts["direction"], me, peer, pkts["proto"], pkts["port"])
    assert got.reason == want, (docs, pkts, got)
