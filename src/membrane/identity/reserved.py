"""Reserved security identities (Cilium's numbers) and the number ranges of the others."""

from __future__ import annotations

from membrane.labels import RESERVED, Label, Labels
from membrane.types import Identity

UNKNOWN = Identity(0)
HOST = Identity(1)
WORLD = Identity(2)
UNMANAGED = Identity(3)
HEALTH = Identity(4)
INIT = Identity(5)
REMOTE_NODE = Identity(6)
KUBE_APISERVER = Identity(7)

RESERVED_IDENTITIES: dict[Identity, str] = {
    UNKNOWN: "unknown",
    HOST: "host",
    WORLD: "world",
    UNMANAGED: "unmanaged",
    HEALTH: "health",
    INIT: "init",
    REMOTE_NODE: "remote-node",
    KUBE_APISERVER: "kube-apiserver",
}
RESERVED_BY_NAME: dict[str, Identity] = {name: i for i, name in RESERVED_IDENTITIES.items()}

MIN_LABEL_IDENTITY = 256
MAX_LABEL_IDENTITY = (1 << 24) - 1
LOCAL_CIDR_IDENTITY_BASE = 1 << 24
"""CIDR identities are node-local, from here up (Cilium's local identity scope)."""


def reserved_labels(identity: Identity) -> Labels | None:
    """`reserved:host` for 1, ...; None for a number that is not reserved."""
    name = RESERVED_IDENTITIES.get(identity)
    return None if name is None else Labels.of([Label(RESERVED, name)])


def is_reserved(identity: Identity) -> bool:
    return identity in RESERVED_IDENTITIES


def is_cidr_identity(identity: Identity) -> bool:
    return identity >= LOCAL_CIDR_IDENTITY_BASE
