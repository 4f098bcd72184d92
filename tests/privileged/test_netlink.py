"""Namespaces and endpoint veths on the real kernel."""

from __future__ import annotations

import secrets
import socket
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from membrane.datapath import netns
from membrane.datapath.netlink import Netlink, write_sysctl
from membrane.errors import DatapathError

pytestmark = pytest.mark.privileged


@pytest.fixture
def names() -> Iterator[list[str]]:
    made: list[str] = []
    try:
        yield made
    finally:
        for name in reversed(made):
            netns.remove(name)


def _new(names: list[str]) -> str:
    name = f"mbt-{secrets.token_hex(4)}"
    names.append(name)
    netns.create(name)
    return name


def test_created_namespace_is_separate_and_removable(names: list[str]) -> None:
    name = _new(names)
    assert netns.exists(name)
    here = netns.current_inode()
    with netns.inside(name):
        assert netns.current_inode() == netns.inode(name) != here
    assert netns.current_inode() == here, "inside() returns to where the thread was"
    assert netns.remove(name)
    assert not netns.exists(name)
    assert not netns.remove(name), "removing twice is fine"


def test_creating_an_existing_namespace_is_an_error(names: list[str]) -> None:
    name = _new(names)
    with pytest.raises(DatapathError, match="already exists"):
        netns.create(name)


def test_endpoint_veth_is_wired_both_ways(names: list[str]) -> None:
    node, pod = _new(names), _new(names)
    ip, gw = IPv4Address("10.250.0.2"), IPv4Address("10.250.0.1")
    with netns.inside(node):
        nl = Netlink()
        try:
            nl.ensure_router("mb_host", gw)
            write_sysctl("net.ipv4.ip_forward", "1")
            host, pod_link = nl.create_endpoint_veth(
                host_ifname="lxc0001", pod_netns=netns.path_of(pod), ip=ip, gateway=gw
            )
            assert nl.link("lxc0001") == host
            assert nl.pod_link(netns.path_of(pod)) == pod_link
        finally:
            nl.close()
    routes = subprocess.run(["ip", "-n", pod, "route"], capture_output=True, text=True,
                            check=True).stdout
    assert f"default via {gw} dev eth0" in routes
    neigh = subprocess.run(["ip", "-n", pod, "neigh"], capture_output=True, text=True,
                           check=True).stdout
    assert host.mac in neigh and "PERMANENT" in neigh
    # Plain kernel routing works through the node (no programs attached here).
    with netns.inside(node):
        srv = socket.socket()
        srv.bind((str(gw), 0))
        srv.listen(1)
    with netns.inside(pod):
        cli = socket.create_connection((str(gw), srv.getsockname()[1]), timeout=3)
    conn, peer = srv.accept()
    assert peer[0] == str(ip)
    for s in (conn, cli, srv):
        s.close()


def test_failed_veth_creation_leaves_no_link(names: list[str]) -> None:
    node, pod = _new(names), _new(names)
    subprocess.run(["ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "x0"],
                   check=True)
    with netns.inside(node):
        nl = Netlink()
        try:
            with pytest.raises(DatapathError, match="lxc0002"):
                nl.create_endpoint_veth(host_ifname="lxc0002", pod_netns=netns.path_of(pod),
                                        ip=IPv4Address("10.250.0.3"),
                                        gateway=IPv4Address("10.250.0.1"))
            assert nl.link("lxc0002") is None
        finally:
            nl.close()
