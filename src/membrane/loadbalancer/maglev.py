"""Maglev consistent hashing: the lookup table of a frontend, slot -> backend index.

The algorithm of the Maglev paper (Eisenbud et al., NSDI 2016, section 3.4) as Cilium's
`pkg/maglev` implements it: each backend has a permutation of the M slots, ``(offset + j * skip)
% M``, from two hashes of its name; backends take turns claiming the next free slot of their
permutation until every slot is taken. Because they take turns, each backend ends up with
``M // N`` or ``M // N + 1`` slots, and removing one backend moves little more than its own
slots, so connections hashed to the other backends mostly keep theirs.

Hashes: BLAKE2b (``hashlib.blake2b``, 64-bit digests) of the backend name, keyed with the seed
and personalised differently for the offset and for the skip, which makes them two independent
hashes. Cilium uses the two halves of a 128-bit murmur3 instead; the tables differ but have the
same properties. The seed lets every node of a cluster build the same table (same seed) or
different tables per cluster (different seeds).

Pure and deterministic: same names, size and seed -> same table, on every node and run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from membrane.errors import InputError

SUPPORTED_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
"""Primes, as Cilium's --bpf-lb-maglev-table-size: a prime M makes every skip a generator."""
DEFAULT_SIZE = 16381
"""Cilium's default: at least 100 * N slots for up to ~160 backends keeps imbalance under 1 %."""

SEED_BYTES = 8
_OFFSET_PERSON = b"mb-maglev-offset"
_SKIP_PERSON = b"mb-maglev-skip"


def check_size(m: int, where: str = "--maglev-table-size") -> int:
    """*m* if it is a supported table size, else InputError naming *where*."""
    if isinstance(m, bool) or not isinstance(m, int) or m not in SUPPORTED_SIZES:
        raise InputError(where, f"{m!r} is not a supported Maglev table size: use one of "
                         f"{', '.join(map(str, SUPPORTED_SIZES))} (primes; default "
                         f"{DEFAULT_SIZE})")
    return m


def _seed_key(seed: int) -> bytes:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
        raise InputError("maglev hash seed", f"{seed!r} is not an integer 0..2**64-1")
    return seed.to_bytes(SEED_BYTES, "little")


def _name(backend: str | bytes) -> bytes:
    return backend.encode() if isinstance(backend, str) else bytes(backend)


def offset_and_skip(backend: str | bytes, m: int, seed: int = 0) -> tuple[int, int]:
    """The permutation of *backend*: slot j is ``(offset + j * skip) % m``; skip is 1..m-1."""
    key = _seed_key(seed)
    name = _name(backend)
    h1 = hashlib.blake2b(name, digest_size=8, key=key, person=_OFFSET_PERSON).digest()
    h2 = hashlib.blake2b(name, digest_size=8, key=key, person=_SKIP_PERSON).digest()
    return int.from_bytes(h1, "little") % m, int.from_bytes(h2, "little") % (m - 1) + 1


def table(backends: Sequence[str | bytes], m: int = DEFAULT_SIZE, seed: int = 0) -> list[int]:
    """For each of the *m* slots, the index in *backends* of the backend it goes to.

    *backends* are stable names (Cilium uses ``ip:port``; any unique str or bytes does): a
    backend keeps most of its slots as long as its name does, whatever its index. Order does
    not matter beyond the indexes returned, except that backends earlier in the list win ties
    for the last slot of a round. An empty list gives an empty table. With more backends than
    slots, backends past index m - 1 get no slot.
    """
    check_size(m, "maglev table size")
    if not backends:
        return []
    names = [_name(b) for b in backends]
    if len(set(names)) != len(names):
        first: dict[bytes, int] = {}
        for i, name in enumerate(names):
            if name in first:
                raise ValueError(f"maglev: backend {name!r} is listed twice (indexes "
                                 f"{first[name]} and {i})")
            first[name] = i
    params = [offset_and_skip(name, m, seed) for name in names]
    # Each backend's permutation is walked lazily (`pos[i]` is its next candidate slot) instead
    # of precomputed as N * M entries like Cilium does: filling the table probes a taken slot
    # about M * ln(M) times at most (1.4e5 times for M = 16381 and 100 backends).
    pos = [offset for offset, _ in params]
    skips = [skip for _, skip in params]
    entry = [-1] * m
    n = len(names)
    left = m
    while True:
        for i in range(n):
            c = pos[i]
            s = skips[i]
            while entry[c] >= 0:
                c += s
                if c >= m:
                    c -= m
            entry[c] = i
            c += s
            pos[i] = c - m if c >= m else c
            left -= 1
            if not left:
                return entry
