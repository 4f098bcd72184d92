"""Labels: the `source:key=value` sets that security identities are made of."""

from membrane.labels.label import (
    ANY,
    CIDR,
    K8S,
    NAMESPACE_LABEL,
    NAMESPACE_LABELS_PREFIX,
    RESERVED,
    Label,
    Labels,
)
from membrane.labels.security import DEFAULT_EXCLUDE, DEFAULT_FILTER, LabelFilter, security_labels

__all__ = [
    "ANY",
    "CIDR",
    "DEFAULT_EXCLUDE",
    "DEFAULT_FILTER",
    "K8S",
    "NAMESPACE_LABEL",
    "NAMESPACE_LABELS_PREFIX",
    "RESERVED",
    "Label",
    "LabelFilter",
    "Labels",
    "security_labels",
]
