"""The lab node with real traffic: connectivity, agent restarts, clean teardown, bad input."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from labkit import Lab, mb, pods_yaml, unique_name

from membrane.datapath import netns
from membrane.lab import node as labnode
from membrane.lab.node import LabPaths

XYZ = {"x": {"ns": "x"}, "y": {"ns": "y"}}
PODS = [("x", "a", {"pod": "a"}), ("x", "b", {"pod": "b"}), ("y", "a", {"pod": "a"})]


def test_pods_reach_each_other_over_tcp_and_udp(lab: Lab) -> None:
    lab.apply(pods_yaml(XYZ, PODS))
    pods = lab.pods()
    assert set(pods) == {"x/a", "x/b", "y/a"}
    ips = {p["status"]["podIP"] for p in pods.values()}
    assert len(ips) == 3
    for port in (80, 81):
        for proto in ("TCP", "UDP"):
            matrix = lab.probe(port, proto)
            assert len(matrix) == 9
            assert all(matrix.values()), (port, proto, matrix)


def test_unserved_port_is_refused(lab: Lab) -> None:
    lab.apply(pods_yaml(XYZ, PODS[:2]))
    matrix = lab.probe(9999, "TCP", 0.5)
    assert matrix[("x/a", "x/b")] is False


def test_endpoints_show_in_cli_and_maps(lab: Lab) -> None:
    lab.apply(pods_yaml(XYZ, PODS[:2]))
    eps = lab.node("endpoint", "list")
    assert sorted(e["pod"] for e in eps) == ["x/a", "x/b"]
    in_map = {e["ip"] for e in lab.node("bpf", "endpoint", "list")}
    assert in_map == {e["ipv4"] for e in eps}
    cache = {c["prefix"]: c["identity"] for c in lab.node("bpf", "ipcache", "list")}
    for e in eps:
        assert cache[f"{e['ipv4']}/32"] == e["identity"]
    assert cache["0.0.0.0/0"] == 2
    lab.probe(80, "TCP")
    ct = lab.node("bpf", "ct", "list")
    assert ct, "a connection leaves a conntrack entry"
    metrics = lab.node("bpf", "metrics", "list")
    assert sum(m["packets"] for m in metrics if m["verdict"].lower().startswith("forward")) > 0


def test_pod_reaches_the_world_and_the_world_reaches_the_pod(lab: Lab) -> None:
    lab.apply(pods_yaml(XYZ, PODS[:1]))
    ip = lab.pods()["x/a"]["status"]["podIP"]
    ext = LabPaths(lab.name).ext_ns
    ping = subprocess.run(["ip", "netns", "exec", ext, "ping", "-c", "1", "-W", "2", ip],
                          capture_output=True, text=True, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    out = lab("exec", "x/a", "--", "ping", "-c", "1", "-W", "2", "198.51.100.1", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_label_changes_give_a_new_identity(lab: Lab) -> None:
    lab.apply(pods_yaml(XYZ, PODS[:2]))
    before = {e["pod"]: e["identity"] for e in lab.node("endpoint", "list")}
    assert before["x/a"] != before["x/b"]
    lab("label", "pod", "x/a", "pod=b")
    after = {e["pod"]: e["identity"] for e in lab.node("endpoint", "list")}
    assert after["x/a"] == after["x/b"], "same labels, same identity"
    lab("label", "namespace", "x", "team=blue")
    eps = {e["pod"]: e for e in lab.node("endpoint", "list")}
    assert eps["x/a"]["namespace_labels"]["team"] == "blue"
    assert eps["x/a"]["identity"] != after["x/a"]


def test_open_tcp_connection_survives_agent_restart(lab: Lab) -> None:
    lab.apply(pods_yaml(XYZ, PODS[:2]))
    pods = lab.pods()
    server_ip = pods["x/b"]["status"]["podIP"]
    with netns.inside(LabPaths(lab.name).pod_ns("x", "a")):
        conn = socket.create_connection((server_ip, 80), timeout=3)
    try:
        def roundtrip(msg: bytes) -> bytes:
            conn.sendall(msg)
            return conn.recv(1024)

        assert roundtrip(b"before") == b"before"
        ids_before = {e["pod"]: e["id"] for e in lab.node("endpoint", "list")}
        lab("restart-agent")
        assert roundtrip(b"after") == b"after"
        ids_after = {e["pod"]: e["id"] for e in lab.node("endpoint", "list")}
        assert ids_after == ids_before, "endpoint ids are stable across restarts"
        status = lab.node("status")
        assert status["restore"]["restored"] == 2
        assert status["restore"]["reattached"] == 0, "nothing to repair after a clean restart"
        assert status["restore"]["map_writes"] == 0
    finally:
        conn.close()
    # Still reachable for new connections after the restart.
    assert lab.probe(80, "TCP")[("x/a", "x/b")]


def test_bad_manifest_changes_nothing(lab: Lab) -> None:
    lab.apply(pods_yaml(XYZ, PODS[:1]))
    bad = pods_yaml(XYZ, PODS[1:2]).replace('"containerPort": 80', '"containerPort": 70000')
    out = lab.apply(bad, check=False)
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "containerPort" in err[0] and "70000" in err[0]
    assert set(lab.pods()) == {"x/a"}


def test_pod_in_unknown_namespace_is_rejected(lab: Lab) -> None:
    out = lab.apply(pods_yaml({}, [("nope", "a", {})]), check=False)
    assert out.returncode == 1
    assert 'namespace "nope" not found' in out.stderr
    assert lab.pods() == {}


def test_deleting_pods_frees_their_namespace_and_endpoint(lab: Lab) -> None:
    text = pods_yaml(XYZ, PODS[:2])
    lab.apply(text)
    path = Path(lab.tmp / "del.yaml")
    path.write_text(text)
    lab("delete", "-f", str(path))
    assert lab.pods() == {}
    assert lab.node("endpoint", "list") == []
    assert not netns.list_names(LabPaths(lab.name).ns_prefix + "x.")


def _leftovers(name: str) -> list[str]:
    paths = LabPaths(name)
    left = [f"netns {n}" for n in netns.list_names(paths.ns_prefix)]
    if (Path("/sys/fs/bpf/membrane") / name).exists():
        left.append("pins")
    if paths.dir.exists():
        left.append("state dir")
    if paths.agent_socket.exists():
        left.append("socket")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    left += [p for p in ps.splitlines() if f"--node {name} " in p + " "
             or (f"--name {name} " in p + " " and "runtime" in p)]
    return left


def test_lab_down_leaves_nothing_behind(tmp_path: Path) -> None:
    name = unique_name()
    mb("lab", "up", "--name", name, "--pod-cidr", "10.202.0.0/24")
    try:
        Lab(name, tmp_path).apply(pods_yaml(XYZ, PODS[:2]))
    finally:
        mb("lab", "down", "--name", name)
    assert _leftovers(name) == []


def test_failed_lab_up_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique_name()
    real = labnode.agent_argv

    def broken(state: dict[str, object]) -> list[str]:
        return [*real(state), "--bpf-dir", "/nonexistent-membrane-bpf"]

    monkeypatch.setattr(labnode, "agent_argv", broken)
    with pytest.raises(Exception, match="agent exited during start"):
        labnode.up(name, "10.203.0.0/24")
    assert _leftovers(name) == []


def test_two_labs_coexist(tmp_path: Path, lab: Lab) -> None:
    other = Lab(unique_name(), tmp_path)
    mb("lab", "up", "--name", other.name, "--pod-cidr", "10.201.0.0/24")
    try:
        lab.apply(pods_yaml(XYZ, PODS[:2]))
        other.apply(pods_yaml(XYZ, PODS[:2]))
        assert all(lab.probe(80).values())
        assert all(other.probe(80).values())
        assert lab.pods()["x/a"]["status"]["podIP"] == other.pods()["x/a"]["status"]["podIP"]
    finally:
        mb("lab", "down", "--name", other.name, check=False)


def test_second_lab_up_with_same_name_is_a_conflict(lab: Lab) -> None:
    out = mb("lab", "up", "--name", lab.name, check=False)
    assert out.returncode == 1 and "already up" in out.stderr


def test_probe_covers_every_pair_of_nine_pods(lab: Lab) -> None:
    pods = [(ns, p, {}) for ns in ("x", "y", "z") for p in ("a", "b", "c")]
    lab.apply(pods_yaml({"x": {}, "y": {}, "z": {}}, pods, ports=(80,)))
    served = lab.probe(80, "TCP", 1.0)
    assert len(served) == 81 and all(served.values())
    unserved = lab.probe(81, "TCP", 1.0)  # nothing listens on 81: refused
    assert len(unserved) == 81 and not any(unserved.values())
