"""The node's load-balancer state and the map writes that take the datapath from one to the next.

Pure code: `LBState` holds the services, each frontend's reverse-NAT index and active backends,
and the backend ids (one per (address, port, protocol), shared by every frontend that uses it,
reference counted). `upsert`/`remove` change the state and return the writes, in the order
that keeps every packet's lookups valid:

    backends, reverse NAT, Maglev entries, new slots  ->  master entries  ->
    master deletes, stale slots, Maglev and reverse NAT deletes  ->  unused backends

so a datapath reading mid-way sees either the old or the new backend set of a frontend, never a
count naming an unwritten slot or a slot naming a deleted backend. The work is per changed
frontend, whatever the number of services: adding a ClusterIP service with two backends is four
writes (two slots, the master, the reverse NAT entry), plus the backends the node did not have.

Backends that are *terminating* keep their id (connections in conntrack name it) but get no
slot; a backend disappears from the maps when no frontend lists it any more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Literal

from membrane.datapath.abi import (
    LB4_BACKENDS_MAX,
    LB4_MAGLEV_MAX,
    LB4_REVNAT_MAX,
    LB4_SERVICES_MAX,
    LB_BACKEND_ACTIVE,
    LB_BACKEND_TERMINATING,
    LB_F_AFFINITY,
    LB_F_EXTERNAL,
    LB_F_MAGLEV,
    LB_F_NODEPORT,
)
from membrane.datapath.maps.lb import BackendValue, RevNatValue, SvcKey, SvcValue
from membrane.errors import Conflict, InputError
from membrane.loadbalancer import maglev
from membrane.loadbalancer.model import Frontend, Service, ServicePort, ServiceTable

PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
BackendKey = tuple[IPv4Address, int, int]
FrontendKey = tuple[IPv4Address, int, int]
MapName = Literal["backends", "rev_nat", "maglev", "services"]
Op = tuple[MapName, Literal["update", "delete"], object, object]
"""(map, "update" | "delete", key, value or None)."""


@dataclass(slots=True)
class FrontendState:
    key: FrontendKey
    service: str
    rev_nat: int
    flags: int
    affinity_timeout: int
    active: tuple[int, ...]
    """Backend ids of the slots 1..n, in order."""
    backends: tuple[int, ...]
    """Every backend id the frontend lists (active and terminating)."""
    maglev: tuple[int, ...] = ()
    """Backend id per Maglev slot (Maglev frontends with active backends)."""

    def service_entries(self) -> dict[SvcKey, SvcValue]:
        ip, port, proto = self.key
        out = {SvcKey(ip, port, proto, 0): SvcValue(0, len(self.active), self.rev_nat,
                                                    self.affinity_timeout, self.flags)}
        for i, bid in enumerate(self.active, 1):
            out[SvcKey(ip, port, proto, i)] = SvcValue(backend_id=bid)
        return out


@dataclass(slots=True)
class _Ids:
    """Small integers handed out lowest-first-after-last, returned ones reused."""

    limit: int
    used: set[int] = field(default_factory=set)
    next: int = 1

    def take(self, preferred: int | None = None) -> int:
        if preferred and preferred not in self.used and preferred <= self.limit:
            self.used.add(preferred)
            return preferred
        if len(self.used) >= self.limit:
            raise Conflict(f"all {self.limit} ids are in use")
        while self.next in self.used or self.next > self.limit:
            self.next = self.next + 1 if self.next < self.limit else 1
        n = self.next
        self.used.add(n)
        self.next = n + 1 if n < self.limit else 1
        return n

    def give(self, n: int) -> None:
        self.used.discard(n)


@dataclass(slots=True)
class _Plan:
    backend_updates: list[Op] = field(default_factory=list)
    early: list[Op] = field(default_factory=list)
    masters: list[Op] = field(default_factory=list)
    late: list[Op] = field(default_factory=list)
    backend_deletes: list[Op] = field(default_factory=list)

    def ops(self) -> list[Op]:
        return self.backend_updates + self.early + self.masters + self.late + \
            self.backend_deletes


class LBState:
    def __init__(self, *, node_ips: Iterable[IPv4Address] = (),
                 maglev_size: int = maglev.DEFAULT_SIZE,
                 service_entries_max: int = LB4_SERVICES_MAX) -> None:
        self.table = ServiceTable(node_ips=tuple(node_ips))
        self.maglev_size = maglev.check_size(maglev_size)
        self.frontends: dict[FrontendKey, FrontendState] = {}
        self.backend_ids: dict[BackendKey, int] = {}
        self.backend_keys: dict[int, BackendKey] = {}
        self._refs: dict[int, int] = {}
        self._active_refs: dict[int, int] = {}
        self._rev_nat = _Ids(LB4_REVNAT_MAX - 1)
        self._bids = _Ids(LB4_BACKENDS_MAX)
        self.service_entries = 0
        self.maglev_entries = 0
        self.service_entries_max = service_entries_max
        self.preferred_rev_nat: dict[FrontendKey, int] = {}
        self.preferred_backend: dict[BackendKey, int] = {}
        """Ids the pinned maps already use (a restart keeps them: conntrack names them)."""
        self._touched: set[int] = set()
        self._freed_rev_nat: list[int] = []
        self._written: dict[int, BackendValue] = {}

    @property
    def services(self) -> dict[str, Service]:
        return self.table.services

    # --- frontends of a service --------------------------------------------------------------
    def _flags(self, svc: Service, fe: Frontend) -> int:
        flags = LB_F_AFFINITY if svc.affinity_timeout else 0
        if fe.kind == "NodePort":
            flags |= LB_F_NODEPORT | LB_F_MAGLEV
        elif fe.kind == "ExternalIP":
            flags |= LB_F_EXTERNAL | LB_F_MAGLEV
        return flags

    def _desired(self, svc: Service) -> dict[FrontendKey, tuple[Frontend, ServicePort, int]]:
        return {(fe.ip, fe.port, PROTO_NUMBERS[fe.protocol]): (fe, sp, self._flags(svc, fe))
                for fe, sp in svc.frontends(self.table.node_ips)}

    # --- checks ----------------------------------------------------------------------------------
    def check(self, services: list[Service], where: str = "services") -> None:
        """Everything `upsert` could refuse, before any change: conflicts among the batch and
        with other services, and room in the maps."""
        seen: dict[FrontendKey, str] = {}
        keys: dict[str, int] = {}
        grow = 0
        grow_maglev = 0
        new_backends: set[BackendKey] = set()
        for i, svc in enumerate(services):
            at = f"{where}[{i}]"
            if svc.key in keys:
                raise InputError(at, f"service {svc.key} is already {where}[{keys[svc.key]}]")
            keys[svc.key] = i
            msg = self.table.conflict(svc)
            if msg:
                raise Conflict(f"{at}: {svc.key}: {msg}")
            desired = self._desired(svc)
            for k in desired:
                if k in seen:
                    raise InputError(at, f"{svc.key}: {k[0]}:{k[1]} is also a frontend of "
                                     f"{seen[k]} in this request")
                seen[k] = svc.key
            old = self.table.services.get(svc.key)
            old_keys = self._desired(old) if old else {}
            for k, (_, sp, flags) in desired.items():
                active = sum(1 for b in sp.backends if b.state == "active")
                grow += 1 + active
                if flags & LB_F_MAGLEV and active:
                    grow_maglev += self.maglev_size
                for b in sp.backends:
                    bk = (b.ip, b.port, k[2])
                    if bk not in self.backend_ids:
                        new_backends.add(bk)
            for k in old_keys:
                fs = self.frontends.get(k)
                if fs is not None:
                    grow -= 1 + len(fs.active)
                    grow_maglev -= len(fs.maglev)
        if self.service_entries + grow > self.service_entries_max:
            raise Conflict(f"{where}: the service map holds {self.service_entries_max} entries "
                           f"(a frontend and each active backend take one); "
                           f"{self.service_entries} are used, {grow} more asked")
        if self.maglev_entries + grow_maglev > LB4_MAGLEV_MAX:
            raise Conflict(f"{where}: the Maglev map holds {LB4_MAGLEV_MAX} entries "
                           f"({self.maglev_size} per NodePort or external frontend); "
                           f"{self.maglev_entries} are used, {grow_maglev} more asked")
        if len(self.backend_ids) + len(new_backends) > LB4_BACKENDS_MAX:
            raise Conflict(f"{where}: the backend map holds {LB4_BACKENDS_MAX} backends")
        new_fe = sum(1 for k in seen if k not in self.frontends)
        if len(self.frontends) + new_fe > LB4_REVNAT_MAX - 1:
            raise Conflict(f"{where}: at most {LB4_REVNAT_MAX - 1} frontends")

    # --- changes ---------------------------------------------------------------------------------
    def upsert(self, services: list[Service]) -> list[Op]:
        """Insert or replace services (checked with `check` first); the writes, in order."""
        self.check(services)
        plan = _Plan()
        for svc in services:
            self._upsert_one(svc, plan)
        self._collect_backends(plan)
        return plan.ops()

    def remove(self, keys: list[str]) -> tuple[list[str], list[Op]]:
        plan = _Plan()
        removed = []
        for key in keys:
            old = self.table.remove(key)
            if old is None:
                continue
            removed.append(key)
            for k in self._desired(old):
                self._drop_frontend(k, plan)
        self._collect_backends(plan)
        return removed, plan.ops()

    def _backend_id(self, key: BackendKey) -> int:
        bid = self.backend_ids.get(key)
        if bid is None:
            bid = self._bids.take(self.preferred_backend.get(key))
            self.backend_ids[key] = bid
            self.backend_keys[bid] = key
            self._refs[bid] = 0
            self._active_refs[bid] = 0
        return bid

    def _ref(self, bids: Iterable[int], active: Iterable[int], sign: int,
             touched: set[int]) -> None:
        for b in bids:
            self._refs[b] += sign
            touched.add(b)
        for b in active:
            self._active_refs[b] += sign
            touched.add(b)

    def _upsert_one(self, svc: Service, plan: _Plan) -> None:
        old = self.table.put(svc)
        desired = self._desired(svc)
        if old is not None:
            for k in self._desired(old):
                if k not in desired:
                    self._drop_frontend(k, plan)
        for k, (_, sp, flags) in desired.items():
            bids = tuple(self._backend_id((b.ip, b.port, k[2])) for b in sp.backends)
            active = tuple(bid for bid, b in zip(bids, sp.backends, strict=True)
                           if b.state == "active")
            cur = self.frontends.get(k)
            if cur is None:
                rev = self._rev_nat.take(self.preferred_rev_nat.get(k))
                new = FrontendState(key=k, service=svc.key, rev_nat=rev, flags=flags,
                                    affinity_timeout=svc.affinity_timeout, active=active,
                                    backends=bids)
                plan.early.append(("rev_nat", "update", rev, RevNatValue(k[0], k[1])))
                old_entries: dict[SvcKey, SvcValue] = {}
                old_maglev: tuple[int, ...] = ()
            else:
                new = FrontendState(key=k, service=svc.key, rev_nat=cur.rev_nat, flags=flags,
                                    affinity_timeout=svc.affinity_timeout, active=active,
                                    backends=bids, maglev=cur.maglev)
                old_entries = cur.service_entries()
                old_maglev = cur.maglev
                self._ref(cur.backends, cur.active, -1, self._touched)
            if flags & LB_F_MAGLEV and active:
                if cur is None or cur.active != active or not cur.maglev:
                    names = [f"{self.backend_keys[b][0]}:{self.backend_keys[b][1]}"
                             for b in active]
                    new.maglev = tuple(active[i] for i in maglev.table(names, self.maglev_size))
            else:
                new.maglev = ()
            self._ref(bids, active, +1, self._touched)
            self.frontends[k] = new
            for i, bid in enumerate(new.maglev):
                if i >= len(old_maglev) or old_maglev[i] != bid:
                    plan.early.append(("maglev", "update", (new.rev_nat, i), bid))
            for i in range(len(new.maglev), len(old_maglev)):
                plan.late.append(("maglev", "delete", (new.rev_nat, i), None))
            self.maglev_entries += len(new.maglev) - len(old_maglev)
            entries = new.service_entries()
            for sk, sv in entries.items():
                if old_entries.get(sk) != sv:
                    (plan.masters if sk.slot == 0 else plan.early).append(
                        ("services", "update", sk, sv))
            for sk in old_entries:
                if sk not in entries:
                    plan.late.append(("services", "delete", sk, None))
            self.service_entries += len(entries) - len(old_entries)

    def _drop_frontend(self, k: FrontendKey, plan: _Plan) -> None:
        cur = self.frontends.pop(k, None)
        if cur is None:
            return
        entries = cur.service_entries()
        master = SvcKey(k[0], k[1], k[2], 0)
        plan.masters.append(("services", "delete", master, None))
        for sk in entries:
            if sk.slot:
                plan.late.append(("services", "delete", sk, None))
        for i in range(len(cur.maglev)):
            plan.late.append(("maglev", "delete", (cur.rev_nat, i), None))
        plan.late.append(("rev_nat", "delete", cur.rev_nat, None))
        self._freed_rev_nat.append(cur.rev_nat)  # reusable once this plan's deletes are done
        self.service_entries -= len(entries)
        self.maglev_entries -= len(cur.maglev)
        self._ref(cur.backends, cur.active, -1, self._touched)

    def _collect_backends(self, plan: _Plan) -> None:
        """Backend entries of every backend whose references changed: written before the
        slots that name them, deleted after the last slot that named them is gone."""
        for bid in sorted(self._touched):
            key = self.backend_keys.get(bid)
            if key is None:
                continue
            if self._refs[bid] <= 0:
                plan.backend_deletes.append(("backends", "delete", bid, None))
                del self.backend_ids[key]
                del self.backend_keys[bid]
                del self._refs[bid]
                del self._active_refs[bid]
                self._bids.give(bid)
                continue
            state = LB_BACKEND_ACTIVE if self._active_refs[bid] > 0 else LB_BACKEND_TERMINATING
            value = BackendValue(key[0], key[1], key[2], state)
            if self._written.get(bid) != value:
                plan.backend_updates.append(("backends", "update", bid, value))
                self._written[bid] = value
        for rev in self._freed_rev_nat:
            self._rev_nat.give(rev)
        self._freed_rev_nat.clear()
        for _, _, bid_, _ in plan.backend_deletes:
            self._written.pop(bid_, None)  # type: ignore[call-overload]
        self._touched.clear()

    # --- the whole desired contents (restore) -----------------------------------------------------
    def desired_maps(self) -> dict[MapName, dict[object, object]]:
        services: dict[object, object] = {}
        maglev_entries: dict[object, object] = {}
        rev: dict[object, object] = {}
        for fs in self.frontends.values():
            for sk, sv in fs.service_entries().items():
                services[sk] = sv
            rev[fs.rev_nat] = RevNatValue(fs.key[0], fs.key[1])
            for i, bid in enumerate(fs.maglev):
                maglev_entries[(fs.rev_nat, i)] = bid
        backends: dict[object, object] = {
            bid: BackendValue(k[0], k[1], k[2], LB_BACKEND_ACTIVE if self._active_refs[bid] > 0
                              else LB_BACKEND_TERMINATING)
            for bid, k in self.backend_keys.items()
        }
        return {"backends": backends, "rev_nat": rev, "maglev": maglev_entries,
                "services": services}
