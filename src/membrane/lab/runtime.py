"""The lab runtime: the lab's pods (namespaces + echo servers) and its store of objects.

It plays the container runtime and the Kubernetes API of the lab: it makes a network namespace
per pod, serves each declared port, and asks the agent (like a CNI plugin would) for an
endpoint in that namespace. It serves the lab commands on a unix socket of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from aiohttp import web

from membrane.agent.api import errors_as_json, reply
from membrane.cli.client import Client
from membrane.datapath import netns
from membrane.errors import InputError, NotFound
from membrane.k8s.manifests import Namespace, Pod, RawObject, load_manifests
from membrane.lab.node import LabPaths
from membrane.lab.sockets import EchoServers, probe_one, start_echo
from membrane.loadbalancer import parse as lbparse
from membrane.loadbalancer.alloc import IPAllocator, NodePortAllocator, assign, unassign
from membrane.loadbalancer.model import Service
from membrane.policy.parse import POLICY_KINDS, parse_policy

log = logging.getLogger(__name__)
BUILTIN_NAMESPACES = ("default", "kube-system")
METADATA_NAME = "kubernetes.io/metadata.name"
SERVICE_CIDR = IPv4Network("10.96.0.0/16")
"""Where the lab's ClusterIPs come from (kube-apiserver's --service-cluster-ip-range)."""


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

    def lb_record(self) -> lbparse.PodRecord:
        """The pod as the endpoints controller sees it (its current labels)."""
        return dataclasses.replace(lbparse.pod_record(self.pod, IPv4Address(self.ip)),
                                   labels=dict(self.labels))

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
        # The API server's and the endpoints controller's part for Services.
        self.service_specs: dict[str, lbparse.ServiceSpec] = {}
        self.assigned: dict[str, Any] = {}
        self.pushed: dict[str, Service] = {}
        self.cluster_ips = IPAllocator(SERVICE_CIDR)
        self.node_ports = NodePortAllocator()

    # --- pods ----------------------------------------------------------------------------
    async def _agent(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self.agent.request, method, path, body)

    async def _create_pod(self, pod: Pod) -> PodRecord:
        ns_name = self.paths.pod_ns(pod.namespace, pod.name)
        path = str(netns.ensure(ns_name))
        try:
            echo = await start_echo(path, [(p.container_port, p.protocol) for p in pod.ports],
                                    pod.key)
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
            elif isinstance(d, RawObject) and d.kind == "Service":
                self._check_target_ports(lbparse.parse_service(d), docs)
            elif isinstance(d, RawObject):
                raise InputError(d.where, f"kind {d.kind} is not supported by the lab yet")
            if isinstance(d, Pod | RawObject) and d.namespace is not None \
                    and d.namespace not in declared:
                what = f"Pod {d.key}" if isinstance(d, Pod) else f"{d.kind} {d.namespace}/{d.name}"
                raise InputError(f"{source}: {what}: metadata.namespace",
                                 f'namespace "{d.namespace}" not found')

    def _check_target_ports(self, spec: lbparse.ServiceSpec,
                            docs: list[Namespace | Pod | RawObject]) -> None:
        """A named targetPort must be a port name some pod of the namespace declares (the lab
        refuses what Kubernetes would leave without backends silently)."""
        pods = [r.pod for r in self.pods.values()] + [d for d in docs if isinstance(d, Pod)]
        declared = {(p.name, p.protocol) for pod in pods if pod.namespace == spec.namespace
                    for p in pod.ports if p.name}
        for i, sp in enumerate(spec.ports):
            if isinstance(sp.target_port, str) and (sp.target_port, sp.protocol) not in declared:
                raise InputError(f"{spec.where}: spec.ports[{i}].targetPort",
                                 f"no pod in namespace {spec.namespace!r} declares a "
                                 f"{sp.protocol} port named {sp.target_port!r}")

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
                policies = [_raw_json(d) for d in docs
                            if isinstance(d, RawObject) and d.kind in POLICY_KINDS]
                if policies:
                    res = await self._agent("POST", "/v1/policies", {"objects": policies})
                    done += [f"policy/{k}" for k in res["imported"]]
                specs = [lbparse.parse_service(d) for d in docs
                         if isinstance(d, RawObject) and d.kind == "Service"]
                await self._apply_services(specs)
                done += [f"service/{s.key}" for s in specs]
                await self._sync_services()
            except BaseException:
                for key in created:
                    with contextlib.suppress(Exception):
                        await self._delete_pod(key)
                with contextlib.suppress(Exception):
                    await self._sync_services()
                raise
            return done

    # --- services: allocation and endpoints -------------------------------------------------
    async def _apply_services(self, specs: list[lbparse.ServiceSpec]) -> None:
        """Allocate and push a batch of services; all or nothing."""
        if not specs:
            return
        saved = (self.cluster_ips.snapshot(), self.node_ports.snapshot(),
                 dict(self.service_specs), dict(self.assigned))
        try:
            resolved = []
            for spec in specs:
                a = assign(spec, self.cluster_ips, self.node_ports)
                self.service_specs[spec.key] = spec
                self.assigned[spec.key] = a
                resolved.append(self._resolve(spec.key))
            await self._agent("POST", "/v1/services",
                              {"services": [svc.to_json() for svc in resolved]})
        except BaseException:
            self.cluster_ips.restore(saved[0])
            self.node_ports.restore(saved[1])
            self.service_specs, self.assigned = saved[2], saved[3]
            raise
        for svc in resolved:
            self.pushed[svc.key] = svc

    def _resolve(self, key: str) -> Service:
        spec = self.service_specs[key]
        a = self.assigned[key]
        return lbparse.resolve_backends(spec, [r.lb_record() for r in self.pods.values()],
                                        cluster_ip=a.cluster_ip, node_ports=a.node_ports)

    async def _sync_services(self) -> None:
        """The endpoints controller: push every service whose backends changed."""
        changed = []
        for key in sorted(self.service_specs):
            svc = self._resolve(key)
            if self.pushed.get(key) != svc:
                changed.append(svc)
        if changed:
            await self._agent("POST", "/v1/services",
                              {"services": [svc.to_json() for svc in changed]})
            for svc in changed:
                self.pushed[svc.key] = svc

    async def _delete_service(self, key: str) -> bool:
        if key not in self.service_specs:
            return False
        with contextlib.suppress(NotFound):
            await self._agent("DELETE", f"/v1/services/{key}")
        del self.service_specs[key]
        self.assigned.pop(key, None)
        self.pushed.pop(key, None)
        unassign(key, self.cluster_ips, self.node_ports)
        return True

    def _service_obj(self, key: str) -> dict[str, Any]:
        spec = self.service_specs[key]
        a = self.assigned[key]
        ports = []
        for sp, node_port in zip(spec.ports, a.node_ports, strict=True):
            p: dict[str, Any] = {"port": sp.port, "protocol": sp.protocol,
                                 "targetPort": sp.target_port}
            if sp.name:
                p["name"] = sp.name
            if node_port:
                p["nodePort"] = node_port
            ports.append(p)
        spec_obj: dict[str, Any] = {
            "type": spec.type, "clusterIP": str(a.cluster_ip), "clusterIPs": [str(a.cluster_ip)],
            "ports": ports, "sessionAffinity": "ClientIP" if spec.affinity_timeout else "None",
        }
        if spec.selector is not None:
            spec_obj["selector"] = dict(spec.selector)
        if spec.external_ips:
            spec_obj["externalIPs"] = [str(ip) for ip in spec.external_ips]
        if spec.affinity_timeout:
            spec_obj["sessionAffinityConfig"] = {
                "clientIP": {"timeoutSeconds": spec.affinity_timeout}}
        pushed = self.pushed.get(key)
        endpoints = sorted({f"{b.ip}:{b.port}" for p in (pushed.ports if pushed else ())
                            for b in p.backends})
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": spec.name, "namespace": spec.namespace},
                "spec": spec_obj, "status": {"loadBalancer": {}},
                "endpoints": endpoints}

    async def delete(self, text: str, source: str) -> list[str]:
        docs = load_manifests(text, source)
        async with self.lock:
            done: list[str] = []
            keys = [_policy_key(d) for d in docs
                    if isinstance(d, RawObject) and d.kind in POLICY_KINDS]
            if keys:
                res = await self._agent("POST", "/v1/policies/delete", {"keys": keys})
                done += [f"policy/{k}" for k in res["deleted"]]
            for d in docs:
                if isinstance(d, RawObject) and d.kind == "Service" and \
                        await self._delete_service(f"{d.namespace}/{d.name}"):
                    done.append(f"service/{d.namespace}/{d.name}")
            for d in docs:
                if isinstance(d, Pod) and d.key in self.pods:
                    await self._delete_pod(d.key)
                    done.append(f"pod/{d.key}")
            for d in docs:
                if isinstance(d, Namespace) and d.name not in BUILTIN_NAMESPACES:
                    for key in [k for k, r in self.pods.items() if r.pod.namespace == d.name]:
                        await self._delete_pod(key)
                    for key in [k for k, sp in self.service_specs.items()
                                if sp.namespace == d.name]:
                        await self._delete_service(key)
                    if self.namespaces.pop(d.name, None) is not None:
                        done.append(f"namespace/{d.name}")
            await self._sync_services()
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
                await self._sync_services()
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
        if what == "services":
            return [self._service_obj(k) for k in sorted(self.service_specs)]
        raise InputError("lab get", f"{what!r}: expected pods, namespaces or services")

    def _select(self, keys: list[str] | None, where: str) -> list[PodRecord]:
        if keys is None:
            return [self.pods[k] for k in sorted(self.pods)]
        missing = [k for k in keys if k not in self.pods]
        if missing:
            raise NotFound(f"{where}: pod {missing[0]!r} not found in lab {self.paths.name}")
        return [self.pods[k] for k in keys]

    def service_of(self, pod: PodRecord, port: int, protocol: str) -> str:
        """The ClusterIP of the pod's own service s-NS-POD serving port/protocol."""
        ns, _, name = pod.pod.key.partition("/")
        key = f"{ns}/s-{ns}-{name}"
        spec = self.service_specs.get(key)
        if spec is None:
            raise NotFound(f"--service: pod {pod.pod.key} has no service {key} (declare one "
                           "per destination pod, named s-NAMESPACE-POD)")
        if not any(p.port == port and p.protocol == protocol for p in spec.ports):
            raise NotFound(f"--service: service {key} has no port {port}/{protocol}")
        return str(self.assigned[key].cluster_ip)

    async def probe(self, port: int, protocol: str, sources: list[str] | None,
                    targets: list[str] | None, timeout: float,
                    service: bool = False) -> dict[str, Any]:
        froms = self._select(sources, "--from")
        tos = self._select(targets, "--to")
        pairs = [(f, t) for f in froms for t in tos]
        addr = {t.pod.key: self.service_of(t, port, protocol) if service else t.ip for t in tos}
        verdicts = await asyncio.gather(
            *(probe_one(f.netns, addr[t.pod.key], port, protocol, timeout) for f, t in pairs)
        )
        return {
            "port": port, "protocol": protocol, "via_service": service,
            "results": [
                {"from": f.pod.key, "to": t.pod.key, "address": addr[t.pod.key],
                 "connected": ok}
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
                                    float(d.get("timeout", 1.0)), bool(d.get("service"))))

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
