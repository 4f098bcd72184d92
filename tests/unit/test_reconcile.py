"""Reconciling desired against actual map contents writes only the difference."""

from __future__ import annotations

from pathlib import Path

from membrane.datapath.reconcile import reconcile
from membrane.endpoint.model import Endpoint, EndpointStore, host_ifname, next_endpoint_id
from membrane.types import EndpointID


class RecordingOps:
    def __init__(self, actual: dict[str, int]) -> None:
        self.actual = dict(actual)
        self.writes: list[tuple[str, str]] = []

    def update(self, key: str, value: int) -> None:
        self.actual[key] = value
        self.writes.append(("update", key))

    def delete(self, key: str) -> None:
        del self.actual[key]
        self.writes.append(("delete", key))


def test_equal_contents_write_nothing() -> None:
    ops = RecordingOps({"a": 1, "b": 2})
    res = reconcile(desired={"a": 1, "b": 2}, actual=dict(ops.actual), ops=ops)
    assert ops.writes == [] and res.unchanged == 2


def test_only_changed_missing_and_stale_entries_are_written() -> None:
    ops = RecordingOps({"a": 1, "b": 2, "stale": 9})
    res = reconcile(desired={"a": 1, "b": 3, "new": 4}, actual=dict(ops.actual), ops=ops)
    assert sorted(ops.writes) == [("delete", "stale"), ("update", "b"), ("update", "new")]
    assert ops.actual == {"a": 1, "b": 3, "new": 4}
    assert (res.updated, res.deleted, res.unchanged) == (2, 1, 1)


def test_without_prune_foreign_entries_stay() -> None:
    ops = RecordingOps({"foreign": 1})
    reconcile(desired={"a": 1}, actual=dict(ops.actual), ops=ops, prune=False)
    assert ops.actual == {"foreign": 1, "a": 1}


def test_endpoint_ids_are_not_reused_right_away() -> None:
    assert next_endpoint_id(set(), 0) == 1
    assert next_endpoint_id({EndpointID(1), EndpointID(2)}, 2) == 3
    assert next_endpoint_id({EndpointID(2)}, 3) == 4, "id 1 is free but newer ids come first"
    assert next_endpoint_id(set(), 65535) == 1, "wraps around"


def test_host_ifname_fits_ifnamsiz() -> None:
    assert host_ifname(EndpointID(65535)) == "lxcffff"
    assert len(host_ifname(EndpointID(65535))) < 16


def test_endpoint_store_round_trips(tmp_path: Path) -> None:
    from ipaddress import IPv4Address

    store = EndpointStore(tmp_path / "endpoints.json")
    ep = Endpoint(id=EndpointID(7), ipv4=IPv4Address("10.0.0.7"), netns="/run/netns/x",
                  owns_netns=True, ifname="lxc0007", pod="x/a", labels={"role": "web"})
    store.save({ep.id: ep})
    assert store.load() == {ep.id: ep}
