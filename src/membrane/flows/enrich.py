"""Events -> flows: each end gets its pod, namespace, identity and labels, each verdict the
policy that decided it. What the agent knows comes through the `Directory` protocol, and what
it answers is cached per address and identity until the agent says something changed."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from membrane.datapath.events import Event
from membrane.flows.model import Flow, Party, PolicyRef


@dataclass(frozen=True, slots=True)
class EndpointView:
    """What a flow shows of a local endpoint."""

    id: int
    namespace: str
    pod_name: str
    ifname: str


class Directory(Protocol):
    """The agent's knowledge, read by the enricher (implemented in membrane.agent.flows)."""

    def endpoint_by_ip(self, ip: int) -> EndpointView | None: ...

    def endpoint_by_ifindex(self, ifindex: int) -> EndpointView | None: ...

    def identity_labels(self, identity: int) -> tuple[str, ...]: ...

    def policy_of_cookie(self, cookie: int) -> PolicyRef | None: ...


class Enricher:
    """Turns events into flows. Not thread-safe; `invalidate()` after the agent changes
    endpoints, identities or policies (the caches are also dropped every `max_age` seconds)."""

    def __init__(self, directory: Directory, node: str, max_age: float = 5.0) -> None:
        self.directory = directory
        self.node = node
        self.max_age = max_age
        self._parties: dict[tuple[int, int], Party] = {}
        self._policies: dict[int, tuple[PolicyRef, ...]] = {}
        self._ifnames: dict[int, str] = {}
        self._since = time.monotonic()
        self._clock = _BootClock()

    def invalidate(self) -> None:
        self._parties.clear()
        self._policies.clear()
        self._ifnames.clear()
        self._since = time.monotonic()

    def party(self, ip: int, identity: int) -> Party:
        key = (ip, identity)
        p = self._parties.get(key)
        if p is None:
            ep = self.directory.endpoint_by_ip(ip) if ip else None
            labels = self.directory.identity_labels(identity) if identity else ()
            addr = str(IPv4Address(ip)) if ip else ""
            if ep is None:
                p = Party(0, identity, "", "", labels, addr)
            else:
                p = Party(ep.id, identity, ep.namespace, ep.pod_name, labels, addr)
            self._parties[key] = p
        return p

    def policies(self, cookie: int) -> tuple[PolicyRef, ...]:
        refs = self._policies.get(cookie)
        if refs is None:
            ref = self.directory.policy_of_cookie(cookie) if cookie else None
            refs = (ref,) if ref is not None else ()
            self._policies[cookie] = refs
        return refs

    def ifname(self, ifindex: int) -> str:
        name = self._ifnames.get(ifindex)
        if name is None:
            ep = self.directory.endpoint_by_ifindex(ifindex) if ifindex else None
            name = ep.ifname if ep is not None else ""
            self._ifnames[ifindex] = name
        return name

    def enrich(self, events: Iterable[Event]) -> list[Flow]:
        now = time.monotonic()
        if now - self._since > self.max_age:
            self.invalidate()
        offset = self._clock.offset()
        party, policies, ifname, node = self.party, self.policies, self.ifname, self.node
        out: list[Flow] = []
        append = out.append
        for ev in events:
            append(Flow(ev, ev.ktime / 1e9 + offset, party(ev.saddr, ev.src_identity),
                        party(ev.daddr, ev.dst_identity), node, ifname(ev.ifindex),
                        policies(ev.cookie)))
        return out


class _BootClock:
    """Wall time of a CLOCK_BOOTTIME stamp: the offset, re-read at most once a second."""

    def __init__(self) -> None:
        self._at = -2.0
        self._offset = 0.0

    def offset(self) -> float:
        mono = time.monotonic()
        if mono - self._at > 1.0:
            self._offset = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
            self._at = mono
        return self._offset

