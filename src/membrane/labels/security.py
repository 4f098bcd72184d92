"""Which of a pod's labels are security-relevant, and how they are named (Cilium's rules)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from membrane.labels.label import K8S, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, Label, Labels

# Cilium's default `--labels` exclusions: labels that differ from pod to pod of one workload
# would give every pod its own identity (and its own policy entries).
DEFAULT_EXCLUDE: tuple[str, ...] = (
    r"pod-template-hash$",
    r"pod-template-generation$",
    r"controller-revision-hash$",
    r"controller-uid$",
    r"statefulset\.kubernetes\.io/pod-name$",
    r"apps\.kubernetes\.io/pod-index$",
    r"batch\.kubernetes\.io/job-completion-index$",
    r"batch\.kubernetes\.io/controller-uid$",
    r"job-name$",
    r"batch\.kubernetes\.io/job-name$",
    r"annotation\.",
    r"etcd_node$",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelFilter:
    """Which pod label keys may enter an identity (Cilium's `--labels` include/exclude).

    Patterns are regular expressions matched at the start of the key (`re.match`). A key is
    kept when it matches no exclude pattern and, if include patterns are given, one of them.
    Namespace membership (`io.kubernetes.pod.namespace`) and namespace labels always enter.
    """

    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    include: tuple[str, ...] = ()
    _ex: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _in: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ex", tuple(re.compile(p) for p in self.exclude))
        object.__setattr__(self, "_in", tuple(re.compile(p) for p in self.include))

    @classmethod
    def from_args(cls, patterns: list[str]) -> LabelFilter:
        """Cilium's `--labels` syntax: `role`, `!pod-template-hash` (added to the defaults)."""
        inc = tuple(p for p in patterns if not p.startswith("!"))
        exc = tuple(p[1:] for p in patterns if p.startswith("!"))
        return cls(include=inc, exclude=DEFAULT_EXCLUDE + exc)

    def keeps(self, key: str) -> bool:
        if any(p.match(key) for p in self._ex):
            return False
        return not self._in or any(p.match(key) for p in self._in)


DEFAULT_FILTER = LabelFilter()


def security_labels(
    pod_labels: Mapping[str, str],
    namespace: str | None,
    namespace_labels: Mapping[str, str],
    label_filter: LabelFilter | None = None,
) -> Labels:
    """An endpoint's identity labels: `k8s:KEY=VALUE` for its own (filtered) labels, and with a
    namespace `k8s:io.kubernetes.pod.namespace=NS` plus
    `k8s:io.cilium.k8s.namespace.labels.KEY=VALUE` for each namespace label."""
    keep = (label_filter or DEFAULT_FILTER).keeps
    out = [Label(K8S, k, v) for k, v in pod_labels.items() if keep(k)]
    if namespace is not None:
        out.append(Label(K8S, NAMESPACE_LABEL, namespace))
        out += [Label(K8S, NAMESPACE_LABELS_PREFIX + k, v) for k, v in namespace_labels.items()]
    return Labels.of(out)
