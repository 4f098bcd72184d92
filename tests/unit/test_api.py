"""The agent API over a real unix socket, with the CLI's client, in front of a fake manager."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from membrane.agent.api import build_app
from membrane.cli.client import Client, resolve_node
from membrane.endpoint.manager import CreateRequest
from membrane.endpoint.model import Endpoint
from membrane.errors import InputError, MembraneError, NotFound
from membrane.policy.engine import PolicyEngine
from membrane.types import EndpointID, Identity


class FakeManager:
    """Pure stand-in for EndpointManager: the API layer is under test, not the kernel."""

    def __init__(self) -> None:
        self.eps: dict[EndpointID, Endpoint] = {}

    def list(self) -> list[Endpoint]:
        return list(self.eps.values())

    def get(self, ep_id: EndpointID) -> Endpoint:
        if ep_id not in self.eps:
            raise NotFound(f"endpoint {ep_id} not found")
        return self.eps[ep_id]

    def create(self, req: CreateRequest) -> Endpoint:
        for ep in self.eps.values():
            if ep.pod == req.pod:
                return ep
        ep_id = EndpointID(len(self.eps) + 1)
        ep = Endpoint(id=ep_id, ipv4=IPv4Address(f"10.0.0.{ep_id + 1}"), netns="/x",
                      owns_netns=False, ifname=f"lxc{ep_id:04x}", pod=req.pod,
                      labels=dict(req.labels), identity=Identity(256))
        self.eps[ep_id] = ep
        return ep

    def update_labels(self, ep_id: EndpointID, labels: Any, ns_labels: Any) -> Endpoint:
        ep = self.get(ep_id).with_changes(labels=labels)
        self.eps[ep_id] = ep
        return ep

    def delete(self, ep_id: EndpointID) -> Endpoint | None:
        return self.eps.pop(ep_id, None)


class FakePolicy:
    """The policy service as the endpoint routes use it: a real engine with no policies."""

    def __init__(self) -> None:
        self.engine = PolicyEngine(capacity=16)

    def identity_labels(self, identity: int) -> list[str]:
        return [f"k8s:id={identity}"]


@dataclass
class FakeAgent:
    endpoints: FakeManager = field(default_factory=FakeManager)
    policy: FakePolicy = field(default_factory=FakePolicy)

    async def run_dp(self, fn: Any, *args: Any, op: str | None = None) -> Any:
        return fn(*args)

    def status(self) -> dict[str, Any]:
        return {"node": "n1", "endpoints": len(self.endpoints.eps)}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    sock = tmp_path / "n1.sock"
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(FakeAgent()))  # type: ignore[arg-type]
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.UnixSite(runner, str(sock)).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield Client(sock, timeout=5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_created_endpoint_is_listed_and_fetched(client: Client) -> None:
    ep = client.post("/v1/endpoints", {"pod": "x/a", "labels": {"role": "web"}})
    assert ep["ipv4"] == "10.0.0.2"
    assert [e["pod"] for e in client.get("/v1/endpoints")] == ["x/a"]
    assert client.get(f"/v1/endpoints/{ep['id']}")["labels"] == {"role": "web"}


def test_create_is_idempotent_per_pod(client: Client) -> None:
    a = client.post("/v1/endpoints", {"pod": "x/a"})
    b = client.post("/v1/endpoints", {"pod": "x/a"})
    assert a["id"] == b["id"]
    assert len(client.get("/v1/endpoints")) == 1


def test_deleting_unknown_endpoint_is_not_an_error(client: Client) -> None:
    assert client.delete("/v1/endpoints/77") == {"deleted": False}


def test_unknown_endpoint_is_not_found_with_one_line(client: Client) -> None:
    with pytest.raises(NotFound, match="endpoint 9 not found"):
        client.get("/v1/endpoints/9")


def test_unknown_field_is_rejected_naming_it(client: Client) -> None:
    with pytest.raises(MembraneError, match="labelz: unknown field"):
        client.post("/v1/endpoints", {"pod": "x/a", "labelz": {}})


def test_labels_must_be_strings(client: Client) -> None:
    with pytest.raises(MembraneError, match="labels: must be an object of string"):
        client.post("/v1/endpoints", {"pod": "x/a", "labels": {"a": 1}})


def test_non_numeric_endpoint_id_is_rejected(client: Client) -> None:
    with pytest.raises(MembraneError, match="'abc' is not a number"):
        client.get("/v1/endpoints/abc")


def test_patch_changes_labels(client: Client) -> None:
    ep = client.post("/v1/endpoints", {"pod": "x/a", "labels": {"role": "web"}})
    out = client.patch(f"/v1/endpoints/{ep['id']}", {"labels": {"role": "db"}})
    assert out["labels"] == {"role": "db"}


def test_missing_socket_says_agent_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="is the agent running"):
        Client(tmp_path / "none.sock").get("/v1/status")


def test_node_resolution_prefers_flag_then_env_then_single_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEMBRANE_NODE", raising=False)
    with pytest.raises(NotFound, match="no membrane agent is running"):
        resolve_node(None, tmp_path)
    (tmp_path / "a.sock").touch()
    assert resolve_node(None, tmp_path) == "a"
    (tmp_path / "b.sock").touch()
    with pytest.raises(MembraneError, match="pass --node"):
        resolve_node(None, tmp_path)
    monkeypatch.setenv("MEMBRANE_NODE", "b")
    assert resolve_node(None, tmp_path) == "b"
    assert resolve_node("c", tmp_path) == "c"


def test_input_error_names_the_place() -> None:
    assert str(InputError("f.yaml: spec.x", "unknown field")) == "f.yaml: spec.x: unknown field"
