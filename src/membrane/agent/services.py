"""The agent's load-balancer service: services in, map writes out, a journal on disk.

Runs on the datapath thread like every other kernel change. A request is checked whole
(`LBState.check`) before anything changes, so a refused batch changes nothing; then the state
computes the writes (O(changed frontends), see `membrane.loadbalancer.state`) and they go to the
maps in order.

Persistence is an append-only journal of JSON lines (`services.journal`: a `put` with the whole
service or a `del` with its key), one fsync per request, so adding one service costs the same at
50,000 services as at one; start-up replays it, writes a compacted copy, and brings the maps to
the replayed state, keeping the reverse-NAT indexes and backend ids the pinned maps already use
(conntrack entries of live connections name them).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from membrane.datapath.loader import Datapath
from membrane.datapath.maps.lb import BackendValue, SvcKey, SvcValue
from membrane.datapath.reconcile import reconcile
from membrane.errors import InputError, MembraneError, NotFound
from membrane.loadbalancer.model import Service, service_from_json
from membrane.loadbalancer.state import LBState, MapName, Op

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PROTO_NAMES = {6: "TCP", 17: "UDP"}


def _check_name(svc: Service, where: str) -> None:
    for what, value in (("namespace", svc.namespace), ("name", svc.name)):
        if len(value) > 63 or not NAME_RE.match(value):
            raise InputError(f"{where}.{what}", f"{value!r} is not a DNS label (lowercase "
                             "letters, digits and '-', at most 63)")


class ServiceManager:
    def __init__(self, *, datapath: Datapath, state_dir: Path, node_ips: list[IPv4Address],
                 maglev_size: int) -> None:
        self.dp = datapath
        self.path = state_dir / "services.journal"
        self.state = LBState(node_ips=node_ips, maglev_size=maglev_size)
        self.writes = 0
        """Load-balancer map writes since start."""
        self.last_datapath_us = 0.0

    # --- writing ---------------------------------------------------------------------------------
    def _ops(self) -> dict[MapName, Any]:
        lb = self.dp.lb
        return {"backends": lb.backends, "rev_nat": lb.rev_nat, "maglev": lb.maglev,
                "services": lb.services}

    def _write(self, ops: list[Op]) -> float:
        maps = self._ops()
        t0 = time.perf_counter()
        run: list[tuple[Any, Any]] = []
        for name, what, key, value in ops:
            if name == "maglev" and what == "update":
                run.append((key, value))  # whole tables: one syscall per 4,096 entries
                continue
            if run:
                self.dp.lb.maglev.update_many(run)
                run = []
            m = maps[name]
            if what == "update":
                m.update(key, value)
            else:
                m.delete(key)
        if run:
            self.dp.lb.maglev.update_many(run)
        self.writes += len(ops)
        return (time.perf_counter() - t0) * 1e6

    def _journal(self, lines: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            for line in lines:
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # --- requests --------------------------------------------------------------------------------
    def parse(self, raw: Any, where: str = "services") -> list[Service]:
        if not isinstance(raw, list):
            raise InputError(where, "must be a list of services")
        out = []
        for i, d in enumerate(raw):
            svc = service_from_json(d, f"{where}[{i}]")
            _check_name(svc, f"{where}[{i}]")
            out.append(svc)
        return out

    def upsert(self, services: list[Service]) -> dict[str, Any]:
        t0 = time.perf_counter()
        ops = self.state.upsert(services)
        us = self._write(ops)
        self._journal([{"op": "put", "service": s.to_json()} for s in services])
        self.last_datapath_us = us
        return {"upserted": [s.key for s in services], "map_writes": len(ops),
                "datapath_us": round(us, 1),
                "elapsed_us": round((time.perf_counter() - t0) * 1e6, 1)}

    def delete(self, keys: list[str]) -> dict[str, Any]:
        t0 = time.perf_counter()
        removed, ops = self.state.remove(keys)
        us = self._write(ops)
        if removed:
            self._journal([{"op": "del", "key": k} for k in removed])
        return {"deleted": removed, "map_writes": len(ops), "datapath_us": round(us, 1),
                "elapsed_us": round((time.perf_counter() - t0) * 1e6, 1)}

    def delete_one(self, key: str) -> dict[str, Any]:
        if key not in self.state.services:
            raise NotFound(f"service {key!r} not found")
        return self.delete([key])

    def get(self, key: str) -> dict[str, Any]:
        svc = self.state.services.get(key)
        if svc is None:
            raise NotFound(f"service {key!r} not found")
        return self._json(svc)

    def listing(self) -> list[dict[str, Any]]:
        return [self._json(self.state.services[k]) for k in sorted(self.state.services)]

    def _json(self, svc: Service) -> dict[str, Any]:
        out = svc.to_json()
        fes = []
        for fe, _ in svc.frontends(self.state.table.node_ips):
            fs = self.state.frontends.get((fe.ip, fe.port, 6 if fe.protocol == "TCP" else 17))
            fes.append({"address": f"{fe.ip}:{fe.port}", "protocol": fe.protocol,
                        "kind": fe.kind, "rev_nat": fs.rev_nat if fs else 0,
                        "active_backends": len(fs.active) if fs else 0})
        out["frontends"] = fes
        return out

    # --- restore ----------------------------------------------------------------------------
    def load(self) -> dict[str, int]:
        """Replay the journal, compact it, and bring the maps to the result."""
        services: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                for n, line in enumerate(self.path.read_text().splitlines(), 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        log.warning("%s:%d: torn record skipped (a crash mid-write)",
                                    self.path, n)
                        continue
                    if rec.get("op") == "put":
                        s = rec["service"]
                        services[f"{s['namespace']}/{s['name']}"] = s
                    elif rec.get("op") == "del":
                        services.pop(rec["key"], None)
            except (OSError, KeyError, TypeError) as e:
                raise MembraneError(f"{self.path}: corrupt service journal: {e}") from e
        lb = self.dp.lb
        actual_services = lb.services.dump()
        actual_backends = lb.backends.dump()
        self.state.preferred_rev_nat = {
            (k.address, k.port, k.proto): v.rev_nat
            for k, v in actual_services.items() if k.slot == 0
        }
        self.state.preferred_backend = {
            (v.address, v.port, v.proto): bid for bid, v in actual_backends.items()
        }
        parsed = []
        for key, d in services.items():
            try:
                parsed.append(service_from_json(d, f"{self.path}: {key}"))
            except MembraneError as e:
                raise MembraneError(f"corrupt service journal: {e}") from e
        self.state.upsert(parsed)
        self.state.preferred_rev_nat = {}
        self.state.preferred_backend = {}
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            for s in parsed:
                f.write(json.dumps({"op": "put", "service": s.to_json()},
                                   separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return {"services": len(parsed), "lb_writes": self.reconcile_maps(actual_services,
                                                                          actual_backends)}

    def reconcile_maps(self, actual_services: dict[SvcKey, SvcValue] | None = None,
                       actual_backends: dict[int, BackendValue] | None = None) -> int:
        """Write what differs between the state and the maps: additions first (backends,
        reverse NAT, Maglev, services), deletions after, in the opposite order."""
        lb = self.dp.lb
        want = self.state.desired_maps()
        actual: dict[MapName, Callable[[], dict[Any, Any]]] = {
            "backends": lambda: actual_backends if actual_backends is not None
            else lb.backends.dump(),
            "rev_nat": lb.rev_nat.dump,
            "maglev": lb.maglev.dump,
            "services": lambda: actual_services if actual_services is not None
            else lb.services.dump(),
        }
        maps = self._ops()
        order: list[MapName] = ["backends", "rev_nat", "maglev", "services"]
        have = {name: actual[name]() for name in order}
        n = 0
        for name in order:
            res = reconcile(desired=want[name], actual=have[name], ops=maps[name], prune=False)
            n += res.updated
        for name in reversed(order):
            extra = {k: v for k, v in have[name].items() if k not in want[name]}
            res = reconcile(desired={}, actual=extra, ops=maps[name])
            n += res.deleted
        self.writes += n
        return n

    # --- inspect ---------------------------------------------------------------------------------
    def maps_json(self) -> dict[str, Any]:
        lb = self.dp.lb
        services = []
        for k, v in sorted(lb.services.dump().items(),
                           key=lambda kv: (int(kv[0].address), kv[0].port, kv[0].proto,
                                           kv[0].slot)):
            e: dict[str, Any] = {"frontend": f"{k.address}:{k.port}",
                                 "protocol": PROTO_NAMES.get(k.proto, str(k.proto)),
                                 "slot": k.slot}
            if k.slot == 0:
                e |= {"count": v.nbackends, "rev_nat": v.rev_nat, "flags": _flag_names(v.flags),
                      "affinity_timeout": v.affinity_timeout}
            else:
                e["backend_id"] = v.backend_id
            services.append(e)
        backends = [{"id": bid, "address": f"{v.address}:{v.port}",
                     "protocol": PROTO_NAMES.get(v.proto, str(v.proto)),
                     "state": "active" if v.state == 0 else "terminating"}
                    for bid, v in sorted(lb.backends.dump().items())]
        rev = [{"rev_nat": i, "frontend": f"{v.address}:{v.port}"}
               for i, v in sorted(lb.rev_nat.dump().items())]
        maglev_tables: dict[int, int] = {}
        for (rn, _), _bid in lb.maglev.dump().items():
            maglev_tables[rn] = maglev_tables.get(rn, 0) + 1
        return {"services": services, "backends": backends, "reverse_nat": rev,
                "affinity": lb.affinity.dump(),
                "maglev": [{"rev_nat": rn, "entries": n}
                           for rn, n in sorted(maglev_tables.items())],
                "reverse_sk": lb.reverse_sk.dump()}

    def status(self) -> dict[str, Any]:
        return {"services": len(self.state.services), "frontends": len(self.state.frontends),
                "backends": len(self.state.backend_ids), "lb_writes": self.writes,
                "maglev_table_size": self.state.maglev_size}


def _flag_names(flags: int) -> list[str]:
    names = ["affinity", "maglev", "nodeport", "external"]
    return [n for i, n in enumerate(names) if flags & (1 << i)]


