"""Flow visibility over real traffic on the lab: `membrane observe` (every filter, each output
format, JSON validated against the schema in the repo), `monitor`, metrics, export, and loss
accounting under an event storm."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from labkit import Lab, mb, pods_yaml, unique_name
from prometheus_client.parser import text_string_to_metric_families

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "src/membrane/flows/"
                     "flow.schema.json").read_text())
POLICIES = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-from-frontend, namespace: shop}
spec:
  endpointSelector: {matchLabels: {role: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "80", protocol: UDP}]}]
  - fromEndpoints: [{matchLabels: {role: frontend}}]
    icmps: [{fields: [{type: 8}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-other, namespace: shop}
spec:
  endpointSelector: {matchLabels: {role: backend}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {role: other}}]
"""
PODS = [("shop", "frontend", {"role": "frontend"}), ("shop", "backend", {"role": "backend"}),
        ("shop", "other", {"role": "other"}), ("shop", "stranger", {"role": "stranger"})]


def observe(lab: Lab, *args: str) -> list[dict[str, Any]]:
    out = mb("observe", "--node", lab.name, "-o", "json", *args).stdout
    flows = [json.loads(line) for line in out.splitlines() if line.strip()]
    for f in flows:
        jsonschema.validate(f, SCHEMA)
    return flows


def wait_for(fn: Callable[[], list[Any]], what: str, timeout: float = 10.0) -> list[Any]:
    """Flows reach the agent asynchronously (within milliseconds): poll until they are there."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            assert got, f"no {what}"
            return got
        time.sleep(0.1)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab for the read-only tests of this module: pods, policies, and traffic of every
    kind (allowed, explicitly denied, default denied; TCP, UDP, ICMP)."""
    name = unique_name()
    mb("lab", "up", "--name", name, "--pod-cidr", "10.203.0.0/24")
    try:
        yield _shop(Lab(name, tmp_path_factory.mktemp("shop")))
    finally:
        mb("lab", "down", "--name", name, check=False)


def _shop(lab: Lab) -> Lab:
    lab.apply(pods_yaml({"shop": {}}, PODS, ports=(80,)))
    lab.apply(POLICIES)
    for src in ("frontend", "other", "stranger"):
        for proto in ("TCP", "UDP"):
            lab("probe", "--from", f"shop/{src}", "--to", "shop/backend", "--port", "80",
                "--protocol", proto, "--timeout", "0.5", "-o", "json")
    backend_ip = lab.pods()["shop/backend"]["status"]["podIP"]
    lab("exec", "shop/frontend", "--", "ping", "-c", "1", "-W", "1", backend_ip)
    wait_for(lambda: observe(lab, "--type", "policy-verdict", "--from-pod", "shop/stranger"),
             "verdicts yet")
    return lab


def f_(flow: dict[str, Any]) -> dict[str, Any]:
    return flow["flow"]  # type: ignore[no-any-return]


def test_verdicts_name_the_policies_that_decided(shop: Lab) -> None:
    verdicts = observe(shop, "--type", "policy-verdict", "--to-pod", "shop/backend",
                       "--protocol", "tcp")
    by_src = {f_(v)["source"]["pod_name"]: f_(v) for v in verdicts}
    allowed = by_src["frontend"]
    assert allowed["verdict"] == "FORWARDED" and allowed["traffic_direction"] == "INGRESS"
    assert allowed["ingress_allowed_by"] == [{"name": "backend-from-frontend",
                                              "namespace": "shop",
                                              "kind": "CiliumNetworkPolicy"}]
    assert "k8s:role=frontend" in allowed["source"]["labels"]
    assert allowed["destination"]["namespace"] == "shop"
    assert allowed["l4"]["TCP"]["destination_port"] == 80
    assert allowed["policy_match_type"] == 2  # L3-L4
    deny = by_src["other"]
    assert deny["verdict"] == "DROPPED" and deny["drop_reason_desc"] == "POLICY_DENY"
    assert deny["ingress_denied_by"] == [{"name": "deny-other", "namespace": "shop",
                                          "kind": "CiliumNetworkPolicy"}]
    default = by_src["stranger"]
    assert default["verdict"] == "DROPPED" and default["drop_reason_desc"] == "POLICY_DENIED"
    assert "ingress_denied_by" not in default and "ingress_allowed_by" not in default

    drops = observe(shop, "--type", "drop", "--to-pod", "shop/backend")
    reasons = {f_(d)["source"]["pod_name"]: f_(d)["drop_reason"] for d in drops}
    assert reasons == {"other": 181, "stranger": 133}
    assert all(f_(d)["event_type"] == {"type": 1, "sub_type": f_(d)["drop_reason"]}
               for d in drops)


def test_replies_udp_and_icmp_are_traced(shop: Lab) -> None:
    replies = observe(shop, "--type", "trace", "--from-pod", "shop/backend",
                      "--protocol", "tcp")
    assert any(f_(r)["is_reply"] and f_(r)["l4"]["TCP"]["flags"] == {"SYN": True, "ACK": True}
               and f_(r)["destination"]["pod_name"] == "frontend" for r in replies)
    udp = observe(shop, "--protocol", "udp", "--from-pod", "shop/frontend", "--to-pod",
                  "shop/backend", "--verdict", "FORWARDED")
    assert udp and all("UDP" in f_(u)["l4"] and f_(u)["Summary"] == "UDP" for u in udp)
    udp_replies = observe(shop, "--protocol", "udp", "--from-pod", "shop/backend",
                          "--type", "trace")
    assert any(f_(u)["is_reply"] for u in udp_replies)
    icmp = observe(shop, "--protocol", "icmp", "--from-pod", "shop/frontend")
    assert any(f_(i)["l4"] == {"ICMPv4": {"type": 8}} and
               f_(i)["Summary"] == "ICMPv4 EchoRequest" for i in icmp)


def test_every_filter_keeps_only_what_it_names(shop: Lab) -> None:
    everything = observe(shop)
    assert len(everything) > 10
    ids = {f_(x)["source"]["pod_name"]: f_(x)["source"]["identity"] for x in everything
           if f_(x)["source"].get("pod_name")}

    def ends(x: dict[str, Any]) -> list[dict[str, Any]]:
        return [f_(x)["source"], f_(x)["destination"]]

    checks: list[tuple[list[str], Callable[[dict[str, Any]], bool]]] = [
        (["--verdict", "DROPPED"], lambda x: f_(x)["verdict"] == "DROPPED"),
        (["--verdict", "FORWARDED"], lambda x: f_(x)["verdict"] == "FORWARDED"),
        (["--from-pod", "shop/oth"], lambda x: f_(x)["source"].get("pod_name") == "other"),
        (["--to-pod", "shop/frontend"],
         lambda x: f_(x)["destination"].get("pod_name") == "frontend"),
        (["--pod", "shop/stranger"],
         lambda x: "stranger" in (e.get("pod_name") for e in ends(x))),
        (["--namespace", "shop"], lambda x: "shop" in (e.get("namespace") for e in ends(x))),
        (["--from-label", "role=other"], lambda x: "k8s:role=other" in f_(x)["source"]["labels"]),
        (["--to-label", "k8s:role=backend"],
         lambda x: "k8s:role=backend" in f_(x)["destination"]["labels"]),
        (["--label", "role=frontend"],
         lambda x: any("k8s:role=frontend" in e["labels"] for e in ends(x))),
        (["--to-label", "role=backend,!app"],
         lambda x: "k8s:role=backend" in f_(x)["destination"]["labels"] and
         not any(lb.startswith("k8s:app=") for lb in f_(x)["destination"]["labels"])),
        (["--port", "80"], lambda x: 80 in (f_(x)["l4"].get(p, {}).get(k) for p in ("TCP", "UDP")
                                            for k in ("source_port", "destination_port"))),
        (["--protocol", "udp"], lambda x: "UDP" in f_(x)["l4"]),
        (["--identity", str(ids["other"])],
         lambda x: ids["other"] in (e["identity"] for e in ends(x))),
        (["--type", "trace"], lambda x: f_(x)["event_type"]["type"] == 4),
        (["--type", "drop", "--type", "policy-verdict"],
         lambda x: f_(x)["event_type"]["type"] in (1, 5)),
        (["--since", "1h"], lambda x: True),
    ]
    for args, holds in checks:
        got = observe(shop, *args)
        assert got, f"{args} matched nothing"
        assert len(got) < len(everything) or args == ["--since", "1h"] or \
            args == ["--namespace", "shop"], f"{args} filtered nothing"
        bad = [x for x in got if not holds(x)]
        assert not bad, (args, bad[:2])
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert observe(shop, "--since", future) == []
    assert observe(shop, "--last", "3") == everything[-3:]
    bad = mb("observe", "--node", shop.name, "--verdict", "MAYBE", check=False)
    assert bad.returncode != 0 and "--verdict" in bad.stderr and "MAYBE" in bad.stderr
    bad = mb("observe", "--node", shop.name, "--port", "70000", check=False)
    assert bad.returncode != 0 and "--port" in bad.stderr


def test_compact_and_policy_log_outputs(shop: Lab) -> None:
    compact = mb("observe", "--node", shop.name, "--from-pod", "shop/other", "--type",
                 "drop").stdout.splitlines()
    assert compact and all("shop/other:" in line and "-> shop/backend:80" in line and
                           "DROPPED" in line for line in compact)
    assert any("Policy denied by denylist" in line and "(ID:" in line for line in compact)
    log = mb("observe", "--node", shop.name, "-o", "policy").stdout.splitlines()
    assert any(line.endswith(": allow: role=frontend -> role=backend") for line in log), log
    assert any(line.endswith(": deny: role=other -> role=backend") for line in log), log
    assert any(line.endswith(": deny: role=stranger -> role=backend") for line in log), log
    assert all(line[2] == ":" and line[5] == ":" for line in log)  # HH:MM:SS: ...


def _reader(argv: list[str]) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    proc = subprocess.Popen([sys.executable, "-m", "membrane", *argv], stdout=subprocess.PIPE,
                            text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return proc, lines, t


def test_follow_and_monitor_stream_new_events(shop: Lab) -> None:
    follow, flines, _ = _reader(["observe", "--node", shop.name, "--follow", "-o", "policy",
                                 "--from-pod", "shop/other"])
    monitor, mlines, _ = _reader(["monitor", "--node", shop.name])
    try:
        time.sleep(0.5)
        shop("probe", "--from", "shop/other", "--to", "shop/backend", "--port", "80",
             "--timeout", "0.5", "-o", "json")
        wait_for(lambda: [ln for ln in flines if "deny: role=other -> role=backend" in ln],
                 "followed verdict")
        wait_for(lambda: [ln for ln in mlines if ln.startswith("Policy verdict log:") and
                          "action deny" in ln], "monitor verdict")
        assert any(ln.startswith("xx drop (Policy denied by denylist)") for ln in mlines)
        assert all("role=other" in ln for ln in flines)
    finally:
        for p in (follow, monitor):
            os.kill(p.pid, signal.SIGTERM)
            p.wait(timeout=10)


def _metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_and_status_count_flows_and_no_loss(shop: Lab) -> None:
    m = _metrics(mb("metrics", "--node", shop.name).stdout)
    verdicts = {(lb["action"], lb["direction"]): v for lb, v in
                m["membrane_policy_verdicts_total"]}
    assert verdicts[("allow", "INGRESS")] >= 3 and verdicts[("deny", "INGRESS")] >= 4
    flows = m["membrane_flows_processed_total"]
    assert any(lb["type"] == "drop" and lb["verdict"] == "DROPPED" and lb["protocol"] == "UDP"
               for lb, _ in flows)
    by_reason = {(lb["reason"], lb["protocol"]) for lb, _ in m["membrane_drop_total"]}
    assert {("Policy denied", "TCP"), ("Policy denied by denylist", "UDP")} <= by_reason
    dropped = {lb["reason"]: v for lb, v in m["membrane_datapath_packets_total"]
               if lb["verdict"] == "dropped"}
    assert dropped["Policy denied by denylist"] >= 2 and dropped["Policy denied"] >= 2
    assert dict((lb["where"], v) for lb, v in m["membrane_events_lost_total"]) == \
        {"kernel": 0, "subscriber": 0}
    fill = {lb["map"]: v for lb, v in m["membrane_map_fill_ratio"]}
    assert 0 < fill["mb_policy"] < 1 and 0 < fill["mb_endpoints"] < 1
    assert m["membrane_endpoints"][0][1] == 4
    ops = {lb["operation"] for lb, _ in m["membrane_reconcile_duration_seconds_count"]}
    assert {"endpoint-create", "policy-import"} <= ops
    st = shop.node("status")["flows"]
    assert st["lost"] == {"kernel": 0, "subscriber": 0} and st["seen"] >= st["flows"] > 0


STORM = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    for port in range(1, 30000):
        s.sendto(b"x", (sys.argv[1], port))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_event_storm_is_counted_lost_and_the_agent_stays_responsive(tmp_path: Path) -> None:
    name, port = unique_name(), _free_port()
    export = tmp_path / "flows.jsonl"
    mb("lab", "up", "--name", name, "--pod-cidr", "10.202.0.0/24",
       "--agent-arg=--events-ring-size=4096", f"--agent-arg=--metrics-addr=127.0.0.1:{port}",
       f"--agent-arg=--flow-export={export}", "--agent-arg=--flow-export-max-size=1")
    lab = Lab(name, tmp_path)
    try:
        lab.apply(pods_yaml({"s": {}}, [("s", "src", {"role": "src"}),
                                        ("s", "dst", {"role": "dst"})], ports=(80,)))
        lab.apply(POLICIES.replace("shop", "s").split("---")[0])  # dst: default deny for src
        dst_ip = lab.pods()["s/dst"]["status"]["podIP"]
        script = tmp_path / f"storm{secrets.token_hex(2)}.py"
        script.write_text(STORM)
        storm = subprocess.Popen(
            [sys.executable, "-m", "membrane", "lab", "exec", "--name", name, "s/src", "--",
             sys.executable, str(script), dst_ip])
        answered = 0
        try:
            while storm.poll() is None:
                st = lab.node("status")  # the API answers while the storm goes on
                answered += 1
                assert st["endpoints"] == 2
        finally:
            storm.wait(timeout=120)
        assert storm.returncode == 0 and answered >= 1
        st = lab.node("status")["flows"]
        assert st["lost"]["kernel"] > 0, st  # 180,000 events through a 56-event ring
        assert st["events_read"] > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            m = _metrics(r.read().decode())
        lost = dict((lb["where"], v) for lb, v in m["membrane_events_lost_total"])
        assert lost["kernel"] >= st["lost"]["kernel"]
        # the export rotated at its size limit and holds schema-valid JSON lines
        files = sorted(tmp_path.glob("flows.jsonl*"))
        assert len(files) >= 2, files
        lines = [ln for p in files for ln in p.read_text().splitlines()]
        jsonschema.validate(json.loads(lines[-1]), SCHEMA)
        assert all(p.stat().st_size <= (1 << 20) for p in files)
    finally:
        mb("lab", "down", "--name", name, check=False)
