"""The agent's API: JSON over HTTP on a root-only unix socket (routes in docs/internals.md)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from aiohttp import web

from membrane.endpoint.manager import CreateRequest
from membrane.errors import Conflict, InputError, MembraneError, NotFound
from membrane.types import EndpointID

if TYPE_CHECKING:
    from membrane.agent.app import Agent

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


class Routes:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def status(self, request: web.Request) -> web.Response:
        return reply(await self.agent.run_dp(self.agent.status))

    async def list_endpoints(self, request: web.Request) -> web.Response:
        eps = await self.agent.run_dp(self.agent.endpoints.list)
        return reply([ep.to_json() for ep in eps])

    async def get_endpoint(self, request: web.Request) -> web.Response:
        ep = await self.agent.run_dp(self.agent.endpoints.get, _ep_id(request))
        return reply(ep.to_json())

    async def create_endpoint(self, request: web.Request) -> web.Response:
        data = await _body(request)
        unknown = set(data) - {"netns", "netns_name", "pod", "labels", "namespace_labels"}
        if unknown:
            raise InputError(sorted(unknown)[0], "unknown field")
        for key in ("netns", "netns_name", "pod"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise InputError(key, "must be a string")
        req = CreateRequest(
            netns=data.get("netns"), netns_name=data.get("netns_name"), pod=data.get("pod"),
            labels=_labels(data, "labels") or {},
            namespace_labels=_labels(data, "namespace_labels") or {},
        )
        ep = await self.agent.run_dp(self.agent.endpoints.create, req)
        return reply(ep.to_json(), 201)

    async def patch_endpoint(self, request: web.Request) -> web.Response:
        data = await _body(request)
        ep = await self.agent.run_dp(
            self.agent.endpoints.update_labels, _ep_id(request), _labels(data, "labels"),
            _labels(data, "namespace_labels"),
        )
        return reply(ep.to_json())

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        ep = await self.agent.run_dp(self.agent.endpoints.delete, _ep_id(request))
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
        }
        if name not in dumps:
            raise NotFound(f"unknown map {name!r}; known: {', '.join(sorted(dumps))}")
        return reply(await self.agent.run_dp(dumps[name]))


def build_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[errors_as_json])
    r = Routes(agent)
    app.router.add_get("/v1/status", r.status)
    app.router.add_get("/v1/endpoints", r.list_endpoints)
    app.router.add_post("/v1/endpoints", r.create_endpoint)
    app.router.add_get("/v1/endpoints/{id}", r.get_endpoint)
    app.router.add_patch("/v1/endpoints/{id}", r.patch_endpoint)
    app.router.add_delete("/v1/endpoints/{id}", r.delete_endpoint)
    app.router.add_get("/v1/bpf/{map}", r.bpf_map)
    return app


async def start_api(agent: Agent) -> web.AppRunner:
    path = agent.config.socket_path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        path.unlink()
    runner = web.AppRunner(build_app(agent), access_log=None)
    await runner.setup()
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return runner
