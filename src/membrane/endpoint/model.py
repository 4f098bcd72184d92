"""The endpoint value: what the agent knows and persists about one workload's network."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from membrane.errors import MembraneError
from membrane.types import EndpointID, Identity

MAX_ENDPOINT_ID = 65535

PortDecl = tuple[str, str, int]
"""A declared container port: (name or "", protocol TCP/UDP/SCTP, number)."""
UNKNOWN_IDENTITY = Identity(0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    id: EndpointID
    ipv4: IPv4Address
    netns: str
    owns_netns: bool
    ifname: str
    ifindex: int = 0
    mac: str = ""
    node_mac: str = ""
    pod: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    identity: Identity = UNKNOWN_IDENTITY
    state: str = "ready"
    ports: tuple[PortDecl, ...] = ()

    @property
    def namespace(self) -> str | None:
        return self.pod.split("/", 1)[0] if self.pod else None

    def with_changes(self, **changes: Any) -> Endpoint:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ipv4": str(self.ipv4),
            "netns": self.netns,
            "owns_netns": self.owns_netns,
            "ifname": self.ifname,
            "ifindex": self.ifindex,
            "mac": self.mac,
            "node_mac": self.node_mac,
            "pod": self.pod,
            "labels": dict(self.labels),
            "namespace_labels": dict(self.namespace_labels),
            "identity": self.identity,
            "state": self.state,
            "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in self.ports],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Endpoint:
        return cls(
            id=EndpointID(int(d["id"])),
            ipv4=IPv4Address(d["ipv4"]),
            netns=str(d["netns"]),
            owns_netns=bool(d["owns_netns"]),
            ifname=str(d["ifname"]),
            ifindex=int(d.get("ifindex", 0)),
            mac=str(d.get("mac", "")),
            node_mac=str(d.get("node_mac", "")),
            pod=d.get("pod"),
            labels=dict(d.get("labels", {})),
            namespace_labels=dict(d.get("namespace_labels", {})),
            identity=Identity(int(d.get("identity", 0))),
            state=str(d.get("state", "ready")),
            ports=tuple((str(p.get("name", "")), str(p["protocol"]), int(p["port"]))
                        for p in d.get("ports", [])),
        )


def host_ifname(ep_id: EndpointID) -> str:
    """The node-side veth name: `lxc` and the endpoint id in hex (fits IFNAMSIZ)."""
    return f"lxc{ep_id:04x}"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write a JSON file so a crash leaves either the old or the new content, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class EndpointStore:
    """Endpoints persisted as one JSON file in the agent's state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[EndpointID, Endpoint]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            eps = [Endpoint.from_json(d) for d in raw["endpoints"]]
        except (ValueError, KeyError, TypeError) as e:
            raise MembraneError(f"{self.path}: corrupt endpoint state: {e}") from e
        return {ep.id: ep for ep in eps}

    def save(self, endpoints: Mapping[EndpointID, Endpoint]) -> None:
        write_json_atomic(
            self.path, {"endpoints": [endpoints[k].to_json() for k in sorted(endpoints)]}
        )


def next_endpoint_id(used: set[EndpointID], last: int) -> EndpointID:
    """Lowest id after `last` that is free, wrapping: ids are not reused right away."""
    for step in range(1, MAX_ENDPOINT_ID + 1):
        cand = (last + step - 1) % MAX_ENDPOINT_ID + 1
        if EndpointID(cand) not in used:
            return EndpointID(cand)
    raise MembraneError(f"no free endpoint id (all {MAX_ENDPOINT_ID} in use)")
