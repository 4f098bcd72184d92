"""Kubernetes Services (v1) -> `ServiceSpec`, validated like the API server; and their backends.

Input is a `RawObject` whose header the manifest loader validated. Every error names the
document and the field path (``svc.yaml: document 1 (Service default/web): spec.ports[1]:
Duplicate value: 80/TCP (also spec.ports[0])``). Valid Service fields the lab has no use for
(traffic policies, load-balancer fields, ...) are accepted and ignored.

`resolve_backends` is the endpoints controller: pods of the service's namespace that match its
selector, each service port's target port resolved against the pod's named container ports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from typing import Any

from membrane.errors import InputError
from membrane.k8s.manifests import (
    LabelMap,
    Pod,
    RawObject,
    check_labels,
    dns_label_error,
    port_name_error,
)
from membrane.k8s.schema import OBJECT_META, F, Schema, T, check, show
from membrane.loadbalancer.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    NODE_PORT_RANGE,
    SERVICE_TYPES,
    Backend,
    LbProtocol,
    Service,
    ServicePort,
    ServiceType,
)

GLOBAL_ANNOTATIONS = ("service.cilium.io/global", "io.cilium/global-service")
"""Cilium's cluster-mesh annotations (current and legacy) marking a global service."""
MAX_AFFINITY_TIMEOUT = 86400

_Error = Callable[[str, str], InputError]
"""Makes the error at a field path of the object being parsed."""

_PORT: Schema = {
    "name": F(T.STR), "protocol": F(T.STR), "appProtocol": F(T.STR),
    "port": F(T.INT, required=True), "targetPort": F(T.INT_OR_STR), "nodePort": F(T.INT),
}
_SPEC: Schema = {
    "ports": F(T.LIST, child=_PORT),
    "selector": F(T.STR_MAP),
    "type": F(T.STR),
    "clusterIP": F(T.STR),
    "clusterIPs": F(T.LIST, items=T.STR),
    "externalIPs": F(T.LIST, items=T.STR),
    "sessionAffinity": F(T.STR),
    "sessionAffinityConfig": F(T.OBJ, child={
        "clientIP": F(T.OBJ, child={"timeoutSeconds": F(T.INT)})}),
    "ipFamilies": F(T.LIST, items=T.STR),
    "ipFamilyPolicy": F(T.STR),
    "externalTrafficPolicy": F(T.STR),
    "internalTrafficPolicy": F(T.STR),
    "allocateLoadBalancerNodePorts": F(T.BOOL),
    # Accepted and ignored: no cloud load-balancer, no cluster DNS in the lab.
    "externalName": F(T.STR), "healthCheckNodePort": F(T.INT), "loadBalancerIP": F(T.STR),
    "loadBalancerSourceRanges": F(T.LIST, items=T.STR), "loadBalancerClass": F(T.STR),
    "publishNotReadyAddresses": F(T.BOOL), "trafficDistribution": F(T.STR),
}
SERVICE: Schema = {
    "apiVersion": F(T.STR, required=True), "kind": F(T.STR, required=True),
    "metadata": F(T.OBJ, required=True, child=OBJECT_META),
    "spec": F(T.OBJ, child=_SPEC), "status": F(T.OBJ),
}
_ENUMS: dict[str, tuple[str, ...]] = {
    "externalTrafficPolicy": ("Cluster", "Local"),
    "internalTrafficPolicy": ("Cluster", "Local"),
    "ipFamilyPolicy": ("SingleStack", "PreferDualStack", "RequireDualStack"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpecPort:
    name: str
    protocol: LbProtocol
    port: int
    target_port: int | str
    """A container port number, or the name of a container port (resolved per pod)."""
    node_port: int = 0
    """The requested node port; 0: none, or any free one when the service has node ports."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """A validated Service before allocation (cluster IP, node ports) and backend resolution."""

    namespace: str
    name: str
    type: ServiceType = "ClusterIP"
    selector: Mapping[str, str] | None = None
    """None: the service has no selector, hence no backends (as in Kubernetes)."""
    ports: tuple[ServiceSpecPort, ...]
    cluster_ip: IPv4Address | None = None
    """The requested cluster IP; None: allocate one."""
    external_ips: tuple[IPv4Address, ...] = ()
    affinity_timeout: int = 0
    """sessionAffinity ClientIP timeout in seconds; 0: no affinity."""
    global_service: bool = False
    allocate_node_ports: bool = False
    """NodePort, or LoadBalancer without allocateLoadBalancerNodePorts: false."""
    where: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_service(obj: RawObject) -> ServiceSpec:
    """One Service object -> its spec, or InputError naming the document and the field."""
    if obj.kind != "Service":
        raise InputError(obj.where, f"kind {obj.kind} is not a Service")
    check(obj.body, SERVICE, "", obj.where)
    assert obj.namespace is not None  # Service is namespaced: the loader defaulted it

    def error(path: str, message: str) -> InputError:
        return InputError(f"{obj.where}: {path}", message)

    spec: dict[str, Any] = obj.body.get("spec") or {}
    raw_type = spec.get("type") or "ClusterIP"
    if raw_type == "ExternalName":
        raise error("spec.type", "ExternalName services are not supported (they are a DNS "
                    "alias, and the lab has no cluster DNS)")
    stype = next((t for t in SERVICE_TYPES if t == raw_type), None)
    if stype is None:
        raise error("spec.type", f"{show(raw_type)} is not one of {', '.join(SERVICE_TYPES)}")
    for name, allowed in _ENUMS.items():
        value = spec.get(name)
        if value is not None and value not in allowed:
            raise error(f"spec.{name}", f"{show(value)} is not one of {', '.join(allowed)}")
    if spec.get("ipFamilyPolicy") == "RequireDualStack":
        raise error("spec.ipFamilyPolicy", "RequireDualStack is not supported: the lab is "
                    "IPv4 only (use SingleStack or PreferDualStack)")
    families = spec.get("ipFamilies") or []
    for i, family in enumerate(families):
        if family not in ("IPv4", "IPv6"):
            raise error(f"spec.ipFamilies[{i}]", f"{show(family)} is not IPv4 or IPv6")
    if families and "IPv4" not in families:
        raise error("spec.ipFamilies", "IPv6-only services are not supported: the lab is "
                    "IPv4 only (use [IPv4])")

    selector: Mapping[str, str] | None = None
    if spec.get("selector"):  # {} is stored as no selector by the API server
        check_labels(spec["selector"], obj.where, "spec.selector")
        selector = LabelMap(spec["selector"])

    cluster_ip = _cluster_ip(spec, error)
    external_ips: list[IPv4Address] = []
    for i, text in enumerate(spec.get("externalIPs") or []):
        ip = _ipv4(text, f"spec.externalIPs[{i}]", error)
        if ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_multicast:
            raise error(f"spec.externalIPs[{i}]", f"{ip} may not be unspecified, loopback, "
                        "link-local or multicast")
        if ip not in external_ips:
            external_ips.append(ip)

    affinity = spec.get("sessionAffinity") or "None"
    config = spec.get("sessionAffinityConfig")
    timeout = 0
    if affinity not in ("None", "ClientIP"):
        raise error("spec.sessionAffinity", f"{show(affinity)} is not None or ClientIP")
    if affinity == "None" and config is not None:
        raise error("spec.sessionAffinityConfig", "must not be set when sessionAffinity is None")
    if affinity == "ClientIP":
        given = ((config or {}).get("clientIP") or {}).get("timeoutSeconds")
        timeout = DEFAULT_AFFINITY_TIMEOUT if given is None else given
        if not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
            raise error("spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        f"{timeout} is out of range 1-{MAX_AFFINITY_TIMEOUT} seconds")

    annotations: dict[str, str] = obj.body["metadata"].get("annotations") or {}
    return ServiceSpec(
        namespace=obj.namespace, name=obj.name, type=stype, selector=selector,
        ports=_ports(spec, stype, error), cluster_ip=cluster_ip, external_ips=tuple(external_ips),
        affinity_timeout=timeout,
        global_service=any(annotations.get(a, "").lower() == "true" for a in GLOBAL_ANNOTATIONS),
        allocate_node_ports=stype == "NodePort" or (
            stype == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is not False),
        where=obj.where,
    )


def _ipv4(text: str, path: str, error: _Error) -> IPv4Address:
    try:
        ip = ip_address(text)
    except ValueError:
        raise error(path, f"{show(text)} is not an IPv4 address") from None
    if not isinstance(ip, IPv4Address):
        raise error(path, f"{show(text)}: IPv6 is not supported yet")
    return ip


def _cluster_ip(spec: dict[str, Any], error: _Error) -> IPv4Address | None:
    """The requested cluster IP: spec.clusterIP and spec.clusterIPs must agree; None: any."""
    single: str = spec.get("clusterIP") or ""
    ips: list[str] = spec.get("clusterIPs") or []
    if len(ips) > 2:
        raise error("spec.clusterIPs", "may hold at most two addresses (one per IP family)")
    if len(ips) == 2:
        raise error("spec.clusterIPs[1]", "dual-stack services are not supported: the lab is "
                    "IPv4 only")
    if single and ips and ips[0] != single:
        raise error("spec.clusterIPs[0]", f"{show(ips[0])} must match spec.clusterIP "
                    f"{show(single)}")
    path, text = ("spec.clusterIP", single) if single else ("spec.clusterIPs[0]",
                                                            ips[0] if ips else "")
    if not text:
        return None
    if text == "None":
        raise error(path, "headless services (clusterIP: None) are not supported: the "
                    "load-balancer needs a virtual IP (leave clusterIP out to get one)")
    return _ipv4(text, path, error)


def _ports(spec: dict[str, Any], stype: ServiceType, error: _Error) -> tuple[ServiceSpecPort, ...]:
    raw_ports: list[dict[str, Any]] = spec.get("ports") or []
    if not raw_ports:
        raise error("spec.ports", "required field is missing (a service needs at least one "
                    "port)")
    names: dict[str, int] = {}
    keys: dict[tuple[int, str], int] = {}
    node_keys: dict[tuple[int, str], int] = {}
    low, high = NODE_PORT_RANGE
    out: list[ServiceSpecPort] = []
    for i, rp in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        name: str = rp.get("name") or ""
        if not name and len(raw_ports) > 1:
            raise error(f"{path}.name", "required when a service has more than one port")
        if name and (err := dns_label_error(name)):
            raise error(f"{path}.name", err)
        if name in names:
            raise error(f"{path}.name", f"Duplicate value: {show(name)} (also "
                        f"spec.ports[{names[name]}].name)")
        names[name] = i
        raw_protocol = rp.get("protocol") or "TCP"
        if raw_protocol == "SCTP":
            raise error(f"{path}.protocol", "SCTP services are not supported: the kernel here "
                        "has no SCTP (use TCP or UDP)")
        protocol: LbProtocol
        if raw_protocol == "TCP":
            protocol = "TCP"
        elif raw_protocol == "UDP":
            protocol = "UDP"
        else:
            raise error(f"{path}.protocol", f"{show(raw_protocol)} is not supported: use TCP "
                        "or UDP")
        port: int = rp["port"]
        if not 1 <= port <= 65535:
            raise error(f"{path}.port", f"{port} is out of range 1-65535")
        if (port, protocol) in keys:
            raise error(path, f"Duplicate value: {port}/{protocol} (also "
                        f"spec.ports[{keys[port, protocol]}])")
        keys[port, protocol] = i
        target = rp.get("targetPort")
        # 0 and "" are the unset IntOrString: the API server defaults them to the port
        if target in (None, 0, ""):
            target = port
        elif isinstance(target, int) and not 1 <= target <= 65535:
            raise error(f"{path}.targetPort", f"{target} is out of range 1-65535")
        elif isinstance(target, str) and (err := port_name_error(target)):
            raise error(f"{path}.targetPort", err)
        node_port: int = rp.get("nodePort") or 0  # 0 is unset
        if node_port and stype == "ClusterIP":
            raise error(f"{path}.nodePort", "may not be used when type is ClusterIP (use type "
                        "NodePort or LoadBalancer)")
        if node_port and not low <= node_port <= high:
            raise error(f"{path}.nodePort", f"{node_port} is not in the node port range "
                        f"{low}-{high}")
        if node_port:
            if (node_port, protocol) in node_keys:
                raise error(f"{path}.nodePort", f"Duplicate value: {node_port}/{protocol} "
                            f"(also spec.ports[{node_keys[node_port, protocol]}].nodePort)")
            node_keys[node_port, protocol] = i
        out.append(ServiceSpecPort(name=name, protocol=protocol, port=port, target_port=target,
                                   node_port=node_port))
    return tuple(out)


# -- backends ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PodPort:
    """A declared container port of a pod."""

    name: str | None = None
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRecord:
    """What the endpoints controller needs of a pod that has an address."""

    key: str
    """namespace/name"""
    ip: IPv4Address
    labels: Mapping[str, str]
    ports: tuple[PodPort, ...] = ()
    terminating: bool = False
    """Deleted, still running: keeps its connections, gets no new ones."""

    @property
    def namespace(self) -> str:
        return self.key.partition("/")[0]


def pod_record(pod: Pod, ip: IPv4Address, *, terminating: bool = False) -> PodRecord:
    """A manifest pod with its address -> the record `resolve_backends` takes."""
    return PodRecord(key=pod.key, ip=ip, labels=pod.labels, terminating=terminating,
                     ports=tuple(PodPort(name=p.name, port=p.container_port, protocol=p.protocol)
                                 for p in pod.ports))


def _target(pod: PodRecord, sp: ServiceSpecPort) -> int | None:
    """The pod's port for *sp*: a number as is; a name only if the pod declares it with the
    service port's protocol (Kubernetes' FindPort), else the pod is no backend of *sp*."""
    if isinstance(sp.target_port, int):
        return sp.target_port
    return next((p.port for p in pod.ports
                 if p.name == sp.target_port and p.protocol == sp.protocol), None)


def resolve_backends(spec: ServiceSpec, pods: Iterable[PodRecord], *, cluster_ip: IPv4Address,
                     node_ports: Sequence[int] | None = None) -> Service:
    """The service with its backends, per port sorted by address.

    *cluster_ip* and *node_ports* (one per spec port, 0 for none; default: the requested ones)
    are what the allocators assigned.
    """
    if node_ports is None:
        node_ports = [p.node_port for p in spec.ports]
    if len(node_ports) != len(spec.ports):
        raise ValueError(f"{spec.key}: {len(node_ports)} node ports for {len(spec.ports)} "
                         "service ports")
    selector = spec.selector
    selected = [] if selector is None else [
        pod for pod in pods
        if pod.namespace == spec.namespace
        and all(pod.labels.get(k) == v for k, v in selector.items())]
    ports: list[ServicePort] = []
    for sp, node_port in zip(spec.ports, node_ports, strict=True):
        backends: dict[tuple[IPv4Address, int], Backend] = {}
        for pod in selected:
            target = _target(pod, sp)
            if target is not None:
                backends.setdefault((pod.ip, target), Backend(
                    ip=pod.ip, port=target, pod=pod.key,
                    state="terminating" if pod.terminating else "active"))
        ports.append(ServicePort(name=sp.name, protocol=sp.protocol, port=sp.port,
                                 node_port=node_port,
                                 backends=tuple(backends[k] for k in sorted(backends))))
    return Service(namespace=spec.namespace, name=spec.name, type=spec.type,
                   cluster_ip=cluster_ip, external_ips=spec.external_ips, ports=tuple(ports),
                   affinity_timeout=spec.affinity_timeout, global_service=spec.global_service)
