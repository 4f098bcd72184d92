"""Policy through the agent and the CLI: import/list/get/delete, bad input changing nothing,
map writes counted as pods come, restarts, inspection, the identity label filter."""

from __future__ import annotations

from pathlib import Path

from labkit import Lab, mb, pods_yaml

POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {pod: a}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


def status(lab: Lab) -> dict:  # type: ignore[type-arg]
    return lab.node("status")  # type: ignore[no-any-return]


def test_policy_lifecycle_counts_writes_and_survives_restart(lab: Lab, tmp_path: Path) -> None:
    lab.apply(pods_yaml({"x": {}}, [("x", "a", {"pod": "a"})]))
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    out = mb("policy", "import", "-f", str(path), "--node", lab.name)
    assert "CiliumNetworkPolicy x/b-from-a imported" in out.stdout
    assert [p["key"] for p in lab.node("policy", "list")] == ["CiliumNetworkPolicy x/b-from-a"]
    got = mb("policy", "get", "CiliumNetworkPolicy", "x/b-from-a", "--node", lab.name).stdout
    assert "endpointSelector" in got

    w0 = status(lab)["policy_writes"]
    lab.apply(pods_yaml({"x": {}}, [("x", "b", {"pod": "b"})]))
    w1 = status(lab)["policy_writes"]
    # the first pod of identity pod=b: default deny, host allow, and the entry for pod=a
    assert w1 - w0 == 3
    lab.apply(pods_yaml({"x": {}}, [("x", "b2", {"pod": "b"})]))
    assert status(lab)["policy_writes"] == w1, "a pod of an existing identity writes no policy"

    reach = lab.probe(80, "TCP", 1.0)
    assert reach[("x/a", "x/b")] and reach[("x/a", "x/b2")]
    assert not reach[("x/b", "x/b2")] and not reach[("x/b2", "x/b")]

    eps = {e["pod"]: e for e in lab.node("endpoint", "list")}
    b = lab.node("endpoint", "get", str(eps["x/b"]["id"]))
    assert b["policy_enforcement"] == {"ingress": True, "egress": False}
    assert "k8s:pod=b" in b["identity_labels"]
    entries = lab.node("bpf", "policy", "list", str(eps["x/b"]["id"]))
    allow = [e for e in entries if e["verdict"] == "allow" and e["port"] == 80]
    assert allow and allow[0]["peer"] == eps["x/a"]["identity"]
    assert allow[0]["policy"] == "CiliumNetworkPolicy x/b-from-a"
    ids = {i["id"]: i for i in lab.node("identity", "list")}
    assert ids[eps["x/b"]["identity"]]["refcount"] == 2

    lab("restart-agent")
    st = status(lab)
    assert st["restore"]["policy_writes"] == 0, "nothing to repair after a clean restart"
    assert [p["key"] for p in lab.node("policy", "list")] == ["CiliumNetworkPolicy x/b-from-a"]
    reach = lab.probe(80, "TCP", 1.0)
    assert reach[("x/a", "x/b")] and not reach[("x/b2", "x/b")]

    out = mb("policy", "delete", "CiliumNetworkPolicy", "x/b-from-a", "--node", lab.name)
    assert "deleted" in out.stdout
    assert all(lab.probe(80, "TCP", 1.0).values())
    assert lab.node("bpf", "policy", "list", str(eps["x/b"]["id"])) == []


def test_bad_policy_is_rejected_with_its_field_and_nothing_applied(lab: Lab,
                                                                  tmp_path: Path) -> None:
    lab.apply(pods_yaml({"x": {}}, [("x", "a", {"pod": "a"})]))
    good = POLICY
    bad = POLICY.replace("b-from-a", "broken").replace('port: "80"', 'port: "99999"')
    path = tmp_path / "two.yaml"
    path.write_text(good + "---\n" + bad)
    res = mb("policy", "import", "-f", str(path), "--node", lab.name, check=False)
    assert res.returncode != 0
    assert res.stderr.strip() == (
        f"membrane: {path}: document 2 (CiliumNetworkPolicy x/broken): "
        "spec.ingress[0].toPorts[0].ports[0].port: 99999 is out of range 0-65535")
    assert lab.node("policy", "list") == [], "all or nothing: the good one is not applied"
    res = lab.apply(good + "---\n" + bad, check=False)
    assert res.returncode != 0 and "spec.ingress[0].toPorts[0].ports[0].port" in res.stderr
    assert lab.node("policy", "list") == []
    res = mb("policy", "trace", "--from", "x/a", "--to", "nowhere/pod", "--port", "80",
             "--node", lab.name, check=False)
    assert res.returncode != 0 and "--to" in res.stderr


def test_high_cardinality_labels_stay_out_of_identities(lab: Lab) -> None:
    lab.apply(pods_yaml({"x": {}}, [("x", "a1", {"app": "web", "pod-template-hash": "111"}),
                                    ("x", "a2", {"app": "web", "pod-template-hash": "222"})]))
    eps = {e["pod"]: e for e in lab.node("endpoint", "list")}
    assert eps["x/a1"]["identity"] == eps["x/a2"]["identity"]
    assert not any("pod-template-hash" in lbl for lbl in eps["x/a1"]["identity_labels"])
