"""Flow filters, as `hubble observe` takes them. Every given criterion must hold; one that names
either end (`--pod`, `--label`, `--namespace`, `--identity`, `--port`) holds when either end
matches it. Built from query parameters (`from_query`), so the CLI and the API share them."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from membrane.errors import MembraneError
from membrane.flows.model import DROPPED, FORWARDED, PROTO_NAMES, TYPES_BY_NAME, Flow, Party

VERDICTS = (FORWARDED, DROPPED)
PROTOCOLS = {name.lower(): num for num, name in PROTO_NAMES.items()} | {"icmp": 1}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
FILTER_KEYS = ("verdict", "from_pod", "to_pod", "pod", "namespace", "from_label", "to_label",
               "label", "port", "protocol", "identity", "type", "since")


class FilterError(MembraneError):
    pass


@dataclass(frozen=True, slots=True)
class LabelMatch:
    """`key=value`, `key` (exists) or `!key` (absent); a key without `source:` matches any
    source, as Cilium's selectors do."""

    key: str
    value: str | None
    negate: bool = False

    @classmethod
    def parse(cls, text: str, where: str) -> LabelMatch:
        t = text.strip()
        negate = t.startswith("!")
        key, eq, value = t.removeprefix("!").partition("=")
        if key.startswith("any:"):
            key = key[4:]  # `any:` is every source, as in Cilium's selectors
        if not key or key.endswith(("!", ":")) or (negate and eq):
            raise FilterError(f"{where}: {text!r} is not a label (key=value, key or !key)")
        return cls(key, value if eq else None, negate)

    def matches(self, labels: tuple[str, ...]) -> bool:
        found = any(self._one(lbl) for lbl in labels)
        return not found if self.negate else found

    def _one(self, label: str) -> bool:
        src_key, _, value = label.partition("=")
        _source, _, key = src_key.partition(":")
        if ":" in self.key:
            if src_key != self.key:
                return False
        elif key != self.key:
            return False
        return self.value is None or value == self.value


@dataclass(frozen=True, slots=True)
class PodMatch:
    """`[namespace/]pod-name-prefix`; the namespace is `default` when not given (as Hubble)."""

    namespace: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> PodMatch:
        ns, sep, pod = text.partition("/")
        return cls(ns, pod) if sep else cls("default", text)

    def matches(self, party: Party) -> bool:
        return bool(party.pod_name) and party.namespace == self.namespace and \
            party.pod_name.startswith(self.prefix)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowFilter:
    verdict: tuple[str, ...] = ()
    from_pod: tuple[PodMatch, ...] = ()
    to_pod: tuple[PodMatch, ...] = ()
    pod: tuple[PodMatch, ...] = ()
    namespace: tuple[str, ...] = ()
    from_label: tuple[tuple[LabelMatch, ...], ...] = ()
    """Any of the groups (one per repeated flag) holds when all of its labels do."""
    to_label: tuple[tuple[LabelMatch, ...], ...] = ()
    label: tuple[tuple[LabelMatch, ...], ...] = ()
    port: tuple[int, ...] = ()
    protocol: tuple[int, ...] = ()
    identity: tuple[int, ...] = ()
    type: tuple[int, ...] = ()
    since: float | None = None
    """Unix time; flows before it do not match."""

    @classmethod
    def from_query(cls, q: Mapping[str, list[str]], now: float | None = None) -> FlowFilter:
        """Parameters as lists of strings (repeatable: any of the values may match)."""
        unknown = sorted(set(q) - set(FILTER_KEYS) - {"last", "follow", "output"})
        if unknown:
            raise FilterError(f"unknown flow filter {unknown[0]!r} "
                              f"(have: {', '.join(FILTER_KEYS)})")
        verdict = tuple(_verdict(v) for v in q.get("verdict", []))
        since = None
        if q.get("since"):
            since = parse_since(q["since"][-1], time.time() if now is None else now)
        return cls(
            verdict=verdict,
            from_pod=tuple(PodMatch.parse(p) for p in q.get("from_pod", [])),
            to_pod=tuple(PodMatch.parse(p) for p in q.get("to_pod", [])),
            pod=tuple(PodMatch.parse(p) for p in q.get("pod", [])),
            namespace=tuple(q.get("namespace", [])),
            from_label=tuple(_labels(q, "from_label")),
            to_label=tuple(_labels(q, "to_label")),
            label=tuple(_labels(q, "label")),
            port=tuple(_port(p) for p in q.get("port", [])),
            protocol=tuple(_protocol(p) for p in q.get("protocol", [])),
            identity=tuple(_int(p, "--identity") for p in q.get("identity", [])),
            type=tuple(_type(t) for t in q.get("type", [])),
            since=since,
        )

    def matches(self, f: Flow) -> bool:
        ev = f.event
        src, dst = f.source, f.destination
        if self.verdict and f.verdict not in self.verdict:
            return False
        if self.since is not None and f.time < self.since:
            return False
        if self.type and ev.type not in self.type:
            return False
        if self.protocol and ev.proto not in self.protocol:
            return False
        if self.port and not (f.has_ports and (ev.sport in self.port or ev.dport in self.port)):
            return False
        if self.identity and not (src.identity in self.identity or dst.identity in self.identity):
            return False
        if self.namespace and not (src.namespace in self.namespace or
                                   dst.namespace in self.namespace):
            return False
        if self.from_pod and not any(m.matches(src) for m in self.from_pod):
            return False
        if self.to_pod and not any(m.matches(dst) for m in self.to_pod):
            return False
        if self.pod and not any(m.matches(src) or m.matches(dst) for m in self.pod):
            return False
        if self.from_label and not _any_group(self.from_label, src.labels):
            return False
        if self.to_label and not _any_group(self.to_label, dst.labels):
            return False
        return not self.label or _any_group(self.label, src.labels) or \
            _any_group(self.label, dst.labels)


def _labels(q: Mapping[str, list[str]], key: str) -> list[tuple[LabelMatch, ...]]:
    flag = "--" + key.replace("_", "-")
    return [tuple(LabelMatch.parse(part, flag) for part in text.split(","))
            for text in q.get(key, [])]


def _any_group(groups: tuple[tuple[LabelMatch, ...], ...], labels: tuple[str, ...]) -> bool:
    return any(all(m.matches(labels) for m in g) for g in groups)


def _verdict(text: str) -> str:
    v = text.upper()
    if v not in VERDICTS:
        raise FilterError(f"--verdict: {text!r} is not one of {', '.join(VERDICTS)}")
    return v


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FilterError(f"{flag}: {text!r} is not a number") from None


def _port(text: str) -> int:
    n = _int(text, "--port")
    if not 0 < n < 65536:
        raise FilterError(f"--port: {n} is out of range (1-65535)")
    return n


def _protocol(text: str) -> int:
    try:
        return PROTOCOLS[text.lower()]
    except KeyError:
        raise FilterError(f"--protocol: {text!r} is not one of tcp, udp, icmp, sctp") from None


def _type(text: str) -> int:
    try:
        return TYPES_BY_NAME[text.lower()]
    except KeyError:
        raise FilterError(f"--type: {text!r} is not one of "
                          f"{', '.join(TYPES_BY_NAME)}") from None


def parse_since(text: str, now: float) -> float:
    """A duration back from now (`30s`, `5m`, `1h`) or an RFC 3339 time."""
    m = _DURATION.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise FilterError(f"--since: {text!r} is neither a duration (30s, 5m, 1h) nor an "
                          "RFC 3339 time") from None
