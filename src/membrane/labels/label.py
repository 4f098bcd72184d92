"""Label and Labels: the `source:key=value` values that security identities are made of.

Sources follow Cilium: `k8s` (pod and namespace labels), `reserved` (host, world, ...),
`cidr` (CIDR identities), and `any`, which only selectors use: a selector label with source
`any` matches a label of that key and value from every source.

`Label.parse` defaults to source `any` (the text is usually a selector, e.g. `role=frontend`
in a CiliumNetworkPolicy); `Labels.parse` defaults to `k8s` (the texts are usually an
endpoint's labels, e.g. read back from a snapshot). Both accept an explicit source.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

K8S = "k8s"
RESERVED = "reserved"
ANY = "any"
CIDR = "cidr"
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."


# Positional on purpose: a label is a (source, key, value) triple, written as one everywhere.
@dataclass(frozen=True, slots=True, order=True)
class Label:
    """One label: `source:key=value` (`value` may be empty, as in `reserved:host`)."""

    source: str
    key: str
    value: str = ""

    @classmethod
    def parse(cls, text: str, default_source: str = ANY) -> Label:
        """`k8s:role=web`, `role=web` (`default_source`) or `reserved:host`.

        The source is what precedes the first `:` before the first `=`, so `role=a:b` is the
        key `role` with the value `a:b`.
        """
        head, sep, value = text.partition("=")
        source = default_source
        if ":" in head:
            source, head = head.split(":", 1)
        return cls(source, head, value if sep else "")

    def __str__(self) -> str:
        base = f"{self.source}:{self.key}"
        return f"{base}={self.value}" if self.value else base


@dataclass(frozen=True, slots=True)
class Labels:
    """An immutable, sorted, hashable set of labels; `str()` joins them with commas."""

    items: tuple[Label, ...] = ()

    @classmethod
    def of(cls, labels: Iterable[Label]) -> Labels:
        return cls(tuple(sorted(set(labels))))

    @classmethod
    def parse(cls, texts: Iterable[str], default_source: str = K8S) -> Labels:
        return cls.of(Label.parse(t, default_source) for t in texts)

    @classmethod
    def from_dict(cls, labels: Mapping[str, str], source: str = K8S) -> Labels:
        """`{"role": "web"}` -> `k8s:role=web`."""
        return cls.of(Label(source, k, v) for k, v in labels.items())

    def __iter__(self) -> Iterator[Label]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, label: object) -> bool:
        return label in self.items

    def __str__(self) -> str:
        return ",".join(str(label) for label in self.items)

    def get(self, key: str, source: str = ANY) -> str | None:
        """The value of `key` (from `source`, or from any source when `source` is `any`)."""
        for label in self.items:
            if label.key == key and source in (ANY, label.source):
                return label.value
        return None

    def has_source(self, source: str) -> bool:
        return any(label.source == source for label in self.items)

    def union(self, other: Iterable[Label]) -> Labels:
        return Labels.of((*self.items, *other))

    def to_list(self) -> list[str]:
        return [str(label) for label in self.items]

    def to_dict(self) -> dict[str, str]:
        """`source:key` -> value, e.g. `{"k8s:role": "web"}`."""
        return {f"{label.source}:{label.key}": label.value for label in self.items}
