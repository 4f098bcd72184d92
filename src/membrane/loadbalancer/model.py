"""Services as the load-balancer sees them: frontends (address, port, protocol) and backends.

A Kubernetes Service becomes one `Service` with its resolved backends (the lab's endpoints
controller or `membrane service create` resolves them); the datapath sees only its frontends.
Pure values, host byte order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Literal

from membrane.errors import InputError

ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
SERVICE_TYPES: tuple[ServiceType, ...] = ("ClusterIP", "NodePort", "LoadBalancer")
LbProtocol = Literal["TCP", "UDP"]
BackendState = Literal["active", "terminating"]
FrontendKind = Literal["ClusterIP", "ExternalIP", "NodePort"]
DEFAULT_AFFINITY_TIMEOUT = 10800  # Kubernetes' default sessionAffinityConfig timeout (3 h)
NODE_PORT_RANGE = (30000, 32767)


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    ip: IPv4Address
    port: int
    state: BackendState = "active"
    pod: str = ""
    """namespace/name of the backend pod, when known (lab), for listings."""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"ip": str(self.ip), "port": self.port, "state": self.state}
        if self.pod:
            d["pod"] = self.pod
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePort:
    name: str
    protocol: LbProtocol
    port: int
    node_port: int = 0
    backends: tuple[Backend, ...] = ()
    """Resolved: each backend's address and target port for this service port."""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "protocol": self.protocol, "port": self.port,
                             "backends": [b.to_json() for b in self.backends]}
        if self.node_port:
            d["node_port"] = self.node_port
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class Frontend:
    """One (address, port, protocol) the datapath translates."""

    ip: IPv4Address
    port: int
    protocol: LbProtocol
    kind: FrontendKind


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    namespace: str
    name: str
    type: ServiceType = "ClusterIP"
    cluster_ip: IPv4Address
    external_ips: tuple[IPv4Address, ...] = ()
    ports: tuple[ServicePort, ...]
    affinity_timeout: int = 0
    """sessionAffinity ClientIP timeout in seconds; 0: no affinity."""
    global_service: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def frontends(self, node_ips: tuple[IPv4Address, ...] = ()) -> list[tuple[Frontend,
                                                                            ServicePort]]:
        """Every frontend of the service with the port it serves; NodePort ones on *node_ips*."""
        out: list[tuple[Frontend, ServicePort]] = []
        for sp in self.ports:
            out.append((Frontend(ip=self.cluster_ip, port=sp.port, protocol=sp.protocol,
                                 kind="ClusterIP"), sp))
            for ip in self.external_ips:
                out.append((Frontend(ip=ip, port=sp.port, protocol=sp.protocol,
                                     kind="ExternalIP"), sp))
            if sp.node_port:
                for ip in node_ips:
                    out.append((Frontend(ip=ip, port=sp.node_port, protocol=sp.protocol,
                                         kind="NodePort"), sp))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace, "name": self.name, "type": self.type,
            "cluster_ip": str(self.cluster_ip),
            "external_ips": [str(ip) for ip in self.external_ips],
            "ports": [p.to_json() for p in self.ports],
            "session_affinity": "ClientIP" if self.affinity_timeout else "None",
            "affinity_timeout": self.affinity_timeout,
        }


# -- the agent API's JSON -----------------------------------------------------------------------

def _ip(value: Any, where: str) -> IPv4Address:
    try:
        return IPv4Address(str(value))
    except ValueError:
        raise InputError(where, f"{value!r} is not an IPv4 address") from None


def _port(value: Any, where: str, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise InputError(where, f"{value!r} is not a port number ({low}-65535)")
    return value


def _fields(d: Any, where: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise InputError(where, "must be an object")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", "unknown field")
    missing = sorted(required - set(d))
    if missing:
        raise InputError(f"{where}.{missing[0]}", "required")
    return d


def service_from_json(d: Any, where: str = "service") -> Service:
    """The agent API's service object (as `Service.to_json` writes it) -> Service, checked."""
    d = _fields(d, where, {"namespace", "name", "type", "cluster_ip", "external_ips", "ports",
                           "session_affinity", "affinity_timeout", "global_service"},
                {"namespace", "name", "cluster_ip", "ports"})
    for f in ("namespace", "name"):
        if not isinstance(d[f], str) or not d[f]:
            raise InputError(f"{where}.{f}", "must be a non-empty string")
    stype = d.get("type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        raise InputError(f"{where}.type", f"{stype!r} is not one of {', '.join(SERVICE_TYPES)}")
    affinity = d.get("session_affinity", "None")
    if affinity not in ("None", "ClientIP"):
        raise InputError(f"{where}.session_affinity", f"{affinity!r} is not None or ClientIP")
    timeout = d.get("affinity_timeout", DEFAULT_AFFINITY_TIMEOUT if affinity == "ClientIP"
                    else 0)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout <= 86400:
        raise InputError(f"{where}.affinity_timeout", f"{timeout!r} is not 0-86400 seconds")
    if affinity == "ClientIP" and timeout == 0:
        timeout = DEFAULT_AFFINITY_TIMEOUT
    if affinity == "None":
        timeout = 0
    raw_ports = d["ports"]
    if not isinstance(raw_ports, list) or not raw_ports:
        raise InputError(f"{where}.ports", "must be a non-empty list")
    ports: list[ServicePort] = []
    seen: dict[tuple[str, int], int] = {}
    names: dict[str, int] = {}
    node_ports: dict[tuple[str, int], int] = {}
    for i, rp in enumerate(raw_ports):
        at = f"{where}.ports[{i}]"
        rp = _fields(rp, at, {"name", "protocol", "port", "node_port", "backends"},
                     {"port"})
        proto = rp.get("protocol", "TCP")
        if proto not in ("TCP", "UDP"):
            raise InputError(f"{at}.protocol", f"{proto!r} is not TCP or UDP (the datapath "
                             "balances TCP and UDP)")
        port = _port(rp["port"], f"{at}.port")
        name = rp.get("name", "")
        if not isinstance(name, str):
            raise InputError(f"{at}.name", "must be a string")
        if (proto, port) in seen:
            raise InputError(f"{at}.port", f"{port}/{proto} is already ports[{seen[proto, port]}]")
        seen[proto, port] = i
        if name in names:
            raise InputError(f"{at}.name", f"{name!r} is already ports[{names[name]}]")
        names[name] = i
        node_port = rp.get("node_port", 0)
        if node_port:
            node_port = _port(node_port, f"{at}.node_port")
            if (proto, node_port) in node_ports:
                raise InputError(f"{at}.node_port", f"{node_port}/{proto} is already "
                                 f"ports[{node_ports[proto, node_port]}]")
            node_ports[proto, node_port] = i
        raw_backends = rp.get("backends", [])
        if not isinstance(raw_backends, list):
            raise InputError(f"{at}.backends", "must be a list")
        backends: list[Backend] = []
        seen_b: set[tuple[IPv4Address, int]] = set()
        for j, rb in enumerate(raw_backends):
            bt = f"{at}.backends[{j}]"
            rb = _fields(rb, bt, {"ip", "port", "state", "pod"}, {"ip", "port"})
            ip = _ip(rb["ip"], f"{bt}.ip")
            bport = _port(rb["port"], f"{bt}.port")
            state = rb.get("state", "active")
            if state not in ("active", "terminating"):
                raise InputError(f"{bt}.state", f"{state!r} is not active or terminating")
            if (ip, bport) in seen_b:
                raise InputError(bt, f"{ip}:{bport} is listed twice")
            seen_b.add((ip, bport))
            backends.append(Backend(ip=ip, port=bport, state=state, pod=str(rb.get("pod", ""))))
        ports.append(ServicePort(name=name, protocol=proto, port=port, node_port=node_port,
                                 backends=tuple(backends)))
    if stype == "ClusterIP" and any(p.node_port for p in ports):
        raise InputError(f"{where}.ports", "node_port needs type NodePort or LoadBalancer")
    raw_ext = d.get("external_ips", [])
    if not isinstance(raw_ext, list):
        raise InputError(f"{where}.external_ips", "must be a list")
    ext = tuple(_ip(v, f"{where}.external_ips[{i}]") for i, v in enumerate(raw_ext))
    return Service(namespace=d["namespace"], name=d["name"], type=stype,
                   cluster_ip=_ip(d["cluster_ip"], f"{where}.cluster_ip"), external_ips=ext,
                   ports=tuple(ports), affinity_timeout=timeout,
                   global_service=bool(d.get("global_service", False)))


FrontendKey = tuple[IPv4Address, int, str]


@dataclass(slots=True)
class ServiceTable:
    """The desired services of a node, by key, with an index of who owns which frontend."""

    services: dict[str, Service] = field(default_factory=dict)
    owners: dict[FrontendKey, str] = field(default_factory=dict)
    node_ips: tuple[IPv4Address, ...] = ()

    def keys_of(self, svc: Service) -> set[FrontendKey]:
        return {(f.ip, f.port, f.protocol) for f, _ in svc.frontends(self.node_ips)}

    def conflict(self, svc: Service) -> str | None:
        for k in sorted(self.keys_of(svc), key=str):
            owner = self.owners.get(k)
            if owner is not None and owner != svc.key:
                return f"{k[0]}:{k[1]}/{k[2]} is already a frontend of service {owner}"
        return None

    def put(self, svc: Service) -> Service | None:
        """Insert or replace; returns the previous version. Check `conflict` first."""
        old = self.services.get(svc.key)
        if old is not None:
            for k in self.keys_of(old):
                self.owners.pop(k, None)
        self.services[svc.key] = svc
        for k in self.keys_of(svc):
            self.owners[k] = svc.key
        return old

    def remove(self, key: str) -> Service | None:
        old = self.services.pop(key, None)
        if old is not None:
            for k in self.keys_of(old):
                self.owners.pop(k, None)
        return old
