"""The policy engine: policies + identities -> the entries of mb_policy, incrementally.

State: the policies, a selector cache (selector -> the identities it selects) and the entries
currently wanted per subject identity. Every change (a policy imported or deleted, an identity
appearing or going, an identity's named ports changing) recomputes only the subject identities
it can affect and returns the difference as a `Diff` of map writes. So a pod whose labels
already have an identity causes no policy write at all (only its ipcache entry); the first pod
of a new identity writes the entries of the rules that select it or name it as a peer; deleting
a policy removes exactly the entries nothing else wants.

Prefix selectors (toCIDR, ipBlock) get prefix identities, node-local from 1<<24, whose
prefixes the agent writes to mb_ipcache (CIDR) or mb_ipblock (ipBlock).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network

from membrane.errors import Conflict, InputError
from membrane.identity import LOCAL_CIDR_IDENTITY_BASE, RESERVED_IDENTITIES, WORLD
from membrane.identity.reserved import reserved_labels
from membrane.labels import Labels
from membrane.policy.entries import (
    ANY_PEER,
    DIRECTION_NUMBER,
    F_DEFAULT_DENY,
    F_DENY,
    INGRESS,
    Key,
    Value,
    host_allow_key,
    port_prefixes,
)
from membrane.policy.rules import Policy, PortMatch, Rule
from membrane.policy.selector import (
    ENTITY_RESERVED,
    EntitySelector,
    LabelSelector,
    PrefixKind,
    PrefixSelector,
    Selector,
)
from membrane.types import Identity

NamedPorts = Mapping[tuple[str, int], frozenset[int]]
"""(port name, protocol) -> port numbers, for one identity."""


@dataclass(slots=True, kw_only=True)
class Diff:
    updates: dict[Key, Value] = field(default_factory=dict)
    deletes: set[Key] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.updates) + len(self.deletes)

    def merge(self, other: Diff) -> None:
        for k in other.deletes:
            self.updates.pop(k, None)
        self.deletes -= set(other.updates)
        self.updates.update(other.updates)
        self.deletes |= other.deletes


class PolicyMapFull(Conflict):
    """The entries would not fit mb_policy: raised before anything is written."""


class PolicyEngine:
    def __init__(self, *, capacity: int, allow_host_ingress: bool = True) -> None:
        self.capacity = capacity
        self.allow_host_ingress = allow_host_ingress
        self.policies: dict[str, Policy] = {}
        self._cookies: dict[str, int] = {}
        self.labels: dict[Identity, Labels] = {}
        """Workload identities (from 256) and their labels."""
        self.prefixes: dict[Identity, tuple[PrefixKind, IPv4Network]] = {}
        self._prefix_ids: dict[tuple[PrefixKind, IPv4Network], Identity] = {}
        self.named_ports: dict[Identity, NamedPorts] = {}
        self._selections: dict[Selector, frozenset[Identity]] = {}
        self._by_label: dict[tuple[str, str], set[Identity]] = {}
        self._selected_by: dict[Identity, set[Selector]] = {}
        """Identity -> the cached selectors that select it (the selector cache, reversed)."""
        """(label key, value) -> workload identities carrying it, whatever the source."""
        self._subject_rules: dict[Selector, list[Rule]] = defaultdict(list)
        self._peer_rules: dict[Selector, list[Rule]] = defaultdict(list)
        self.entries: dict[Identity, dict[Key, Value]] = {}
        self.total = 0

    # --- selections ------------------------------------------------------------------------
    def _matches(self, sel: Selector, ident: Identity) -> bool:
        if isinstance(sel, LabelSelector):
            labels = self.labels.get(ident)
            if labels is None and sel.names_reserved:
                labels = reserved_labels(ident)
            return labels is not None and sel.matches(labels)
        if isinstance(sel, EntitySelector):
            if ident in ENTITY_RESERVED.get(sel.entity, ()):
                return True
            if sel.entity == "cluster":
                return ident in self.labels
            if sel.entity == "world":
                return self.prefixes.get(ident, ("", None))[0] == "cidr"
            return False
        kind, prefix = self.prefixes.get(ident, (None, None))
        if prefix is None:
            # addresses outside every prefix resolve to world, so /0 contains it
            return ident == WORLD and sel.kind == "cidr" and sel.cidr.prefixlen == 0
        return kind == sel.kind and sel.selects_prefix(prefix)

    def _universe(self) -> Iterable[Identity]:
        yield from RESERVED_IDENTITIES
        yield from self.labels
        yield from self.prefixes

    def _candidates(self, sel: Selector) -> Iterable[Identity]:
        """A superset of what `sel` selects: for a label selector, the identities carrying
        the labels of its `In` requirements (the inverted index), not the whole universe."""
        if not isinstance(sel, LabelSelector) or sel.names_reserved:
            return self._universe()
        best: set[Identity] | None = None
        for r in sel.requirements:
            if r.op != "In":
                continue
            ids: set[Identity] = set()
            for v in r.values:
                ids |= self._by_label.get((r.key, v), set())
            if best is None or len(ids) < len(best):
                best = ids
        return self.labels if best is None else best

    def selection(self, sel: Selector) -> frozenset[Identity]:
        got = self._selections.get(sel)
        if got is None:
            got = frozenset(i for i in self._candidates(sel) if self._matches(sel, i))
            self._selections[sel] = got
            for i in got:
                self._selected_by.setdefault(i, set()).add(sel)
        return got

    def _refresh_selections(self, ident: Identity) -> list[Selector]:
        changed = []
        for sel, ids in self._selections.items():
            has = self._matches(sel, ident)
            if has != (ident in ids):
                self._selections[sel] = ids | {ident} if has else ids - {ident}
                if has:
                    self._selected_by.setdefault(ident, set()).add(sel)
                else:
                    self._selected_by.get(ident, set()).discard(sel)
                changed.append(sel)
        return changed

    # --- computing entries ---------------------------------------------------------------------
    def rules_selecting(self, subject: Identity) -> list[Rule]:
        out: list[Rule] = []
        for sel in self._selected_by.get(subject, ()):
            out += self._subject_rules.get(sel, ())
        return out

    def rule_peers(self, rule: Rule) -> list[Identity]:
        if rule.peers is None:
            return [ANY_PEER]
        ids: set[Identity] = set()
        for p in rule.peers:
            ids |= self.selection(p)
        return sorted(ids)

    def _named(self, ident: Identity, name: str, proto: int) -> frozenset[int]:
        if ident == ANY_PEER:
            out: set[int] = set()
            for ports in self.named_ports.values():
                out |= ports.get((name, proto), frozenset())
            return frozenset(out)
        return self.named_ports.get(ident, {}).get((name, proto), frozenset())

    def port_keys(self, rule: Rule, subject: Identity,
                  peer: Identity) -> list[tuple[int, int, int]]:
        """(proto, port, bits) the rule allows or denies between subject and peer."""
        if rule.ports is None:
            return [(0, 0, 0)]
        out: list[tuple[int, int, int]] = []
        for pm in rule.ports:
            out += self._expand(pm, subject if rule.direction == "ingress" else peer)
        return out

    def _expand(self, pm: PortMatch, destination: Identity) -> list[tuple[int, int, int]]:
        if pm.name:
            return [(pm.proto, p, 16) for p in sorted(self._named(destination, pm.name, pm.proto))]
        if not pm.port:
            return [(pm.proto, 0, 0)]
        end = pm.end_port or pm.port
        return [(pm.proto, port, bits) for port, bits in port_prefixes(pm.port, end)]

    def compute(self, subject: Identity) -> dict[Key, Value]:
        """Every entry of one subject identity, deny-covered allows removed."""
        denies: dict[Key, int] = {}
        allows: dict[Key, int] = {}
        enforced: set[int] = set()
        for rule in self.rules_selecting(subject):
            d = DIRECTION_NUMBER[rule.direction]
            if rule.default_deny:
                enforced.add(d)
            target = denies if rule.deny else allows
            for peer in self.rule_peers(rule):
                for proto, port, bits in self.port_keys(rule, subject, peer):
                    k = Key(subject, peer, d, proto, port, bits)
                    target[k] = min(target.get(k, rule.cookie), rule.cookie)
        out: dict[Key, Value] = {}
        for d in enforced:
            out[Key(subject, ANY_PEER, d, 0, 0, 0)] = Value(F_DEFAULT_DENY, 0)
            if d == INGRESS and self.allow_host_ingress:
                allows.setdefault(host_allow_key(subject), 0)
        by_group: dict[tuple[int, int], list[Key]] = defaultdict(list)
        for k in denies:
            by_group[(k.peer, k.direction)].append(k)
        for k, cookie in allows.items():
            group = by_group.get((k.peer, k.direction), ())
            if k in denies or any(dk.covers_key(k) for dk in group):
                continue
            out[k] = Value(0, cookie)
        for k, cookie in denies.items():
            out[k] = Value(F_DENY, cookie)
        return out

    def _recompute(self, subjects: Iterable[Identity]) -> Diff:
        diff = Diff()
        for s in set(subjects):
            new = self.compute(s) if (s in self.labels) else {}
            old = self.entries.get(s, {})
            for k, v in new.items():
                if old.get(k) != v:
                    diff.updates[k] = v
            diff.deletes |= {k for k in old if k not in new}
            self.total += len(new) - len(old)
            if new:
                self.entries[s] = new
            else:
                self.entries.pop(s, None)
        return diff

    def _subjects_of(self, rules: Iterable[Rule]) -> set[Identity]:
        out: set[Identity] = set()
        for r in rules:
            out |= self.selection(r.subject)
        return out

    def _affected_by(self, selectors: Iterable[Selector]) -> set[Identity]:
        out: set[Identity] = set()
        for sel in selectors:
            out |= self._subjects_of(self._peer_rules.get(sel, ()))
        return out

    # --- identities ----------------------------------------------------------------------------
    def identity_added(self, ident: Identity, labels: Labels) -> Diff:
        self.labels[ident] = labels
        for lbl in labels:
            self._by_label.setdefault((lbl.key, lbl.value), set()).add(ident)
        changed = self._refresh_selections(ident)
        return self._recompute({ident} | self._affected_by(changed))

    def identity_removed(self, ident: Identity) -> Diff:
        if ident not in self.labels:
            return Diff()
        for lbl in self.labels.pop(ident):
            self._by_label.get((lbl.key, lbl.value), set()).discard(ident)
        self.named_ports.pop(ident, None)
        changed = self._refresh_selections(ident)
        return self._recompute({ident} | self._affected_by(changed))

    def set_named_ports(self, ident: Identity, ports: NamedPorts) -> Diff:
        if dict(self.named_ports.get(ident, {})) == dict(ports):
            return Diff()
        if ports:
            self.named_ports[ident] = dict(ports)
        else:
            self.named_ports.pop(ident, None)
        affected = {ident}
        for rule in (r for rs in self._subject_rules.values() for r in rs):
            if rule.direction == "egress" and rule.ports and any(p.name for p in rule.ports):
                affected |= self.selection(rule.subject)
        return self._recompute(affected)

    # --- policies --------------------------------------------------------------------------------
    def _cookie(self, key: str) -> int:
        if key not in self._cookies:
            self._cookies[key] = max(self._cookies.values(), default=0) + 1
        return self._cookies[key]

    def _index(self, policy: Policy, add: bool) -> None:
        for r in policy.rules:
            subj = self._subject_rules[r.subject]
            if add:
                subj.append(r)
                self.selection(r.subject)  # cached, so rules_selecting() finds it
            else:
                subj.remove(r)
                if not subj:
                    del self._subject_rules[r.subject]
            for p in r.peers or ():
                peer = self._peer_rules[p]
                if add:
                    peer.append(r)
                else:
                    peer.remove(r)
                    if not peer:
                        del self._peer_rules[p]

    def _prefix_selectors(self) -> set[tuple[PrefixKind, IPv4Network]]:
        out: set[tuple[PrefixKind, IPv4Network]] = set()
        for p in self.policies.values():
            for r in p.rules:
                for sel in r.peers or ():
                    if isinstance(sel, PrefixSelector):
                        out |= {(sel.kind, n) for n in sel.prefixes
                                if not (sel.kind == "cidr" and n.prefixlen == 0)}
        return out

    def _sync_prefix_identities(self) -> Diff:
        want = self._prefix_selectors()
        diff = Diff()
        for kp in sorted(set(self._prefix_ids) - want):
            ident = self._prefix_ids.pop(kp)
            del self.prefixes[ident]
            diff.merge(self._recompute(self._affected_by(self._refresh_selections(ident))))
        for kp in sorted(want - set(self._prefix_ids)):
            ident = self._free_prefix_identity()
            self._prefix_ids[kp] = ident
            self.prefixes[ident] = kp
            diff.merge(self._recompute(self._affected_by(self._refresh_selections(ident))))
        return diff

    def _free_prefix_identity(self) -> Identity:
        n = LOCAL_CIDR_IDENTITY_BASE
        while Identity(n) in self.prefixes:
            n += 1
        return Identity(n)

    def prefix_identities(self, kind: PrefixKind) -> dict[IPv4Network, Identity]:
        return {p: i for (k, p), i in self._prefix_ids.items() if k == kind}

    def upsert(self, policies: list[Policy]) -> Diff:
        """Add or replace policies as one change; on PolicyMapFull nothing changed."""
        keys = [p.key for p in policies]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise InputError("policies", f"{sorted(dup)[0]} is given twice")
        before = {k: self.policies[k] for k in keys if k in self.policies}
        try:
            return self._replace(policies, list(before))
        except PolicyMapFull:
            self._replace(list(before.values()), keys)
            raise

    def delete(self, keys: list[str]) -> Diff:
        before = [self.policies[k] for k in keys if k in self.policies]
        try:
            return self._replace([], [p.key for p in before])
        except PolicyMapFull:  # deleting only shrinks, but keep the promise
            self._replace(before, [])
            raise

    def _replace(self, new: list[Policy], remove: list[str]) -> Diff:
        affected: set[Identity] = set()
        for key in remove:
            old = self.policies.pop(key, None)
            if old is not None:
                affected |= self._subjects_of(old.rules)
                self._index(old, add=False)
        for p in new:
            cookie = self._cookie(p.key)
            p = replace(p, rules=tuple(replace(r, cookie=cookie) for r in p.rules))
            if p.key in self.policies:
                old = self.policies.pop(p.key)
                affected |= self._subjects_of(old.rules)
                self._index(old, add=False)
            self.policies[p.key] = p
            self._index(p, add=True)
        diff = self._sync_prefix_identities()
        affected |= self._subjects_of(r for p in new for r in p.rules)
        diff.merge(self._recompute(affected))
        if self.total > self.capacity:
            raise PolicyMapFull(
                f"policy map full: these policies need {self.total} entries, the map holds "
                f"{self.capacity}; nothing was applied"
            )
        return diff

    def cookie_names(self) -> dict[int, str]:
        return {c: k for k, c in self._cookies.items() if k in self.policies}

    def all_entries(self) -> dict[Key, Value]:
        out: dict[Key, Value] = {}
        for e in self.entries.values():
            out.update(e)
        return out

    def enforcement(self, subject: Identity) -> dict[str, bool]:
        e = self.entries.get(subject, {})
        return {d: Key(subject, ANY_PEER, n, 0, 0, 0) in e for d, n in DIRECTION_NUMBER.items()}


def named_ports_of(ports: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int], frozenset[int]]:
    """[(name, proto, port)] of one identity's endpoints -> NamedPorts."""
    out: dict[tuple[str, int], set[int]] = defaultdict(set)
    for name, proto, port in ports:
        if name:
            out[(name, proto)].add(port)
    return {k: frozenset(v) for k, v in out.items()}

