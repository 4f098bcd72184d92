"""The CLI's client of the agent API: HTTP over the node's unix socket, JSON both ways."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from membrane.errors import MembraneError, NotFound

RUN_DIR = Path(os.environ.get("MEMBRANE_RUN_DIR", "/run/membrane"))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def running_nodes(run_dir: Path = RUN_DIR) -> list[str]:
    if not run_dir.is_dir():
        return []
    return sorted(p.stem for p in run_dir.glob("*.sock"))


def resolve_node(node: str | None, run_dir: Path = RUN_DIR) -> str:
    """--node, else MEMBRANE_NODE, else the only agent running."""
    node = node or os.environ.get("MEMBRANE_NODE")
    if node:
        return node
    nodes = running_nodes(run_dir)
    if len(nodes) == 1:
        return nodes[0]
    if not nodes:
        raise NotFound("no membrane agent is running (start one with `membrane lab up`)")
    raise MembraneError(f"several agents are running ({', '.join(nodes)}): pass --node NAME")


class Client:
    def __init__(self, socket_path: Path, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    @classmethod
    def for_node(cls, node: str | None, run_dir: Path = RUN_DIR) -> Client:
        return cls(run_dir / f"{resolve_node(node, run_dir)}.sock")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        if not self.socket_path.exists():
            raise NotFound(f"no agent socket at {self.socket_path}: is the agent running?")
        conn = _UnixConnection(str(self.socket_path), self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (ConnectionRefusedError, FileNotFoundError) as e:
            raise MembraneError(f"cannot reach the agent at {self.socket_path}: {e}") from e
        except TimeoutError as e:
            raise MembraneError(f"the agent at {self.socket_path} did not answer in time") from e
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except json.JSONDecodeError as e:
            raise MembraneError(
                f"the agent answered {resp.status} with non-JSON: {raw[:80]!r}"
            ) from e
        if resp.status >= 400:
            msg = data.get("error") if isinstance(data, dict) else None
            if resp.status == 404:
                raise NotFound(msg or f"{method} {path}: not found")
            raise MembraneError(msg or f"{method} {path}: HTTP {resp.status}")
        return data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def stream(self, path: str, timeout: float | None = None) -> Iterator[str]:
        """GET a line-per-item response, each line as it arrives (for --follow)."""
        if not self.socket_path.exists():
            raise NotFound(f"no agent socket at {self.socket_path}: is the agent running?")
        conn = _UnixConnection(str(self.socket_path), self.timeout)
        try:
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
            except (ConnectionRefusedError, FileNotFoundError) as e:
                raise MembraneError(f"cannot reach the agent at {self.socket_path}: {e}") from e
            if resp.status >= 400:
                raw = resp.read()
                try:
                    msg = json.loads(raw).get("error")
                except (json.JSONDecodeError, AttributeError):
                    msg = None
                raise MembraneError(msg or f"GET {path}: HTTP {resp.status}")
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line:
                    yield line
        finally:
            conn.close()

    def get_text(self, path: str) -> str:
        """GET a text response (Prometheus metrics)."""
        conn = _UnixConnection(str(self.socket_path), self.timeout)
        try:
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
            except (ConnectionRefusedError, FileNotFoundError) as e:
                raise MembraneError(f"cannot reach the agent at {self.socket_path}: {e}") from e
            body = resp.read().decode()
            if resp.status >= 400:
                raise MembraneError(f"GET {path}: HTTP {resp.status}: {body[:200]}")
            return body
        finally:
            conn.close()
