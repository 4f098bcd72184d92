"""Maglev lookup tables: size, balance, minimal disruption, determinism, clear errors."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membrane.errors import InputError
from membrane.loadbalancer.maglev import (
    DEFAULT_SIZE,
    SUPPORTED_SIZES,
    check_size,
    offset_and_skip,
    table,
)


def names(n: int, start: int = 1) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(start - 1, start - 1 + n)]


def moved(before: list[str], after: list[str], m: int = DEFAULT_SIZE, seed: int = 0) -> int:
    """How many slots go to a different backend (by name) after the change."""
    old, new = table(before, m, seed), table(after, m, seed)
    return sum(1 for a, b in zip(old, new, strict=True) if before[a] != after[b])


@pytest.mark.parametrize("m", SUPPORTED_SIZES[:7])
def test_table_has_one_backend_index_per_slot(m: int) -> None:
    t = table(names(7), m)
    assert len(t) == m and set(t) == set(range(7))


def test_empty_backend_list_gives_an_empty_table() -> None:
    assert table([], DEFAULT_SIZE) == []


def test_single_backend_takes_every_slot() -> None:
    assert table(["only"], 251) == [0] * 251


@pytest.mark.parametrize("n", [2, 3, 10, 33, 100])
def test_every_backend_gets_its_share_of_slots(n: int) -> None:
    counts = Counter(table(names(n), DEFAULT_SIZE))
    share = DEFAULT_SIZE / n
    # backends take turns, so shares differ by one slot at most
    assert max(counts.values()) - min(counts.values()) <= 1
    assert all(abs(c - share) <= max(1, 0.02 * share) for c in counts.values())


@pytest.mark.parametrize(("n", "removed"), [(5, 0), (10, 4), (10, 9), (20, 7)])
def test_removing_one_of_n_backends_moves_about_one_nth_of_the_slots(n: int,
                                                                    removed: int) -> None:
    before = names(n)
    after = before[:removed] + before[removed + 1:]
    own = table(before).count(removed)
    changed = moved(before, after)
    assert changed >= own  # the removed backend's slots all move, necessarily
    # ... and little else: a modulo hash would move (n - 1) / n of the slots
    assert changed <= 1.25 * DEFAULT_SIZE / n
    assert changed - own <= 0.02 * DEFAULT_SIZE


def test_adding_a_backend_takes_slots_mostly_from_the_others_evenly() -> None:
    before = names(10)
    after = [*before, "10.0.9.9:8080"]
    changed = moved(before, after)
    assert changed <= 1.25 * DEFAULT_SIZE / 11


def test_backend_keeps_its_slots_whatever_its_index() -> None:
    backends = names(8)
    forward = [backends[i] for i in table(backends, 4093)]
    reverse = list(reversed(backends))
    backward = [reverse[i] for i in table(reverse, 4093)]
    same = sum(1 for a, b in zip(forward, backward, strict=True) if a == b)
    assert same >= 0.95 * 4093  # only ties between turns differ


def test_same_input_gives_the_same_table_and_seed_changes_it() -> None:
    backends = names(12)
    assert table(backends, 1021, seed=7) == table(list(backends), 1021, seed=7)
    assert table(backends, 1021, seed=7) != table(backends, 1021, seed=8)
    assert table([b.encode() for b in backends], 1021) == table(backends, 1021)


def test_hash_is_pinned_so_every_node_builds_the_same_table() -> None:
    # Changing the hash changes every table: nodes running different versions would disagree.
    assert offset_and_skip("10.0.0.1:80", 251) == offset_and_skip(b"10.0.0.1:80", 251) == (28, 220)
    assert [offset_and_skip(f"b{i}", DEFAULT_SIZE, seed=1) for i in range(3)] == [
        (6628, 10559), (2711, 3333), (11981, 13078)]
    assert table(["a", "b", "c"], 251)[:12] == [2, 0, 2, 0, 1, 2, 0, 0, 1, 1, 0, 1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=40, unique=True),
       st.sampled_from(SUPPORTED_SIZES[:4]), st.integers(0, 2**64 - 1))
def test_any_backends_fill_every_slot_in_even_shares(backends: list[bytes], m: int,
                                                    seed: int) -> None:
    t = table(backends, m, seed)
    counts = Counter(t)
    assert len(t) == m and set(counts) == set(range(len(backends)))
    assert max(counts.values()) - min(counts.values()) <= 1
    for name in backends:
        offset, skip = offset_and_skip(name, m, seed)
        assert 0 <= offset < m and 1 <= skip < m


@pytest.mark.parametrize("m", [0, 250, 16384, 131072, True])
def test_unsupported_table_size_is_refused_with_the_choices(m: int) -> None:
    with pytest.raises(InputError, match=r"is not a supported Maglev table size: use one of "
                       r"251, 509, .*131071"):
        table(names(2), m)
    with pytest.raises(InputError, match=r"^--maglev-table-size: "):
        check_size(m)


def test_duplicate_backend_names_are_a_bug_of_the_caller() -> None:
    with pytest.raises(ValueError, match=r"listed twice \(indexes 0 and 2\)"):
        table(["a", "b", "a"], 251)


def test_seed_out_of_range_is_refused() -> None:
    with pytest.raises(InputError, match="maglev hash seed"):
        table(["a"], 251, seed=-1)
