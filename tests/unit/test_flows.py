"""Flow visibility without a kernel: events decode as the datapath writes them; flows name the
right pods, identities and policies; every output (Hubble's JSON, checked against
flow.schema.json; the compact line; the policy log; monitor lines); the `observe` filters; the
flow store, its subscribers and its export; and the node's Prometheus metrics."""

from __future__ import annotations

import asyncio
import copy
import ctypes
import json
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from importlib.resources import files
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from membrane.datapath.abi import (
    EVENT_F_REPLY,
    Direction,
    DropReason,
    EventC,
    EventType,
    PolicyMatch,
    TracePoint,
    to_bytes,
)
from membrane.datapath.events import EVENT_SIZE, Event, decode, encode
from membrane.flows.enrich import EndpointView, Enricher
from membrane.flows.filter import FilterError, FlowFilter, parse_since
from membrane.flows.metrics import NodeMetrics, NodeSnapshot
from membrane.flows.model import Flow, PolicyRef, monitor_line
from membrane.flows.store import FlowStore, JsonlExporter

# -- builders -------------------------------------------------------------------------------------


def ip(text: str) -> int:
    return int(IPv4Address(text))


FRONTEND_IP, BACKEND_IP, DNS_IP = ip("10.0.1.10"), ip("10.0.1.20"), ip("10.0.1.53")
DB_IP, WORLD_IP = ip("10.0.2.30"), ip("1.1.1.1")
FRONTEND_ID, BACKEND_ID, DNS_ID, DB_ID, WORLD_ID = 1001, 1002, 1004, 1003, 2
FRONTEND = EndpointView(id=11, namespace="default", pod_name="frontend-7d4", ifname="lxc000b")
BACKEND = EndpointView(id=12, namespace="default", pod_name="backend-5f8", ifname="lxc000c")
DNS = EndpointView(id=13, namespace="kube-system", pod_name="coredns-1", ifname="lxc000d")
ALLOW_COOKIE, DENY_COOKIE, CLUSTER_COOKIE = 1, 2, 3
ALLOW = PolicyRef("CiliumNetworkPolicy", "default", "backend-from-frontend")
DENY = PolicyRef("CiliumNetworkPolicy", "default", "deny-db")
CLUSTER_DENY = PolicyRef("CiliumClusterwideNetworkPolicy", "", "no-world")
ALLOW_JSON = {"name": "backend-from-frontend", "namespace": "default",
              "kind": "CiliumNetworkPolicy"}
DENY_JSON = {"name": "deny-db", "namespace": "default", "kind": "CiliumNetworkPolicy"}
NODE = "node-1"
T0 = 1_700_000_000.25
"""2023-11-14T22:13:20.250Z"""
SYN, ACK, FIN = 0x02, 0x10, 0x01
TCP, UDP, ICMP = 6, 17, 1


class FakeDirectory:
    """The agent's knowledge as plain dicts: two pods of `default` and coredns are local, the
    database (namespace prod) runs on another node, 1.1.1.1 is the world."""

    def __init__(self) -> None:
        self.endpoints = {FRONTEND_IP: FRONTEND, BACKEND_IP: BACKEND, DNS_IP: DNS}
        self.by_ifindex = {21: FRONTEND, 22: BACKEND, 23: DNS}
        self.labels: dict[int, tuple[str, ...]] = {
            FRONTEND_ID: ("k8s:io.cilium.k8s.namespace.labels.team=shop",
                          "k8s:io.kubernetes.pod.namespace=default", "k8s:role=frontend"),
            BACKEND_ID: ("k8s:io.kubernetes.pod.namespace=default", "k8s:role=backend"),
            DNS_ID: ("k8s:io.kubernetes.pod.namespace=kube-system", "k8s:k8s-app=kube-dns"),
            DB_ID: ("k8s:app=postgres", "k8s:io.kubernetes.pod.namespace=prod", "k8s:role=db"),
            WORLD_ID: ("reserved:world",),
        }
        self.policies = {ALLOW_COOKIE: ALLOW, DENY_COOKIE: DENY, CLUSTER_COOKIE: CLUSTER_DENY}

    def endpoint_by_ip(self, ip: int) -> EndpointView | None:
        return self.endpoints.get(ip)

    def endpoint_by_ifindex(self, ifindex: int) -> EndpointView | None:
        return self.by_ifindex.get(ifindex)

    def identity_labels(self, identity: int) -> tuple[str, ...]:
        return self.labels.get(identity, ())

    def policy_of_cookie(self, cookie: int) -> PolicyRef | None:
        return self.policies.get(cookie)


def event(**fields: int) -> Event:
    """A struct mb_event, by default the SYN of frontend:43210 -> backend:80 leaving frontend."""
    values: dict[str, int] = {
        "ktime": 5_000_000_000, "type": EventType.TRACE, "subtype": TracePoint.NEW,
        "direction": Direction.EGRESS, "reason": 0, "ep_id": FRONTEND.id, "ifindex": 21,
        "src_identity": FRONTEND_ID, "dst_identity": BACKEND_ID, "saddr": FRONTEND_IP,
        "daddr": BACKEND_IP, "sport": 43210, "dport": 80, "proto": TCP, "tcp_flags": SYN,
        "icmp_type": 0, "match": 0, "cookie": 0, "len": 74, "drops": 1, "flags": 0,
    }
    unknown = set(fields) - set(values)
    assert not unknown, f"no such event field: {unknown}"
    values.update(fields)
    return Event(**{k: int(v) for k, v in values.items()})


def at_backend_ingress(**fields: int) -> Event:
    """An event of backend's ingress: frontend -> backend seen at backend."""
    base: dict[str, int] = {"direction": Direction.INGRESS, "ep_id": BACKEND.id, "ifindex": 22}
    return event(**(base | fields))


def backend_to_db(**fields: int) -> Event:
    """An event of backend's egress towards the remote database."""
    base: dict[str, int] = {"ep_id": BACKEND.id, "ifindex": 22, "saddr": BACKEND_IP,
                            "src_identity": BACKEND_ID, "daddr": DB_IP, "dst_identity": DB_ID,
                            "dport": 5432}
    return event(**(base | fields))


def flows_of(*events: Event, directory: FakeDirectory | None = None,
             at: float = T0, step: float = 0.0) -> list[Flow]:
    """Events enriched as the agent does, at fixed wall times (at, at + step, ...)."""
    enricher = Enricher(directory or FakeDirectory(), NODE)
    return [Flow(f.event, at + i * step, f.source, f.destination, f.node, f.interface,
                 f.policies) for i, f in enumerate(enricher.enrich(events))]


def flow_of(ev: Event, directory: FakeDirectory | None = None) -> Flow:
    return flows_of(ev, directory=directory)[0]


def json_of(ev: Event, directory: FakeDirectory | None = None) -> dict[str, Any]:
    """The `flow` object of `observe -o json`, after a JSON round trip."""
    doc = json.loads(json.dumps(flow_of(ev, directory).to_json()))
    return doc["flow"]  # type: ignore[no-any-return]


SCHEMA: dict[str, Any] = json.loads(
    files("membrane.flows").joinpath("flow.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def schema_errors(doc: Any) -> list[str]:
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in VALIDATOR.iter_errors(doc))


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC, so the compact line and the policy log print known clocks."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def u(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << bits) - 1)


C_BITS = {name: ctypes.sizeof(ctype) * 8 for name, ctype, *_ in EventC._fields_ if name != "pad"}
any_event = st.builds(Event, **{name: u(C_BITS[name]) for name in Event._fields})


@st.composite
def kernel_events(draw: st.DrawFn) -> Event:
    """Events as the datapath writes them: a known type with its subtype, reason and match;
    addresses and identities that are local, remote, world or unknown."""
    etype = draw(st.sampled_from(EventType))
    subtype = reason = match = 0
    drops = 1
    if etype == EventType.DROP:
        reason = draw(st.sampled_from([r for r in DropReason if r]) | st.integers(1, 255))
        drops = draw(st.integers(1, 5) | u(32).filter(bool))
    elif etype == EventType.POLICY:
        reason = draw(st.sampled_from([0, DropReason.POLICY, DropReason.POLICY_DENY]))
        subtype = 2 if reason else 1
        match = draw(st.sampled_from(PolicyMatch))
    else:
        subtype = draw(st.sampled_from(TracePoint))
    addr = st.sampled_from([FRONTEND_IP, BACKEND_IP, DNS_IP, DB_IP, WORLD_IP]) | u(32)
    ident = st.sampled_from([FRONTEND_ID, BACKEND_ID, DNS_ID, DB_ID, WORLD_ID, 0]) | u(32)
    parsed = etype != EventType.DROP or draw(st.booleans())
    proto = draw(st.sampled_from([TCP, UDP, ICMP, 132, 47])) if parsed else 0
    return Event(
        ktime=draw(u(63)), type=etype, subtype=subtype,
        direction=draw(st.sampled_from(Direction)), reason=reason, ep_id=draw(u(32)),
        ifindex=draw(st.sampled_from([0, 21, 22]) | u(32)),
        src_identity=draw(ident) if parsed else 0, dst_identity=draw(ident) if parsed else 0,
        saddr=draw(addr) if parsed else 0, daddr=draw(addr) if parsed else 0,
        sport=draw(u(16)) if parsed else 0, dport=draw(u(16)) if parsed else 0, proto=proto,
        tcp_flags=draw(u(8)) if proto == TCP else 0,
        icmp_type=draw(u(8)) if proto == ICMP else 0, match=match,
        cookie=draw(st.sampled_from([0, ALLOW_COOKIE, DENY_COOKIE, CLUSTER_COOKIE]) | u(32))
        if parsed else 0,
        len=draw(u(16)), drops=drops, flags=draw(st.sampled_from([0, EVENT_F_REPLY])),
    )


# -- events: struct mb_event <-> Event ----------------------------------------------------------


def test_event_fields_are_the_c_fields_in_order() -> None:
    assert Event._fields == tuple(name for name, *_ in EventC._fields_ if name != "pad")
    assert EVENT_SIZE == ctypes.sizeof(EventC) == 64


@given(any_event)
def test_every_event_survives_encode_and_decode(ev: Event) -> None:
    raw = encode(ev)
    assert len(raw) == EVENT_SIZE
    assert decode(raw) == ev
    assert decode(bytes(24) + raw, 24) == ev, "decodes at an offset in a larger buffer"


@given(any_event)
def test_encoded_event_has_the_c_layout_with_addresses_and_ports_in_network_order(
        ev: Event) -> None:
    c = EventC.from_buffer_copy(encode(ev))
    for name in Event._fields:
        value = getattr(c, name)
        if name in ("saddr", "daddr"):
            value = socket.ntohl(value)
        elif name in ("sport", "dport"):
            value = socket.ntohs(value)
        assert value == getattr(ev, name), name
    assert bytes(c.pad) == bytes(7)


def test_decoded_kernel_record_shows_the_packet_addresses_and_ports() -> None:
    def native(value: int, size: int) -> int:
        """The native integer whose bytes are `value` in network order, as the kernel stores
        __be fields."""
        return int.from_bytes(value.to_bytes(size, "big"), sys.byteorder)

    c = EventC(ktime=123, type=EventType.POLICY, direction=Direction.INGRESS, ep_id=12,
               saddr=native(FRONTEND_IP, 4), daddr=native(BACKEND_IP, 4),
               sport=native(43210, 2), dport=native(80, 2), proto=TCP, cookie=7, drops=1)
    ev = decode(to_bytes(c))
    assert (ev.src_ip, ev.dst_ip) == (IPv4Address("10.0.1.10"), IPv4Address("10.0.1.20"))
    assert (ev.sport, ev.dport, ev.cookie, ev.ep_id) == (43210, 80, 7, 12)


# -- enrichment -----------------------------------------------------------------------------------


def test_local_endpoints_get_namespace_pod_name_and_endpoint_id() -> None:
    f = json_of(at_backend_ingress(type=EventType.POLICY, subtype=1, match=PolicyMatch.L3_L4,
                                   cookie=ALLOW_COOKIE))
    assert f["source"] == {
        "ID": 11, "identity": FRONTEND_ID, "namespace": "default",
        "labels": ["k8s:io.cilium.k8s.namespace.labels.team=shop",
                   "k8s:io.kubernetes.pod.namespace=default", "k8s:role=frontend"],
        "pod_name": "frontend-7d4"}
    assert f["destination"] == {
        "ID": 12, "identity": BACKEND_ID, "namespace": "default",
        "labels": ["k8s:io.kubernetes.pod.namespace=default", "k8s:role=backend"],
        "pod_name": "backend-5f8"}
    assert f["interface"] == {"index": 22, "name": "lxc000c"}
    assert f["node_name"] == NODE


def test_remote_peers_get_their_identity_labels_only() -> None:
    f = json_of(backend_to_db())
    assert f["destination"] == {"identity": DB_ID, "labels": [
        "k8s:app=postgres", "k8s:io.kubernetes.pod.namespace=prod", "k8s:role=db"]}
    world = json_of(event(daddr=WORLD_IP, dst_identity=WORLD_ID, dport=443))
    assert world["destination"] == {"identity": WORLD_ID, "labels": ["reserved:world"]}


def test_allowed_ingress_verdict_names_the_allowing_policy() -> None:
    f = json_of(at_backend_ingress(type=EventType.POLICY, subtype=1, match=PolicyMatch.L3_L4,
                                   cookie=ALLOW_COOKIE))
    assert f["ingress_allowed_by"] == [ALLOW_JSON]
    assert not {"ingress_denied_by", "egress_allowed_by", "egress_denied_by"} & set(f)


def test_explicit_deny_egress_verdict_names_the_deny_policy() -> None:
    f = json_of(backend_to_db(type=EventType.POLICY, subtype=2, reason=DropReason.POLICY_DENY,
                              match=PolicyMatch.L3_ONLY, cookie=DENY_COOKIE))
    assert f["egress_denied_by"] == [DENY_JSON]
    assert not {"ingress_denied_by", "egress_allowed_by", "ingress_allowed_by"} & set(f)


def test_explicit_deny_drop_names_the_deny_policy() -> None:
    f = json_of(backend_to_db(type=EventType.DROP, reason=DropReason.POLICY_DENY,
                              cookie=DENY_COOKIE))
    assert f["egress_denied_by"] == [DENY_JSON]


def test_clusterwide_policy_is_named_without_a_namespace() -> None:
    f = json_of(event(type=EventType.DROP, reason=DropReason.POLICY_DENY, cookie=CLUSTER_COOKIE,
                      daddr=WORLD_IP, dst_identity=WORLD_ID, dport=443))
    assert f["egress_denied_by"] == [{"name": "no-world",
                                      "kind": "CiliumClusterwideNetworkPolicy"}]


@pytest.mark.parametrize("etype", [EventType.POLICY, EventType.DROP])
def test_default_deny_names_no_policy(etype: EventType) -> None:
    f = json_of(at_backend_ingress(type=etype, subtype=2 if etype == EventType.POLICY else 0,
                                   reason=DropReason.POLICY, cookie=0, dport=22))
    assert f["verdict"] == "DROPPED"
    assert not [k for k in f if k.endswith("_by")]


def test_cookie_of_a_policy_the_agent_no_longer_has_names_no_policy() -> None:
    f = json_of(at_backend_ingress(type=EventType.POLICY, subtype=1, cookie=99))
    assert not [k for k in f if k.endswith("_by")]


def test_drop_that_policy_did_not_decide_names_no_deny_policy() -> None:
    # Egress policy allowed the SYN (cookie of the allow), then the conntrack insertion failed.
    f = json_of(event(type=EventType.DROP, reason=DropReason.CT_CREATE_FAILED,
                      cookie=ALLOW_COOKIE))
    assert f["drop_reason_desc"] == "CT_MAP_INSERTION_FAILED"
    assert "egress_denied_by" not in f


def test_invalidate_picks_up_changed_labels_endpoints_and_policies() -> None:
    d = FakeDirectory()
    enricher = Enricher(d, NODE, max_age=3600)
    ev = at_backend_ingress(type=EventType.POLICY, subtype=1, cookie=ALLOW_COOKIE)
    enricher.enrich([ev])
    d.labels[BACKEND_ID] = ("k8s:io.kubernetes.pod.namespace=default", "k8s:role=api")
    d.endpoints[BACKEND_IP] = EndpointView(id=12, namespace="default", pod_name="api-0",
                                           ifname="lxc000c")
    d.policies[ALLOW_COOKIE] = PolicyRef("CiliumNetworkPolicy", "default", "api-ingress")
    enricher.invalidate()
    (f,) = enricher.enrich([ev])
    dst = f.to_json()["flow"]["destination"]
    assert "k8s:role=api" in dst["labels"] and dst["pod_name"] == "api-0"
    assert f.to_json()["flow"]["ingress_allowed_by"][0]["name"] == "api-ingress"


def test_changes_show_up_after_max_age_without_invalidate() -> None:
    d = FakeDirectory()
    enricher = Enricher(d, NODE, max_age=0.0)
    enricher.enrich([event()])
    d.labels[BACKEND_ID] = ("k8s:role=api",)
    time.sleep(0.001)
    (f,) = enricher.enrich([event()])
    assert f.destination.labels == ("k8s:role=api",)


def test_flow_time_is_the_wall_time_of_the_boot_clock_stamp() -> None:
    ktime = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    (f,) = Enricher(FakeDirectory(), NODE).enrich([event(ktime=ktime)])
    assert abs(f.time - time.time()) < 5.0


# -- Hubble JSON and its schema -------------------------------------------------------------------

KINDS: dict[str, tuple[Event, dict[str, Any]]] = {
    "trace-new": (event(), {
        "verdict": "FORWARDED", "traffic_direction": "EGRESS", "is_reply": False,
        "Summary": "TCP Flags: SYN", "event_type": {"type": 4, "sub_type": 1},
        "trace_observation_point": "FROM_ENDPOINT", "trace_reason": "NEW",
        "IP": {"source": "10.0.1.10", "destination": "10.0.1.20", "ipVersion": "IPv4"},
        "l4": {"TCP": {"source_port": 43210, "destination_port": 80, "flags": {"SYN": True}}},
    }),
    "trace-reply": (at_backend_ingress(
        subtype=TracePoint.REPLY, direction=Direction.EGRESS, saddr=BACKEND_IP,
        daddr=FRONTEND_IP, src_identity=BACKEND_ID, dst_identity=FRONTEND_ID, sport=80,
        dport=43210, tcp_flags=SYN | ACK, flags=EVENT_F_REPLY), {
        "verdict": "FORWARDED", "traffic_direction": "EGRESS", "is_reply": True,
        "Summary": "TCP Flags: SYN, ACK", "trace_reason": "REPLY",
        "l4": {"TCP": {"source_port": 80, "destination_port": 43210,
                       "flags": {"SYN": True, "ACK": True}}},
    }),
    "trace-close": (at_backend_ingress(subtype=TracePoint.CLOSE, tcp_flags=FIN | ACK), {
        "verdict": "FORWARDED", "traffic_direction": "INGRESS", "is_reply": False,
        "Summary": "TCP Flags: FIN, ACK", "trace_reason": "CLOSE",
        "trace_observation_point": "TO_ENDPOINT", "event_type": {"type": 4, "sub_type": 3},
    }),
    "policy-allow": (at_backend_ingress(type=EventType.POLICY, subtype=1,
                                        match=PolicyMatch.L3_L4, cookie=ALLOW_COOKIE), {
        "verdict": "FORWARDED", "traffic_direction": "INGRESS", "is_reply": False,
        "Summary": "TCP Flags: SYN", "policy_match_type": 2,
        "event_type": {"type": 5, "sub_type": 1}, "ingress_allowed_by": [ALLOW_JSON],
    }),
    "policy-deny": (backend_to_db(type=EventType.POLICY, subtype=2,
                                  reason=DropReason.POLICY_DENY, match=PolicyMatch.L3_ONLY,
                                  cookie=DENY_COOKIE), {
        "verdict": "DROPPED", "drop_reason": 181, "drop_reason_desc": "POLICY_DENY",
        "traffic_direction": "EGRESS", "is_reply": False, "policy_match_type": 1,
        "event_type": {"type": 5, "sub_type": 2}, "egress_denied_by": [DENY_JSON],
    }),
    "drop-default-deny": (at_backend_ingress(type=EventType.DROP, subtype=0,
                                             reason=DropReason.POLICY, dport=22), {
        "verdict": "DROPPED", "drop_reason": 133, "drop_reason_desc": "POLICY_DENIED",
        "traffic_direction": "INGRESS", "is_reply": False, "Summary": "TCP Flags: SYN",
        "event_type": {"type": 1, "sub_type": 133},
    }),
    "drop-deny": (backend_to_db(type=EventType.DROP, subtype=0, reason=DropReason.POLICY_DENY,
                                cookie=DENY_COOKIE), {
        "verdict": "DROPPED", "drop_reason": 181, "drop_reason_desc": "POLICY_DENY",
        "traffic_direction": "EGRESS", "event_type": {"type": 1, "sub_type": 181},
        "egress_denied_by": [DENY_JSON],
    }),
    "udp": (event(daddr=DNS_IP, dst_identity=DNS_ID, proto=UDP, tcp_flags=0, sport=5353,
                  dport=53), {
        "verdict": "FORWARDED", "Summary": "UDP",
        "l4": {"UDP": {"source_port": 5353, "destination_port": 53}},
    }),
    "icmp-echo": (event(proto=ICMP, tcp_flags=0, icmp_type=8, sport=0x1234, dport=0), {
        "verdict": "FORWARDED", "Summary": "ICMPv4 EchoRequest", "is_reply": False,
        "l4": {"ICMPv4": {"type": 8}},
    }),
    "drop-rate-limited": (at_backend_ingress(type=EventType.DROP, reason=DropReason.POLICY,
                                             dport=22, drops=57), {
        "verdict": "DROPPED", "drop_reason_desc": "POLICY_DENIED", "drops": 57,
    }),
    "drop-unparsable": (event(type=EventType.DROP, subtype=0, reason=DropReason.INVALID,
                              ep_id=0, saddr=0, daddr=0, src_identity=0, dst_identity=0,
                              sport=0, dport=0, proto=0, tcp_flags=0), {
        "verdict": "DROPPED", "drop_reason_desc": "INVALID_PACKET_DROPPED",
        "source": {"identity": 0, "labels": []},
    }),
}


@pytest.mark.parametrize("kind", KINDS)
def test_json_of_every_kind_of_flow_is_hubbles_shape(kind: str) -> None:
    ev, expected = KINDS[kind]
    doc = json.loads(json.dumps(flow_of(ev).to_json()))
    assert schema_errors(doc) == []
    assert doc["time"] == doc["flow"]["time"] == "2023-11-14T22:13:20.250000Z"
    assert doc["node_name"] == doc["flow"]["node_name"] == NODE
    f = doc["flow"]
    assert {k: f.get(k) for k in expected} == expected
    if f["verdict"] == "FORWARDED":
        assert "drop_reason_desc" not in f
    if "drops" not in expected:
        assert "drops" not in f, "drops only when an event stands for more than one"
    if "IP" not in f:
        assert "l4" not in f


@settings(max_examples=300)
@given(kernel_events(), st.floats(0, 4_102_444_800, allow_nan=False))
def test_json_of_any_datapath_event_validates(ev: Event, at: float) -> None:
    (f,) = flows_of(ev, at=at)
    doc = json.loads(json.dumps(f.to_json()))
    assert schema_errors(doc) == []
    dropped = ev.type == EventType.DROP or (ev.type == EventType.POLICY and ev.reason != 0)
    assert doc["flow"]["verdict"] == ("DROPPED" if dropped else "FORWARDED")


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


BROKEN: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "unknown field": ("policy-deny", _set("flow.sumary", "TCP Flags: SYN")),
    "unknown top-level field": ("policy-deny", _set("flow_count", 1)),
    "unknown endpoint field": ("policy-deny", _set("flow.source.pod", "backend-5f8")),
    "wrong verdict": ("policy-deny", _set("flow.verdict", "DENIED")),
    "verdict in lower case": ("trace-new", _set("flow.verdict", "forwarded")),
    "drop without its reason": ("drop-deny", _drop("flow.drop_reason_desc")),
    "reason text instead of Hubble's name": ("drop-deny",
                                             _set("flow.drop_reason_desc", "Policy denied")),
    "forwarded flow with a drop reason": ("trace-new", _set("flow.drop_reason", 133)),
    "forwarded flow denied by a policy": ("policy-allow",
                                          _set("flow.ingress_denied_by", [ALLOW_JSON])),
    "ingress flow with an egress policy": ("policy-allow",
                                           _set("flow.egress_allowed_by", [ALLOW_JSON])),
    "time without Z": ("trace-new", _set("time", "2023-11-14T22:13:20.250000+00:00")),
    "flow time not RFC 3339": ("trace-new", _set("flow.time", "Nov 14 22:13:20")),
    "label without a source": ("trace-new", _set("flow.source.labels", ["role=frontend"])),
    "two layer-4 protocols": ("udp", _set("flow.l4.TCP", {"source_port": 1,
                                                          "destination_port": 2, "flags": {}})),
    "UDP with TCP flags": ("udp", _set("flow.l4.UDP.flags", {"SYN": True})),
    "port out of range": ("udp", _set("flow.l4.UDP.destination_port", 65536)),
    "unknown TCP flag": ("trace-new", _set("flow.l4.TCP.flags.SYNACK", True)),
    "missing identity": ("trace-new", _drop("flow.destination.identity")),
    "is_reply as a string": ("trace-new", _set("flow.is_reply", "false")),
    "unknown direction": ("trace-new", _set("flow.traffic_direction", "IN")),
    "policy match out of range": ("policy-allow", _set("flow.policy_match_type", 6)),
    "drops of one": ("drop-rate-limited", _set("flow.drops", 1)),
    "policy without a kind": ("policy-allow",
                              _set("flow.ingress_allowed_by", [{"name": "x"}])),
    "address that is not IPv4": ("trace-new", _set("flow.IP.source", "10.0.1")),
    "trace without its reason": ("trace-new", _drop("flow.trace_reason")),
}


@pytest.mark.parametrize("what", BROKEN)
def test_schema_rejects_a_broken_flow(what: str) -> None:
    kind, mutate = BROKEN[what]
    doc = copy.deepcopy(flow_of(KINDS[kind][0]).to_json())
    assert schema_errors(doc) == [], "the flow is valid before it is broken"
    mutate(doc)
    assert schema_errors(doc), f"schema accepted a flow with {what}"


# -- compact line, policy log, monitor ------------------------------------------------------------


@pytest.mark.usefixtures("utc")
@pytest.mark.parametrize(("kind", "line"), [
    ("trace-new", "Nov 14 22:13:20.250: default/frontend-7d4:43210 (ID:1001) -> "
     "default/backend-5f8:80 (ID:1002) from-endpoint new FORWARDED (TCP Flags: SYN)"),
    ("trace-reply", "Nov 14 22:13:20.250: default/backend-5f8:80 (ID:1002) -> "
     "default/frontend-7d4:43210 (ID:1001) from-endpoint reply FORWARDED "
     "(TCP Flags: SYN, ACK)"),
    ("policy-allow", "Nov 14 22:13:20.250: default/frontend-7d4:43210 (ID:1001) -> "
     "default/backend-5f8:80 (ID:1002) policy-verdict:L3-L4 INGRESS FORWARDED "
     "(TCP Flags: SYN) by CiliumNetworkPolicy default/backend-from-frontend"),
    ("drop-default-deny", "Nov 14 22:13:20.250: default/frontend-7d4:43210 (ID:1001) -> "
     "default/backend-5f8:22 (ID:1002) Policy denied DROPPED (TCP Flags: SYN)"),
    ("drop-deny", "Nov 14 22:13:20.250: default/backend-5f8:43210 (ID:1002) -> "
     "10.0.2.30:5432 (ID:1003) Policy denied by denylist DROPPED (TCP Flags: SYN) "
     "by CiliumNetworkPolicy default/deny-db"),
    ("udp", "Nov 14 22:13:20.250: default/frontend-7d4:5353 (ID:1001) -> "
     "kube-system/coredns-1:53 (ID:1004) from-endpoint new FORWARDED (UDP)"),
    ("icmp-echo", "Nov 14 22:13:20.250: default/frontend-7d4 (ID:1001) -> "
     "default/backend-5f8 (ID:1002) from-endpoint new FORWARDED (ICMPv4 EchoRequest)"),
])
def test_compact_line_shows_ends_ports_identities_verdict_and_why(kind: str, line: str) -> None:
    assert flow_of(KINDS[kind][0]).compact() == line


@pytest.mark.usefixtures("utc")
def test_compact_line_names_world_and_marks_replies_of_other_milestones() -> None:
    ev = event(daddr=WORLD_IP, dst_identity=WORLD_ID, dport=443, subtype=TracePoint.CLOSE,
               tcp_flags=FIN | ACK, flags=EVENT_F_REPLY)
    assert flow_of(ev).compact() == (
        "Nov 14 22:13:20.250: default/frontend-7d4:43210 (ID:1001) -> world:443 (ID:2) "
        "from-endpoint close FORWARDED reply (TCP Flags: FIN, ACK)")


@pytest.mark.usefixtures("utc")
def test_policy_log_prints_action_and_pod_labels_of_each_end() -> None:
    allow = flow_of(KINDS["policy-allow"][0])
    assert allow.policy_line() == "22:13:20: allow: role=frontend -> role=backend"
    deny = flow_of(KINDS["policy-deny"][0])
    assert deny.policy_line() == "22:13:20: deny: role=backend -> app=postgres,role=db"
    world = flow_of(event(type=EventType.POLICY, subtype=2, reason=DropReason.POLICY,
                          daddr=WORLD_IP, dst_identity=WORLD_ID))
    assert world.policy_line() == "22:13:20: deny: role=frontend -> world"


@pytest.mark.parametrize("kind", ["trace-new", "drop-default-deny", "drop-deny", "udp"])
def test_policy_log_has_no_line_for_other_flows(kind: str) -> None:
    assert flow_of(KINDS[kind][0]).policy_line() is None


@pytest.mark.parametrize(("kind", "line"), [
    ("drop-default-deny", "xx drop (Policy denied) ingress of endpoint 12, ifindex 22, "
     "identity 1001->1002: 10.0.1.10:43210 -> 10.0.1.20:22 tcp SYN"),
    ("drop-rate-limited", "xx drop (Policy denied) ingress of endpoint 12, ifindex 22, "
     "identity 1001->1002 (57 drops): 10.0.1.10:43210 -> 10.0.1.20:22 tcp SYN"),
    ("policy-allow", "Policy verdict log: local EP ID 12, remote ID 1001, proto 6, ingress, "
     "action allow, match L3-L4, 10.0.1.10:43210 -> 10.0.1.20:80 tcp SYN"),
    ("policy-deny", "Policy verdict log: local EP ID 12, remote ID 1003, proto 6, egress, "
     "action deny, match L3-Only, 10.0.1.20:43210 -> 10.0.2.30:5432 tcp SYN"),
    ("trace-new", "<- endpoint 11 identity 1001->1002 state new ifindex 21: "
     "10.0.1.10:43210 -> 10.0.1.20:80 tcp SYN"),
    ("trace-reply", "<- endpoint 12 identity 1002->1001 state reply reply ifindex 22: "
     "10.0.1.20:80 -> 10.0.1.10:43210 tcp SYN,ACK"),
    ("trace-close", "-> endpoint 12 identity 1001->1002 state close ifindex 22: "
     "10.0.1.10:43210 -> 10.0.1.20:80 tcp FIN,ACK"),
    ("udp", "<- endpoint 11 identity 1001->1004 state new ifindex 21: "
     "10.0.1.10:5353 -> 10.0.1.53:53 udp"),
    ("icmp-echo", "<- endpoint 11 identity 1001->1002 state new ifindex 21: "
     "10.0.1.10 -> 10.0.1.20 icmpv4 EchoRequest"),
])
def test_monitor_line_of_each_event_type(kind: str, line: str) -> None:
    assert monitor_line(KINDS[kind][0]) == line


# -- filters --------------------------------------------------------------------------------------

CORPUS_EVENTS: dict[str, Event] = {
    "trace-fe-be": event(),
    "policy-allow-fe-be": KINDS["policy-allow"][0],
    "drop-fe-be-22": KINDS["drop-default-deny"][0],
    "policy-deny-be-db": KINDS["policy-deny"][0],
    "drop-be-db": KINDS["drop-deny"][0],
    "udp-fe-dns": KINDS["udp"][0],
    "icmp-fe-be": KINDS["icmp-echo"][0],
    "tcp-fe-world": event(daddr=WORLD_IP, dst_identity=WORLD_ID, dport=443, sport=40000),
    "reply-be-fe": KINDS["trace-reply"][0],
}
"""One minute apart, in this order, from T0."""
NAMES = list(CORPUS_EVENTS)
CORPUS = dict(zip(NAMES, flows_of(*CORPUS_EVENTS.values(), step=60.0), strict=True))
NOW = T0 + 60 * (len(NAMES) - 1) + 10
ALL = set(NAMES)


def matching(query: Mapping[str, str | list[str]]) -> set[str]:
    q = {k: [v] if isinstance(v, str) else v for k, v in query.items()}
    flt = FlowFilter.from_query(q, now=NOW)
    return {name for name, f in CORPUS.items() if flt.matches(f)}


FROM_FE = {"trace-fe-be", "policy-allow-fe-be", "drop-fe-be-22", "udp-fe-dns", "icmp-fe-be",
           "tcp-fe-world"}
TO_BE = {"trace-fe-be", "policy-allow-fe-be", "drop-fe-be-22", "icmp-fe-be"}
TCP_FLOWS = ALL - {"udp-fe-dns", "icmp-fe-be"}


@pytest.mark.parametrize(("query", "expected"), [
    ({}, ALL),
    ({"verdict": "DROPPED"}, {"drop-fe-be-22", "policy-deny-be-db", "drop-be-db"}),
    ({"verdict": "forwarded"}, ALL - {"drop-fe-be-22", "policy-deny-be-db", "drop-be-db"}),
    ({"from_pod": "default/frontend"}, FROM_FE),
    ({"from_pod": "frontend"}, FROM_FE),  # the namespace defaults to `default`
    ({"from_pod": "kube-system/frontend"}, set()),
    ({"from_pod": "default/frontend-7d4x"}, set()),
    ({"to_pod": "default/backend-5f8"}, TO_BE),
    ({"to_pod": "kube-system/core"}, {"udp-fe-dns"}),
    ({"pod": "default/backend"}, TO_BE | {"policy-deny-be-db", "drop-be-db", "reply-be-fe"}),
    ({"pod": ["kube-system/coredns", "default/backend"]},
     TO_BE | {"policy-deny-be-db", "drop-be-db", "reply-be-fe", "udp-fe-dns"}),
    ({"namespace": "kube-system"}, {"udp-fe-dns"}),
    ({"namespace": ["kube-system", "default"]}, ALL),
    ({"namespace": "prod-x"}, set()),
    ({"from_label": "role=frontend"}, FROM_FE),
    ({"from_label": "k8s:role=frontend"}, FROM_FE),
    ({"from_label": "reserved:role=frontend"}, set()),
    ({"from_label": "role"}, ALL),
    ({"from_label": "!role"}, set()),
    ({"to_label": "!role"}, {"udp-fe-dns", "tcp-fe-world"}),
    ({"to_label": "k8s-app"}, {"udp-fe-dns"}),
    ({"to_label": "reserved:world"}, {"tcp-fe-world"}),
    ({"to_label": "world"}, {"tcp-fe-world"}),
    ({"to_label": "k8s:role=backend"}, TO_BE),
    ({"to_label": "role=db,app=postgres"}, {"policy-deny-be-db", "drop-be-db"}),
    ({"to_label": "role=db,!app"}, set()),
    ({"to_label": "role=backend,!app"}, TO_BE),
    ({"to_label": "io.cilium.k8s.namespace.labels.team=shop"}, {"reply-be-fe"}),
    ({"label": "role=db"}, {"policy-deny-be-db", "drop-be-db"}),
    ({"label": "k8s-app=kube-dns"}, {"udp-fe-dns"}),
    ({"label": "role=frontend,role=backend"}, set()),  # all of them on one end
    ({"from_label": "role=frontend", "to_label": "role=backend"}, TO_BE),
    ({"port": "80"}, {"trace-fe-be", "policy-allow-fe-be", "reply-be-fe"}),
    ({"port": "43210"}, TCP_FLOWS - {"tcp-fe-world"}),
    ({"port": ["53", "5432"]}, {"udp-fe-dns", "policy-deny-be-db", "drop-be-db"}),
    ({"port": "4660"}, set()),  # the ICMP echo id 0x1234 is not a port
    ({"protocol": "udp"}, {"udp-fe-dns"}),
    ({"protocol": "ICMP"}, {"icmp-fe-be"}),
    ({"protocol": "icmpv4"}, {"icmp-fe-be"}),
    ({"protocol": "sctp"}, set()),
    ({"protocol": ["tcp", "udp"]}, ALL - {"icmp-fe-be"}),
    ({"identity": str(DB_ID)}, {"policy-deny-be-db", "drop-be-db"}),
    ({"identity": [str(WORLD_ID), str(DNS_ID)]}, {"tcp-fe-world", "udp-fe-dns"}),
    ({"type": "drop"}, {"drop-fe-be-22", "drop-be-db"}),
    ({"type": "policy-verdict"}, {"policy-allow-fe-be", "policy-deny-be-db"}),
    ({"type": "TRACE"}, {"trace-fe-be", "udp-fe-dns", "icmp-fe-be", "tcp-fe-world",
                         "reply-be-fe"}),
    ({"type": ["drop", "policy-verdict"]},
     {"drop-fe-be-22", "drop-be-db", "policy-allow-fe-be", "policy-deny-be-db"}),
    ({"since": "30s"}, {"reply-be-fe"}),
    ({"since": "2m"}, {"tcp-fe-world", "reply-be-fe"}),
    ({"since": "0.5h"}, ALL),
    ({"since": "1h"}, ALL),
    ({"since": "2023-11-14T22:18:20.25Z"}, {"udp-fe-dns", "icmp-fe-be", "tcp-fe-world",
                                            "reply-be-fe"}),
    ({"since": "2023-11-14T23:18:20.25+01:00"}, {"udp-fe-dns", "icmp-fe-be",
                                                 "tcp-fe-world", "reply-be-fe"}),
    ({"verdict": "DROPPED", "to_pod": "default/backend"}, {"drop-fe-be-22"}),
    ({"type": "drop", "protocol": "udp"}, set()),
    ({"last": "3", "follow": "1", "output": "json"}, ALL),  # not filters: accepted, ignored
])
def test_filter_selects_the_flows_it_names(query: dict[str, str | list[str]],
                                           expected: set[str]) -> None:
    assert matching(query) == expected


def test_repeated_verdict_matches_any_of_them() -> None:
    assert matching({"verdict": ["FORWARDED", "DROPPED"]}) == ALL


def test_repeated_label_filters_match_any_of_them() -> None:
    assert matching({"to_label": ["role=db", "k8s-app"]}) == {
        "policy-deny-be-db", "drop-be-db", "udp-fe-dns"}


@pytest.mark.parametrize(("query", "flag"), [
    ({"verdict": "ALLOWED"}, "--verdict"),
    ({"verdict": ""}, "--verdict"),
    ({"port": "0"}, "--port"),
    ({"port": "70000"}, "--port"),
    ({"port": "http"}, "--port"),
    ({"protocol": "foo"}, "--protocol"),
    ({"type": "x"}, "--type"),
    ({"since": "yesterday"}, "--since"),
    ({"since": "5 minutes"}, "--since"),
    ({"identity": "frontend"}, "--identity"),
    ({"from_label": "!"}, "--from-label"),
    ({"to_label": "role=db,"}, "--to-label"),
    ({"label": "="}, "--label"),
    ({"label": "!role=db"}, "--label"),
    ({"label": "role!=db"}, "--label"),
    ({"to_label": "=db"}, "--to-label"),
    ({"verdicts": "DROPPED"}, "'verdicts'"),
    ({"from-pod": "frontend"}, "'from-pod'"),
])
def test_bad_filter_value_is_an_error_naming_its_flag(query: dict[str, str],
                                                      flag: str) -> None:
    with pytest.raises(FilterError, match=re.escape(flag)):
        matching(query)


@pytest.mark.parametrize(("text", "ago"), [
    ("30s", 30), ("5m", 300), ("1h", 3600), ("1.5h", 5400), ("2d", 172800), ("250ms", 0.25),
])
def test_since_durations_count_back_from_now(text: str, ago: float) -> None:
    assert parse_since(text, now=1_000_000.0) == pytest.approx(1_000_000.0 - ago)


@pytest.mark.parametrize("text", ["2023-11-14T22:13:20Z", "2023-11-14T23:13:20+01:00",
                                  "2023-11-14T22:13:20.000Z"])
def test_since_accepts_rfc_3339_times(text: str) -> None:
    assert parse_since(text, now=0.0) == 1_700_000_000.0


# -- the flow store -------------------------------------------------------------------------------


def numbered(n: int, **fields: int) -> list[Flow]:
    """n flows told apart by their source port (1, 2, ...)."""
    return flows_of(*(event(sport=i, **fields) for i in range(1, n + 1)), step=1.0)


def sports(flows: list[Flow]) -> list[int]:
    return [f.event.sport for f in flows]


def test_store_keeps_the_newest_flows_up_to_its_capacity() -> None:
    store = FlowStore(capacity=3)
    store.add(numbered(2))
    store.add(numbered(5)[2:])
    assert sports(list(store)) == [3, 4, 5]
    assert len(store) == 3 and store.seen == 5


def test_store_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="capacity"):
        FlowStore(capacity=0)


def test_query_last_n_returns_the_newest_matching_oldest_first() -> None:
    store = FlowStore()
    store.add(list(CORPUS.values()))
    dropped = FlowFilter.from_query({"verdict": ["DROPPED"]})
    names = {id(f): n for n, f in CORPUS.items()}
    assert [names[id(f)] for f in store.query(dropped)] == [
        "drop-fe-be-22", "policy-deny-be-db", "drop-be-db"]
    assert [names[id(f)] for f in store.query(dropped, last=2)] == [
        "policy-deny-be-db", "drop-be-db"]
    assert len(store.query(dropped, last=100)) == 3
    assert store.query(dropped, last=0) == []
    assert len(store.query(FlowFilter(), last=4)) == 4


def test_subscription_gets_the_matching_flows_as_they_come() -> None:
    async def main() -> tuple[list[str], list[str], int]:
        store = FlowStore()
        drops = store.subscribe(FlowFilter.from_query({"type": ["drop"]}))
        everything = store.subscribe(FlowFilter())
        store.add(list(CORPUS.values())[:5])
        store.unsubscribe(everything)
        store.add(list(CORPUS.values())[5:])
        names = {id(f): n for n, f in CORPUS.items()}
        got = [names[id(await drops.queue.get())] for _ in range(drops.queue.qsize())]
        rest = [names[id(everything.queue.get_nowait())]
                for _ in range(everything.queue.qsize())]
        return got, rest, store.subscriber_lost

    got, rest, lost = asyncio.run(main())
    assert got == ["drop-fe-be-22", "drop-be-db"]
    assert rest == NAMES[:5], "an unsubscribed follower gets nothing more"
    assert lost == 0


def test_full_subscription_counts_lost_flows_instead_of_blocking() -> None:
    async def main() -> tuple[list[int], int, int, int, list[int]]:
        store = FlowStore()
        slow = store.subscribe(FlowFilter(), maxsize=2)
        fast = store.subscribe(FlowFilter(), maxsize=100)
        store.add(numbered(5))
        kept = [slow.queue.get_nowait().event.sport for _ in range(slow.queue.qsize())]
        return kept, slow.lost, store.subscriber_lost, len(store), sports(
            [fast.queue.get_nowait() for _ in range(fast.queue.qsize())])

    kept, lost, store_lost, stored, fast = asyncio.run(main())
    assert kept == [1, 2]
    assert lost == store_lost == 3
    assert stored == 5, "the ring keeps every flow"
    assert fast == [1, 2, 3, 4, 5], "one slow follower costs the others nothing"


# -- JSON-lines export ----------------------------------------------------------------------------


def exported(path: Path) -> list[Path]:
    """The export's files, oldest first (path.N ... path.1, path)."""
    backups = sorted(path.parent.glob(path.name + ".*"),
                     key=lambda p: int(p.suffix[1:]), reverse=True)
    return [*backups, path] if path.exists() else backups


def lines_of(files_: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for p in files_ for line in p.read_text().splitlines()]


def test_export_writes_one_schema_valid_json_line_per_flow(tmp_path: Path) -> None:
    store = FlowStore()
    store.exporter = JsonlExporter(tmp_path / "flows" / "flows.jsonl")
    store.add(list(CORPUS.values()))
    store.close()
    docs = lines_of([tmp_path / "flows" / "flows.jsonl"])
    assert docs == [json.loads(json.dumps(f.to_json())) for f in CORPUS.values()]
    assert all(schema_errors(d) == [] for d in docs)


def test_export_rotates_past_max_bytes_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    exporter = JsonlExporter(path, max_bytes=4096, backups=10)
    flows = numbered(40)
    for i in range(0, 40, 3):
        exporter.write(flows[i:i + 3])
    exporter.close()
    files_ = exported(path)
    assert len(files_) > 3 and exporter.rotations == len(files_) - 1
    assert [p.name for p in files_[-2:]] == ["flows.jsonl.1", "flows.jsonl"]
    assert all(p.stat().st_size <= 4096 for p in files_)
    docs = lines_of(files_)
    assert [d["flow"]["l4"]["TCP"]["source_port"] for d in docs] == list(range(1, 41))
    assert exporter.written == 40


def test_export_keeps_only_its_backups_newest_last(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    exporter = JsonlExporter(path, max_bytes=2048, backups=2)
    exporter.write(numbered(60))
    exporter.close()
    files_ = exported(path)
    assert [p.name for p in files_] == ["flows.jsonl.2", "flows.jsonl.1", "flows.jsonl"]
    ports = [d["flow"]["l4"]["TCP"]["source_port"] for d in lines_of(files_)]
    assert ports == list(range(61 - len(ports), 61)), "the newest flows, without a gap"


def test_export_without_backups_starts_the_file_over(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    exporter = JsonlExporter(path, max_bytes=2048, backups=0)
    exporter.write(numbered(30))
    exporter.close()
    assert exported(path) == [path]
    ports = [d["flow"]["l4"]["TCP"]["source_port"] for d in lines_of([path])]
    assert ports[-1] == 30 and ports == list(range(31 - len(ports), 31))


def test_export_appends_to_an_existing_file_and_counts_its_size(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    first = JsonlExporter(path, max_bytes=2048, backups=3)
    first.write(numbered(1))
    first.close()
    size = path.stat().st_size
    again = JsonlExporter(path, max_bytes=2 * size + size // 2, backups=3)
    again.write(numbered(3)[1:])
    again.close()
    assert [d["flow"]["l4"]["TCP"]["source_port"] for d in lines_of(exported(path))] == [1, 2, 3]
    assert again.rotations == 1, "the existing line counts towards max_bytes"


def test_export_refuses_a_max_size_below_1_kib(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1 KiB"):
        JsonlExporter(tmp_path / "f.jsonl", max_bytes=1000)


# -- node metrics ---------------------------------------------------------------------------------


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


SNAPSHOT = NodeSnapshot(
    endpoints=3, identities=5, policies=2,
    maps={"mb_policy": (100, 65536), "mb_ct": (32768, 65536), "mb_empty": (0, 0)},
    packets=[("egress", "forwarded", 0, 10, 1000), ("egress", "forwarded", 0, 5, 500),
             ("ingress", "dropped", 133, 7, 700), ("ingress", "dropped", 133, 3, 300),
             ("egress", "dropped", 181, 1, 60)],
    lost={"kernel": 4, "subscriber": 1}, events_read=99,
)


def test_metrics_count_flows_and_policy_verdicts_by_their_labels() -> None:
    metrics = NodeMetrics(lambda: SNAPSHOT)
    metrics.counters.count(list(CORPUS.values()))
    metrics.counters.count([CORPUS["drop-fe-be-22"]])
    got = samples(metrics.render())
    flows = "membrane_flows_processed_total"
    assert sample(got, flows, type="drop", verdict="DROPPED", direction="INGRESS",
                  protocol="TCP") == 2
    assert sample(got, flows, type="drop", verdict="DROPPED", direction="EGRESS",
                  protocol="TCP") == 1
    assert sample(got, flows, type="trace", verdict="FORWARDED", direction="EGRESS",
                  protocol="TCP") == 3
    assert sample(got, flows, type="trace", verdict="FORWARDED", direction="EGRESS",
                  protocol="UDP") == 1
    assert sample(got, flows, type="trace", verdict="FORWARDED", direction="EGRESS",
                  protocol="ICMPv4") == 1
    assert sum(v for (n, _), v in got.items() if n == flows) == len(CORPUS) + 1
    verdicts = "membrane_policy_verdicts_total"
    assert sample(got, verdicts, action="allow", direction="INGRESS", match="L3-L4") == 1
    assert sample(got, verdicts, action="deny", direction="EGRESS", match="L3-Only") == 1
    assert sum(v for (n, _), v in got.items() if n == verdicts) == 2


def test_metrics_export_the_node_snapshot_at_scrape_time() -> None:
    current = [SNAPSHOT]
    metrics = NodeMetrics(lambda: current[0])
    got = samples(metrics.render())
    packets, nbytes = "membrane_datapath_packets_total", "membrane_datapath_bytes_total"
    assert sample(got, packets, direction="egress", verdict="forwarded", reason="") == 15
    assert sample(got, packets, direction="ingress", verdict="dropped",
                  reason="Policy denied") == 10
    assert sample(got, packets, direction="egress", verdict="dropped",
                  reason="Policy denied by denylist") == 1
    assert sample(got, nbytes, direction="ingress", verdict="dropped",
                  reason="Policy denied") == 1000
    assert sample(got, "membrane_events_lost_total", where="kernel") == 4
    assert sample(got, "membrane_events_lost_total", where="subscriber") == 1
    assert sample(got, "membrane_events_read_total") == 99
    assert sample(got, "membrane_endpoints") == 3
    assert sample(got, "membrane_identities") == 5
    assert sample(got, "membrane_policies") == 2
    assert sample(got, "membrane_map_fill_ratio", map="mb_ct") == 0.5
    assert sample(got, "membrane_map_fill_ratio", map="mb_policy") == pytest.approx(100 / 65536)
    assert sample(got, "membrane_map_fill_ratio", map="mb_empty") == 0.0
    assert sample(got, "membrane_map_entries", map="mb_ct") == 32768
    current[0] = NodeSnapshot(endpoints=4, identities=5, policies=2, maps={}, packets=[],
                              lost={"kernel": 9}, events_read=120)
    got = samples(metrics.render())
    assert sample(got, "membrane_endpoints") == 4
    assert sample(got, "membrane_events_lost_total", where="kernel") == 9


def test_reconcile_duration_is_observed_per_operation_also_when_it_fails() -> None:
    metrics = NodeMetrics(lambda: SNAPSHOT)
    with metrics.timed("policy-import"):
        pass
    with metrics.timed("policy-import"):
        pass
    with pytest.raises(RuntimeError), metrics.timed("endpoint-add"):
        raise RuntimeError("map full")
    got = samples(metrics.render())
    hist = "membrane_reconcile_duration_seconds"
    assert sample(got, hist + "_count", operation="policy-import") == 2
    assert sample(got, hist + "_count", operation="endpoint-add") == 1
    assert sample(got, hist + "_bucket", operation="policy-import", le="+Inf") == 2
    assert sample(got, hist + "_sum", operation="endpoint-add") >= 0


def test_any_source_prefix_matches_a_label_of_every_source() -> None:
    assert matching({"to_label": ["any:role=db"]}) == matching({"to_label": ["role=db"]})
