"""Identity allocation: label sets -> reference-counted numbers, stable across restarts."""

from __future__ import annotations

from typing import Any, Protocol

from membrane.errors import MembraneError
from membrane.identity.reserved import MAX_LABEL_IDENTITY, MIN_LABEL_IDENTITY, reserved_labels
from membrane.labels import Labels
from membrane.types import Identity


class IdentityAllocator(Protocol):
    """Where identities come from: node-local now, the kvstore when there are many nodes."""

    def allocate(self, labels: Labels) -> Identity:
        """The identity of `labels`, taking one reference (a new number on first use)."""
        ...

    def release(self, identity: Identity) -> bool:
        """Drop one reference; True when that was the last one and the number is free."""
        ...

    def lookup(self, identity: Identity) -> Labels | None:
        """Labels of a live or reserved identity."""
        ...

    def lookup_by_labels(self, labels: Labels) -> Identity | None: ...

    def all(self) -> dict[Identity, Labels]:
        """Live label identities (reserved ones are not listed)."""
        ...

    def refcount(self, identity: Identity) -> int: ...


class LocalIdentityAllocator:
    """Node-local allocator: same labels -> same number while referenced; lowest free from 256.

    `snapshot()` keeps the label -> number mapping (not the references: endpoints re-take them
    on restart), so numbers are stable across agent restarts. After `restore()`, a remembered
    number is kept for its labels until `forget_remembered()`; new label sets get other numbers.
    """

    def __init__(self) -> None:
        self._by_labels: dict[Labels, Identity] = {}
        self._by_id: dict[Identity, Labels] = {}
        self._refs: dict[Identity, int] = {}
        self._next = MIN_LABEL_IDENTITY
        self._remembered: dict[Labels, Identity] = {}

    def allocate(self, labels: Labels) -> Identity:
        ident = self._by_labels.get(labels)
        if ident is None:
            wanted = self._remembered.pop(labels, None)
            ident = wanted if wanted is not None and wanted not in self._by_id else None
            if ident is None:
                ident = self._free_number()
            self._by_labels[labels] = ident
            self._by_id[ident] = labels
        self._refs[ident] = self._refs.get(ident, 0) + 1
        return ident

    def _free_number(self) -> Identity:
        n = self._next
        taken = set(self._remembered.values())
        while Identity(n) in self._by_id or Identity(n) in taken:
            n += 1
        if n > MAX_LABEL_IDENTITY:
            raise MembraneError(
                f"no free security identity left ({MIN_LABEL_IDENTITY}-{MAX_LABEL_IDENTITY})"
            )
        self._next = n + 1
        return Identity(n)

    def release(self, identity: Identity) -> bool:
        refs = self._refs.get(identity, 0)
        if refs <= 0:
            return False
        if refs > 1:
            self._refs[identity] = refs - 1
            return False
        del self._refs[identity]
        labels = self._by_id.pop(identity)
        del self._by_labels[labels]
        self._next = min(self._next, identity)
        return True

    def lookup(self, identity: Identity) -> Labels | None:
        return self._by_id.get(identity) or reserved_labels(identity)

    def lookup_by_labels(self, labels: Labels) -> Identity | None:
        return self._by_labels.get(labels)

    def all(self) -> dict[Identity, Labels]:
        return dict(self._by_id)

    def refcount(self, identity: Identity) -> int:
        return self._refs.get(identity, 0)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able: `{"identities": {"256": ["k8s:role=web", ...], ...}}`.

        Includes numbers remembered from the previous run and not yet re-taken, so a snapshot
        written in the middle of a restart loses nothing.
        """
        live = dict(self._by_id)
        for labels, ident in self._remembered.items():
            live.setdefault(ident, labels)
        return {"identities": {str(i): lbl.to_list() for i, lbl in sorted(live.items())}}

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> LocalIdentityAllocator:
        """Reserve the numbers of a previous run for their labels (with no references yet)."""
        alloc = cls()
        alloc._remembered = {
            Labels.parse(labels): Identity(int(i))
            for i, labels in snapshot.get("identities", {}).items()
        }
        return alloc

    def forget_remembered(self) -> None:
        """After a restart's endpoints are back: numbers nobody re-took become free."""
        self._remembered.clear()
