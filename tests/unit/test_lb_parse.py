"""Services: Kubernetes validation with errors naming the field, allocation, backend resolution."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, IPv4Network

import pytest

from membrane.errors import Conflict, InputError
from membrane.k8s.manifests import Container, ContainerPort, Pod, RawObject, load_manifests
from membrane.loadbalancer.alloc import IPAllocator, NodePortAllocator, assign, unassign
from membrane.loadbalancer.model import Backend
from membrane.loadbalancer.parse import (
    PodPort,
    PodRecord,
    ServiceSpec,
    ServiceSpecPort,
    parse_service,
    pod_record,
    resolve_backends,
)

WHERE = "svc.yaml: document 1 (Service shop/web)"
CIDR = IPv4Network("10.96.0.0/16")


def svc(spec: str, metadata: str = "") -> str:
    return ("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n"
            + textwrap.indent(textwrap.dedent(metadata), "  ")
            + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  "))


def parse(text: str) -> ServiceSpec:
    (obj,) = load_manifests(text, "svc.yaml")
    assert isinstance(obj, RawObject)
    return parse_service(obj)


def error(text: str) -> str:
    with pytest.raises(InputError) as e:
        parse(text)
    return str(e.value)


WEB = svc("""
    selector: {app: web}
    ports:
    - {name: http, port: 80, targetPort: http}
    - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
""")


# -- parsing -----------------------------------------------------------------------------------


def test_service_defaults_like_the_api_server() -> None:
    spec = parse(svc("ports: [{port: 80}]\n"))
    assert spec == ServiceSpec(
        namespace="shop", name="web", type="ClusterIP", selector=None,
        ports=(ServiceSpecPort(name="", protocol="TCP", port=80, target_port=80),),
        cluster_ip=None, external_ips=(), affinity_timeout=0, global_service=False,
        allocate_node_ports=False)
    assert spec.where == WHERE and spec.key == "shop/web"


def test_every_lab_field_is_read() -> None:
    spec = parse(svc("""
        type: NodePort
        selector: {app: web, tier: front}
        clusterIP: 10.96.0.10
        clusterIPs: [10.96.0.10]
        externalIPs: [192.0.2.1, 192.0.2.1, 192.0.2.2]
        sessionAffinity: ClientIP
        sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
        ports:
        - {name: http, port: 80, targetPort: web, nodePort: 30080}
        - {name: udp, port: 80, protocol: UDP}
    """, metadata="annotations: {service.cilium.io/global: 'true'}\n"))
    assert spec.type == "NodePort" and spec.allocate_node_ports
    assert dict(spec.selector or {}) == {"app": "web", "tier": "front"}
    assert spec.cluster_ip == IPv4Address("10.96.0.10")
    assert spec.external_ips == (IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"))
    assert spec.affinity_timeout == 60 and spec.global_service
    assert spec.ports == (
        ServiceSpecPort(name="http", protocol="TCP", port=80, target_port="web", node_port=30080),
        ServiceSpecPort(name="udp", protocol="UDP", port=80, target_port=80))


def test_client_ip_affinity_defaults_to_three_hours() -> None:
    assert parse(svc("sessionAffinity: ClientIP\nports: [{port: 80}]\n")).affinity_timeout \
        == 10800


@pytest.mark.parametrize("annotation", ["io.cilium/global-service: 'True'",
                                        "service.cilium.io/global: 'true'"])
def test_either_cilium_annotation_makes_a_global_service(annotation: str) -> None:
    spec = parse(svc("ports: [{port: 80}]\n", metadata=f"annotations: {{{annotation}}}\n"))
    assert spec.global_service


def test_global_annotation_false_is_not_global() -> None:
    spec = parse(svc("ports: [{port: 80}]\n",
                     metadata="annotations: {service.cilium.io/global: 'false'}\n"))
    assert not spec.global_service


def test_valid_kubernetes_fields_the_lab_ignores_are_accepted() -> None:
    spec = parse(svc("""
        type: LoadBalancer
        allocateLoadBalancerNodePorts: false
        internalTrafficPolicy: Local
        externalTrafficPolicy: Cluster
        ipFamilies: [IPv4]
        ipFamilyPolicy: PreferDualStack
        publishNotReadyAddresses: true
        loadBalancerIP: 203.0.113.7
        loadBalancerSourceRanges: [0.0.0.0/0]
        loadBalancerClass: example.com/lb
        healthCheckNodePort: 32000
        trafficDistribution: PreferClose
        ports: [{port: 443, appProtocol: https, targetPort: 0}]
    """))
    assert spec.type == "LoadBalancer" and not spec.allocate_node_ports
    assert spec.ports[0].target_port == 443  # targetPort 0 is unset: defaults to the port


def test_empty_selector_is_no_selector() -> None:
    assert parse(svc("selector: {}\nports: [{port: 80}]\n")).selector is None


@pytest.mark.parametrize(("spec", "path", "message"), [
    ("ports: [{port: 80}]\nbogus: 1\n", "spec.bogus", "unknown field"),
    ("ports: [{port: 80, target: 8080}]\n", "spec.ports[0].target", "unknown field"),
    ("ports: []\n", "spec.ports", "a service needs at least one port"),
    ("selector: {app: web}\n", "spec.ports", "a service needs at least one port"),
    ("ports: [{port: 80}, {port: 81}]\n", "spec.ports[0].name",
     "required when a service has more than one port"),
    ("ports: [{name: a, port: 80}, {name: a, port: 81}]\n", "spec.ports[1].name",
     'Duplicate value: "a" (also spec.ports[0].name)'),
    ("ports: [{name: Http, port: 80}]\n", "spec.ports[0].name", "is not a DNS-1123 label"),
    ("ports: [{name: a, port: 80}, {name: b, port: 80}]\n", "spec.ports[1]",
     "Duplicate value: 80/TCP (also spec.ports[0])"),
    ("ports: [{port: 0}]\n", "spec.ports[0].port", "0 is out of range 1-65535"),
    ("ports: [{port: 65536}]\n", "spec.ports[0].port", "65536 is out of range 1-65535"),
    ("ports: [{port: '80'}]\n", "spec.ports[0].port", '"80" is not an integer'),
    ("ports: [{port: 80, protocol: SCTP}]\n", "spec.ports[0].protocol",
     "SCTP services are not supported: the kernel here has no SCTP"),
    ("ports: [{port: 80, protocol: tcp}]\n", "spec.ports[0].protocol",
     '"tcp" is not supported: use TCP or UDP'),
    ("ports: [{port: 80, targetPort: 70000}]\n", "spec.ports[0].targetPort",
     "70000 is out of range 1-65535"),
    ("ports: [{port: 80, targetPort: web_http}]\n", "spec.ports[0].targetPort",
     "is not a valid port name"),
    ("ports: [{port: 80, targetPort: a-very-long-port-name}]\n", "spec.ports[0].targetPort",
     "longer than 15 characters"),
    ("ports: [{port: 80, nodePort: 30080}]\n", "spec.ports[0].nodePort",
     "may not be used when type is ClusterIP"),
    ("type: NodePort\nports: [{port: 80, nodePort: 8080}]\n", "spec.ports[0].nodePort",
     "8080 is not in the node port range 30000-32767"),
    ("type: NodePort\nports: [{name: a, port: 80, nodePort: 30080},"
     " {name: b, port: 81, nodePort: 30080}]\n", "spec.ports[1].nodePort",
     "Duplicate value: 30080/TCP (also spec.ports[0].nodePort)"),
    ("type: ExternalName\nexternalName: db.example.com\n", "spec.type",
     "ExternalName services are not supported"),
    ("type: Headless\nports: [{port: 80}]\n", "spec.type",
     '"Headless" is not one of ClusterIP, NodePort, LoadBalancer'),
    ("clusterIP: None\nports: [{port: 80}]\n", "spec.clusterIP",
     "headless services (clusterIP: None) are not supported"),
    ("clusterIPs: [None]\nports: [{port: 80}]\n", "spec.clusterIPs[0]",
     "headless services (clusterIP: None) are not supported"),
    ("clusterIP: 10.96.0.300\nports: [{port: 80}]\n", "spec.clusterIP",
     '"10.96.0.300" is not an IPv4 address'),
    ("clusterIP: fd00::10\nports: [{port: 80}]\n", "spec.clusterIP", "IPv6 is not supported"),
    ("clusterIP: 10.96.0.10\nclusterIPs: [10.96.0.11]\nports: [{port: 80}]\n",
     "spec.clusterIPs[0]", '"10.96.0.11" must match spec.clusterIP "10.96.0.10"'),
    ("clusterIPs: [10.96.0.10, 'fd00::10']\nports: [{port: 80}]\n", "spec.clusterIPs[1]",
     "dual-stack services are not supported"),
    ("externalIPs: [127.0.0.1]\nports: [{port: 80}]\n", "spec.externalIPs[0]",
     "may not be unspecified, loopback, link-local or multicast"),
    ("externalIPs: [example.com]\nports: [{port: 80}]\n", "spec.externalIPs[0]",
     "is not an IPv4 address"),
    ("sessionAffinity: Cookie\nports: [{port: 80}]\n", "spec.sessionAffinity",
     '"Cookie" is not None or ClientIP'),
    ("sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\nports: [{port: 80}]\n",
     "spec.sessionAffinityConfig", "must not be set when sessionAffinity is None"),
    ("sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}\n"
     "ports: [{port: 80}]\n", "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
     "86401 is out of range 1-86400 seconds"),
    ("sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n"
     "ports: [{port: 80}]\n", "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
     "0 is out of range"),
    ("selector: {app: -web}\nports: [{port: 80}]\n", "spec.selector.app", "label value"),
    ("selector: {'a/b/c': web}\nports: [{port: 80}]\n", 'spec.selector["a/b/c"]', "label key"),
    ("externalTrafficPolicy: Nearest\nports: [{port: 80}]\n", "spec.externalTrafficPolicy",
     '"Nearest" is not one of Cluster, Local'),
    ("ipFamilyPolicy: RequireDualStack\nports: [{port: 80}]\n", "spec.ipFamilyPolicy",
     "the lab is IPv4 only"),
    ("ipFamilies: [IPv6]\nports: [{port: 80}]\n", "spec.ipFamilies",
     "IPv6-only services are not supported"),
])
def test_invalid_service_is_refused_naming_the_field(spec: str, path: str, message: str) -> None:
    got = error(svc(spec))
    assert got.startswith(f"{WHERE}: {path}: "), got
    assert message in got


# -- allocation --------------------------------------------------------------------------------


def test_cluster_ips_are_handed_out_from_the_first_host_and_kept_per_owner() -> None:
    ips = IPAllocator(IPv4Network("10.96.0.0/29"))
    assert ips.allocate(None, "a/x") == IPv4Address("10.96.0.1")
    assert ips.allocate(None, "a/y") == IPv4Address("10.96.0.2")
    assert ips.allocate(None, "a/x") == IPv4Address("10.96.0.1")  # idempotent
    assert ips.owner_of(IPv4Address("10.96.0.2")) == "a/y"


def test_cluster_ip_cidr_exhaustion_is_a_conflict_and_release_frees_an_address() -> None:
    ips = IPAllocator(IPv4Network("10.96.0.0/30"))  # .1 and .2: not network nor broadcast
    ips.allocate(None, "a/x")
    ips.allocate(None, "a/y")
    with pytest.raises(Conflict, match=r"service CIDR 10.96.0.0/30 is full: all 2 addresses"):
        ips.allocate(None, "a/z")
    assert ips.release(IPv4Address("10.96.0.1")) == "a/x"
    assert ips.allocate(None, "a/z") == IPv4Address("10.96.0.1")
    assert ips.release(IPv4Address("10.96.0.3")) is None


def test_released_cluster_ip_is_not_reused_while_others_are_free() -> None:
    ips = IPAllocator(CIDR)
    first = ips.allocate(None, "a/x")
    ips.release_owner("a/x")
    assert ips.allocate(None, "a/y") != first


def test_requested_cluster_ip_taken_by_another_service_names_the_owner() -> None:
    ips = IPAllocator(CIDR)
    ips.allocate(IPv4Address("10.96.0.10"), "kube-system/dns")
    with pytest.raises(Conflict, match=r"^spec.clusterIP: 10.96.0.10 is already allocated to "
                       r"service kube-system/dns$"):
        ips.allocate(IPv4Address("10.96.0.10"), "shop/web")


@pytest.mark.parametrize(("ip", "message"), [
    ("10.1.2.3", "spec.clusterIP: 10.1.2.3 is not in the service CIDR 10.96.0.0/16"),
    ("10.96.0.0", "spec.clusterIP: 10.96.0.0 is the network address of the service CIDR"),
    ("10.96.255.255", "spec.clusterIP: 10.96.255.255 is the broadcast address of the service"),
])
def test_requested_cluster_ip_must_be_a_usable_address_of_the_cidr(ip: str,
                                                                   message: str) -> None:
    with pytest.raises(InputError) as e:
        IPAllocator(CIDR).allocate(IPv4Address(ip), "shop/web")
    assert str(e.value).startswith(message)


def test_cluster_ip_of_a_service_is_immutable() -> None:
    ips = IPAllocator(CIDR)
    ips.allocate(IPv4Address("10.96.0.10"), "shop/web")
    with pytest.raises(InputError, match=r"may not change from 10\.96\.0\.10 to 10\.96\.0\.11"):
        ips.allocate(IPv4Address("10.96.0.11"), "shop/web")


def test_node_ports_are_per_protocol_and_exhaust_per_protocol() -> None:
    ports = NodePortAllocator(range=(30000, 30001))
    assert ports.allocate(None, "TCP", "a/x") == 30000
    assert ports.allocate(None, "UDP", "a/y") == 30000
    assert ports.allocate(None, "TCP", "a/x") == 30001
    with pytest.raises(Conflict, match=r"node port range 30000-30001 is full for TCP"):
        ports.allocate(None, "TCP", "a/z")
    assert ports.release(30000, "TCP") == "a/x"
    assert ports.allocate(None, "TCP", "a/z") == 30000
    assert ports.release_owner("a/x") == [(30001, "TCP")]
    assert ports.owner_of(30001, "TCP") is None


def test_requested_node_port_taken_or_outside_the_range_is_refused() -> None:
    ports = NodePortAllocator()
    ports.allocate(30080, "TCP", "a/x")
    with pytest.raises(Conflict, match="30080/TCP is already allocated to service a/x"):
        ports.allocate(30080, "TCP", "a/y")
    with pytest.raises(InputError, match="29999 is not in the node port range 30000-32767"):
        ports.allocate(29999, "TCP", "a/y")


def test_assign_gives_a_nodeport_service_its_address_and_ports() -> None:
    spec = parse(svc("""
        type: NodePort
        ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81}]
    """))
    ips, ports = IPAllocator(CIDR), NodePortAllocator()
    got = assign(spec, ips, ports)
    assert got.cluster_ip == IPv4Address("10.96.0.1")
    assert got.node_ports[0] == 30080 and 30000 <= got.node_ports[1] <= 32767
    assert assign(spec, ips, ports) == got  # applying again keeps everything
    unassign("shop/web", ips, ports)
    assert ips.held_by("shop/web") is None and ports.held_by("shop/web") == []


def test_assign_releases_node_ports_a_changed_service_no_longer_uses() -> None:
    ips, ports = IPAllocator(CIDR), NodePortAllocator()
    assign(parse(svc("type: NodePort\nports: [{port: 80, nodePort: 30080}]\n")), ips, ports)
    assign(parse(svc("type: ClusterIP\nports: [{port: 80}]\n")), ips, ports)
    assert ports.owner_of(30080, "TCP") is None


def test_assign_of_a_cluster_ip_outside_the_cidr_names_the_document_and_changes_nothing() -> None:
    ips, ports = IPAllocator(CIDR), NodePortAllocator()
    spec = parse(svc("type: NodePort\nclusterIP: 10.1.2.3\nports: [{port: 80}]\n"))
    with pytest.raises(InputError) as e:
        assign(spec, ips, ports)
    assert str(e.value) == (f"{WHERE}: spec.clusterIP: 10.1.2.3 is not in the service CIDR "
                            "10.96.0.0/16")
    assert ports.held_by("shop/web") == [] and ips.held_by("shop/web") is None


def test_assign_is_all_or_nothing_when_a_node_port_is_taken() -> None:
    ips, ports = IPAllocator(CIDR), NodePortAllocator()
    ports.allocate(30081, "TCP", "other/svc")
    spec = parse(svc("type: NodePort\nports: [{name: a, port: 80, nodePort: 30080},"
                     " {name: b, port: 81, nodePort: 30081}]\n"))
    with pytest.raises(Conflict, match=r"spec.ports\[1\].nodePort: 30081/TCP is already "
                       "allocated to service other/svc"):
        assign(spec, ips, ports)
    assert ips.held_by("shop/web") is None and ports.owner_of(30080, "TCP") is None


# -- backends ----------------------------------------------------------------------------------


def pod(name: str, ip: str, labels: dict[str, str], ports: tuple[PodPort, ...] = (),
        namespace: str = "shop") -> PodRecord:
    return PodRecord(key=f"{namespace}/{name}", ip=IPv4Address(ip), labels=labels, ports=ports)


HTTP = PodPort(name="http", port=8080)
ALT_HTTP = PodPort(name="http", port=9090)


def resolve(spec: ServiceSpec, pods: list[PodRecord]) -> dict[str, list[tuple[str, int]]]:
    service = resolve_backends(spec, pods, cluster_ip=IPv4Address("10.96.0.10"))
    assert service.cluster_ip == IPv4Address("10.96.0.10")
    return {sp.name: [(str(b.ip), b.port) for b in sp.backends] for sp in service.ports}


def test_backends_are_matching_pods_of_the_namespace_sorted_by_address() -> None:
    pods = [pod("b", "10.0.0.20", {"app": "web"}, (HTTP,)),
            pod("a", "10.0.0.3", {"app": "web", "v": "2"}, (ALT_HTTP,)),
            pod("db", "10.0.0.4", {"app": "db"}, (HTTP,)),
            pod("c", "10.0.0.5", {"app": "web"}, (HTTP,), namespace="other")]
    assert resolve(parse(WEB), pods) == {
        "http": [("10.0.0.3", 9090), ("10.0.0.20", 8080)],  # named target port, per pod
        "dns": [("10.0.0.3", 5353), ("10.0.0.20", 5353)],
    }


def test_pod_without_the_named_port_is_no_backend_of_that_port_only() -> None:
    pods = [pod("a", "10.0.0.3", {"app": "web"}, (HTTP,)),
            pod("b", "10.0.0.4", {"app": "web"}, (PodPort(name="metrics", port=9100),)),
            pod("c", "10.0.0.5", {"app": "web"}, (PodPort(name="http", port=80,
                                                          protocol="UDP"),))]
    assert resolve(parse(WEB), pods) == {
        "http": [("10.0.0.3", 8080)],  # the name must match with the service port's protocol
        "dns": [("10.0.0.3", 5353), ("10.0.0.4", 5353), ("10.0.0.5", 5353)],
    }


def test_label_change_moves_a_pod_in_and_out_of_the_backends() -> None:
    spec = parse(WEB)
    before = pod("a", "10.0.0.3", {"app": "canary"}, (HTTP,))
    assert resolve(spec, [before])["http"] == []
    after = PodRecord(key=before.key, ip=before.ip, labels={"app": "web"}, ports=before.ports)
    assert resolve(spec, [after])["http"] == [("10.0.0.3", 8080)]


def test_service_without_selector_has_no_backends() -> None:
    spec = parse(svc("ports: [{port: 80}]\n"))
    assert resolve(spec, [pod("a", "10.0.0.3", {"app": "web"})]) == {"": []}


def test_resolved_service_carries_the_spec_and_the_assignment() -> None:
    spec = parse(svc("""
        type: NodePort
        selector: {app: web}
        externalIPs: [192.0.2.1]
        sessionAffinity: ClientIP
        ports: [{port: 80, targetPort: 8080}]
    """, metadata="annotations: {io.cilium/global-service: 'true'}\n"))
    manifest_pod = Pod(namespace="shop", name="a", labels={"app": "web"}, containers=(
        Container(name="c", ports=(ContainerPort(container_port=8080),)),))
    record = pod_record(manifest_pod, IPv4Address("10.0.0.3"), terminating=True)
    service = resolve_backends(spec, [record], cluster_ip=IPv4Address("10.96.0.10"),
                               node_ports=(30080,))
    assert service.key == "shop/web" and service.type == "NodePort"
    assert service.external_ips == (IPv4Address("192.0.2.1"),)
    assert service.affinity_timeout == 10800 and service.global_service
    (port,) = service.ports
    assert port.node_port == 30080
    assert port.backends == (Backend(ip=IPv4Address("10.0.0.3"), port=8080, state="terminating",
                                     pod="shop/a"),)
