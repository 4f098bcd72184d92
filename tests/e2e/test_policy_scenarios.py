# ruff: noqa: E501  (the policies read best as one YAML line each)
"""Policy truth tables over real traffic, on the Kubernetes e2e layout: namespaces x, y, z with
pods a, b, c serving TCP and UDP on 80 and 81. Each scenario applies policies (and changes
labels or policies in the middle), probes every pair, and compares with the table it expects.

Tables are written as the upstream e2e suite writes them: start from "everything connects" or
"nothing connects" and state the exceptions. A pod reaching itself never leaves it and always
connects.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from labkit import Lab, mb, pods_yaml, unique_name

from membrane.cli.client import Client
from membrane.lab.node import LabPaths

NAMESPACES = ("x", "y", "z")
PODS = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in ("a", "b", "c"))
TIMEOUT = 0.7


class Reach:
    """An expected truth table: (from, to) -> connects. Patterns are fnmatch globs (x/*)."""

    def __init__(self, default: bool = True) -> None:
        self.t = {(f, to): default for f in PODS for to in PODS}

    def set(self, src: str, dst: str, value: bool) -> Reach:
        for f, to in self.t:
            if fnmatch.fnmatch(f, src) and fnmatch.fnmatch(to, dst):
                self.t[(f, to)] = value
        return self

    def into(self, dst: str, value: bool) -> Reach:
        return self.set("*", dst, value)

    def out_of(self, src: str, value: bool) -> Reach:
        return self.set(src, "*", value)

    def table(self) -> dict[tuple[str, str], bool]:
        return {(f, to): v or f == to for (f, to), v in self.t.items()}


@dataclass
class Step:
    """Do something, then expect tables: {(port, protocol): Reach}."""

    apply: str = ""
    delete: str = ""
    label_pod: tuple[str, ...] = ()
    label_ns: tuple[str, ...] = ()
    expect: dict[tuple[int, str], Reach] = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    steps: list[Step]


def np(name: str, ns: str, spec: str) -> str:
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n")


def cnp(name: str, ns: str, spec: str) -> str:
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n")


def ccnp(name: str, spec: str) -> str:
    return (f"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\n"
            f"metadata: {{name: {name}}}\nspec:\n{spec}\n---\n")


T80 = (80, "TCP")
T81 = (81, "TCP")
U80 = (80, "UDP")
U81 = (81, "UDP")
DENY_ALL_X = np("deny-all", "x", "  podSelector: {}\n  policyTypes: [Ingress]")
X_A_FROM_X_B = np("a-from-b", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]""")


def ip_of(pod: str) -> str:
    return "{" + pod + "}"  # replaced with the pod's address before applying


SCENARIOS: list[Scenario] = [
    Scenario("no-policy-all-connect", [Step(expect={T80: Reach(), U81: Reach()})]),
    Scenario("np-deny-all-ingress", [Step(apply=DENY_ALL_X, expect={
        T80: Reach().into("x/*", False), U80: Reach().into("x/*", False)})]),
    Scenario("np-allow-all-ingress-empty-rule", [Step(apply=np("allow-all", "x", """  podSelector: {}
  ingress: [{}]"""), expect={T80: Reach()})]),
    Scenario("np-deny-all-egress", [Step(apply=np("deny-egress", "x", """  podSelector: {}
  policyTypes: [Egress]"""), expect={T80: Reach().out_of("x/*", False),
                                     U81: Reach().out_of("x/*", False)})]),
    Scenario("np-pod-selector-same-namespace", [Step(apply=X_A_FROM_X_B, expect={
        T80: Reach().into("x/a", False).set("x/b", "x/a", True)})]),
    Scenario("np-namespace-selector", [Step(apply=np("from-y", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"""), expect={
        T80: Reach().into("x/a", False).set("y/*", "x/a", True)})]),
    Scenario("np-pod-and-namespace-selector-together", [Step(apply=np("and", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]"""),
        expect={T80: Reach().into("x/a", False).set("y/b", "x/a", True)})]),
    Scenario("np-pod-or-namespace-selector", [Step(apply=np("or", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]"""),
        expect={T80: Reach().into("x/a", False).set("y/*", "x/a", True)
                .set("x/b", "x/a", True)})]),
    Scenario("np-namespace-selector-not-in", [Step(apply=np("notin", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]}]"""),
        expect={T80: Reach().into("x/a", False).set("y/*", "x/a", True)
                .set("z/*", "x/a", True)})]),
    Scenario("np-all-namespaces-empty-selector", [Step(apply=np("allns", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}]}]"""), expect={T80: Reach()})]),
    Scenario("np-port-81-only", [Step(apply=np("p81", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81}]}]"""), expect={
        T80: Reach().into("x/a", False), T81: Reach()})]),
    Scenario("np-named-port", [Step(apply=np("named", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: tcp-80}]}]"""), expect={
        T80: Reach(), T81: Reach().into("x/a", False), U80: Reach().into("x/a", False)})]),
    Scenario("np-named-port-udp", [Step(apply=np("named-udp", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: udp-81, protocol: UDP}]}]"""), expect={
        U81: Reach(), U80: Reach().into("x/a", False), T81: Reach().into("x/a", False)})]),
    Scenario("np-udp-port", [Step(apply=np("udp80", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 80, protocol: UDP}]}]"""), expect={
        T80: Reach().into("x/a", False), U80: Reach()})]),
    Scenario("np-sctp-is-a-distinct-protocol", [Step(apply=np("sctp", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 80, protocol: SCTP}]}]"""), expect={
        T80: Reach().into("x/a", False), U80: Reach().into("x/a", False)})]),
    Scenario("np-end-port", [Step(apply=np("range", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81, endPort: 90}]}]"""), expect={
        T80: Reach().into("x/a", False), T81: Reach()})]),
    Scenario("np-ipblock-matches-pod-ip", [Step(apply=np("block", "x", f"""  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{ipBlock: {{cidr: "{ip_of('y/b')}/32"}}}}]}}]"""), expect={
        T80: Reach().into("x/a", False).set("y/b", "x/a", True)})]),
    Scenario("np-ipblock-except", [Step(apply=np("block-except", "x", f"""  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{ipBlock: {{cidr: "{ip_of('x/a')}/24", except: ["{ip_of('y/b')}/32"]}}}}]}}]"""),
        expect={T80: Reach().set("y/b", "x/a", False)})]),
    Scenario("np-egress-to-ipblock", [Step(apply=np("egress-block", "x", f"""  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{ipBlock: {{cidr: "{ip_of('z/c')}/32"}}}}]}}]"""), expect={
        T80: Reach().out_of("x/a", False).set("x/a", "z/c", True)})]),
    Scenario("np-ingress-allowed-egress-absent-denies", [Step(apply=np("both", "x", """  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{}]"""), expect={T80: Reach().out_of("x/a", False)})]),
    Scenario("np-egress-only-udp-80", [Step(apply=np("dns-like", "x", """  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: 80, protocol: UDP}]}]"""), expect={
        T80: Reach().out_of("x/*", False), U80: Reach()})]),
    Scenario("np-union-of-policies", [Step(apply=X_A_FROM_X_B + np("a-from-yc", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]}]"""),
        expect={T80: Reach().into("x/a", False).set("x/b", "x/a", True)
                .set("y/c", "x/a", True)})]),
    Scenario("np-match-expressions-exists", [Step(apply=np("exists", "x", """  podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
  policyTypes: [Ingress]"""), expect={T80: Reach().into("x/*", False)})]),
    Scenario("np-ports-without-peers", [Step(apply=np("ports-only", "y", """  podSelector: {}
  ingress: [{ports: [{port: 81}, {port: 81, protocol: UDP}]}]"""), expect={
        T80: Reach().into("y/*", False), T81: Reach(), U81: Reach(),
        U80: Reach().into("y/*", False)})]),
    Scenario("np-update-in-place", [
        Step(apply=X_A_FROM_X_B, expect={T80: Reach().into("x/a", False).set("x/b", "x/a", True)}),
        Step(apply=X_A_FROM_X_B.replace("pod: b}", "pod: c}"),
             expect={T80: Reach().into("x/a", False).set("x/c", "x/a", True)}),
    ]),
    Scenario("np-delete-restores-connectivity", [
        Step(apply=DENY_ALL_X, expect={T80: Reach().into("x/*", False)}),
        Step(delete=DENY_ALL_X, expect={T80: Reach()}),
    ]),
    Scenario("pod-label-change-mid-scenario", [
        Step(apply=X_A_FROM_X_B, expect={T80: Reach().into("x/a", False).set("x/b", "x/a", True)}),
        Step(label_pod=("x/c", "pod=b"), expect={
            T80: Reach().into("x/a", False).set("x/b", "x/a", True).set("x/c", "x/a", True)}),
        Step(label_pod=("x/c", "pod=c"), expect={
            T80: Reach().into("x/a", False).set("x/b", "x/a", True)}),
    ]),
    Scenario("subject-label-change-mid-scenario", [
        Step(apply=X_A_FROM_X_B, expect={T80: Reach().into("x/a", False).set("x/b", "x/a", True)}),
        Step(label_pod=("x/c", "pod=a"), expect={
            T80: Reach().into("x/[ac]", False).set("x/b", "x/[ac]", True)
            .set("x/a", "x/c", False).set("x/c", "x/a", False)}),
        Step(label_pod=("x/c", "pod=c"), expect={
            T80: Reach().into("x/a", False).set("x/b", "x/a", True)}),
    ]),
    Scenario("namespace-label-change-mid-scenario", [
        Step(apply=np("from-y", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"""),
             expect={T80: Reach().into("x/a", False).set("y/*", "x/a", True)}),
        Step(label_ns=("z", "ns=y"), expect={
            T80: Reach().into("x/a", False).set("y/*", "x/a", True).set("z/*", "x/a", True)}),
        Step(label_ns=("z", "ns=z"), expect={
            T80: Reach().into("x/a", False).set("y/*", "x/a", True)}),
    ]),
    # -- CiliumNetworkPolicy ------------------------------------------------------------------
    Scenario("cnp-talk-policy", [Step(apply=cnp("talk", "x", """  endpointSelector: {matchLabels: {pod: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {pod: a}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]"""), expect={
        T80: Reach().into("x/b", False).set("x/a", "x/b", True), T81: Reach().into("x/b", False)})]),
    Scenario("cnp-empty-rule-selects-without-allowing", [Step(apply=cnp("empty", "x", """  endpointSelector: {}
  ingress: [{}]"""), expect={T80: Reach().into("x/*", False)})]),
    Scenario("cnp-deny-wins-over-allow", [Step(apply=cnp("deny", "x", """  endpointSelector: {}
  ingress: [{fromEntities: [all]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": y}}]"""), expect={
        T80: Reach().set("y/*", "x/*", False)})]),
    Scenario("cnp-egress-deny-port", [Step(apply=cnp("egress-deny", "x", """  endpointSelector: {matchLabels: {pod: a}}
  egress: [{toEntities: [all]}]
  egressDeny: [{toPorts: [{ports: [{port: "81"}]}]}]"""), expect={
        T80: Reach(), T81: Reach().out_of("x/a", False), U81: Reach().out_of("x/a", False)})]),
    Scenario("cnp-cross-namespace-endpoints", [Step(apply=cnp("cross", "x", """  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": z, pod: c}}]}]"""),
        expect={T80: Reach().into("x/a", False).set("z/c", "x/a", True)})]),
    Scenario("cnp-from-endpoints-defaults-to-own-namespace", [Step(apply=cnp("own-ns", "x", """  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{}]}]"""), expect={T80: Reach().into("x/a", False).set("x/*", "x/a", True)})]),
    Scenario("cnp-from-entity-cluster", [Step(apply=cnp("cluster", "x", """  endpointSelector: {}
  ingress: [{fromEntities: [cluster]}]"""), expect={T80: Reach()})]),
    Scenario("cnp-from-entity-world-only", [Step(apply=cnp("world", "x", """  endpointSelector: {}
  ingress: [{fromEntities: [world]}]"""), expect={T80: Reach().into("x/*", False)})]),
    Scenario("cnp-to-cidr-does-not-select-pods", [Step(apply=cnp("cidr", "x", f"""  endpointSelector: {{matchLabels: {{pod: a}}}}
  egress: [{{toCIDR: ["{ip_of('y/a')}/32"]}}]"""), expect={T80: Reach().out_of("x/a", False)})]),
    Scenario("cnp-match-expressions-not-in", [Step(apply=cnp("notin", "y", """  endpointSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a, b]}]}
  ingress: [{fromEndpoints: [{matchExpressions: [{key: pod, operator: In, values: [a]}]}]}]"""),
        expect={T80: Reach().into("y/c", False).set("y/a", "y/c", True)})]),
    Scenario("cnp-any-protocol-port", [Step(apply=cnp("any", "z", """  endpointSelector: {}
  ingress: [{toPorts: [{ports: [{port: "80"}]}]}]"""), expect={
        T80: Reach(), U80: Reach(), T81: Reach().into("z/*", False),
        U81: Reach().into("z/*", False)})]),
    Scenario("cnp-deny-without-default-deny", [Step(apply=cnp("no-default", "x", """  endpointSelector: {}
  enableDefaultDeny: {ingress: false}
  ingressDeny: [{fromEndpoints: [{matchLabels: {pod: a}}]}]"""), expect={
        T80: Reach().set("x/a", "x/*", False)})]),
    Scenario("cnp-egress-to-namespace", [Step(apply=cnp("egress-y", "x", """  endpointSelector: {matchLabels: {pod: a}}
  egress: [{toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": y}}]}]"""),
        expect={T80: Reach().out_of("x/a", False).set("x/a", "y/*", True)})]),
    Scenario("ccnp-cluster-wide-egress-deny", [Step(apply=ccnp("no-z", """  endpointSelector: {}
  egressDeny: [{toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": z}}]}]
  enableDefaultDeny: {egress: false}"""), expect={T80: Reach().into("z/*", False)})]),
    Scenario("ccnp-all-namespaces-empty-selector", [Step(apply=ccnp("all-pods", """  endpointSelector: {matchLabels: {pod: c}}
  ingress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]"""), expect={
        T80: Reach().into("*/c", False).set("*/b", "*/c", True)})]),
    Scenario("np-and-cnp-on-one-pod-union", [Step(apply=X_A_FROM_X_B + cnp("plus", "x", """  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": z}}]}]"""),
        expect={T80: Reach().into("x/a", False).set("x/b", "x/a", True).set("z/*", "x/a", True)})]),
    Scenario("cnp-deny-added-mid-scenario", [
        Step(apply=cnp("allow", "y", """  endpointSelector: {}
  ingress: [{fromEntities: [cluster]}]"""), expect={T80: Reach()}),
        Step(apply=cnp("deny", "y", """  endpointSelector: {matchLabels: {pod: b}}
  ingressDeny: [{fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": x}}]}]"""),
             expect={T80: Reach().set("x/*", "y/b", False)}),
        Step(delete=cnp("deny", "y", "  endpointSelector: {}"), expect={T80: Reach()}),
    ]),
]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, dict[str, str]]]:
    name = unique_name()
    mb("lab", "up", "--name", name, "--pod-cidr", "10.202.0.0/24")
    lab = Lab(name, tmp_path_factory.mktemp("scenarios"))
    try:
        lab.apply(pods_yaml({ns: {"ns": ns} for ns in NAMESPACES},
                            [(ns, p, {"pod": p}) for ns in NAMESPACES for p in ("a", "b", "c")]))
        ips = {k: v["status"]["podIP"] for k, v in lab.pods().items()}
        yield lab, ips
    finally:
        mb("lab", "down", "--name", name, check=False)


def _fill(text: str, ips: dict[str, str]) -> str:
    for pod, ip in ips.items():
        text = text.replace("{" + pod + "}", ip)
    return text


def _matrix(got: dict[tuple[str, str], bool], want: dict[tuple[str, str], bool]) -> str:
    lines = ["from\\to " + " ".join(p.replace("/", "") for p in PODS)]
    for f in PODS:
        cells = []
        for t in PODS:
            g, w = got[(f, t)], want[(f, t)]
            cells.append((" . " if g else " X ") if g == w else (" !. " if g else " !X"))
        lines.append(f"{f:7} " + "".join(c[:3] for c in cells))
    return "\n".join(lines)


def _reset(lab: Lab) -> None:
    keys = [p["key"] for p in lab.node("policy", "list")]
    if keys:
        mb("policy", "delete", *keys, "--node", lab.name)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(farm: tuple[Lab, dict[str, str]], scenario: Scenario) -> None:
    lab, ips = farm
    try:
        for i, step in enumerate(scenario.steps):
            if step.apply:
                lab.apply(_fill(step.apply, ips))
            if step.delete:
                path = lab.tmp / "delete.yaml"
                path.write_text(_fill(step.delete, ips))
                lab("delete", "-f", str(path))
            if step.label_pod:
                lab("label", "pod", *step.label_pod)
            if step.label_ns:
                lab("label", "namespace", *step.label_ns)
            for (port, proto), reach in step.expect.items():
                got = lab.probe(port, proto, TIMEOUT)
                want = reach.table()
                assert got == want, (f"step {i} {port}/{proto}: '!' marks a wrong cell\n"
                                     + _matrix(got, want))
                # and policy trace agrees with the traffic, for every pair
                _check_trace(lab, got, port, proto)
    finally:
        _reset(lab)


def _check_trace(lab: Lab, got: dict[tuple[str, str], bool], port: int, proto: str) -> None:
    # the agent's API in process: 72 CLI runs per table would take longer than the traffic
    agent = Client(LabPaths(lab.name).agent_socket)
    for (f, t), connected in got.items():
        if f == t:
            continue
        res = agent.post("/v1/policy/trace", {"from": f, "to": t, "port": port,
                                               "protocol": proto})
        assert res["allowed"] == connected, (f, t, port, proto, res)


def test_scenario_count() -> None:
    assert len(SCENARIOS) >= 40

