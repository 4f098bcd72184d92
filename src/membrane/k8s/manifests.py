"""Lab manifests: Kubernetes YAML text -> validated Namespace, Pod and raw policy/service objects.

Pure: takes text, returns values. Validation follows the Kubernetes API server for what the lab
reads (names, labels, container ports) and accepts every other valid field of the objects it
parses; policies and services come back as `RawObject`s for their own parsers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import yaml

from membrane.errors import InputError
from membrane.k8s import schema
from membrane.k8s.schema import check, join, show

Protocol = Literal["TCP", "UDP", "SCTP"]
PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# kind -> (apiVersion, namespaced)
KINDS: dict[str, tuple[str, bool]] = {
    "Namespace": ("v1", False),
    "Pod": ("v1", True),
    "Service": ("v1", True),
    "NetworkPolicy": ("networking.k8s.io/v1", True),
    "CiliumNetworkPolicy": ("cilium.io/v2", True),
    "CiliumClusterwideNetworkPolicy": ("cilium.io/v2", False),
}


# -- names and labels ---------------------------------------------------------------------------

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL_RE = re.compile(_DNS_LABEL + r"\Z")
_DNS_SUBDOMAIN_RE = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*\Z")
_LABEL_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_IANA_SVC_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


def dns_subdomain_error(value: str) -> str | None:
    """Why *value* is not a DNS-1123 subdomain (pod names, label prefixes), or None."""
    if len(value) > 253:
        return f"{show(value)} is longer than 253 characters"
    if not _DNS_SUBDOMAIN_RE.match(value):
        return (f"{show(value)} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and "
                "'.', starting and ending with a letter or digit)")
    return None


def dns_label_error(value: str) -> str | None:
    """Why *value* is not a DNS-1123 label (namespace and container names), or None."""
    if len(value) > 63:
        return f"{show(value)} is longer than 63 characters"
    if not _DNS_LABEL_RE.match(value):
        return (f"{show(value)} is not a DNS-1123 label (lowercase letters, digits and '-', "
                "starting and ending with a letter or digit)")
    return None


def label_key_error(key: str) -> str | None:
    """Why *key* is not a valid label key (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return f"label key {show(key)}: the prefix before '/' is empty"
    if prefix and (err := dns_subdomain_error(prefix)):
        return f"label key {show(key)}: prefix {err}"
    if not name:
        return f"label key {show(key)}: the name is empty"
    if len(name) > 63:
        return f"label key {show(key)}: the name is longer than 63 characters"
    if not _LABEL_NAME_RE.match(name):
        return (f"label key {show(key)}: the name must be letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit")
    return None


def label_value_error(value: str) -> str | None:
    """Why *value* is not a valid label value (may be empty), or None."""
    if len(value) > 63:
        return f"label value {show(value)} is longer than 63 characters"
    if value and not _LABEL_NAME_RE.match(value):
        return (f"label value {show(value)} must be letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit")
    return None


def port_name_error(name: str) -> str | None:
    """Why *name* is not an IANA_SVC_NAME (a named container port), or None."""
    if not name:
        return "a port name must not be empty"
    if len(name) > 15:
        return f"{show(name)} is longer than 15 characters"
    if not _IANA_SVC_NAME_RE.match(name) or "--" in name:
        return (f"{show(name)} is not a valid port name (lowercase letters, digits and single "
                "'-', not at the start or end)")
    if not any(c.isalpha() for c in name):
        return f"{show(name)} must contain at least one letter"
    return None


def label_errors(labels: Mapping[Any, Any], where: str, path: str = "") -> list[InputError]:
    """Every problem of *labels* (types, keys, values) as Kubernetes checks them, in key order.

    Each error is at *where*, or at ``where: path.<key>`` when *path* is given (manifests use
    ``metadata.labels``; the CLI and the runtime API pass only *where*).
    """
    errors: list[InputError] = []
    for key, value in labels.items():
        at = f"{where}: {join(path, key)}" if path and isinstance(key, str) else where
        if not isinstance(key, str):
            err: str | None = f"label key {show(key)} is not a string"
        elif not isinstance(value, str):
            err = schema.type_error(value, schema.T.STR)
            err = err if path else f"label {show(key)}: {err}"
        else:
            err = label_key_error(key) or label_value_error(value)
        if err:
            errors.append(InputError(at, err))
    return errors


def check_labels(labels: Mapping[Any, Any], where: str, path: str = "") -> None:
    """Raise the first of `label_errors` (all or nothing: nothing is applied on error)."""
    if errors := label_errors(labels, where, path):
        raise errors[0]


class LabelMap(Mapping[str, str]):
    """An immutable, hashable str -> str mapping (labels of a frozen value)."""

    __slots__ = ("_d",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._d: dict[str, str] = dict(sorted((items or {}).items()))

    def __getitem__(self, key: str) -> str:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(frozenset(self._d.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._d) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"LabelMap({self._d!r})"


# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerPort:
    """One declared container port; the lab serves it with an echo server."""

    name: str | None = None
    container_port: int
    protocol: Protocol = "TCP"

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {"containerPort": self.container_port, "protocol": self.protocol}
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Container:
    """A container: the lab only needs its name and ports."""

    name: str
    ports: tuple[ContainerPort, ...] = ()

    def to_k8s(self) -> dict[str, Any]:
        return {"name": self.name, "ports": [p.to_k8s() for p in self.ports]}


@dataclass(frozen=True, slots=True, kw_only=True)
class Namespace:
    """A Kubernetes Namespace; its labels always include ``kubernetes.io/metadata.name``."""

    name: str
    labels: Mapping[str, str] = field(default_factory=LabelMap)
    where: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        labels = dict(self.labels)
        labels.setdefault(NAMESPACE_NAME_LABEL, self.name)
        object.__setattr__(self, "labels", LabelMap(labels))

    @property
    def kind(self) -> str:
        return "Namespace"

    @property
    def key(self) -> str:
        return self.name

    def to_k8s(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.name, "labels": dict(self.labels)},
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Pod:
    """A Kubernetes Pod as the lab sees it: identity labels and the ports it serves."""

    namespace: str = "default"
    name: str
    labels: Mapping[str, str] = field(default_factory=LabelMap)
    containers: tuple[Container, ...] = ()
    where: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", LabelMap(self.labels))  # frozen, hashable copy

    @property
    def kind(self) -> str:
        return "Pod"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ports(self) -> tuple[ContainerPort, ...]:
        """Every declared port of every container."""
        return tuple(p for c in self.containers for p in c.ports)

    def named_port(self, name: str) -> ContainerPort | None:
        """The port declared with *name*, or None."""
        return next((p for p in self.ports if p.name == name), None)

    def to_k8s(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": dict(self.labels)},
            "spec": {"containers": [c.to_k8s() for c in self.containers]},
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RawObject:
    """A Service or policy object: header validated here, body parsed by its own package.

    *namespace* is None for cluster-scoped kinds. *where* names the document for errors
    (``farm.yaml: document 3 (CiliumNetworkPolicy default/allow-web)``).
    """

    kind: str
    api_version: str
    namespace: str | None
    name: str
    body: dict[str, Any]
    where: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.body.get("metadata", {}).get("labels") or {}
        return dict(labels)

    def to_k8s(self) -> dict[str, Any]:
        return copy.deepcopy(self.body)


Manifest: TypeAlias = Namespace | Pod | RawObject


# -- loading -----------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys, as kubectl does."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, (str, int, bool, float)):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping key {show(key)} is already defined", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _yaml_documents(text: str, source: str) -> list[Any]:
    try:
        return list(yaml.load_all(text, Loader=_StrictLoader))  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark else source
        what = e.problem or str(e)
        if e.context:
            ctx = e.context_mark
            started = f" started on line {ctx.line + 1}" if ctx and ctx is not mark else ""
            what = f"{what} ({e.context}{started})"
        raise InputError(where, f"invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise InputError(source, f"invalid YAML: {e}") from None


def load_manifests(text: str, source: str) -> list[Manifest]:
    """Parse a multi-document YAML stream; all or nothing: the first problem raises InputError.

    Documents are numbered from 1 in stream order (empty documents count but are skipped).
    """
    out: list[Manifest] = []
    seen: dict[tuple[str, str | None, str], str] = {}
    for index, doc in enumerate(_yaml_documents(text, source), start=1):
        if doc is None:
            continue
        where = f"{source}: document {index}"
        manifest = parse_object(doc, where)
        ident = (manifest_kind(manifest), _namespace_of(manifest), manifest.name)
        if ident in seen:
            raise InputError(manifest.where, f"duplicate of {seen[ident]}")
        seen[ident] = manifest.where.removeprefix(f"{source}: ")
        out.append(manifest)
    return out


def manifest_kind(m: Manifest) -> str:
    return m.kind


def _namespace_of(m: Manifest) -> str | None:
    if isinstance(m, Namespace):
        return None
    return m.namespace


def parse_object(doc: Any, where: str) -> Manifest:
    """Validate one decoded document; *where* names it (``farm.yaml: document 2``)."""
    if not isinstance(doc, dict):
        raise InputError(where, f"expected a Kubernetes object (a mapping), got {show(doc)}")
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if kind is None:
        raise InputError(f"{where}: kind", "required field is missing")
    if not isinstance(kind, str):
        raise InputError(f"{where}: kind", schema.type_error(kind, schema.T.STR))
    if kind not in KINDS:
        raise InputError(
            f"{where}: kind",
            f"{show(kind)} is not supported by the lab (supported: {', '.join(KINDS)})",
        )
    want_version, namespaced = KINDS[kind]
    if api_version is None:
        raise InputError(f"{where}: apiVersion", f"required field is missing (use {want_version})")
    if api_version != want_version:
        raise InputError(
            f"{where}: apiVersion",
            f"{show(api_version)} does not serve kind {kind} (use {want_version})",
        )
    # name the object in every later error, as soon as its name is known to be valid
    header_where = f"{where} ({kind})"
    raw_meta = doc.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    name = meta.get("name")
    if name is None:
        path = "metadata.name" if isinstance(raw_meta, dict) else "metadata"
        raise InputError(f"{header_where}: {path}", "required field is missing")
    if not isinstance(name, str):
        raise InputError(f"{header_where}: metadata.name", schema.type_error(name, schema.T.STR))
    name_err = dns_label_error(name) if kind == "Namespace" else dns_subdomain_error(name)
    if name_err:
        raise InputError(f"{header_where}: metadata.name", name_err)
    namespace: str | None = None
    if namespaced:
        namespace = meta.get("namespace") or "default"
        if not isinstance(namespace, str):
            raise InputError(f"{header_where}: metadata.namespace",
                             schema.type_error(namespace, schema.T.STR))
        if err := dns_label_error(namespace):
            raise InputError(f"{header_where}: metadata.namespace", err)
    where = f"{where} ({kind} {namespace}/{name})" if namespace else f"{where} ({kind} {name})"
    check({k: doc.get(k) for k in schema.HEADER}, schema.HEADER, "", where)
    labels: dict[str, str] = meta.get("labels") or {}
    check_labels(labels, where, "metadata.labels")

    if kind == "Namespace":
        check(doc, schema.NAMESPACE, "", where)
        given = labels.get(NAMESPACE_NAME_LABEL)
        if given is not None and given != name:
            raise InputError(
                f"{where}: {join('metadata.labels', NAMESPACE_NAME_LABEL)}",
                f"{show(given)} must equal the namespace name {show(name)} (or be left out)",
            )
        return Namespace(name=name, labels=LabelMap(labels), where=where)
    if kind == "Pod":
        assert namespace is not None
        check(doc, schema.POD, "", where)
        containers = _parse_containers(doc["spec"], where)
        return Pod(namespace=namespace, name=name, labels=LabelMap(labels),
                   containers=containers, where=where)
    return RawObject(kind=kind, api_version=want_version, namespace=namespace, name=name,
                     body=copy.deepcopy(doc), where=where)


def _parse_containers(spec: dict[str, Any], where: str) -> tuple[Container, ...]:
    """Containers of a schema-checked PodSpec, with the per-pod uniqueness rules."""
    containers: list[Container] = []
    container_names: dict[str, str] = {}
    port_names: dict[str, str] = {}
    port_keys: dict[tuple[int, str], str] = {}
    if not spec["containers"]:
        raise InputError(f"{where}: spec.containers", "a pod needs at least one container")
    for list_name in ("initContainers", "containers"):
        for ci, raw in enumerate(spec.get(list_name) or []):
            cpath = f"spec.{list_name}[{ci}]"
            cname: str = raw["name"]
            if err := dns_label_error(cname):
                raise InputError(f"{where}: {cpath}.name", err)
            if cname in container_names:
                raise InputError(f"{where}: {cpath}.name",
                                 f"{show(cname)} is also the name of {container_names[cname]}")
            container_names[cname] = cpath
            if list_name == "initContainers":
                continue  # init containers have exited before the pod serves
            ports: list[ContainerPort] = []
            for pi, rp in enumerate(raw.get("ports") or []):
                ports.append(_parse_port(rp, f"{cpath}.ports[{pi}]", where, port_names, port_keys))
            containers.append(Container(name=cname, ports=tuple(ports)))
    return tuple(containers)


def _parse_port(raw: dict[str, Any], path: str, where: str, names: dict[str, str],
                keys: dict[tuple[int, str], str]) -> ContainerPort:
    number: int = raw["containerPort"]
    if not 1 <= number <= 65535:
        raise InputError(f"{where}: {path}.containerPort", f"{number} is out of range 1-65535")
    host_port = raw.get("hostPort")
    if host_port is not None and not 0 <= host_port <= 65535:
        raise InputError(f"{where}: {path}.hostPort", f"{host_port} is out of range 0-65535")
    protocol = raw.get("protocol") or "TCP"
    if protocol not in PROTOCOLS:
        raise InputError(f"{where}: {path}.protocol",
                         f"{show(protocol)} is not supported: use TCP, UDP or SCTP")
    name = raw.get("name")
    if name is not None:
        if err := port_name_error(name):
            raise InputError(f"{where}: {path}.name", err)
        if name in names:
            raise InputError(f"{where}: {path}.name",
                             f"{show(name)} is also the name of {names[name]}")
        names[name] = path
    if (number, protocol) in keys:
        raise InputError(f"{where}: {path}",
                         f"{number}/{protocol} is also declared by {keys[(number, protocol)]}")
    keys[(number, protocol)] = path
    return ContainerPort(name=name, container_port=number, protocol=protocol)


# -- kubectl label syntax ------------------------------------------------------------------------


def parse_label_args(args: list[str], where: str) -> tuple[dict[str, str], set[str]]:
    """``k=v`` sets and ``k-`` removes, as ``kubectl label``: returns (set, removed)."""
    to_set: dict[str, str] = {}
    to_remove: set[str] = set()
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
            err = label_key_error(key) or label_value_error(value)
            if err:
                raise InputError(where, err)
            if key in to_set and to_set[key] != value:
                raise InputError(where, f"label {show(key)} is given twice with different values")
            to_set[key] = value
        elif arg.endswith("-") and len(arg) > 1:
            key = arg[:-1]
            if err := label_key_error(key):
                raise InputError(where, err)
            to_remove.add(key)
        else:
            raise InputError(where, f"{show(arg)} is neither key=value (set) nor key- (remove)")
    both = sorted(to_set.keys() & to_remove)
    if both:
        raise InputError(where, f"label {show(both[0])} is both set and removed")
    return to_set, to_remove
