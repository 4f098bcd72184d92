"""The agent's API: JSON over HTTP on a root-only unix socket (routes in docs/internals.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from aiohttp import web

from membrane.agent.flows import event_json
from membrane.datapath.abi import EventType
from membrane.datapath.events import Event
from membrane.endpoint.manager import CreateRequest
from membrane.errors import Conflict, InputError, MembraneError, NotFound
from membrane.flows.filter import FilterError, FlowFilter
from membrane.flows.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from membrane.flows.model import Flow, monitor_line
from membrane.types import EndpointID

if TYPE_CHECKING:
    from membrane.agent.app import Agent

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SHUTDOWN_TIMEOUT = 2.0
"""On stop, requests get this long to finish; `--follow` streams never do, they are cut."""


def to_jsonable(value: Any) -> Any:
    """Domain values (dataclasses, addresses) to plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, IPv4Address | IPv4Network):
        return str(value)
    if isinstance(value, dict):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    return value


def reply(data: Any, status: int = 200) -> web.Response:
    return web.json_response(to_jsonable(data), status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except InputError as e:
        return reply({"error": str(e)}, 400)
    except NotFound as e:
        return reply({"error": str(e)}, 404)
    except Conflict as e:
        return reply({"error": str(e)}, 409)
    except MembraneError as e:
        return reply({"error": str(e)}, 500)
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return reply({"error": f"internal error: {type(e).__name__}: {e}"}, 500)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except json.JSONDecodeError as e:
        raise InputError("request body", f"not JSON: {e}") from e
    if not isinstance(data, dict):
        raise InputError("request body", "must be a JSON object")
    return data


def _labels(data: dict[str, Any], key: str) -> dict[str, str] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InputError(key, "must be an object of string keys and values")
    return value


def _ep_id(request: web.Request) -> EndpointID:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise InputError("endpoint id", f"{raw!r} is not a number")
    return EndpointID(int(raw))


def _ports(data: dict[str, Any]) -> tuple[tuple[str, str, int], ...]:
    raw = data.get("ports") or []
    if not isinstance(raw, list):
        raise InputError("ports", "must be a list")
    out = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict) or set(p) - {"name", "protocol", "port"}:
            raise InputError(f"ports[{i}]", "must be an object of name, protocol and port")
        name, proto, port = p.get("name") or "", p.get("protocol", "TCP"), p.get("port")
        if not isinstance(name, str) or proto not in ("TCP", "UDP", "SCTP"):
            raise InputError(f"ports[{i}]", "name must be a string, protocol TCP, UDP or SCTP")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise InputError(f"ports[{i}].port", f"{port!r} is not a port number 1-65535")
        out.append((name, proto, port))
    return tuple(out)


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(key, "required, a non-empty string")
    return value


class Routes:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def _ep_json(self, ep: Any) -> dict[str, Any]:
        out: dict[str, Any] = ep.to_json()
        pol = self.agent.policy
        out["identity_labels"] = pol.identity_labels(ep.identity)
        out["policy_enforcement"] = pol.engine.enforcement(ep.identity)
        return out

    async def status(self, request: web.Request) -> web.Response:
        return reply(await self.agent.run_dp(self.agent.status))

    async def list_endpoints(self, request: web.Request) -> web.Response:
        eps = await self.agent.run_dp(self.agent.endpoints.list)
        return reply([self._ep_json(ep) for ep in eps])

    async def get_endpoint(self, request: web.Request) -> web.Response:
        ep = await self.agent.run_dp(self.agent.endpoints.get, _ep_id(request))
        return reply(self._ep_json(ep))

    async def create_endpoint(self, request: web.Request) -> web.Response:
        data = await _body(request)
        unknown = set(data) - {"netns", "netns_name", "pod", "labels", "namespace_labels",
                               "ports"}
        if unknown:
            raise InputError(sorted(unknown)[0], "unknown field")
        for key in ("netns", "netns_name", "pod"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise InputError(key, "must be a string")
        req = CreateRequest(
            netns=data.get("netns"), netns_name=data.get("netns_name"), pod=data.get("pod"),
            labels=_labels(data, "labels") or {},
            namespace_labels=_labels(data, "namespace_labels") or {},
            ports=_ports(data),
        )
        ep = await self.agent.run_dp(self.agent.endpoints.create, req, op="endpoint-create")
        return reply(self._ep_json(ep), 201)

    async def patch_endpoint(self, request: web.Request) -> web.Response:
        data = await _body(request)
        ep = await self.agent.run_dp(
            self.agent.endpoints.update_labels, _ep_id(request), _labels(data, "labels"),
            _labels(data, "namespace_labels"), op="endpoint-labels",
        )
        return reply(self._ep_json(ep))

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        ep = await self.agent.run_dp(self.agent.endpoints.delete, _ep_id(request),
                                     op="endpoint-delete")
        return reply({"deleted": ep is not None})

    async def bpf_map(self, request: web.Request) -> web.Response:
        name = request.match_info["map"]
        dp = self.agent.datapath
        dumps: dict[str, Callable[[], Any]] = {
            "endpoint": lambda: list(dp.endpoints.dump().values()),
            "ct": dp.ct.dump,
            "ipcache": lambda: [
                {"prefix": str(p), "identity": i} for p, i in sorted(dp.ipcache.dump().items())
            ],
            "metrics": dp.metrics.dump,
            "lb": self.agent.services.maps_json,
            "ipblock": lambda: [
                {"prefix": str(p), "identity": i} for p, i in sorted(dp.ipblock.dump().items())
            ],
        }
        if name == "policy":
            raw = request.query.get("endpoint")
            if raw is None or not raw.isdigit():
                raise InputError("endpoint", "bpf policy list needs an endpoint id")

            def of_endpoint() -> Any:
                ep = self.agent.endpoints.get(EndpointID(int(raw)))
                return self.agent.policy.entries_of(ep.identity)
            return reply(await self.agent.run_dp(of_endpoint))
        if name not in dumps:
            raise NotFound(f"unknown map {name!r}; known: {', '.join(sorted(dumps))}")
        return reply(await self.agent.run_dp(dumps[name]))


    # --- services ------------------------------------------------------------------------------
    async def upsert_services(self, request: web.Request) -> web.Response:
        data = await _body(request)
        unknown = set(data) - {"services"}
        if unknown:
            raise InputError(sorted(unknown)[0], "unknown field")
        mgr = self.agent.services

        def run() -> Any:
            return mgr.upsert(mgr.parse(data.get("services")))
        return reply(await self.agent.run_dp(run, op="service-upsert"))

    async def delete_services(self, request: web.Request) -> web.Response:
        data = await _body(request)
        keys = data.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InputError("keys", "must be a list of NAMESPACE/NAME")
        return reply(await self.agent.run_dp(self.agent.services.delete, keys,
                                             op="service-delete"))

    async def delete_service(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        return reply(await self.agent.run_dp(self.agent.services.delete_one, key,
                                             op="service-delete"))

    async def list_services(self, request: web.Request) -> web.Response:
        return reply(await self.agent.run_dp(self.agent.services.listing))

    async def get_service(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        return reply(await self.agent.run_dp(self.agent.services.get, key))

    # --- policy --------------------------------------------------------------------------------
    async def import_policies(self, request: web.Request) -> web.Response:
        data = await _body(request)
        pol = self.agent.policy
        if isinstance(data.get("objects"), list):
            keys = await self.agent.run_dp(pol.import_objects, data["objects"],
                                           op="policy-import")
            return reply({"imported": keys})
        text, source = _str(data, "text"), data.get("source") or "<stdin>"
        keys = await self.agent.run_dp(pol.import_text, text, str(source), op="policy-import")
        return reply({"imported": keys})

    async def delete_policies(self, request: web.Request) -> web.Response:
        data = await _body(request)
        pol = self.agent.policy
        if "text" in data:
            parsed = await self.agent.run_dp(pol.parse, _str(data, "text"),
                                             str(data.get("source") or "<stdin>"))
            keys = [p.key for _, p in parsed]
        else:
            raw = data.get("keys")
            if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
                raise InputError("keys", "must be a list of policy names")
            keys = list(raw)
        return reply({"deleted": await self.agent.run_dp(pol.delete, keys, op="policy-delete")})

    async def list_policies(self, request: web.Request) -> web.Response:
        return reply(await self.agent.run_dp(self.agent.policy.listing))

    async def get_policy(self, request: web.Request) -> web.Response:
        key = request.query.get("key", "")
        return reply(await self.agent.run_dp(self.agent.policy.get, key))

    async def trace(self, request: web.Request) -> web.Response:
        data = await _body(request)
        port = data.get("port")
        if not isinstance(port, int) or isinstance(port, bool):
            raise InputError("port", "required, a number")
        result = await self.agent.run_dp(self.agent.policy.trace, _str(data, "from"),
                                         _str(data, "to"), port,
                                         str(data.get("protocol") or "TCP"))
        return reply(result)

    async def list_identities(self, request: web.Request) -> web.Response:
        return reply(await self.agent.run_dp(self.agent.policy.identities_json))

    async def get_identity(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not raw.isdigit():
            raise InputError("identity", f"{raw!r} is not a number")
        ids = await self.agent.run_dp(self.agent.policy.identities_json)
        for i in ids:
            if i["id"] == int(raw):
                return reply(i)
        raise NotFound(f"identity {raw} not found")


    # --- flows ----------------------------------------------------------------------------------
    def _filter(self, request: web.Request) -> tuple[FlowFilter, int | None, bool, str]:
        q: dict[str, list[str]] = {}
        for k, v in request.query.items():
            q.setdefault(k, []).append(v)
        flt = FlowFilter.from_query(q)
        output = q.get("output", ["json"])[-1]
        if output not in FLOW_FORMATS:
            raise FilterError(f"-o: {output!r} is not one of {', '.join(FLOW_FORMATS)}")
        last = None
        if "last" in q:
            raw = q["last"][-1]
            if not raw.isdigit():
                raise InputError("last", f"{raw!r} is not a number")
            last = int(raw)
        follow = q.get("follow", ["0"])[-1] in ("1", "true", "yes")
        return flt, last, follow, output

    async def flows(self, request: web.Request) -> web.StreamResponse:
        """Matching flows, one per line: JSON (Hubble's shape), compact or the policy log;
        `follow=1` keeps streaming."""
        try:
            flt, last, follow, output = self._filter(request)
        except (FilterError, InputError) as e:
            return reply({"error": str(e)}, 400)
        render = FLOW_FORMATS[output]
        if output == "policy" and not flt.type:
            # The policy log is made of policy verdicts: --last N counts those.
            flt = dataclasses.replace(flt, type=(EventType.POLICY,))
        store = self.agent.flows.store
        sub = store.subscribe(flt) if follow else None
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        try:
            if not follow or last is not None or flt.since is not None:
                # --follow alone streams what comes from now on, as hubble observe does
                await _send_lines(resp, render(store.query(flt, last)))
            while sub is not None:
                flows = [await sub.queue.get()]
                while not sub.queue.empty() and len(flows) < 1024:
                    flows.append(sub.queue.get_nowait())
                await _send_lines(resp, render(flows))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if sub is not None:
                store.unsubscribe(sub)
        return resp

    async def monitor(self, request: web.Request) -> web.StreamResponse:
        """Raw datapath events as JSON lines, until the client goes."""
        as_json = request.query.get("output", "text") == "json"
        q: asyncio.Queue[Event] = asyncio.Queue(8192)
        svc = self.agent.flows
        svc.monitors.add(q)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        try:
            while True:
                evs = [await q.get()]
                while not q.empty() and len(evs) < 1024:
                    evs.append(q.get_nowait())
                await _send_lines(resp, [json.dumps(event_json(e)) if as_json
                                         else monitor_line(e) for e in evs])
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            svc.monitors.discard(q)
        return resp

    async def metrics(self, request: web.Request) -> web.Response:
        body = await self.agent.run_dp(self.agent.flows.metrics.render)
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def _as_json(flows: list[Flow]) -> list[str]:
    return [json.dumps(f.to_json(), separators=(",", ":")) for f in flows]


def _as_policy_log(flows: list[Flow]) -> list[str]:
    return [line for f in flows if (line := f.policy_line()) is not None]


FLOW_FORMATS: dict[str, Callable[[list[Flow]], list[str]]] = {
    "json": _as_json,
    "compact": lambda flows: [f.compact() for f in flows],
    "policy": _as_policy_log,
}


async def _send_lines(resp: web.StreamResponse, lines: list[str]) -> None:
    if lines:
        await resp.write(("\n".join(lines) + "\n").encode())


def build_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=16 * 1024 * 1024)
    r = Routes(agent)
    app.router.add_get("/v1/status", r.status)
    app.router.add_get("/v1/endpoints", r.list_endpoints)
    app.router.add_post("/v1/endpoints", r.create_endpoint)
    app.router.add_get("/v1/endpoints/{id}", r.get_endpoint)
    app.router.add_patch("/v1/endpoints/{id}", r.patch_endpoint)
    app.router.add_delete("/v1/endpoints/{id}", r.delete_endpoint)
    app.router.add_get("/v1/bpf/{map}", r.bpf_map)
    app.router.add_post("/v1/services", r.upsert_services)
    app.router.add_get("/v1/services", r.list_services)
    app.router.add_post("/v1/services/delete", r.delete_services)
    app.router.add_get("/v1/services/{namespace}/{name}", r.get_service)
    app.router.add_delete("/v1/services/{namespace}/{name}", r.delete_service)
    app.router.add_post("/v1/policies", r.import_policies)
    app.router.add_get("/v1/policies", r.list_policies)
    app.router.add_get("/v1/policy", r.get_policy)
    app.router.add_post("/v1/policies/delete", r.delete_policies)
    app.router.add_post("/v1/policy/trace", r.trace)
    app.router.add_get("/v1/identities", r.list_identities)
    app.router.add_get("/v1/identities/{id}", r.get_identity)
    app.router.add_get("/v1/flows", r.flows)
    app.router.add_get("/v1/monitor", r.monitor)
    app.router.add_get("/metrics", r.metrics)
    return app


async def start_metrics(agent: Agent, sock: socket.socket) -> web.AppRunner:
    """`--metrics-addr`: /metrics alone, on a TCP socket bound before the agent entered the
    node's namespace."""
    app = web.Application()
    app.router.add_get("/metrics", Routes(agent).metrics)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


async def start_api(agent: Agent) -> web.AppRunner:
    path = agent.config.socket_path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        path.unlink()
    runner = web.AppRunner(build_app(agent), access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return runner
