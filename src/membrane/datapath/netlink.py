"""Netlink through pyroute2: veth pairs, addresses, routes, neighbours and sysctls.

Every call acts in the calling thread's network namespace; `netns.inside()` switches it. An
`IPRoute` socket stays bound to the namespace it was opened in, so one long-lived socket serves
the node and a short-lived one serves each pod namespace.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from membrane.datapath import netns
from membrane.errors import DatapathError

NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 4
RT_SCOPE_LINK = 253
POD_IFNAME = "eth0"


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    ifname: str
    ifindex: int
    mac: str


def _link_of(msg: Any) -> Link:
    return Link(
        ifname=str(msg.get_attr("IFLA_IFNAME")),
        ifindex=int(msg["index"]),
        mac=str(msg.get_attr("IFLA_ADDRESS")),
    )


def write_sysctl(name: str, value: str) -> None:
    """Write a per-namespace sysctl (net.*) of the calling thread's namespace."""
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        path.write_text(value)
    except OSError as e:
        raise DatapathError(f"cannot set sysctl {name}={value}: {e.strerror}") from e


def _ipv6_off(ifname: str) -> None:
    with contextlib.suppress(DatapathError):
        write_sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", "1")


class Netlink:
    """The node namespace's netlink socket and the operations the agent needs."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def link(self, ifname: str) -> Link | None:
        found = self._ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        return _link_of(self._ipr.link("get", index=found[0])[0])

    def link_by_index(self, ifindex: int) -> Link | None:
        try:
            return _link_of(self._ipr.link("get", index=ifindex)[0])
        except NetlinkError:
            return None

    def delete_link(self, ifname: str) -> bool:
        found = self._ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        with contextlib.suppress(NetlinkError):
            self._ipr.link("del", index=found[0])
        return True

    def create_endpoint_veth(
        self,
        *,
        host_ifname: str,
        pod_netns: Path,
        ip: IPv4Address,
        gateway: IPv4Address,
    ) -> tuple[Link, Link]:
        """Make the veth pair of one endpoint and wire both ends; returns (host, pod) links.

        Pod side: `eth0` with ip/32, a permanent neighbour for the gateway (the host veth's MAC),
        `default via gateway onlink`. Node side: `ip/32 dev host_ifname` and a permanent
        neighbour for the pod, so no ARP is needed in either direction.
        """
        try:
            fd = os.open(pod_netns, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DatapathError(f"network namespace {pod_netns} does not exist") from None
        try:
            self._ipr.link(
                "add",
                ifname=host_ifname,
                kind="veth",
                peer={"ifname": POD_IFNAME, "net_ns_fd": fd},
            )
        except NetlinkError as e:
            raise DatapathError(f"cannot create veth {host_ifname}: {e}") from e
        finally:
            os.close(fd)
        host = self.link(host_ifname)
        if host is None:
            raise DatapathError(f"veth {host_ifname} vanished right after creation")
        try:
            _ipv6_off(host_ifname)
            self._ipr.link("set", index=host.ifindex, state="up")
            with netns.inside(str(pod_netns)), IPRoute() as pod_ipr:
                pod_index = pod_ipr.link_lookup(ifname=POD_IFNAME)[0]
                pod = _link_of(pod_ipr.link("get", index=pod_index)[0])
                _ipv6_off(POD_IFNAME)
                pod_ipr.link("set", index=1, state="up")
                pod_ipr.addr("add", index=pod.ifindex, address=str(ip), prefixlen=32)
                pod_ipr.link("set", index=pod.ifindex, state="up")
                pod_ipr.neigh(
                    "replace", dst=str(gateway), lladdr=host.mac, ifindex=pod.ifindex,
                    state=NUD_PERMANENT,
                )
                pod_ipr.route(
                    "replace", dst="0.0.0.0/0", gateway=str(gateway), oif=pod.ifindex,
                    flags=RTNH_F_ONLINK,
                )
            self._ipr.neigh(
                "replace", dst=str(ip), lladdr=pod.mac, ifindex=host.ifindex, state=NUD_PERMANENT
            )
            self._ipr.route("replace", dst=f"{ip}/32", oif=host.ifindex, scope=RT_SCOPE_LINK)
        except (NetlinkError, OSError, IndexError) as e:
            self.delete_link(host_ifname)
            raise DatapathError(f"cannot configure endpoint veth {host_ifname}: {e}") from e
        return host, pod

    def pod_link(self, pod_netns: Path) -> Link | None:
        """The pod-side link of an endpoint, read inside its namespace."""
        try:
            with netns.inside(str(pod_netns)), IPRoute() as pod_ipr:
                found = pod_ipr.link_lookup(ifname=POD_IFNAME)
                if not found:
                    return None
                return _link_of(pod_ipr.link("get", index=found[0])[0])
        except DatapathError:
            return None

    def ensure_router(self, ifname: str, address: IPv4Address) -> Link:
        """A veth pair `ifname` <-> `ifname`_net holding the pods' gateway address.

        Cilium's cilium_host/cilium_net pair, for the same reason: a device of the node that
        owns the router address, without needing the dummy driver (absent from some kernels).
        """
        if self.link(ifname) is None:
            try:
                self._ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": f"{ifname}_net"})
            except NetlinkError as e:
                raise DatapathError(f"cannot create router device {ifname}: {e}") from e
        link = self.link(ifname)
        peer = self.link(f"{ifname}_net")
        if link is None or peer is None:
            raise DatapathError(f"router device {ifname} vanished right after creation")
        _ipv6_off(ifname)
        _ipv6_off(f"{ifname}_net")
        with contextlib.suppress(NetlinkError):
            self._ipr.addr("add", index=link.ifindex, address=str(address), prefixlen=32)
        self._ipr.link("set", index=peer.ifindex, state="up")
        self._ipr.link("set", index=link.ifindex, state="up")
        return link

    def addresses(self) -> list[IPv4Address]:
        return [
            IPv4Address(a.get_attr("IFA_ADDRESS"))
            for a in self._ipr.get_addr(family=2)
            if not IPv4Address(a.get_attr("IFA_ADDRESS")).is_loopback
        ]

    def route_replace(self, dst: IPv4Network, *, gateway: IPv4Address | None = None,
                      ifname: str | None = None) -> None:
        kw: dict[str, Any] = {"dst": str(dst)}
        if gateway is not None:
            kw["gateway"] = str(gateway)
        if ifname is not None:
            link = self.link(ifname)
            if link is None:
                raise DatapathError(f"no link {ifname} for route {dst}")
            kw["oif"] = link.ifindex
        self._ipr.route("replace", **kw)


class NamespaceLinks:
    """Plumbing for namespaces other than the caller's (the lab's node and world)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _ipr(self) -> contextlib.AbstractContextManager[Any]:
        return _InNamespace(self.name)

    def up(self, ifname: str) -> None:
        with self._ipr() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")

    def add_address(self, ifname: str, address: IPv4Address, prefixlen: int) -> None:
        with self._ipr() as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            with contextlib.suppress(NetlinkError):
                ipr.addr("add", index=idx, address=str(address), prefixlen=prefixlen)

    def add_route(self, dst: IPv4Network, gateway: IPv4Address) -> None:
        with self._ipr() as ipr:
            ipr.route("replace", dst=str(dst), gateway=str(gateway))

    def veth_to(self, ifname: str, peer_ns: str, peer_ifname: str) -> None:
        """A veth pair with `ifname` here and `peer_ifname` in `peer_ns`."""
        fd = os.open(netns.path_of(peer_ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with self._ipr() as ipr:
                ipr.link("add", ifname=ifname, kind="veth",
                         peer={"ifname": peer_ifname, "net_ns_fd": fd})
        except NetlinkError as e:
            raise DatapathError(f"cannot create veth {ifname} in {self.name}: {e}") from e
        finally:
            os.close(fd)
        with netns.inside(self.name):
            _ipv6_off(ifname)
        with netns.inside(peer_ns):
            _ipv6_off(peer_ifname)

    def sysctl(self, name: str, value: str) -> None:
        with netns.inside(self.name):
            write_sysctl(name, value)


class _InNamespace:
    def __init__(self, name: str) -> None:
        self._cm = netns.inside(name)
        self._ipr: Any = None

    def __enter__(self) -> Any:
        self._cm.__enter__()
        try:
            self._ipr = IPRoute()
        finally:
            # The socket stays in the namespace it was opened in; the thread may leave.
            self._cm.__exit__(None, None, None)
        return self._ipr

    def __exit__(self, *exc: object) -> None:
        self._ipr.close()
