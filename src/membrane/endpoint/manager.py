"""Endpoint lifecycle: create, update labels, delete, restore after restart — all idempotent.

The manager is synchronous and runs in the thread that sits in the node's network namespace.
Every step of a create is undone when a later step fails, so a failed create leaves nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Protocol

from membrane.datapath import netns
from membrane.datapath.maps.endpoints import EndpointEntry
from membrane.datapath.netlink import Netlink
from membrane.endpoint.ipam import IPAM
from membrane.endpoint.model import (
    Endpoint,
    EndpointStore,
    PortDecl,
    host_ifname,
    next_endpoint_id,
)
from membrane.errors import Conflict, InputError, NotFound
from membrane.identity import IdentityAllocator
from membrane.labels import DEFAULT_FILTER, LabelFilter, Labels, security_labels
from membrane.types import EndpointID, Identity

log = logging.getLogger(__name__)


class DatapathPort(Protocol):
    """What the manager needs of `membrane.datapath.loader.Datapath`."""

    def attach(self, ifindex: int) -> None: ...

    def is_attached(self, ifindex: int) -> bool: ...

    @property
    def endpoints(self) -> EndpointMapPort: ...

    @property
    def ipcache(self) -> IPCachePort: ...


class EndpointMapPort(Protocol):
    def update(self, entry: EndpointEntry) -> None: ...

    def delete(self, ip: IPv4Address) -> bool: ...

    def dump(self) -> dict[IPv4Address, EndpointEntry]: ...


class IPCachePort(Protocol):
    def update(self, prefix: IPv4Network, identity: int) -> None: ...

    def delete(self, prefix: IPv4Network) -> bool: ...

    def dump(self) -> dict[IPv4Network, int]: ...


class IdentityListener(Protocol):
    """Told of identities as they come and go, before the endpoint's maps point at them, so
    policy entries of a new identity exist before its first packet (the policy engine)."""

    def identity_added(self, identity: Identity, labels: Labels) -> None: ...

    def identity_removed(self, identity: Identity) -> None: ...

    def endpoints_changed(self, identities: set[Identity]) -> None:
        """Endpoints of these identities came, went or changed ports (named ports)."""
        ...


class _NoListener:
    def identity_added(self, identity: Identity, labels: Labels) -> None:
        pass

    def identity_removed(self, identity: Identity) -> None:
        pass

    def endpoints_changed(self, identities: set[Identity]) -> None:
        pass


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateRequest:
    netns: str | None = None
    netns_name: str | None = None
    pod: str | None = None
    labels: Mapping[str, str]
    namespace_labels: Mapping[str, str]
    ports: tuple[PortDecl, ...] = ()


class EndpointManager:
    def __init__(
        self,
        *,
        node: str,
        datapath: DatapathPort,
        netlink: Netlink,
        ipam: IPAM,
        identities: IdentityAllocator,
        store: EndpointStore,
        on_identities_changed: Callable[[], None] = lambda: None,
        listener: IdentityListener | None = None,
        label_filter: LabelFilter | None = None,
    ) -> None:
        self.node = node
        self.datapath = datapath
        self.netlink = netlink
        self.ipam = ipam
        self.identities = identities
        self.store = store
        self._identities_changed = on_identities_changed
        self.listener: IdentityListener = listener or _NoListener()
        self.label_filter = label_filter or DEFAULT_FILTER
        self.endpoints: dict[EndpointID, Endpoint] = store.load()
        self._last_id = max(self.endpoints, default=0)

    # --- queries -------------------------------------------------------------------------
    def get(self, ep_id: EndpointID) -> Endpoint:
        try:
            return self.endpoints[ep_id]
        except KeyError:
            raise NotFound(f"endpoint {ep_id} not found on node {self.node}") from None

    def find(self, *, pod: str | None = None, netns_path: str | None = None) -> Endpoint | None:
        for ep in self.endpoints.values():
            if pod is not None and ep.pod == pod:
                return ep
            if pod is None and netns_path is not None and ep.netns == netns_path:
                return ep
        return None

    def list(self) -> list[Endpoint]:
        return [self.endpoints[k] for k in sorted(self.endpoints)]

    # --- identity ------------------------------------------------------------------------
    def _security_labels(self, ep_pod: str | None, labels: Mapping[str, str],
                         ns_labels: Mapping[str, str]) -> Labels:
        namespace = ep_pod.split("/", 1)[0] if ep_pod else None
        return security_labels(labels, namespace, ns_labels, self.label_filter)

    def _allocate_identity(self, pod: str | None, labels: Mapping[str, str],
                           ns_labels: Mapping[str, str]) -> Identity:
        labels_ = self._security_labels(pod, labels, ns_labels)
        ident = self.identities.allocate(labels_)
        if self.identities.refcount(ident) == 1:
            try:
                self.listener.identity_added(ident, labels_)
            except BaseException:
                self.identities.release(ident)
                self.listener.identity_removed(ident)
                raise
        self._identities_changed()
        return ident

    def _release_identity(self, ident: Identity) -> None:
        if ident:
            if self.identities.release(ident):
                self.listener.identity_removed(ident)
            self._identities_changed()

    # --- datapath writes -----------------------------------------------------------------
    def _entry(self, ep: Endpoint) -> EndpointEntry:
        return EndpointEntry(
            ip=ep.ipv4, ep_id=ep.id, ifindex=ep.ifindex, mac=ep.mac, node_mac=ep.node_mac,
            identity=ep.identity,
        )

    def _write_maps(self, ep: Endpoint) -> None:
        self.datapath.endpoints.update(self._entry(ep))
        self.datapath.ipcache.update(IPv4Network(f"{ep.ipv4}/32"), ep.identity)

    def _clear_maps(self, ep: Endpoint) -> None:
        self.datapath.endpoints.delete(ep.ipv4)
        self.datapath.ipcache.delete(IPv4Network(f"{ep.ipv4}/32"))

    # --- lifecycle -----------------------------------------------------------------------
    def create(self, req: CreateRequest) -> Endpoint:
        if req.netns is None and req.netns_name is None and req.pod is None:
            raise InputError("endpoint", "one of netns, netns_name or pod is required")
        netns_path = req.netns or (str(netns.path_of(req.netns_name)) if req.netns_name else None)
        existing = self.find(pod=req.pod, netns_path=netns_path)
        if existing is not None:
            if netns_path is not None and existing.netns != netns_path:
                raise Conflict(
                    f"pod {req.pod} is already endpoint {existing.id} in {existing.netns}"
                )
            if tuple(req.ports) != tuple(existing.ports):
                self.endpoints[existing.id] = existing.with_changes(ports=tuple(req.ports))
                self.store.save(self.endpoints)
                self.listener.endpoints_changed({existing.identity})
            return self.update_labels(existing.id, req.labels, req.namespace_labels)
        if netns_path is not None and req.netns is not None and not Path(netns_path).exists():
            raise NotFound(f"network namespace {netns_path} does not exist")

        ep_id = next_endpoint_id(set(self.endpoints), self._last_id)
        undo: list[Callable[[], object]] = []
        try:
            ip = self.ipam.allocate(f"endpoint:{ep_id}")
            undo.append(lambda: self.ipam.release(f"endpoint:{ep_id}"))
            owns = False
            if netns_path is None:
                netns_path = str(netns.create(f"mb-{self.node}-ep{ep_id}"))
                owns = True
            elif not Path(netns_path).exists():
                netns.create(Path(netns_path).name)
                owns = True
            if owns:
                path = netns_path
                undo.append(lambda: netns.remove(path))
            ifname = host_ifname(ep_id)
            self.netlink.delete_link(ifname)  # a leftover of a crash in the middle of a create
            host, pod_link = self.netlink.create_endpoint_veth(
                host_ifname=ifname, pod_netns=Path(netns_path), ip=ip, gateway=self.ipam.gateway
            )
            undo.append(lambda: self.netlink.delete_link(ifname))
            self.datapath.attach(host.ifindex)
            ident = self._allocate_identity(req.pod, req.labels, req.namespace_labels)
            undo.append(lambda: self._release_identity(ident))
            ep = Endpoint(
                id=ep_id, ipv4=ip, netns=netns_path, owns_netns=owns, ifname=ifname,
                ifindex=host.ifindex, mac=pod_link.mac, node_mac=host.mac, pod=req.pod,
                labels=dict(req.labels), namespace_labels=dict(req.namespace_labels),
                identity=ident, ports=tuple(req.ports),
            )
            self._write_maps(ep)
            undo.append(lambda: self._clear_maps(ep))
            self.endpoints[ep_id] = ep
            self._last_id = ep_id
            self.store.save(self.endpoints)
            self.listener.endpoints_changed({ident})
        except BaseException:
            self.endpoints.pop(ep_id, None)
            for step in reversed(undo):
                with contextlib.suppress(Exception):
                    step()
            raise
        log.info("endpoint %d created: %s %s identity %d", ep.id, ep.pod or ep.netns, ip, ident)
        return ep

    def update_labels(self, ep_id: EndpointID, labels: Mapping[str, str] | None,
                      namespace_labels: Mapping[str, str] | None) -> Endpoint:
        ep = self.get(ep_id)
        new_labels = dict(ep.labels if labels is None else labels)
        new_ns = dict(ep.namespace_labels if namespace_labels is None else namespace_labels)
        if new_labels == dict(ep.labels) and new_ns == dict(ep.namespace_labels):
            return ep
        ident = self._allocate_identity(ep.pod, new_labels, new_ns)
        new = ep.with_changes(labels=new_labels, namespace_labels=new_ns, identity=ident)
        self._write_maps(new)
        self.endpoints[ep_id] = new
        self.store.save(self.endpoints)
        self.listener.endpoints_changed({ep.identity, ident})
        self._release_identity(ep.identity)
        return new

    def delete(self, ep_id: EndpointID) -> Endpoint | None:
        ep = self.endpoints.get(ep_id)
        if ep is None:
            return None
        self._clear_maps(ep)
        self.netlink.delete_link(ep.ifname)
        if ep.owns_netns:
            netns.remove(ep.netns)
        self.ipam.release(f"endpoint:{ep_id}")
        del self.endpoints[ep_id]
        self.store.save(self.endpoints)
        self.listener.endpoints_changed({ep.identity})
        self._release_identity(ep.identity)
        log.info("endpoint %d deleted", ep_id)
        return ep

    # --- restart ---------------------------------------------------------------------------
    def restore(self) -> dict[str, int]:
        """After a restart: re-take identities and addresses, repair only what differs."""
        stats = {"restored": 0, "reattached": 0, "removed": 0, "map_writes": 0}
        for ep in list(self.endpoints.values()):
            host = self.netlink.link(ep.ifname)
            if not Path(ep.netns).exists() or host is None:
                log.warning("endpoint %d lost its namespace or veth; removing it", ep.id)
                self.endpoints.pop(ep.id)
                self.ipam.release(f"endpoint:{ep.id}")
                stats["removed"] += 1
                continue
            self.ipam.allocate_specific(f"endpoint:{ep.id}", ep.ipv4)
            ident = self._allocate_identity(ep.pod, ep.labels, ep.namespace_labels)
            if ident != ep.identity or host.ifindex != ep.ifindex or host.mac != ep.node_mac:
                ep = ep.with_changes(identity=ident, ifindex=host.ifindex, node_mac=host.mac)
                self.endpoints[ep.id] = ep
            if not self.datapath.is_attached(ep.ifindex):
                self.datapath.attach(ep.ifindex)
                stats["reattached"] += 1
            stats["restored"] += 1
        stats["map_writes"] = self.reconcile_maps()
        self.store.save(self.endpoints)
        return stats

    def desired_endpoint_entries(self) -> dict[IPv4Address, EndpointEntry]:
        return {ep.ipv4: self._entry(ep) for ep in self.endpoints.values()}

    def reconcile_maps(self) -> int:
        """Bring mb_endpoints to exactly the desired entries; returns the number of writes."""
        from membrane.datapath.reconcile import reconcile

        em = self.datapath.endpoints
        res = reconcile(
            desired=self.desired_endpoint_entries(), actual=em.dump(),
            ops=_EndpointOps(em),
        )
        return res.updated + res.deleted


class _EndpointOps:
    def __init__(self, em: EndpointMapPort) -> None:
        self.em = em

    def update(self, key: IPv4Address, value: EndpointEntry) -> None:
        self.em.update(value)

    def delete(self, key: IPv4Address) -> None:
        self.em.delete(key)
