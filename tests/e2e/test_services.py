"""Service load-balancing on a lab, over real traffic: ClusterIP over TCP and UDP, NodePort from
the world namespace, backends following pods, session affinity, hairpin, zero backends, a
terminating backend mid-traffic, policy on the backend, restarts, bad specs."""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from labkit import Lab, mb, pods_yaml

from membrane.datapath import netns

SERVICE_CIDR = IPv4Network("10.96.0.0/16")


def ns_path(lab: Lab, pod: str) -> str:
    ns, name = pod.split("/")
    return f"/run/netns/mb-{lab.name}.{ns}.{name}"


def sock_in(path: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    with netns.inside(path):
        s = socket.socket(socket.AF_INET, kind)
    s.settimeout(3)
    return s


def ask(path: str, ip: str, port: int, proto: str = "TCP") -> str:
    """The backend's NS/NAME (the lab's echo servers answer `hostname`)."""
    s = sock_in(path, socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM)
    try:
        s.connect((ip, port))
        s.sendall(b"hostname\n")
        if proto == "TCP":
            return s.recv(200).decode().strip()
        for _ in range(5):  # a lost datagram is not a refusal
            try:
                return s.recv(200).decode().strip()
            except TimeoutError:
                s.sendall(b"hostname\n")
        raise TimeoutError
    finally:
        s.close()


def spread(path: str, ip: str, port: int, n: int = 30,
           proto: str = "TCP") -> collections.Counter[str]:
    return collections.Counter(ask(path, ip, port, proto) for _ in range(n))


def services(lab: Lab) -> dict[str, dict]:  # type: ignore[type-arg]
    items = json.loads(lab("get", "services", "-o", "json").stdout)["items"]
    return {f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in items}


def service_yaml(name: str, selector: dict[str, str], ports: list[dict], **spec: object) -> str:  # type: ignore[type-arg]
    return json.dumps({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": name, "namespace": "default"},
                       "spec": {"selector": selector, "ports": ports, **spec}})


PODS = pods_yaml({}, [("default", "be-0", {"app": "be", "pod": "be-0"}),
                      ("default", "be-1", {"app": "be", "pod": "be-1"}),
                      ("default", "client", {"pod": "client"})], ports=(80,))


def test_clusterip_nodeport_backends_follow_pods(lab: Lab) -> None:
    lab.apply(PODS)
    lab.apply(service_yaml("web", {"app": "be"}, [
        {"name": "http", "port": 8080, "targetPort": "tcp-80"},
        {"name": "dns", "port": 53, "targetPort": 80, "protocol": "UDP"},
    ], type="NodePort"))
    svc = services(lab)["default/web"]
    cip = svc["spec"]["clusterIP"]
    assert IPv4Address(cip) in SERVICE_CIDR
    node_port = svc["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    client = ns_path(lab, "default/client")

    # ClusterIP over TCP and UDP: both backends get connections.
    assert set(spread(client, cip, 8080)) == {"default/be-0", "default/be-1"}
    assert set(spread(client, cip, 53, proto="UDP")) == {"default/be-0", "default/be-1"}
    # NodePort from the world namespace (through bpf_host on the node's external interface).
    world = f"/run/netns/mb-{lab.name}.ext"
    got = spread(world, "192.0.2.1", node_port, 20)
    assert set(got) <= {"default/be-0", "default/be-1"} and sum(got.values()) == 20
    # The maps show the frontends, their slots and the shared backends.
    maps = lab.node("bpf", "lb", "list")
    fronts = {(e["frontend"], e["slot"]) for e in maps["services"]}
    assert (f"{cip}:8080", 0) in fronts and (f"{cip}:8080", 2) in fronts
    assert (f"192.0.2.1:{node_port}", 0) in fronts
    assert len(maps["backends"]) == 2 + 2  # be-0/be-1 on 80, once for TCP and once for UDP

    # A label change takes be-1 out; a new pod comes in.
    lab("label", "pod", "default/be-1", "app=other")
    assert set(spread(client, cip, 8080, 15)) == {"default/be-0"}
    lab.apply(pods_yaml({}, [("default", "be-2", {"app": "be"})], ports=(80,)))
    assert set(spread(client, cip, 8080)) == {"default/be-0", "default/be-2"}

    # Restart: services come back from the journal with the same reverse-NAT indexes.
    before = {e["frontend"]: e["rev_nat"] for e in maps["reverse_nat"]}
    lab("restart-agent")
    after = {e["frontend"]: e["rev_nat"] for e in lab.node("bpf", "lb", "list")["reverse_nat"]}
    assert before == after
    assert set(spread(client, cip, 8080)) == {"default/be-0", "default/be-2"}

    # Zero backends: refused at once (ICMP unreachable from the datapath), reason 158.
    lab("delete", "-f", _write(lab, pods_yaml({}, [("default", "be-0", {}), ("default", "be-2",
                                                                            {})], ports=(80,))))
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        ask(client, cip, 8080)
    assert time.monotonic() - t0 < 2.5  # not a connect timeout (the socket's is 3 s)
    drops = mb("observe", "--node", lab.name, "--verdict", "DROPPED", "-o", "json").stdout
    assert any(json.loads(line)["flow"].get("drop_reason") == 158
               for line in drops.splitlines() if line.strip())
    lab("delete", "-f", _write(lab, service_yaml("web", {}, [{"port": 1}])))
    assert "default/web" not in services(lab)
    assert lab.node("bpf", "lb", "list")["services"] == []


def _write(lab: Lab, text: str) -> str:
    path = lab.tmp / f"d{time.monotonic_ns()}.yaml"
    path.write_text(text)
    return str(path)


def test_affinity_hairpin_and_policy_on_backends(lab: Lab) -> None:
    lab.apply(PODS + "\n---\n" + pods_yaml({}, [("default", "front", {"role": "frontend"})],
                                           ports=(80,)))
    lab.apply("\n---\n".join([
        service_yaml("sticky", {"app": "be"}, [{"port": 80, "targetPort": 80}],
                     sessionAffinity="ClientIP"),
        *(service_yaml(f"s-default-{p}", {"pod": p}, [{"port": 80, "targetPort": 80}])
          for p in ("be-0", "be-1")),
    ]))
    svcs = services(lab)
    client = ns_path(lab, "default/client")
    sticky = svcs["default/sticky"]["spec"]["clusterIP"]
    assert svcs["default/sticky"]["spec"]["sessionAffinity"] == "ClientIP"
    assert len(spread(client, sticky, 80, 20)) == 1
    assert lab.node("bpf", "lb", "list")["affinity"]

    # Hairpin: a pod reaches itself through its own service.
    own = svcs["default/s-default-be-0"]["spec"]["clusterIP"]
    assert spread(ns_path(lab, "default/be-0"), own, 80, 5) == {"default/be-0": 5}

    # Policy sees the backend: its identity and target port decide, not the frontend's.
    lab.apply("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: be-from-front, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: be}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""")
    res = lab.probe(80, "TCP", 1.0, "--service", "--from", "default/client", "--from",
                    "default/front", "--to", "default/be-0", "--to", "default/be-1")
    assert res == {("default/client", "default/be-0"): False,
                   ("default/client", "default/be-1"): False,
                   ("default/front", "default/be-0"): True,
                   ("default/front", "default/be-1"): True}
    out = json.loads(lab("probe", "--port", "80", "--service", "--to", "default/client",
                         "-o", "json", check=False).stdout or "{}")
    assert out == {}  # no service s-default-client: an error, not a verdict


def test_terminating_backend_and_explicit_services(lab: Lab) -> None:
    lab.apply(PODS)
    ips = {k: v["status"]["podIP"] for k, v in lab.pods().items()}
    node = ("--node", lab.name)
    mb("service", "create", "default/ext", "--cluster-ip", "10.96.5.5", "--port", "http:80",
       "--backend", ips["default/be-0"], "--backend", ips["default/be-1"], *node)
    listed = lab.node("service", "list")
    assert [s["name"] for s in listed] == ["ext"]
    client = ns_path(lab, "default/client")
    # A long-lived connection and the backend it landed on.
    conn = sock_in(client)
    conn.connect(("10.96.5.5", 80))
    conn.sendall(b"hostname\n")
    first = conn.recv(200).decode().strip()
    other = ({"default/be-0", "default/be-1"} - {first}).pop()
    term = ips[first]
    keep = ips[other]
    mb("service", "update", "default/ext", "--cluster-ip", "10.96.5.5", "--port", "http:80",
       "--backend", f"{term}@terminating", "--backend", keep, *node)
    backends = {b["address"]: b["state"] for b in lab.node("bpf", "lb", "list")["backends"]}
    assert backends == {f"{term}:80": "terminating", f"{keep}:80": "active"}
    # New connections avoid it; the existing one keeps working with it.
    assert set(spread(client, "10.96.5.5", 80, 20)) == {other}
    for _ in range(3):
        conn.sendall(b"hostname\n")
        assert conn.recv(200).decode().strip() == first
    conn.close()
    # create refuses an existing service, update a missing one, delete names what is missing.
    assert mb("service", "create", "default/ext", "--cluster-ip", "10.96.5.5", "--port", "80",
              *node, check=False).returncode != 0
    assert mb("service", "update", "default/nope", "--cluster-ip", "10.96.5.6", "--port", "80",
              *node, check=False).returncode != 0
    mb("service", "delete", "default/ext", *node)
    assert lab.node("service", "list") == []
    assert lab.node("bpf", "lb", "list")["backends"] == []


@pytest.mark.parametrize(("ports", "spec", "message"), [
    ([{"name": "a", "port": 80, "targetPort": 80}, {"name": "b", "port": 80, "targetPort": 81}],
     {}, "spec.ports[1]"),
    ([{"port": 80, "targetPort": "nope"}], {}, "targetPort"),
    ([{"port": 80}], {"clusterIP": "10.97.0.1"}, "spec.clusterIP"),
    ([{"port": 70000}], {}, "spec.ports[0].port"),
])
def test_bad_service_specs_change_nothing(lab: Lab, ports: list, spec: dict,  # type: ignore[type-arg]
                                          message: str) -> None:
    lab.apply(PODS)
    bad = service_yaml("good", {"app": "be"}, [{"port": 90, "targetPort": 80}]) + "\n---\n" + \
        service_yaml("bad", {"app": "be"}, ports, **spec)
    proc = lab.apply(bad, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert services(lab) == {}
    assert lab.node("service", "list") == []


def test_agent_rejects_malformed_services(lab: Lab) -> None:
    node = ("--node", lab.name)
    cases = [
        ({"namespace": "default", "name": "a", "cluster_ip": "10.96.0.1",
          "ports": [{"port": 80, "protocol": "SCTP"}]}, "protocol"),
        ({"namespace": "default", "name": "a", "cluster_ip": "not-an-ip",
          "ports": [{"port": 80}]}, "cluster_ip"),
        ({"namespace": "default", "name": "a", "cluster_ip": "10.96.0.1", "ports": [{"port": 80}],
          "colour": "red"}, "colour"),
        ({"namespace": "Default", "name": "a", "cluster_ip": "10.96.0.1",
          "ports": [{"port": 80}]}, "namespace"),
    ]
    for svc, where in cases:
        proc = mb("service", "create", "-f", "-", *node, input_=json.dumps(svc), check=False)
        assert proc.returncode != 0 and where in proc.stderr, proc.stderr
    # Two services on one frontend: the second is refused whole.
    ok = {"namespace": "default", "name": "a", "cluster_ip": "10.96.0.1", "ports": [{"port": 80}]}
    mb("service", "create", "-f", "-", *node, input_=json.dumps(ok))
    clash = [{"namespace": "default", "name": "b", "cluster_ip": "10.96.0.2",
              "ports": [{"port": 80}]},
             {"namespace": "default", "name": "c", "cluster_ip": "10.96.0.1",
              "ports": [{"port": 80}]}]
    proc = mb("service", "create", "-f", "-", *node, input_=json.dumps(clash), check=False)
    assert proc.returncode != 0 and "10.96.0.1:80/TCP is already a frontend of service " \
        "default/a" in proc.stderr, proc.stderr
    assert [s["name"] for s in lab.node("service", "list")] == ["a"]
    with contextlib.suppress(Exception):
        mb("service", "delete", "default/a", *node)


NODE_CLIENT = r"""
import json, socket, sys
cip, tport, uport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = {"cgroup": open("/proc/self/cgroup").read().strip()}
t = socket.create_connection((cip, tport), timeout=3)
t.sendall(b"hostname\n")
out["tcp"] = {"peer": list(t.getpeername()), "who": t.recv(200).decode().strip()}
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
for _ in range(5):
    u.sendto(b"hostname\n", (cip, uport))
    try:
        data, src = u.recvfrom(200)
        break
    except TimeoutError:
        pass
out["udp"] = {"from": list(src), "who": data.decode().strip()}
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect((cip, uport))
out["udp_connected_peer"] = list(c.getpeername())
print(json.dumps(out))
"""


def test_socket_lb_from_the_node_namespace(lab: Lab) -> None:
    """Processes in the node's cgroup reach services through socket-LB: connect() and
    sendmsg() go to a backend, getpeername() and recvmsg() show the frontend."""
    lab.apply(PODS)
    lab.apply(service_yaml("web", {"app": "be"}, [
        {"name": "http", "port": 8080, "targetPort": 80},
        {"name": "dns", "port": 53, "targetPort": 80, "protocol": "UDP"},
    ]))
    cip = services(lab)["default/web"]["spec"]["clusterIP"]
    cgroup = json.loads(Path(f"/run/membrane/lab/{lab.name}/lab.json").read_text())["cgroup"]
    assert Path(cgroup).is_dir() and Path(cgroup).name == f"membrane.{lab.name}"
    assert lab.node("status")["load_balancer"]["socket_lb_cgroup"] == cgroup
    seen = collections.Counter()
    for _ in range(6):
        out = json.loads(lab("exec", "node", "--", sys.executable, "-c", NODE_CLIENT, cip,
                             "8080", "53").stdout)
        assert out["cgroup"].endswith(f"/membrane.{lab.name}")
        assert out["tcp"]["peer"] == [cip, 8080]
        assert out["udp"]["from"] == [cip, 53]
        assert out["udp_connected_peer"] == [cip, 53]
        assert out["tcp"]["who"] in ("default/be-0", "default/be-1")
        seen[out["tcp"]["who"]] += 1
        seen[out["udp"]["who"]] += 1
    assert set(seen) == {"default/be-0", "default/be-1"}  # a backend per connection

    # The same program in the node namespace but outside the cgroup gets no translation.
    plain = subprocess.run(["ip", "netns", "exec", f"mb-{lab.name}.node", sys.executable, "-c",
                            NODE_CLIENT, cip, "8080", "53"], capture_output=True, text=True,
                           timeout=30)
    assert plain.returncode != 0

    # A process left in the node's cgroup is ended by `lab down`, and the cgroup removed.
    sleeper = subprocess.Popen([sys.executable, "-m", "membrane", "lab", "exec", "--name",
                                lab.name, "node", "--", "sleep", "300"])
    try:
        deadline = time.monotonic() + 10
        while not (Path(cgroup) / "cgroup.procs").read_text().split():
            assert time.monotonic() < deadline, "lab exec node did not join the cgroup"
            time.sleep(0.05)
        mb("lab", "down", "--name", lab.name)
        assert sleeper.wait(timeout=10) != 0
        assert not Path(cgroup).exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
