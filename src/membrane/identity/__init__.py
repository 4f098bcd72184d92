"""Security identities: reserved numbers, and label sets -> reference-counted identities."""

from membrane.identity.allocator import IdentityAllocator, LocalIdentityAllocator
from membrane.identity.reserved import (
    HEALTH,
    HOST,
    INIT,
    KUBE_APISERVER,
    LOCAL_CIDR_IDENTITY_BASE,
    MAX_LABEL_IDENTITY,
    MIN_LABEL_IDENTITY,
    REMOTE_NODE,
    RESERVED_BY_NAME,
    RESERVED_IDENTITIES,
    UNKNOWN,
    UNMANAGED,
    WORLD,
    is_cidr_identity,
    is_reserved,
    reserved_labels,
)

__all__ = [
    "HEALTH",
    "HOST",
    "INIT",
    "KUBE_APISERVER",
    "LOCAL_CIDR_IDENTITY_BASE",
    "MAX_LABEL_IDENTITY",
    "MIN_LABEL_IDENTITY",
    "REMOTE_NODE",
    "RESERVED_BY_NAME",
    "RESERVED_IDENTITIES",
    "UNKNOWN",
    "UNMANAGED",
    "WORLD",
    "IdentityAllocator",
    "LocalIdentityAllocator",
    "is_cidr_identity",
    "is_reserved",
    "reserved_labels",
]
