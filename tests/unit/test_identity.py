"""Node-local security identities: refcounts, reserved numbers, restart stability."""

from __future__ import annotations

import json

from membrane.identity import (
    HOST,
    LOCAL_CIDR_IDENTITY_BASE,
    MIN_LABEL_IDENTITY,
    RESERVED_IDENTITIES,
    WORLD,
    LocalIdentityAllocator,
    reserved_labels,
)
from membrane.labels import Labels, security_labels


def _labels(**kv: str) -> Labels:
    return security_labels(kv, "x", {"kubernetes.io/metadata.name": "x"})






def test_same_labels_same_identity_and_refcounted() -> None:
    alloc = LocalIdentityAllocator()
    a1 = alloc.allocate(_labels(role="web"))
    a2 = alloc.allocate(_labels(role="web"))
    b = alloc.allocate(_labels(role="db"))
    assert a1 == a2 == MIN_LABEL_IDENTITY and b == MIN_LABEL_IDENTITY + 1
    assert alloc.refcount(a1) == 2
    assert alloc.release(a1) is False, "still referenced"
    assert alloc.lookup(a1) == _labels(role="web")
    assert alloc.release(a1) is True
    assert alloc.lookup(a1) is None
    assert alloc.release(a1) is False, "releasing an unknown identity is harmless"


def test_identity_numbers_are_stable_across_restarts() -> None:
    alloc = LocalIdentityAllocator()
    alloc.allocate(_labels(role="a"))
    db = alloc.allocate(_labels(role="db"))
    snap = alloc.snapshot()
    again = LocalIdentityAllocator.restore(snap)
    # A new label set during the restart does not take a remembered number...
    new = again.allocate(_labels(role="new"))
    assert new not in (MIN_LABEL_IDENTITY, db)
    # ...and the returning endpoints get their numbers back, whatever the order.
    assert again.allocate(_labels(role="db")) == db
    assert again.allocate(_labels(role="a")) == MIN_LABEL_IDENTITY


def test_reserved_identities_have_reserved_labels() -> None:
    alloc = LocalIdentityAllocator()
    assert alloc.lookup(HOST) == reserved_labels(HOST)
    assert str(alloc.lookup(WORLD)) == "reserved:world"


def test_lowest_free_number_is_reused() -> None:
    alloc = LocalIdentityAllocator()
    a = alloc.allocate(_labels(role="a"))
    alloc.allocate(_labels(role="b"))
    assert alloc.release(a) is True
    assert alloc.allocate(_labels(role="c")) == a


def test_snapshot_is_json_and_survives_a_snapshot_taken_mid_restart() -> None:
    alloc = LocalIdentityAllocator()
    web = alloc.allocate(_labels(role="web"))
    db = alloc.allocate(_labels(role="db"))
    snap = json.loads(json.dumps(alloc.snapshot()))
    again = LocalIdentityAllocator.restore(snap)
    assert again.allocate(_labels(role="web")) == web
    # Saved again before the db endpoint came back: its number is still remembered.
    third = LocalIdentityAllocator.restore(json.loads(json.dumps(again.snapshot())))
    assert third.allocate(_labels(role="db")) == db
    assert third.lookup_by_labels(_labels(role="web")) is None
    third.forget_remembered()
    assert third.allocate(_labels(role="new")) == web


def test_reserved_identities_are_not_allocated() -> None:
    alloc = LocalIdentityAllocator()
    assert alloc.all() == {}
    for number, name in RESERVED_IDENTITIES.items():
        assert str(alloc.lookup(number)) == f"reserved:{name}"
    assert alloc.refcount(HOST) == 0 and alloc.release(HOST) is False
    assert LOCAL_CIDR_IDENTITY_BASE == 1 << 24
