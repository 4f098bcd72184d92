"""NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy -> `Policy` values.

Input is a `RawObject` whose header the manifest loader validated. Every error names the
document and the field path (`p.yaml: document 2 (NetworkPolicy x/web): spec.ingress[0].
ports[1].port`); a file is all or nothing because callers parse every document before applying.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network
from typing import Any

from membrane.errors import InputError
from membrane.k8s.manifests import RawObject, label_key_error, label_value_error
from membrane.k8s.schema import F, Schema, T, check, show
from membrane.labels import ANY, CIDR, K8S, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, RESERVED
from membrane.policy.rules import (
    ICMP,
    PROTOCOLS,
    SCTP,
    TCP,
    UDP,
    Direction,
    Policy,
    PortMatch,
    Rule,
)
from membrane.policy.selector import (
    ENTITIES,
    OPERATORS,
    EntitySelector,
    LabelSelector,
    PrefixSelector,
    Requirement,
    Selector,
)

POLICY_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")

# -- schemas -----------------------------------------------------------------------------------

_META: Schema = {
    "name": F(T.STR), "namespace": F(T.STR), "labels": F(T.STR_MAP),
    "annotations": F(T.STR_MAP), "creationTimestamp": F(T.TIME), "uid": F(T.STR),
    "resourceVersion": F(T.STR), "generation": F(T.INT), "generateName": F(T.STR),
    "managedFields": F(T.LIST), "ownerReferences": F(T.LIST), "finalizers": F(T.LIST),
    "selfLink": F(T.STR), "deletionTimestamp": F(T.TIME),
    "deletionGracePeriodSeconds": F(T.INT),
}
_EXPR: Schema = {"key": F(T.STR, required=True), "operator": F(T.STR, required=True),
                 "values": F(T.LIST, items=T.STR)}
_LABEL_SELECTOR: Schema = {"matchLabels": F(T.STR_MAP), "matchExpressions": F(T.LIST, child=_EXPR)}

_NP_PORT: Schema = {"port": F(T.INT_OR_STR), "endPort": F(T.INT), "protocol": F(T.STR)}
_NP_PEER: Schema = {
    "podSelector": F(T.OBJ, child=_LABEL_SELECTOR),
    "namespaceSelector": F(T.OBJ, child=_LABEL_SELECTOR),
    "ipBlock": F(T.OBJ, child={"cidr": F(T.STR, required=True),
                               "except": F(T.LIST, items=T.STR)}),
}
_NP_SPEC: Schema = {
    "podSelector": F(T.OBJ, child=_LABEL_SELECTOR),
    "policyTypes": F(T.LIST, items=T.STR),
    "ingress": F(T.LIST, child={"from": F(T.LIST, child=_NP_PEER),
                                "ports": F(T.LIST, child=_NP_PORT)}),
    "egress": F(T.LIST, child={"to": F(T.LIST, child=_NP_PEER),
                               "ports": F(T.LIST, child=_NP_PORT)}),
}
NETWORK_POLICY: Schema = {
    "apiVersion": F(T.STR, required=True), "kind": F(T.STR, required=True),
    "metadata": F(T.OBJ, required=True, child=_META),
    "spec": F(T.OBJ, child=_NP_SPEC), "status": F(T.OBJ),
}

_CNP_PORT: Schema = {"port": F(T.INT_OR_STR), "endPort": F(T.INT), "protocol": F(T.STR)}
_CNP_PORT_RULE: Schema = {
    "ports": F(T.LIST, child=_CNP_PORT),
    # Known to Cilium, refused with a reason by the parser:
    "rules": F(T.OBJ), "listener": F(T.OBJ), "serverNames": F(T.LIST),
    "originatingTLS": F(T.OBJ), "terminatingTLS": F(T.OBJ),
}
_CIDR_RULE: Schema = {"cidr": F(T.STR), "except": F(T.LIST, items=T.STR),
                      "cidrGroupRef": F(T.STR), "cidrGroupSelector": F(T.OBJ)}
_ICMP_RULE: Schema = {"fields": F(T.LIST, child={"type": F(T.INT_OR_STR, required=True),
                                                 "family": F(T.STR)})}


def _cnp_rule_schema(direction: Direction) -> Schema:
    p = "from" if direction == "ingress" else "to"
    out: dict[str, F] = {
        f"{p}Endpoints": F(T.LIST, child=_LABEL_SELECTOR),
        f"{p}Entities": F(T.LIST, items=T.STR),
        f"{p}CIDR": F(T.LIST, items=T.STR),
        f"{p}CIDRSet": F(T.LIST, child=_CIDR_RULE),
        "toPorts": F(T.LIST, child=_CNP_PORT_RULE),
        "icmps": F(T.LIST, child=_ICMP_RULE),
        # Known to Cilium, refused with a reason by the parser:
        f"{p}Requires": F(T.LIST), f"{p}Nodes": F(T.LIST), f"{p}Groups": F(T.LIST),
        "authentication": F(T.OBJ),
    }
    if direction == "egress":
        out |= {"toFQDNs": F(T.LIST), "toServices": F(T.LIST)}
    return out


_CNP_SPEC: Schema = {
    "endpointSelector": F(T.OBJ, child=_LABEL_SELECTOR),
    "nodeSelector": F(T.OBJ),
    "ingress": F(T.LIST, child=_cnp_rule_schema("ingress")),
    "ingressDeny": F(T.LIST, child=_cnp_rule_schema("ingress")),
    "egress": F(T.LIST, child=_cnp_rule_schema("egress")),
    "egressDeny": F(T.LIST, child=_cnp_rule_schema("egress")),
    "enableDefaultDeny": F(T.OBJ, child={"ingress": F(T.BOOL), "egress": F(T.BOOL)}),
    "labels": F(T.LIST),
    "description": F(T.STR),
}
CILIUM_POLICY: Schema = {
    "apiVersion": F(T.STR, required=True), "kind": F(T.STR, required=True),
    "metadata": F(T.OBJ, required=True, child=_META),
    "spec": F(T.OBJ, child=_CNP_SPEC), "specs": F(T.LIST, child=_CNP_SPEC),
    "status": F(T.OBJ),
}

_NOT_YET: dict[str, str] = {
    "rules": "L7 rules (HTTP, gRPC, Kafka, ...) are not supported yet",
    "listener": "Envoy listeners are not supported yet",
    "serverNames": "TLS server names are not supported yet",
    "originatingTLS": "TLS interception is not supported yet",
    "terminatingTLS": "TLS interception is not supported yet",
    "toFQDNs": "DNS-aware policy (toFQDNs) is not supported yet",
    "toServices": "toServices is not supported yet",
    "fromRequires": "fromRequires is deprecated in Cilium and not supported",
    "toRequires": "toRequires is deprecated in Cilium and not supported",
    "fromNodes": "node selectors are not supported yet",
    "toNodes": "node selectors are not supported yet",
    "fromGroups": "cloud groups are not supported",
    "toGroups": "cloud groups are not supported",
    "authentication": "mutual authentication is not supported yet",
    "nodeSelector": "host policies (nodeSelector) are not supported yet",
    "cidrGroupRef": "CiliumCIDRGroup references are not supported yet",
    "cidrGroupSelector": "CiliumCIDRGroup selectors are not supported yet",
}

ICMP_TYPE_NAMES: dict[str, int] = {
    "EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
    "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11,
    "ParameterProblem": 12, "Timestamp": 13, "TimestampReply": 14,
}

_PORT_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_KNOWN_SOURCES = (K8S, RESERVED, ANY, CIDR, "unspec", "container")


class _Ctx:
    def __init__(self, obj: RawObject) -> None:
        self.obj = obj
        self.where = obj.where
        self.policy = (f"{obj.kind} {obj.namespace}/{obj.name}" if obj.namespace
                       else f"{obj.kind} {obj.name}")

    def error(self, path: str, message: str) -> InputError:
        return InputError(f"{self.where}: {path}", message)


def parse_policy(obj: RawObject) -> Policy:
    """One policy object -> its rules, or InputError naming the field."""
    if obj.kind == "NetworkPolicy":
        check(obj.body, NETWORK_POLICY, "", obj.where)
        rules = _network_policy(_Ctx(obj))
    elif obj.kind in ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"):
        check(obj.body, CILIUM_POLICY, "", obj.where)
        rules = _cilium_policy(_Ctx(obj))
    else:
        raise InputError(obj.where, f"kind {obj.kind} is not a policy")
    return Policy(kind=obj.kind, namespace=obj.namespace, name=obj.name, rules=tuple(rules),
                  source=obj.to_k8s())


# -- selectors ---------------------------------------------------------------------------------

def _ns_req(namespace: str) -> Requirement:
    return Requirement(K8S, NAMESPACE_LABEL, "In", (namespace,))


def _split_key(key: str, default_source: str) -> tuple[str, str]:
    head, sep, rest = key.partition(":")
    if sep and head in _KNOWN_SOURCES:
        return head, rest
    return default_source, key


def _label_selector(ctx: _Ctx, raw: dict[str, Any], path: str, *, default_source: str,
                    key_prefix: str = "", cilium: bool = False) -> LabelSelector:
    """matchLabels / matchExpressions -> requirements. `key_prefix` maps a namespaceSelector's
    keys onto the namespace labels an identity carries."""
    reqs: list[Requirement] = []

    def key_of(key: str, kpath: str) -> tuple[str, str]:
        source, name = _split_key(key, default_source) if cilium else (default_source, key)
        err = label_key_error(name) if source != RESERVED else None
        if err:
            raise ctx.error(kpath, err)
        return source, key_prefix + name

    for key, value in (raw.get("matchLabels") or {}).items():
        kpath = f"{path}.matchLabels[{show(key)}]"
        if err := label_value_error(value):
            raise ctx.error(kpath, err)
        source, name = key_of(key, kpath)
        reqs.append(Requirement(source, name, "In", (value,)))
    for i, expr in enumerate(raw.get("matchExpressions") or []):
        epath = f"{path}.matchExpressions[{i}]"
        op = expr["operator"]
        if op not in OPERATORS:
            raise ctx.error(f"{epath}.operator",
                            f"{show(op)} is not one of {', '.join(OPERATORS)}")
        values = expr.get("values") or []
        if op in ("In", "NotIn") and not values:
            raise ctx.error(f"{epath}.values", f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise ctx.error(f"{epath}.values", f"must be empty when operator is {op}")
        for j, v in enumerate(values):
            if err := label_value_error(v):
                raise ctx.error(f"{epath}.values[{j}]", err)
        source, name = key_of(expr["key"], f"{epath}.key")
        reqs.append(Requirement(source, name, op, tuple(sorted(set(values)))))
    return LabelSelector.of(reqs)


def _cidr(ctx: _Ctx, text: str, path: str) -> IPv4Network:
    if ":" in text:
        raise ctx.error(path, f"{show(text)}: IPv6 is not supported yet")
    try:
        return IPv4Network(text if "/" in text else f"{text}/32", strict=False)
    except ValueError:
        raise ctx.error(path, f"{show(text)} is not a valid IPv4 CIDR") from None


def _prefix_selector(ctx: _Ctx, kind: str, cidr_text: str, excepts: list[str], path: str,
                     except_path: str) -> PrefixSelector:
    cidr = _cidr(ctx, cidr_text, f"{path}")
    outs = []
    for i, e in enumerate(excepts):
        net = _cidr(ctx, e, f"{except_path}[{i}]")
        if not net.subnet_of(cidr) or net == cidr:
            raise ctx.error(f"{except_path}[{i}]",
                            f"{show(e)} must be a strict subset of {cidr}")
        outs.append(net)
    return PrefixSelector(kind, cidr, tuple(sorted(set(outs))))  # type: ignore[arg-type]


# -- ports -------------------------------------------------------------------------------------

def _port_value(ctx: _Ctx, raw: Any, path: str, *, numeric_strings: bool) -> tuple[int, str]:
    """(number, "") or (0, name)."""
    if isinstance(raw, int):
        if not 0 <= raw <= 65535:
            raise ctx.error(path, f"{raw} is out of range 0-65535" if numeric_strings
                            else f"{raw} is out of range 1-65535")
        return raw, ""
    text = str(raw)
    if numeric_strings and text.isdigit():
        return _port_value(ctx, int(text), path, numeric_strings=True)
    if len(text) > 15 or not _PORT_NAME_RE.match(text) or not re.search(r"[a-z]", text):
        raise ctx.error(path, f"{show(text)} is neither a port number nor a valid port name")
    return 0, text


def _end_port(ctx: _Ctx, raw: dict[str, Any], path: str, port: int, name: str) -> int:
    end = raw.get("endPort")
    if end is None:
        return 0
    if name or not port:
        raise ctx.error(f"{path}.endPort", "requires a numeric port")
    if not port <= end <= 65535:
        raise ctx.error(f"{path}.endPort", f"{end} must be between port {port} and 65535")
    return int(end)


def _protocol(ctx: _Ctx, raw: Any, path: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise ctx.error(path, f"{show(raw)} is not one of {', '.join(allowed)}")
    return str(raw)


# -- NetworkPolicy -----------------------------------------------------------------------------

def _network_policy(ctx: _Ctx) -> list[Rule]:
    body = ctx.obj.body
    spec = body.get("spec") or {}
    ns = ctx.obj.namespace or "default"
    subject = _label_selector(ctx, spec.get("podSelector") or {}, "spec.podSelector",
                              default_source=K8S).and_(LabelSelector((_ns_req(ns),)))
    types = spec.get("policyTypes")
    if types is None:
        types = ["Ingress", "Egress"] if spec.get("egress") is not None else ["Ingress"]
    for i, t in enumerate(types):
        if t not in ("Ingress", "Egress"):
            raise ctx.error(f"spec.policyTypes[{i}]", f"{show(t)} is not Ingress or Egress")
    rules: list[Rule] = []
    for direction, key, peer_key in (("ingress", "ingress", "from"), ("egress", "egress", "to")):
        if direction.capitalize() not in types:
            if spec.get(key):
                pass  # Kubernetes ignores rules of a direction not in policyTypes
            continue
        items = spec.get(key) or []
        if not items:
            rules.append(Rule(ctx.policy, f"spec.{key}", direction, subject, (), None))  # type: ignore[arg-type]
        for i, item in enumerate(items):
            path = f"spec.{key}[{i}]"
            peers = _np_peers(ctx, item.get(peer_key), f"{path}.{peer_key}", ns)
            ports = _np_ports(ctx, item.get("ports"), f"{path}.ports")
            rules.append(Rule(ctx.policy, path, direction, subject, peers, ports))  # type: ignore[arg-type]
    return rules


def _np_peers(ctx: _Ctx, raw: list[dict[str, Any]] | None, path: str,
              ns: str) -> tuple[Selector, ...] | None:
    if not raw:
        return None
    out: list[Selector] = []
    for i, peer in enumerate(raw):
        ppath = f"{path}[{i}]"
        pod, nsel, block = peer.get("podSelector"), peer.get("namespaceSelector"), \
            peer.get("ipBlock")
        if block is not None:
            if pod is not None or nsel is not None:
                raise ctx.error(f"{ppath}.ipBlock",
                                "may not be combined with podSelector or namespaceSelector")
            out.append(_prefix_selector(ctx, "ipblock", block["cidr"], block.get("except") or [],
                                        f"{ppath}.ipBlock.cidr", f"{ppath}.ipBlock.except"))
            continue
        if pod is None and nsel is None:
            raise ctx.error(ppath, "must specify podSelector, namespaceSelector or ipBlock")
        sel = LabelSelector()
        if pod is not None:
            sel = _label_selector(ctx, pod, f"{ppath}.podSelector", default_source=K8S)
        if nsel is not None:
            nsreq = _label_selector(ctx, nsel, f"{ppath}.namespaceSelector", default_source=K8S,
                                    key_prefix=NAMESPACE_LABELS_PREFIX)
            sel = sel.and_(nsreq).and_(LabelSelector((Requirement(K8S, NAMESPACE_LABEL,
                                                                  "Exists"),)))
        else:
            sel = sel.and_(LabelSelector((_ns_req(ns),)))
        out.append(sel)
    return tuple(out)


def _np_ports(ctx: _Ctx, raw: list[dict[str, Any]] | None,
              path: str) -> tuple[PortMatch, ...] | None:
    if not raw:
        return None
    out = []
    for i, p in enumerate(raw):
        ppath = f"{path}[{i}]"
        proto = _protocol(ctx, p.get("protocol", "TCP"), f"{ppath}.protocol",
                          ("TCP", "UDP", "SCTP"))
        port, name = 0, ""
        if p.get("port") is not None:
            port, name = _port_value(ctx, p["port"], f"{ppath}.port", numeric_strings=False)
            if not name and port == 0:
                raise ctx.error(f"{ppath}.port", "0 is out of range 1-65535")
        end = _end_port(ctx, p, ppath, port, name)
        out.append(PortMatch(PROTOCOLS[proto], port, end, name))
    return tuple(out)


# -- CiliumNetworkPolicy -----------------------------------------------------------------------

def _cilium_policy(ctx: _Ctx) -> list[Rule]:
    body = ctx.obj.body
    specs: list[tuple[str, dict[str, Any]]] = []
    if body.get("spec") is not None:
        specs.append(("spec", body["spec"]))
    specs += [(f"specs[{i}]", s) for i, s in enumerate(body.get("specs") or [])]
    if not specs:
        raise ctx.error("spec", "a policy needs spec or specs")
    rules: list[Rule] = []
    for path, spec in specs:
        rules += _cilium_spec(ctx, spec, path)
    return rules


def _refuse_not_yet(ctx: _Ctx, raw: dict[str, Any], path: str) -> None:
    for key in raw:
        if key in _NOT_YET and raw[key] is not None:
            raise ctx.error(f"{path}.{key}", _NOT_YET[key])


def _cilium_spec(ctx: _Ctx, spec: dict[str, Any], path: str) -> list[Rule]:
    _refuse_not_yet(ctx, spec, path)
    if spec.get("endpointSelector") is None:
        raise ctx.error(f"{path}.endpointSelector", "required field is missing")
    ns = ctx.obj.namespace
    subject = _label_selector(ctx, spec["endpointSelector"], f"{path}.endpointSelector",
                              default_source=ANY, cilium=True)
    if ns is not None:
        subject = subject.and_(LabelSelector((_ns_req(ns),)))
    default_deny = spec.get("enableDefaultDeny") or {}
    rules: list[Rule] = []
    for key, direction, deny in (("ingress", "ingress", False), ("ingressDeny", "ingress", True),
                                 ("egress", "egress", False), ("egressDeny", "egress", True)):
        for i, item in enumerate(spec.get(key) or []):
            rpath = f"{path}.{key}[{i}]"
            _refuse_not_yet(ctx, item, rpath)
            peers = _cilium_peers(ctx, item, rpath, direction, ns)  # type: ignore[arg-type]
            ports = _cilium_ports(ctx, item, rpath, deny)
            if peers is not None and not peers and ports is None:
                pass  # `{}`: selects without allowing
            elif peers is not None and not peers:
                peers = None  # only L4: from/to any peer
            rules.append(Rule(ctx.policy, rpath, direction, subject, peers, ports, deny,  # type: ignore[arg-type]
                              default_deny=bool(default_deny.get(direction, True))))
    return rules


def _cilium_peers(ctx: _Ctx, item: dict[str, Any], path: str, direction: Direction,
                  ns: str | None) -> tuple[Selector, ...] | None:
    p = "from" if direction == "ingress" else "to"
    out: list[Selector] = []
    for i, raw in enumerate(item.get(f"{p}Endpoints") or []):
        epath = f"{path}.{p}Endpoints[{i}]"
        sel = _label_selector(ctx, raw, epath, default_source=ANY, cilium=True)
        names_ns = any(r.key == NAMESPACE_LABEL for r in sel.requirements)
        if ns is not None and not names_ns and not sel.names_reserved:
            sel = sel.and_(LabelSelector((_ns_req(ns),)))
        out.append(sel)
    for i, ent in enumerate(item.get(f"{p}Entities") or []):
        if ent not in ENTITIES:
            raise ctx.error(f"{path}.{p}Entities[{i}]",
                            f"{show(ent)} is not one of {', '.join(ENTITIES)}")
        if ent == "all":
            return None
        out.append(EntitySelector(ent))
    for i, text in enumerate(item.get(f"{p}CIDR") or []):
        out.append(_prefix_selector(ctx, "cidr", text, [], f"{path}.{p}CIDR[{i}]", ""))
    for i, cs in enumerate(item.get(f"{p}CIDRSet") or []):
        cpath = f"{path}.{p}CIDRSet[{i}]"
        _refuse_not_yet(ctx, cs, cpath)
        if cs.get("cidr") is None:
            raise ctx.error(f"{cpath}.cidr", "required field is missing")
        out.append(_prefix_selector(ctx, "cidr", cs["cidr"], cs.get("except") or [],
                                    f"{cpath}.cidr", f"{cpath}.except"))
    return tuple(out)


def _cilium_ports(ctx: _Ctx, item: dict[str, Any], path: str,
                  deny: bool) -> tuple[PortMatch, ...] | None:
    out: list[PortMatch] = []
    for i, pr in enumerate(item.get("toPorts") or []):
        prpath = f"{path}.toPorts[{i}]"
        _refuse_not_yet(ctx, pr, prpath)
        ports = pr.get("ports") or []
        if not ports:
            return None  # a port rule without ports: every port
        for j, p in enumerate(ports):
            ppath = f"{prpath}.ports[{j}]"
            proto = _protocol(ctx, p.get("protocol", "ANY"), f"{ppath}.protocol",
                              ("TCP", "UDP", "SCTP", "ANY"))
            port, name = 0, ""
            if p.get("port") is not None:
                port, name = _port_value(ctx, p["port"], f"{ppath}.port", numeric_strings=True)
            end = _end_port(ctx, p, ppath, port, name)
            protos = (TCP, UDP, SCTP) if proto == "ANY" else (PROTOCOLS[proto],)
            out += [PortMatch(pn, port, end, name) for pn in protos]
    for i, ic in enumerate(item.get("icmps") or []):
        for j, f in enumerate(ic.get("fields") or []):
            fpath = f"{path}.icmps[{i}].fields[{j}]"
            family = f.get("family", "IPv4")
            if family not in ("IPv4", "IPv6"):
                raise ctx.error(f"{fpath}.family", f"{show(family)} is not IPv4 or IPv6")
            t = f["type"]
            if isinstance(t, str):
                if t not in ICMP_TYPE_NAMES:
                    if t.isdigit():
                        t = int(t)
                    else:
                        raise ctx.error(f"{fpath}.type", f"{show(t)} is not an ICMP type")
                else:
                    t = ICMP_TYPE_NAMES[t]
            if not 0 <= int(t) <= 255:
                raise ctx.error(f"{fpath}.type", f"{t} is out of range 0-255")
            if family == "IPv4":
                out.append(PortMatch(ICMP, int(t)))
    if not out and not item.get("toPorts") and not item.get("icmps"):
        return None
    return tuple(sorted(set(out)))
