"""The loaded datapath: map operations through libbpf, pins that outlive the agent, tc attach."""

from __future__ import annotations

import socket
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from bpfrun import A, B, C, add_endpoints

from membrane.datapath import netns
from membrane.datapath.loader import PIN_ROOT, Datapath
from membrane.datapath.maps.endpoints import EndpointEntry

pytestmark = pytest.mark.privileged


def test_endpoint_map_update_get_delete_dump(datapath: Datapath) -> None:
    add_endpoints(datapath)
    assert datapath.endpoints.get(A.ip) == A
    assert datapath.endpoints.dump() == {A.ip: A, B.ip: B, C.ip: C}
    assert datapath.endpoints.delete(B.ip) is True
    assert datapath.endpoints.delete(B.ip) is False
    assert datapath.endpoints.get(B.ip) is None
    assert datapath.endpoints.count() == 2


def test_batched_writes_land_like_single_ones(datapath: Datapath) -> None:
    many = [EndpointEntry(ip=IPv4Address(f"10.9.{i // 250}.{i % 250 + 1}"), ep_id=i + 1,
                          ifindex=1, mac="02:00:00:00:00:01", node_mac="02:00:00:00:00:02",
                          identity=256 + i) for i in range(1000)]
    assert datapath.endpoints.update_many(many) == 1000
    assert datapath.endpoints.dump() == {e.ip: e for e in many}


def test_ipcache_resolves_the_longest_prefix(datapath: Datapath) -> None:
    datapath.ipcache.update_many({IPv4Network("0.0.0.0/0"): 2, IPv4Network("10.0.0.0/8"): 300,
                                  IPv4Network("10.1.2.3/32"): 256})
    assert datapath.ipcache.resolve(IPv4Address("10.1.2.3")) == 256
    assert datapath.ipcache.resolve(IPv4Address("10.1.2.4")) == 300
    assert datapath.ipcache.resolve(IPv4Address("192.0.2.1")) == 2
    assert datapath.ipcache.delete(IPv4Network("10.0.0.0/8")) is True
    assert datapath.ipcache.resolve(IPv4Address("10.1.2.4")) == 2


def test_reopening_reuses_pinned_programs_and_map_contents(obj_dir: Path,
                                                           node_name: str) -> None:
    first = Datapath.open(node_name, obj_dir, PIN_ROOT)
    try:
        assert first.reused is False
        first.endpoints.update(A)
        prog = first.prog_id("mb_from_container")
    finally:
        first.close()
    again = Datapath.open(node_name, obj_dir, PIN_ROOT)
    try:
        assert again.reused is True
        assert again.prog_id("mb_from_container") == prog
        assert again.endpoints.get(A.ip) == A
    finally:
        again.close()


def test_a_changed_object_is_loaded_against_the_same_maps(obj_dir: Path, node_name: str,
                                                         tmp_path: Path) -> None:
    first = Datapath.open(node_name, obj_dir, PIN_ROOT)
    first.endpoints.update(A)
    prog = first.prog_id("mb_from_container")
    first.close()
    changed = tmp_path / "bpf_lxc.o"
    changed.write_bytes((obj_dir / "bpf_lxc.o").read_bytes() + b"\0")  # another sha256
    (tmp_path / "bpf_host.o").write_bytes((obj_dir / "bpf_host.o").read_bytes())
    (tmp_path / "bpf_sock.o").write_bytes((obj_dir / "bpf_sock.o").read_bytes())
    again = Datapath.open(node_name, tmp_path, PIN_ROOT)
    try:
        assert again.reused is False
        assert again.prog_id("mb_from_container") != prog
        assert again.endpoints.get(A.ip) == A
    finally:
        again.close()


def test_remove_pins_leaves_nothing(obj_dir: Path, node_name: str) -> None:
    Datapath.open(node_name, obj_dir, PIN_ROOT).close()
    assert Datapath.remove_pins(node_name, PIN_ROOT) is True
    assert not (PIN_ROOT / node_name).exists()
    assert Datapath.remove_pins(node_name, PIN_ROOT) is False


def test_attach_is_idempotent_and_detach_removes_only_ours(datapath: Datapath,
                                                           netns_name: str) -> None:
    subprocess.run(["ip", "-n", netns_name, "link", "add", "h0", "type", "veth", "peer", "p0"],
                   check=True)
    with netns.inside(f"/run/netns/{netns_name}"):
        ifindex = socket.if_nametoindex("h0")
        assert datapath.is_attached(ifindex) is False
        datapath.attach(ifindex)
        datapath.attach(ifindex)
        assert datapath.is_attached(ifindex) is True
    shown = subprocess.run(["tc", "-n", netns_name, "filter", "show", "dev", "h0", "ingress"],
                           capture_output=True, text=True, check=True).stdout
    assert shown.count("handle 0x6d62") == 1  # replaced, not stacked
    with netns.inside(f"/run/netns/{netns_name}"):
        assert datapath.detach(ifindex) is True
        assert datapath.is_attached(ifindex) is False
        assert datapath.detach(ifindex) is False
