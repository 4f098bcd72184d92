"""Policy parsing: every accepted field becomes the right rule; bad input names its field."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from membrane.errors import InputError
from membrane.k8s.manifests import RawObject, load_manifests
from membrane.labels import K8S, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX
from membrane.policy.parse import parse_policy
from membrane.policy.rules import ICMP, SCTP, TCP, UDP, Policy, PortMatch
from membrane.policy.selector import EntitySelector, LabelSelector, PrefixSelector, Requirement


def parse(text: str) -> Policy:
    (obj,) = load_manifests(text, "p.yaml")
    assert isinstance(obj, RawObject)
    return parse_policy(obj)


def error(text: str) -> InputError:
    with pytest.raises(InputError) as e:
        parse(text)
    return e.value


NP = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
"""
CNP = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: x}
spec:
  endpointSelector: {matchLabels: {role: backend}}
"""
NS_X = Requirement(K8S, NAMESPACE_LABEL, "In", ("x",))


def test_network_policy_defaults_to_ingress_and_selects_in_its_namespace() -> None:
    p = parse(NP + "  podSelector: {matchLabels: {app: db}}\n")
    (rule,) = p.rules
    assert rule.direction == "ingress" and rule.peers == () and rule.ports is None
    assert rule.subject == LabelSelector.of([Requirement(K8S, "app", "In", ("db",)), NS_X])


def test_network_policy_egress_section_adds_egress_type() -> None:
    p = parse(NP + "  podSelector: {}\n  egress: [{}]\n")
    assert {r.direction for r in p.rules} == {"ingress", "egress"}
    egress = next(r for r in p.rules if r.direction == "egress")
    assert egress.peers is None and egress.ports is None  # [{}] allows everything


def test_network_policy_peers_and_ports() -> None:
    p = parse(NP + """  podSelector: {}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: a}}
    - namespaceSelector: {matchLabels: {team: t}}
    - podSelector: {matchExpressions: [{key: role, operator: NotIn, values: [c]}]}
      namespaceSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {port: 80}
    - {port: 81, protocol: UDP}
    - {port: 1000, endPort: 2000, protocol: SCTP}
    - {port: http}
""")
    (rule,) = p.rules
    assert rule.peers is not None
    pod, ns, both, block = rule.peers
    assert pod == LabelSelector.of([Requirement(K8S, "role", "In", ("a",)), NS_X])
    assert ns == LabelSelector.of([
        Requirement(K8S, NAMESPACE_LABELS_PREFIX + "team", "In", ("t",)),
        Requirement(K8S, NAMESPACE_LABEL, "Exists")])
    assert both == LabelSelector.of([Requirement(K8S, "role", "NotIn", ("c",)),
                                     Requirement(K8S, NAMESPACE_LABEL, "Exists")])
    assert block == PrefixSelector("ipblock", IPv4Network("10.0.0.0/8"),
                                   (IPv4Network("10.1.0.0/16"),))
    assert rule.ports == (PortMatch(TCP, 80), PortMatch(UDP, 81), PortMatch(SCTP, 1000, 2000),
                          PortMatch(TCP, 0, 0, "http"))


def test_cilium_policy_rules_entities_cidrs_ports_icmps() -> None:
    p = parse(CNP + """  ingress:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
    toPorts: [{ports: [{port: "3306", protocol: TCP}]}]
  - fromEntities: [host, cluster]
  - fromCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
    icmps: [{fields: [{type: 8}, {type: EchoReply, family: IPv4}]}]
  - {}
  - toPorts: [{ports: [{port: "53"}]}]
  egressDeny:
  - toEntities: [all]
    toPorts: [{ports: [{port: "25", protocol: TCP}]}]
""")
    r0, r1, r2, r3, r4, deny = p.rules
    assert r0.peers == (LabelSelector.of([Requirement("any", "role", "In", ("frontend",)),
                                          NS_X]),)
    assert r0.ports == (PortMatch(TCP, 3306),)
    assert r1.peers == (EntitySelector("host"), EntitySelector("cluster")) and r1.ports is None
    assert r2.peers == (PrefixSelector("cidr", IPv4Network("192.0.2.0/24"),
                                       (IPv4Network("192.0.2.128/25"),)),)
    assert r2.ports == (PortMatch(ICMP, 0), PortMatch(ICMP, 8))
    assert r3.peers == () and r3.ports is None  # selects without allowing
    assert r4.peers is None and r4.ports == (PortMatch(TCP, 53), PortMatch(UDP, 53),
                                             PortMatch(SCTP, 53))
    assert deny.deny and deny.direction == "egress" and deny.peers is None


def test_cilium_endpoint_selector_with_namespace_label_is_not_restricted() -> None:
    p = parse(CNP + """  ingress:
  - fromEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": y, app: a}
""")
    (sel,) = p.rules[0].peers or ()
    assert sel == LabelSelector.of([Requirement(K8S, NAMESPACE_LABEL, "In", ("y",)),
                                    Requirement("any", "app", "In", ("a",))])


def test_clusterwide_policy_is_not_namespaced_and_takes_specs() -> None:
    p = parse("""apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: all}
specs:
- endpointSelector: {}
  egress: [{toEndpoints: [{}]}]
- endpointSelector: {matchLabels: {a: b}}
  enableDefaultDeny: {ingress: false}
  ingress: [{fromEntities: [world]}]
""")
    e, i = p.rules
    assert e.subject == LabelSelector() and e.peers == (LabelSelector(),)
    assert not i.default_deny and i.path == "specs[1].ingress[0]"


@pytest.mark.parametrize(("body", "where", "message"), [
    (NP + "  podSelector: {}\n  policyTypes: [Both]\n", "spec.policyTypes[0]",
     '"Both" is not Ingress or Egress'),
    (NP + "  ingress: [{ports: [{port: 0}]}]\n", "spec.ingress[0].ports[0].port",
     "0 is out of range 1-65535"),
    (NP + "  ingress: [{ports: [{port: 70000}]}]\n", "spec.ingress[0].ports[0].port",
     "70000 is out of range 1-65535"),
    (NP + "  ingress: [{ports: [{port: 80, protocol: ICMP}]}]\n",
     "spec.ingress[0].ports[0].protocol", '"ICMP" is not one of TCP, UDP, SCTP'),
    (NP + "  ingress: [{ports: [{port: 90, endPort: 80}]}]\n",
     "spec.ingress[0].ports[0].endPort", "80 must be between port 90 and 65535"),
    (NP + "  ingress: [{ports: [{port: http, endPort: 80}]}]\n",
     "spec.ingress[0].ports[0].endPort", "requires a numeric port"),
    (NP + "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]\n",
     "spec.ingress[0].from[0].ipBlock.except[0]", '"11.0.0.0/8" must be a strict subset of '
     "10.0.0.0/8"),
    (NP + "  ingress: [{from: [{ipBlock: {cidr: nope}}]}]\n",
     "spec.ingress[0].from[0].ipBlock.cidr", '"nope" is not a valid IPv4 CIDR'),
    (NP + "  ingress: [{from: [{}]}]\n", "spec.ingress[0].from[0]",
     "must specify podSelector, namespaceSelector or ipBlock"),
    (NP + "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n",
     "spec.ingress[0].from[0].ipBlock",
     "may not be combined with podSelector or namespaceSelector"),
    (NP + "  podSelector: {matchExpressions: [{key: a, operator: In}]}\n",
     "spec.podSelector.matchExpressions[0].values", "must be non-empty when operator is In"),
    (NP + "  podSelector: {matchExpressions: [{key: a, operator: Maybe}]}\n",
     "spec.podSelector.matchExpressions[0].operator",
     '"Maybe" is not one of In, NotIn, Exists, DoesNotExist'),
    (NP + "  podSelector: {matchLabels: {a: 'bad value!'}}\n",
     'spec.podSelector.matchLabels["a"]', None),
    (NP + "  ingres: []\n", "spec.ingres", "unknown field"),
    (CNP.replace("  endpointSelector: {matchLabels: {role: backend}}\n", "  ingress: []\n"),
     "spec.endpointSelector", "required field is missing"),
    (CNP + "  ingress: [{fromEntities: [moon]}]\n", "spec.ingress[0].fromEntities[0]", None),
    (CNP + "  ingress: [{toPorts: [{ports: [{port: '80', protocol: ICMP}]}]}]\n",
     "spec.ingress[0].toPorts[0].ports[0].protocol", None),
    (CNP + "  ingress: [{toPorts: [{ports: [{port: '99999'}]}]}]\n",
     "spec.ingress[0].toPorts[0].ports[0].port", "99999 is out of range 0-65535"),
    (CNP + "  ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]}]\n",
     "spec.ingress[0].toPorts[0].rules", "L7 rules (HTTP, gRPC, Kafka, ...) are not supported "
     "yet"),
    (CNP + "  egress: [{toFQDNs: [{matchPattern: '*.example.com'}]}]\n",
     "spec.egress[0].toFQDNs", "DNS-aware policy (toFQDNs) is not supported yet"),
    (CNP + "  ingress: [{icmps: [{fields: [{type: 300}]}]}]\n",
     "spec.ingress[0].icmps[0].fields[0].type", "300 is out of range 0-255"),
    (CNP + "  ingress: [{fromCIDR: [2001:db8::/32]}]\n", "spec.ingress[0].fromCIDR[0]",
     '"2001:db8::/32": IPv6 is not supported yet'),
    (CNP.replace("spec:\n  endpointSelector: {matchLabels: {role: backend}}\n", ""),
     "spec", "a policy needs spec or specs"),
])
def test_bad_policies_name_the_field(body: str, where: str, message: str | None) -> None:
    e = error(body)
    kind = "NetworkPolicy" if "NetworkPolicy\n" in body and "Cilium" not in body else \
        "CiliumNetworkPolicy"
    assert e.where == f"p.yaml: document 1 ({kind} x/web): {where}"
    if message is not None:
        assert e.message == message
