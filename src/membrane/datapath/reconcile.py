"""Reconcile a map's actual contents towards the desired contents with the fewest writes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
K_contra = TypeVar("K_contra", contravariant=True)
V_contra = TypeVar("V_contra", contravariant=True)


class Ops(Protocol[K_contra, V_contra]):
    def update(self, key: K_contra, value: V_contra) -> None: ...

    # Whatever delete returns (e.g. whether the key was there) is ignored.
    def delete(self, key: K_contra) -> object: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileResult:
    updated: int
    deleted: int
    unchanged: int


def reconcile(
    *, desired: Mapping[K, V], actual: Mapping[K, V], ops: Ops[K, V], prune: bool = True
) -> ReconcileResult:
    """Write what differs, delete what should not be there (when `prune`), touch nothing else."""
    updated = unchanged = deleted = 0
    for key, value in desired.items():
        if key in actual and actual[key] == value:
            unchanged += 1
            continue
        ops.update(key, value)
        updated += 1
    if prune:
        for key in actual:
            if key not in desired:
                ops.delete(key)
                deleted += 1
    return ReconcileResult(updated=updated, deleted=deleted, unchanged=unchanged)
