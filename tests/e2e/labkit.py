"""The e2e tests' view of membrane: the CLI as a user runs it, and a lab under a unique name."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any


def mb(*args: str, check: bool = True, input_: str | None = None,
       timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "membrane", *args], capture_output=True, text=True,
        input=input_, timeout=timeout, check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"membrane {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def mb_json(*args: str) -> Any:
    return json.loads(mb(*args, "-o", "json").stdout)


class Lab:
    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.tmp = tmp

    def __call__(self, *args: str, check: bool = True,
                 input_: str | None = None) -> subprocess.CompletedProcess[str]:
        # --name right after the subcommand: after `exec POD --` it would belong to the command.
        return mb("lab", args[0], "--name", self.name, *args[1:], check=check, input_=input_)

    def apply(self, yaml_text: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        path = self.tmp / f"m{secrets.token_hex(3)}.yaml"
        path.write_text(yaml_text)
        return self("apply", "-f", str(path), check=check)

    def probe(self, port: int, protocol: str = "TCP", timeout: float = 1.0,
              *extra: str) -> dict[tuple[str, str], bool]:
        out = self("probe", "--port", str(port), "--protocol", protocol, "--timeout",
                   str(timeout), "-o", "json", *extra)
        return {(r["from"], r["to"]): r["connected"] for r in json.loads(out.stdout)["results"]}

    def pods(self) -> dict[str, dict[str, Any]]:
        items = json.loads(self("get", "pods", "-o", "json").stdout)["items"]
        return {f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in items}

    def node(self, *args: str) -> Any:
        return json.loads(mb(*args, "--node", self.name, "-o", "json").stdout)


def unique_name() -> str:
    return "t" + secrets.token_hex(3)


def pods_yaml(namespaces: dict[str, dict[str, str]], pods: list[tuple[str, str, dict[str, str]]],
              ports: tuple[int, ...] = (80, 81)) -> str:
    docs = []
    for ns, labels in namespaces.items():
        docs.append(json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": ns, "labels": labels}}))
    for ns, pod, labels in pods:
        port_list = [{"containerPort": p, "protocol": proto, "name": f"{proto.lower()}-{p}"}
                     for p in ports for proto in ("TCP", "UDP")]
        docs.append(json.dumps({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox", "ports": port_list}]},
        }))
    return "\n---\n".join(docs)
