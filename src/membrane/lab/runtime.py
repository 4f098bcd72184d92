"""The lab runtime: the lab's pods (namespaces + echo servers) and its store of objects.

It plays the container runtime and the Kubernetes API of the lab: it makes a network namespace
per pod, serves each declared port, and asks the agent (like a CNI plugin would) for an
endpoint in that namespace. It serves the lab commands on a unix socket of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from membrane.agent.api import errors_as_json, reply
from membrane.cli.client import Client
from membrane.datapath import netns
from membrane.errors import InputError, NotFound
from membrane.k8s.manifests import Namespace, Pod, RawObject, load_manifests
from membrane.lab.node import LabPaths
from membrane.lab.sockets import EchoServers, probe_one, start_echo
from membrane.policy.parse import POLICY_KINDS, parse_policy

log = logging.getLogger(__name__)
BUILTIN_NAMESPACES = ("default", "kube-system")
METADATA_NAME = "kubernetes.io/metadata.name"


@dataclass(slots=True)
class PodRecord:
    pod: Pod
    netns: str
    endpoint: dict[str, Any]
    echo: EchoServers
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def ip(self) -> str:
        return str(self.endpoint["ipv4"])

    def to_k8s(self) -> dict[str, Any]:
        obj = self.pod.to_k8s()
        obj["metadata"]["labels"] = dict(self.labels)
        obj["status"] = {"phase": "Running", "podIP": self.ip, "podIPs": [{"ip": self.ip}]}
        return obj


def _raw_json(d: RawObject) -> dict[str, Any]:
    return {"kind": d.kind, "namespace": d.namespace, "name": d.name, "body": d.body,
            "where": d.where}


def _policy_key(d: RawObject) -> str:
    return f"{d.kind} {d.namespace}/{d.name}" if d.namespace else f"{d.kind} {d.name}"


class LabRuntime:
    def __init__(self, name: str) -> None:
        self.paths = LabPaths(name)
        self.agent = Client(self.paths.agent_socket)
        self.namespaces: dict[str, dict[str, str]] = {
            ns: {METADATA_NAME: ns} for ns in BUILTIN_NAMESPACES
        }
        self.pods: dict[str, PodRecord] = {}
        self.lock = asyncio.Lock()

    # --- pods ----------------------------------------------------------------------------
    async def _agent(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self.agent.request, method, path, body)

    async def _create_pod(self, pod: Pod) -> PodRecord:
        ns_name = self.paths.pod_ns(pod.namespace, pod.name)
        path = str(netns.ensure(ns_name))
        try:
            echo = await start_echo(path, [(p.container_port, p.protocol) for p in pod.ports])
            try:
                ep = await self._agent("POST", "/v1/endpoints", {
                    "netns": path, "pod": pod.key, "labels": dict(pod.labels),
                    "namespace_labels": self.namespaces[pod.namespace],
                    "ports": [{"name": p.name or "", "protocol": p.protocol,
                               "port": p.container_port} for p in pod.ports],
                })
            except BaseException:
                echo.close()
                raise
        except BaseException:
            netns.remove(ns_name)
            raise
        return PodRecord(pod=pod, netns=path, endpoint=ep, echo=echo, labels=dict(pod.labels))

    async def _delete_pod(self, key: str) -> None:
        rec = self.pods.pop(key, None)
        if rec is None:
            return
        rec.echo.close()
        with contextlib.suppress(NotFound):
            await self._agent("DELETE", f"/v1/endpoints/{rec.endpoint['id']}")
        netns.remove(rec.netns)

    async def _set_pod_labels(self, rec: PodRecord, labels: dict[str, str]) -> None:
        if labels == rec.labels:
            return
        rec.endpoint = await self._agent(
            "PATCH", f"/v1/endpoints/{rec.endpoint['id']}", {"labels": labels}
        )
        rec.labels = dict(labels)

    async def _set_namespace_labels(self, ns: str, labels: dict[str, str]) -> None:
        labels = {**labels, METADATA_NAME: ns}
        if self.namespaces.get(ns) == labels:
            return
        self.namespaces[ns] = labels
        for rec in self.pods.values():
            if rec.pod.namespace == ns:
                rec.endpoint = await self._agent(
                    "PATCH", f"/v1/endpoints/{rec.endpoint['id']}", {"namespace_labels": labels}
                )

    # --- apply / delete --------------------------------------------------------------------
    def _check(self, docs: list[Namespace | Pod | RawObject], source: str) -> None:
        """All checks before any change: an apply that fails changes nothing."""
        declared = set(self.namespaces) | {d.name for d in docs if isinstance(d, Namespace)}
        for d in docs:
            if isinstance(d, RawObject) and d.kind in POLICY_KINDS:
                parse_policy(d)  # the agent parses again; this fails before any change
            elif isinstance(d, RawObject):
                raise InputError(d.where, f"kind {d.kind} is not supported by the lab yet")
            if isinstance(d, Pod) and d.namespace not in declared:
                raise InputError(f"{source}: Pod {d.key}: metadata.namespace",
                                 f'namespace "{d.namespace}" not found')

    async def apply(self, text: str, source: str) -> list[str]:
        docs = load_manifests(text, source)
        async with self.lock:
            self._check(docs, source)
            done: list[str] = []
            created: list[str] = []
            try:
                for d in docs:
                    if isinstance(d, Namespace):
                        await self._set_namespace_labels(d.name, dict(d.labels))
                        done.append(f"namespace/{d.name}")
                for d in docs:
                    if not isinstance(d, Pod):
                        continue
                    rec = self.pods.get(d.key)
                    if rec is not None and rec.pod.ports != d.ports:
                        await self._delete_pod(d.key)
                        rec = None
                    if rec is None:
                        self.pods[d.key] = await self._create_pod(d)
                        created.append(d.key)
                    else:
                        rec.pod = d
                        await self._set_pod_labels(rec, dict(d.labels))
                    done.append(f"pod/{d.key}")
                policies = [_raw_json(d) for d in docs if isinstance(d, RawObject)]
                if policies:
                    res = await self._agent("POST", "/v1/policies", {"objects": policies})
                    done += [f"policy/{k}" for k in res["imported"]]
            except BaseException:
                for key in created:
                    with contextlib.suppress(Exception):
                        await self._delete_pod(key)
                raise
            return done

    async def delete(self, text: str, source: str) -> list[str]:
        docs = load_manifests(text, source)
        async with self.lock:
            done: list[str] = []
            keys = [_policy_key(d) for d in docs if isinstance(d, RawObject)]
            if keys:
                res = await self._agent("POST", "/v1/policies/delete", {"keys": keys})
                done += [f"policy/{k}" for k in res["deleted"]]
            for d in docs:
                if isinstance(d, Pod) and d.key in self.pods:
                    await self._delete_pod(d.key)
                    done.append(f"pod/{d.key}")
            for d in docs:
                if isinstance(d, Namespace) and d.name not in BUILTIN_NAMESPACES:
                    for key in [k for k, r in self.pods.items() if r.pod.namespace == d.name]:
                        await self._delete_pod(key)
                    if self.namespaces.pop(d.name, None) is not None:
                        done.append(f"namespace/{d.name}")
            return done

    async def label(self, kind: str, target: str, set_: dict[str, str],
                    remove: list[str]) -> dict[str, Any]:
        async with self.lock:
            if kind == "pod":
                rec = self.pods.get(target)
                if rec is None:
                    raise NotFound(f'pod "{target}" not found in lab {self.paths.name}')
                labels = {k: v for k, v in rec.labels.items() if k not in remove} | set_
                await self._set_pod_labels(rec, labels)
                return rec.to_k8s()
            if kind == "namespace":
                if target not in self.namespaces:
                    raise NotFound(f'namespace "{target}" not found in lab {self.paths.name}')
                if METADATA_NAME in set_ or METADATA_NAME in remove:
                    raise InputError(METADATA_NAME, "is set by the lab and cannot change")
                cur = self.namespaces[target]
                labels = {k: v for k, v in cur.items() if k not in remove} | set_
                await self._set_namespace_labels(target, labels)
                return self._ns_obj(target)
            raise InputError("kind", f"{kind!r} is not pod or namespace")

    # --- queries ---------------------------------------------------------------------------
    def _ns_obj(self, ns: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": dict(self.namespaces[ns])},
                "status": {"phase": "Active"}}

    def get(self, what: str) -> list[dict[str, Any]]:
        if what == "pods":
            return [self.pods[k].to_k8s() for k in sorted(self.pods)]
        if what == "namespaces":
            return [self._ns_obj(ns) for ns in sorted(self.namespaces)]
        raise InputError("lab get", f"{what!r}: expected pods or namespaces")

    def _select(self, keys: list[str] | None, where: str) -> list[PodRecord]:
        if keys is None:
            return [self.pods[k] for k in sorted(self.pods)]
        missing = [k for k in keys if k not in self.pods]
        if missing:
            raise NotFound(f"{where}: pod {missing[0]!r} not found in lab {self.paths.name}")
        return [self.pods[k] for k in keys]

    async def probe(self, port: int, protocol: str, sources: list[str] | None,
                    targets: list[str] | None, timeout: float) -> dict[str, Any]:
        froms = self._select(sources, "--from")
        tos = self._select(targets, "--to")
        pairs = [(f, t) for f in froms for t in tos]
        verdicts = await asyncio.gather(
            *(probe_one(f.netns, t.ip, port, protocol, timeout) for f, t in pairs)
        )
        return {
            "port": port, "protocol": protocol,
            "results": [
                {"from": f.pod.key, "to": t.pod.key, "connected": ok}
                for (f, t), ok in zip(pairs, verdicts, strict=True)
            ],
        }

    async def shutdown(self) -> None:
        for rec in self.pods.values():
            rec.echo.close()


def _routes(rt: LabRuntime) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=16 * 1024 * 1024)

    async def body(request: web.Request) -> dict[str, Any]:
        data = await request.json()
        if not isinstance(data, dict):
            raise InputError("request body", "must be a JSON object")
        return data

    async def status(request: web.Request) -> web.Response:
        return reply({"lab": rt.paths.name, "pods": len(rt.pods), "pid": os.getpid()})

    async def apply(request: web.Request) -> web.Response:
        d = await body(request)
        return reply({"applied": await rt.apply(d["text"], d["source"])})

    async def delete(request: web.Request) -> web.Response:
        d = await body(request)
        return reply({"deleted": await rt.delete(d["text"], d["source"])})

    async def label(request: web.Request) -> web.Response:
        d = await body(request)
        return reply(await rt.label(d["kind"], d["target"], d["set"], d["remove"]))

    async def get(request: web.Request) -> web.Response:
        return reply(rt.get(request.match_info["what"]))

    async def probe(request: web.Request) -> web.Response:
        d = await body(request)
        return reply(await rt.probe(d["port"], d["protocol"], d.get("from"), d.get("to"),
                                    float(d.get("timeout", 1.0))))

    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/apply", apply)
    app.router.add_post("/v1/delete", delete)
    app.router.add_post("/v1/label", label)
    app.router.add_get("/v1/{what}", get)
    app.router.add_post("/v1/probe", probe)
    return app


async def serve(name: str) -> None:
    rt = LabRuntime(name)
    runner = web.AppRunner(_routes(rt), access_log=None)
    await runner.setup()
    sock = rt.paths.runtime_socket
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(sock)).start()
    finally:
        os.umask(old)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await rt.shutdown()
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
