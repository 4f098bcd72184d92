"""The agent's policy service: imports, persistence, and the engine's diffs written to the maps.

Runs on the datapath thread like every other kernel change. While the agent restores after a
restart (`loading`), diffs are not written: once the endpoints and policies are back, one
reconcile brings mb_policy, mb_ipcache's CIDR entries and mb_ipblock to the engine's state,
writing only what differs (nothing, after a clean restart).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from membrane.datapath.abi import POLICY_MAX
from membrane.datapath.loader import Datapath
from membrane.datapath.maps.policy import KeyTuple, ValueTuple
from membrane.datapath.reconcile import reconcile
from membrane.endpoint.model import Endpoint, write_json_atomic
from membrane.errors import InputError, MembraneError, NotFound
from membrane.identity import HOST, WORLD, IdentityAllocator
from membrane.identity.reserved import RESERVED_BY_NAME, reserved_labels
from membrane.k8s.manifests import RawObject, load_manifests
from membrane.labels import Labels
from membrane.policy.engine import Diff, PolicyEngine, named_ports_of
from membrane.policy.entries import IndexedEntries, decide
from membrane.policy.parse import POLICY_KINDS, parse_policy
from membrane.policy.rules import ICMP, PROTOCOLS, Policy
from membrane.policy.trace import Party, Tracer
from membrane.types import Identity

log = logging.getLogger(__name__)


class PolicyService:
    def __init__(self, *, datapath: Datapath, identities: IdentityAllocator, state_dir: Path,
                 endpoints: Callable[[], list[Endpoint]],
                 reconcile_ipcache: Callable[[], int]) -> None:
        self.dp = datapath
        self.identities = identities
        self.path = state_dir / "policies.json"
        self.engine = PolicyEngine(capacity=POLICY_MAX)
        self.tracer = Tracer(self.engine)
        self._endpoints = endpoints
        self._reconcile_ipcache = reconcile_ipcache
        self.loading = True
        self.writes = 0
        """Policy map writes since start (tests and benchmarks count them)."""
        self.ct_revoked = 0

    # --- writing ---------------------------------------------------------------------------
    def _apply(self, diff: Diff, prefixes_changed: bool = False) -> None:
        if self.loading:
            return
        if prefixes_changed:
            self._sync_prefix_maps()
        for k, v in diff.updates.items():
            self.dp.policy.update(k, v)
        for k in diff.deletes:
            self.dp.policy.delete(k)
        self.writes += len(diff)
        if diff:
            self.ct_revoked += self.revalidate_conntrack()

    def revalidate_conntrack(self) -> int:
        """Remove the conntrack entries of connections the new policy would refuse.

        The datapath checks policy on a connection's first packet only; without this an
        established connection would outlive the rule that allowed it. With it, the
        connection's next packet is a first packet again and is refused (as Cilium, which
        checks policy on every packet of the forward direction). Returns entries removed."""
        entries = IndexedEntries(self.engine.all_entries())
        endpoints = self.dp.endpoints.dump()
        removed = 0
        for ct in self.dp.ct.dump():
            if ct.proto == ICMP:
                continue  # echo entries live a minute; requests are checked again anyway
            local, peer_ip = (ct.src, ct.dst) if ct.direction == "egress" else (ct.dst, ct.src)
            ep = endpoints.get(local)
            if ep is None:
                continue
            peer = self.dp.ipcache.resolve(peer_ip) or WORLD
            block = self.dp.ipblock.resolve(peer_ip) or 0
            reason, _ = decide(entries, subject=ep.identity, peer=peer, block=block,
                               direction=1 if ct.direction == "ingress" else 2,
                               proto=ct.proto, port=ct.dport)
            if reason:
                self.dp.ct.delete_c(ct.key())
                removed += 1
        if removed:
            log.info("policy change: %d conntrack entries of now-refused connections removed",
                     removed)
        return removed

    def _sync_prefix_maps(self) -> int:
        n = self._reconcile_ipcache()
        res = reconcile(desired=self.engine.prefix_identities("ipblock"),
                        actual=self.dp.ipblock.dump(), ops=self.dp.ipblock)
        return n + res.updated + res.deleted

    def finish_loading(self) -> int:
        """After restore: write what differs between the engine and the maps."""
        self.loading = False
        n = self._sync_prefix_maps()
        desired: dict[KeyTuple, ValueTuple] = dict(self.engine.all_entries().items())
        res = reconcile(desired=desired, actual=self.dp.policy.dump(), ops=self.dp.policy)
        return n + res.updated + res.deleted

    # --- the endpoint manager's listener -----------------------------------------------------
    def identity_added(self, identity: Identity, labels: Labels) -> None:
        self._apply(self.engine.identity_added(identity, labels))

    def identity_removed(self, identity: Identity) -> None:
        self._apply(self.engine.identity_removed(identity))

    def endpoints_changed(self, identities: set[Identity]) -> None:
        eps = self._endpoints()
        for ident in identities:
            if ident in self.engine.labels:
                decls = [(n, PROTOCOLS[p], port) for ep in eps if ep.identity == ident
                         for n, p, port in ep.ports if p in PROTOCOLS]
                self._apply(self.engine.set_named_ports(ident, named_ports_of(decls)))

    # --- policies ------------------------------------------------------------------------------
    def parse(self, text: str, source: str) -> list[tuple[RawObject, Policy]]:
        out = []
        for m in load_manifests(text, source):
            if not isinstance(m, RawObject) or m.kind not in POLICY_KINDS:
                raise InputError(m.where, f"kind {m.kind} is not a policy "
                                 f"(expected {', '.join(POLICY_KINDS)})")
            out.append((m, parse_policy(m)))
        return out

    def upsert(self, parsed: list[tuple[RawObject, Policy]]) -> list[str]:
        before = set(self.engine._prefix_ids)
        diff = self.engine.upsert([p for _, p in parsed])
        self._apply(diff, prefixes_changed=set(self.engine._prefix_ids) != before)
        self.save()
        return [p.key for _, p in parsed]

    def import_text(self, text: str, source: str) -> list[str]:
        return self.upsert(self.parse(text, source))

    def import_objects(self, objects: list[dict[str, Any]]) -> list[str]:
        """Objects a manifest loader already split (the lab's apply): kind, namespace, name,
        body and where."""
        parsed = []
        for i, o in enumerate(objects):
            try:
                raw = RawObject(kind=str(o["kind"]), api_version=str(o["body"]["apiVersion"]),
                                namespace=o.get("namespace"), name=str(o["name"]),
                                body=dict(o["body"]), where=str(o.get("where") or o["name"]))
            except (KeyError, TypeError, AttributeError) as e:
                raise InputError(f"objects[{i}]", f"malformed policy object: {e}") from e
            if raw.kind not in POLICY_KINDS:
                raise InputError(raw.where, f"kind {raw.kind} is not a policy")
            parsed.append((raw, parse_policy(raw)))
        return self.upsert(parsed)

    def delete(self, keys: list[str]) -> list[str]:
        found = [k for k in keys if k in self.engine.policies]
        before = set(self.engine._prefix_ids)
        diff = self.engine.delete(found)
        self._apply(diff, prefixes_changed=set(self.engine._prefix_ids) != before)
        self.save()
        return found

    def save(self) -> None:
        write_json_atomic(self.path, {"policies": [
            {"kind": p.kind, "namespace": p.namespace, "name": p.name, "object": p.source}
            for p in self.engine.policies.values()
        ]})

    def load(self) -> None:
        if not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())["policies"]
            objs = [RawObject(kind=s["kind"], api_version=s["object"]["apiVersion"],
                              namespace=s["namespace"], name=s["name"], body=s["object"],
                              where=f"{self.path}: {s['kind']} {s['name']}") for s in saved]
            self.engine.upsert([parse_policy(o) for o in objs])
        except (ValueError, KeyError, TypeError, MembraneError) as e:
            raise MembraneError(f"{self.path}: corrupt policy state: {e}") from e

    def listing(self) -> list[dict[str, Any]]:
        names = {v: k for k, v in self.engine.cookie_names().items()}
        return [
            {"key": p.key, "kind": p.kind, "namespace": p.namespace, "name": p.name,
             "rules": len(p.rules), "cookie": names.get(p.key, 0),
             "selects": sorted({i for r in p.rules for i in self.engine.selection(r.subject)})}
            for p in self.engine.policies.values()
        ]

    def get(self, key: str) -> dict[str, Any]:
        p = self.engine.policies.get(key)
        if p is None:
            raise NotFound(f"policy {key!r} not found")
        return p.source

    # --- inspect ---------------------------------------------------------------------------------
    def entries_of(self, identity: Identity) -> list[dict[str, Any]]:
        names = self.engine.cookie_names()
        out = []
        for k, v in sorted(self.dp.policy.dump().items()):
            if k[0] != identity:
                continue
            _, peer, direction, proto, port, bits = k
            flags, cookie = v
            out.append({
                "direction": "ingress" if direction == 1 else "egress",
                "peer": peer, "peer_labels": self.identity_labels(Identity(peer)),
                "protocol": proto, "port": port, "port_bits": bits,
                "verdict": "deny" if flags & 1 else ("default-deny" if flags & 2 else "allow"),
                "policy": names.get(cookie, "" if cookie == 0 else str(cookie)),
            })
        return out

    def identity_labels(self, ident: Identity) -> list[str]:
        if ident == 0:
            return ["(any)"]
        lbl = self.identities.lookup(ident)
        if lbl is not None:
            return lbl.to_list()
        if ident in self.engine.prefixes:
            kind, prefix = self.engine.prefixes[ident]
            return [f"{kind}:{prefix}"]
        return []

    def identities_json(self) -> list[dict[str, Any]]:
        out = [{"id": i, "labels": reserved_labels(i).to_list(), "kind": "reserved",  # type: ignore[union-attr]
                "refcount": 0} for i in sorted(RESERVED_BY_NAME.values()) if i]
        out += [{"id": i, "labels": lbl.to_list(), "kind": "workload",
                 "refcount": self.identities.refcount(i)}
                for i, lbl in sorted(self.identities.all().items())]
        out += [{"id": i, "labels": [f"{k}:{p}"], "kind": k, "refcount": 0}
                for i, (k, p) in sorted(self.engine.prefixes.items())]
        return out

    # --- trace -----------------------------------------------------------------------------------
    def party(self, spec: str, where: str) -> Party:
        """`NS/POD`, `labels:k=v,...` or `k=v,...` (labels), `CIDR`/address, or an entity
        name (`world`, `host`)."""
        eps = self._endpoints()
        if spec in RESERVED_BY_NAME:
            ident = RESERVED_BY_NAME[spec]
            return Party(identity=ident, labels=reserved_labels(ident) or Labels(), name=spec)
        for ep in eps:
            if ep.pod == spec:
                labels = self.identities.lookup(ep.identity) or Labels()
                return Party(identity=ep.identity, labels=labels, ip=ep.ipv4, name=spec,
                             local=True)
        try:
            ip = IPv4Network(spec, strict=False).network_address if "/" in spec \
                else IPv4Address(spec)
        except ValueError:
            ip = None
        if ip is not None:
            for ep in eps:
                if ep.ipv4 == ip:
                    labels = self.identities.lookup(ep.identity) or Labels()
                    return Party(identity=ep.identity, labels=labels, ip=ip,
                                 name=ep.pod or str(ip), local=True)
            ident = Identity(self.dp.ipcache.resolve(ip) or WORLD)
            labels = self.identities.lookup(ident) or Labels()
            return Party(identity=ident, labels=labels, ip=ip, name=spec)
        if "=" in spec:
            text = spec.removeprefix("labels:")
            labels = Labels.parse([t.strip() for t in text.split(",") if t.strip()])
            known = self.identities.lookup_by_labels(labels)
            return Party(identity=known, labels=labels, name=spec, local=True)
        if "/" in spec:
            raise NotFound(f"{where}: pod {spec!r} is not an endpoint of this node")
        raise InputError(where, f"{spec!r} is not NS/POD, labels (k=v,...), an address or "
                         "a CIDR, or an entity (host, world)")

    def trace(self, src: str, dst: str, port: int, protocol: str) -> dict[str, Any]:
        if protocol not in PROTOCOLS:
            raise InputError("--protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if not 0 <= port <= 65535:
            raise InputError("--port", f"{port} is out of range 0-65535")
        a = self.party(src, "--from")
        b = self.party(dst, "--to")
        if a.identity == HOST:
            a = Party(identity=HOST, labels=a.labels, ip=a.ip, name=a.name)
        return self.tracer.trace(a, b, PROTOCOLS[protocol], port)
