"""Pod IPAM: CIDR validation, allocation, round-robin, persistence across restarts."""

from __future__ import annotations

import json
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membrane.endpoint.ipam import IPAM, validate_pod_cidr
from membrane.errors import Conflict, InputError, MembraneError

NET29 = IPv4Network("10.0.0.0/29")


def ipam(tmp_path: Path, cidr: str = "10.0.0.0/29") -> IPAM:
    return IPAM(IPv4Network(cidr), tmp_path / "ipam.json")


# -- validate_pod_cidr ----------------------------------------------------------------------------


def test_valid_pod_cidr_is_returned() -> None:
    assert validate_pod_cidr("10.200.0.0/16") == IPv4Network("10.200.0.0/16")
    assert validate_pod_cidr("10.0.0.0/29") == NET29
    assert validate_pod_cidr(" 10.0.0.0/30 ") == IPv4Network("10.0.0.0/30")


def test_pod_cidr_in_netmask_form_is_accepted() -> None:
    assert validate_pod_cidr("10.200.0.0/255.255.0.0") == IPv4Network("10.200.0.0/16")


@pytest.mark.parametrize(("text", "fragment"), [
    ("banana", "not an IPv4 CIDR"),
    ("10.0.0.0/33", "not an IPv4 CIDR"),
    ("10.0.0.0", "no prefix length"),
    ("10.200.0.5/16", "did you mean 10.200.0.0/16"),
    ("", "not an IPv4 CIDR"),
    ("10.0.0.256/24", "not an IPv4 CIDR"),
    ("fd00::/64", "IPv6 pod CIDRs are not supported yet"),
    ("fd00::1/64", "IPv6 pod CIDRs are not supported yet"),
    ("fd00::", "IPv6 pod CIDRs are not supported yet"),
    ("10.0.0.0/31", "too small"),
    ("10.0.0.0/32", "too small"),
])
def test_bad_pod_cidr_is_an_input_error_naming_the_option(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        validate_pod_cidr(text)
    assert info.value.where == "--pod-cidr"
    assert fragment in info.value.message


def test_pod_cidr_error_names_the_given_place() -> None:
    with pytest.raises(InputError, match=r"^lab\.yaml: podCIDR: "):
        validate_pod_cidr("x", where="lab.yaml: podCIDR")


# -- allocation -----------------------------------------------------------------------------------


def test_network_gateway_and_broadcast_are_reserved(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    assert pool.gateway == IPv4Address("10.0.0.1")
    assert pool.capacity == 5
    got = {pool.allocate(f"p{i}") for i in range(5)}
    assert got == {IPv4Address(f"10.0.0.{i}") for i in range(2, 7)}
    assert pool.used == 5


def test_exhausted_pool_says_so(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    for i in range(5):
        pool.allocate(f"p{i}")
    with pytest.raises(MembraneError) as info:
        pool.allocate("one-too-many")
    assert str(info.value) == "pod CIDR 10.0.0.0/29 is exhausted (5 addresses)"


def test_smallest_pod_cidr_holds_one_pod(tmp_path: Path) -> None:
    pool = ipam(tmp_path, "10.0.0.0/30")
    assert pool.gateway == IPv4Address("10.0.0.1")
    assert pool.allocate("only") == IPv4Address("10.0.0.2")
    with pytest.raises(MembraneError) as info:
        pool.allocate("second")
    assert str(info.value) == "pod CIDR 10.0.0.0/30 is exhausted (1 addresses)"
    pool.release("only")
    assert pool.allocate("second") == IPv4Address("10.0.0.2")  # wraps to the one address


@pytest.mark.parametrize("cidr", ["10.0.0.0/31", "10.0.0.0/32"])
def test_too_small_cidr_is_an_input_error_naming_the_option(tmp_path: Path, cidr: str) -> None:
    with pytest.raises(InputError) as info:
        ipam(tmp_path, cidr)
    assert info.value.where == "--pod-cidr"
    assert "too small" in info.value.message


def test_allocate_is_idempotent_per_owner(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    assert pool.allocate("a") == pool.allocate("a")
    assert pool.used == 1


def test_released_address_is_not_reused_immediately(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    first = pool.allocate("a")
    assert pool.release("a") is True
    assert pool.allocate("b") != first


def test_released_address_is_skipped_even_where_the_pointer_stands(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    for i in range(5):
        pool.allocate(f"p{i}")  # 10.0.0.2-6, the pointer wraps to .2
    pool.release("p0")  # frees .2
    pool.release("p1")  # frees .3, the pointer still stands at .2
    assert pool.allocate("a") == IPv4Address("10.0.0.2")
    pool.release("p2")  # frees .4; the pointer now stands on it
    assert pool.allocate("b") == IPv4Address("10.0.0.3")  # not the just-released .4


def test_round_robin_wraps_to_free_addresses(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    ips = [pool.allocate(f"p{i}") for i in range(5)]
    pool.release("p1")
    assert pool.allocate("new") == ips[1]


def test_release_of_unknown_owner_is_fine(tmp_path: Path) -> None:
    assert ipam(tmp_path).release("nobody") is False


def test_owner_of_and_allocations(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    ip = pool.allocate("a")
    assert pool.owner_of(ip) == "a"
    assert pool.owner_of(IPv4Address("10.0.0.6")) is None
    snapshot = pool.allocations()
    snapshot["x"] = ip  # a copy: changing it changes nothing
    assert pool.allocations() == {"a": ip}


def test_allocate_specific_restores_an_address(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    ip = IPv4Address("10.0.0.5")
    assert pool.allocate_specific("a", ip) == ip
    assert pool.allocate_specific("a", ip) == ip
    assert pool.allocate("a") == ip
    assert pool.owner_of(ip) == "a"


def test_allocate_specific_of_an_address_in_use_is_a_conflict(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    ip = pool.allocate("a")
    with pytest.raises(Conflict, match="already allocated to a"):
        pool.allocate_specific("b", ip)
    with pytest.raises(Conflict, match="a already holds"):
        pool.allocate_specific("a", IPv4Address("10.0.0.6"))


@pytest.mark.parametrize("ip", ["10.0.0.0", "10.0.0.1", "10.0.0.7", "10.0.1.2"])
def test_allocate_specific_outside_the_usable_range_is_a_conflict(tmp_path: Path, ip: str) -> None:
    with pytest.raises(Conflict):
        ipam(tmp_path).allocate_specific("a", IPv4Address(ip))


def test_allocate_skips_specifically_allocated_addresses(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    pool.allocate_specific("restored", IPv4Address("10.0.0.2"))
    assert pool.allocate("new") == IPv4Address("10.0.0.3")


# -- persistence ----------------------------------------------------------------------------------


def test_allocations_survive_a_restart(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    a = pool.allocate("a")
    pool.allocate("b")
    pool.release("b")
    again = ipam(tmp_path)
    assert again.allocations() == {"a": a}
    assert again.allocate("c") not in {a, IPv4Address("10.0.0.3")}  # the pointer survived too


def test_state_is_written_atomically_without_leftovers(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    pool.allocate("a")
    assert [p.name for p in tmp_path.iterdir()] == ["ipam.json"]
    data = json.loads((tmp_path / "ipam.json").read_text())
    assert data["cidr"] == "10.0.0.0/29"
    assert data["allocations"] == {"a": "10.0.0.2"}


def test_state_of_another_cidr_that_does_not_fit_is_a_conflict(tmp_path: Path) -> None:
    big = ipam(tmp_path, "10.0.0.0/24")
    for i in range(10):
        big.allocate(f"p{i}")
    with pytest.raises(Conflict) as info:
        ipam(tmp_path, "10.0.0.0/29")
    assert "10.0.0.0/24" in str(info.value)
    assert "10.0.0.0/29" in str(info.value)


def test_state_of_another_cidr_is_taken_over_when_every_allocation_fits(tmp_path: Path) -> None:
    small = ipam(tmp_path, "10.0.0.0/29")
    ip = small.allocate("a")
    big = ipam(tmp_path, "10.0.0.0/24")
    assert big.allocations() == {"a": ip}
    assert json.loads((tmp_path / "ipam.json").read_text())["cidr"] == "10.0.0.0/24"


def test_corrupt_state_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "ipam.json").write_text("{not json")
    with pytest.raises(MembraneError, match=r"ipam\.json is corrupt"):
        ipam(tmp_path)


def test_failed_write_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = ipam(tmp_path)
    kept = pool.allocate("a")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("membrane.endpoint.ipam.os.replace", refuse)
    with pytest.raises(MembraneError, match=r"cannot write IPAM state .*No space left"):
        pool.allocate("b")
    with pytest.raises(MembraneError, match="cannot write IPAM state"):
        pool.release("a")
    assert pool.allocations() == {"a": kept}
    monkeypatch.undo()
    assert ipam(tmp_path).allocations() == {"a": kept}
    assert [p.name for p in tmp_path.iterdir()] == ["ipam.json"]


# -- property: never double-allocates, survives reload --------------------------------------------

ops = st.lists(
    st.tuples(st.sampled_from(["allocate", "release", "reload", "specific"]),
              st.integers(min_value=0, max_value=7), st.integers(min_value=2, max_value=6)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_ipam_never_double_allocates_and_survives_reload(
    steps: list[tuple[str, int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as d:
        state = Path(d) / "ipam.json"
        pool = IPAM(NET29, state)
        model: dict[str, IPv4Address] = {}
        just_released: IPv4Address | None = None
        for op, n, host in steps:
            owner = f"ep{n}"
            if op == "allocate":
                if owner not in model and len(model) == pool.capacity:
                    with pytest.raises(MembraneError, match="exhausted"):
                        pool.allocate(owner)
                else:
                    fresh = owner not in model
                    others_free = pool.capacity - len(model) > 1
                    ip = pool.allocate(owner)
                    assert model.setdefault(owner, ip) == ip
                    if fresh and others_free:
                        assert ip != just_released
            elif op == "release":
                released = model.pop(owner, None)
                assert pool.release(owner) == (released is not None)
                just_released = released or just_released
            elif op == "specific":
                ip = IPv4Address(f"10.0.0.{host}")
                holder = next((o for o, a in model.items() if a == ip), None)
                if holder == owner or (holder is None and owner not in model):
                    pool.allocate_specific(owner, ip)
                    model[owner] = ip
                else:
                    with pytest.raises(Conflict):
                        pool.allocate_specific(owner, ip)
            else:
                pool = IPAM(NET29, state)
                just_released = None  # only the round-robin pointer is persisted
            got = pool.allocations()
            assert got == model
            assert len(set(got.values())) == len(got)
            assert all(ip in NET29 and ip not in (NET29[0], NET29[1], NET29[-1])
                       for ip in got.values())
            assert pool.used == len(got)
