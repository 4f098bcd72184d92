"""LBState: the writes that take the load-balancer maps from one state to the next.

The writes are replayed on plain dicts; after *every single write* the maps must be consistent
for a packet: a master's slots 1..count exist and name backends that exist, and every slot
and Maglev entry of a frontend names an existing backend."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from membrane.datapath.abi import LB_F_MAGLEV, LB_F_NODEPORT
from membrane.errors import Conflict, InputError
from membrane.loadbalancer.model import Service, service_from_json
from membrane.loadbalancer.state import LBState, Op

NODE = IPv4Address("192.0.2.1")


def svc(name: str, ip: str, backends: list[tuple[str, int] | tuple[str, int, str]],
        port: int = 80, **extra: object) -> Service:
    bs = [{"ip": b[0], "port": b[1], "state": b[2] if len(b) > 2 else "active"}  # type: ignore[misc]
          for b in backends]
    ports: list[dict[str, object]] = [{"port": port, "backends": bs}]
    if "node_port" in extra:
        ports[0]["node_port"] = extra.pop("node_port")
    return service_from_json({"namespace": "default", "name": name, "cluster_ip": ip,
                              "ports": ports, **extra})


class Maps:
    def __init__(self) -> None:
        self.m: dict[str, dict[object, object]] = {"backends": {}, "rev_nat": {}, "maglev": {},
                                                   "services": {}}

    def apply(self, ops: list[Op]) -> None:
        for name, what, key, value in ops:
            if what == "update":
                self.m[name][key] = value
            else:
                assert key in self.m[name], f"delete of missing {name} {key}"
                del self.m[name][key]
            self.check()

    def check(self) -> None:
        services = self.m["services"]
        for k, v in services.items():
            if k.slot == 0:  # type: ignore[attr-defined]
                for i in range(1, v.nbackends + 1):  # type: ignore[attr-defined]
                    slot = services.get(k._replace(slot=i))  # type: ignore[attr-defined]
                    assert slot is not None, f"{k} count {v.nbackends} but slot {i} missing"  # type: ignore[attr-defined]
            else:
                assert v.backend_id in self.m["backends"], f"{k} names a missing backend"  # type: ignore[attr-defined]
        for k, bid in self.m["maglev"].items():
            assert bid in self.m["backends"], f"maglev {k} names a missing backend"


@pytest.fixture
def st() -> LBState:
    return LBState(node_ips=[NODE], maglev_size=251)


def test_add_is_constant_work_whatever_the_scale(st: LBState) -> None:
    maps = Maps()
    bes = [("10.200.0.5", 8080), ("10.200.0.6", 8080)]
    first = st.upsert([svc("s0", "10.96.0.1", bes)])
    maps.apply(first)
    assert len(first) == 2 + 1 + 2 + 1  # two backends, reverse NAT, two slots, the master
    batch = [svc(f"s{i}", f"10.96.{i // 250}.{i % 250 + 2}", bes) for i in range(1, 300)]
    maps.apply(st.upsert(batch))
    one = st.upsert([svc("last", "10.96.200.1", bes)])
    maps.apply(one)
    assert len(one) == 4  # the backends are shared: reverse NAT, two slots, the master
    assert len(st.backend_ids) == 2
    removed, ops = st.remove(["default/last"])
    assert removed == ["default/last"] and len(ops) == 4
    maps.apply(ops)
    assert maps.m == st.desired_maps()


def test_changes_keep_every_step_consistent(st: LBState) -> None:
    maps = Maps()
    a, b, c = ("10.200.0.5", 80), ("10.200.0.6", 80), ("10.200.0.7", 80)
    maps.apply(st.upsert([svc("w", "10.96.0.1", [a, b, c])]))
    rev = st.frontends[(IPv4Address("10.96.0.1"), 80, 6)].rev_nat
    maps.apply(st.upsert([svc("w", "10.96.0.1", [c])]))        # shrink
    maps.apply(st.upsert([svc("w", "10.96.0.1", [a, b, c])]))  # grow
    maps.apply(st.upsert([svc("w", "10.96.0.1", [a, (*b, "terminating"), c])]))
    fe = st.frontends[(IPv4Address("10.96.0.1"), 80, 6)]
    assert fe.rev_nat == rev  # a frontend keeps its reverse-NAT index across updates
    assert len(fe.active) == 2 and len(fe.backends) == 3
    term = st.backend_ids[(IPv4Address("10.200.0.6"), 80, 6)]
    assert maps.m["backends"][term].state == 1  # type: ignore[attr-defined]
    maps.apply(st.upsert([svc("w", "10.96.0.2", [a])]))        # new cluster IP
    assert (IPv4Address("10.96.0.1"), 80, 6) not in st.frontends
    maps.apply(st.remove(["default/w"])[1])
    assert all(not m for m in maps.m.values())
    assert st.service_entries == 0 and not st.backend_ids


def test_nodeport_frontends_get_maglev_tables(st: LBState) -> None:
    maps = Maps()
    bes = [("10.200.0.5", 80), ("10.200.0.6", 80), ("10.200.0.7", 80)]
    maps.apply(st.upsert([svc("np", "10.96.0.1", bes, type="NodePort", node_port=30080)]))
    fe = st.frontends[(NODE, 30080, 6)]
    assert fe.flags & LB_F_NODEPORT and fe.flags & LB_F_MAGLEV
    assert len(fe.maglev) == 251 and set(fe.maglev) == set(fe.active)
    assert not st.frontends[(IPv4Address("10.96.0.1"), 80, 6)].flags & LB_F_MAGLEV
    # Removing one backend rewrites only the table slots that pointed at it (and a few).
    ops = st.upsert([svc("np", "10.96.0.1", bes[:2], type="NodePort", node_port=30080)])
    maglev_writes = [o for o in ops if o[0] == "maglev"]
    assert 251 // 3 - 10 <= len(maglev_writes) <= 251 // 3 + 40
    maps.apply(ops)
    assert maps.m == st.desired_maps()


def test_refusals_change_nothing(st: LBState) -> None:
    st.upsert([svc("a", "10.96.0.1", [("10.200.0.5", 80)])])
    before = st.desired_maps()
    with pytest.raises(Conflict, match="already a frontend of service default/a"):
        st.upsert([svc("b", "10.96.0.2", []), svc("c", "10.96.0.1", [])])
    with pytest.raises(InputError, match="also a frontend of default/b"):
        st.upsert([svc("b", "10.96.0.3", []), svc("c", "10.96.0.3", [])])
    small = LBState(maglev_size=251, service_entries_max=4)
    with pytest.raises(Conflict, match="service map holds 4 entries"):
        small.upsert([svc("a", "10.96.0.1", [("10.200.0.5", 80)] * 1 + [("10.200.0.6", 80)]),
                      svc("b", "10.96.0.2", [("10.200.0.5", 80)])])
    assert st.desired_maps() == before and set(st.services) == {"default/a"}
    assert not small.services


def test_restart_keeps_the_ids_the_maps_use() -> None:
    st = LBState(maglev_size=251)
    st.upsert([svc("a", "10.96.0.1", [("10.200.0.5", 80)]),
               svc("b", "10.96.0.2", [("10.200.0.6", 80)])])
    want = st.desired_maps()
    again = LBState(maglev_size=251)
    again.preferred_rev_nat = {k: f.rev_nat for k, f in st.frontends.items()}
    again.preferred_backend = dict(st.backend_ids)
    again.upsert([st.services["default/b"], st.services["default/a"]])  # another order
    assert again.desired_maps() == want
