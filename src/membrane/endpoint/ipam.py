"""Node-local IPv4 address management for pods: the pod CIDR, its gateway and who holds which IP.

State is one small JSON file rewritten atomically (tmp + fsync + rename) on every change, so an
agent restart restores every allocation and the round-robin pointer. Addresses are handed out
round-robin so a just-released address is not immediately given to the next pod (stale
conntrack entries and neighbour caches of the old pod then cannot leak to the new one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError, ip_network
from pathlib import Path
from typing import Any

from membrane.errors import Conflict, InputError, MembraneError

log = logging.getLogger(__name__)

MAX_PREFIXLEN = 30
"""The smallest pod CIDR: a /30 leaves one pod address after network, gateway and broadcast."""

STATE_VERSION = 1


def validate_pod_cidr(text: str, where: str = "--pod-cidr") -> IPv4Network:
    """Parse a user-given pod CIDR such as ``10.200.0.0/16``; InputError naming *where* if bad."""
    value = text.strip()
    try:
        net = ip_network(value, strict=False)
    except ValueError:
        raise InputError(where, f'"{text}" is not an IPv4 CIDR (e.g. 10.200.0.0/16)') from None
    if not isinstance(net, IPv4Network):
        raise InputError(
            where, f"{value} is IPv6: IPv6 pod CIDRs are not supported yet (e.g. 10.200.0.0/16)"
        )
    if "/" not in value:
        raise InputError(where, f'"{text}" has no prefix length (e.g. {value}/16)')
    if IPv4Address(value.partition("/")[0]) != net.network_address:
        raise InputError(where, f"{value} has host bits set (did you mean {net}?)")
    if net.prefixlen > MAX_PREFIXLEN:
        raise InputError(
            where,
            f"{value} is too small: a pod CIDR needs at least a /{MAX_PREFIXLEN} "
            "(network, gateway and broadcast are reserved)",
        )
    return net


class IPAM:
    """Allocates pod IPv4 addresses from one CIDR; persists to *state_file* on every change.

    Reserved: the network address, the broadcast address and the first host (the gateway held by
    the node's router device). Thread-safe: every public method holds one lock.
    """

    def __init__(self, cidr: IPv4Network, state_file: Path) -> None:
        if cidr.prefixlen > MAX_PREFIXLEN:
            raise InputError(
                "--pod-cidr",
                f"{cidr} is too small: a pod CIDR needs at least a /{MAX_PREFIXLEN} "
                "(network, gateway and broadcast are reserved)",
            )
        self.cidr = cidr
        self.state_file = Path(state_file)
        self.gateway = cidr.network_address + 1
        self._first = int(cidr.network_address) + 2
        self._last = int(cidr.broadcast_address) - 1
        self._lock = threading.Lock()
        self._by_owner: dict[str, IPv4Address] = {}
        self._by_ip: dict[IPv4Address, str] = {}
        self._next = self._first
        self._just_released: int | None = None
        """Skipped by the next allocation while another address is free (in memory only)."""
        self._load()

    # -- queries ------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """How many pod addresses the CIDR holds (without the reserved ones)."""
        return self._last - self._first + 1

    @property
    def used(self) -> int:
        """How many addresses are allocated."""
        with self._lock:
            return len(self._by_owner)

    def owner_of(self, ip: IPv4Address) -> str | None:
        """The owner holding *ip*, or None."""
        with self._lock:
            return self._by_ip.get(ip)

    def allocations(self) -> dict[str, IPv4Address]:
        """A copy of owner -> address."""
        with self._lock:
            return dict(self._by_owner)

    # -- changes ------------------------------------------------------------------------------

    def allocate(self, owner: str) -> IPv4Address:
        """The address of *owner*, allocating the next free one round-robin if it has none."""
        with self._lock:
            held = self._by_owner.get(owner)
            if held is not None:
                return held
            if len(self._by_owner) >= self.capacity:
                raise MembraneError(
                    f"pod CIDR {self.cidr} is exhausted ({self.capacity} addresses)"
                )
            others_free = self.capacity - len(self._by_owner) > 1
            candidate = self._next
            while IPv4Address(candidate) in self._by_ip or (
                others_free and candidate == self._just_released
            ):
                candidate = self._wrap(candidate + 1)
            ip = IPv4Address(candidate)
            self._commit(owner, ip, next_pointer=self._wrap(candidate + 1))
            log.debug("allocated %s to %s", ip, owner)
            return ip

    def allocate_specific(self, owner: str, ip: IPv4Address) -> IPv4Address:
        """Give *ip* to *owner* (restoring after a restart); Conflict if someone else holds it."""
        with self._lock:
            self._check_usable(ip)
            holder = self._by_ip.get(ip)
            if holder == owner:
                return ip
            if holder is not None:
                raise Conflict(f"{ip} is already allocated to {holder} (wanted by {owner})")
            held = self._by_owner.get(owner)
            if held is not None:
                raise Conflict(f"{owner} already holds {held} (asked for {ip})")
            self._commit(owner, ip, next_pointer=self._next)
            return ip

    def release(self, owner: str) -> bool:
        """Free the address of *owner*; False (and nothing changes) if it holds none."""
        with self._lock:
            ip = self._by_owner.get(owner)
            if ip is None:
                return False
            by_owner = dict(self._by_owner)
            del by_owner[owner]
            self._save(by_owner, self._next)
            self._install(by_owner, self._next)
            self._just_released = int(ip)
            log.debug("released %s from %s", ip, owner)
            return True

    # -- internals ----------------------------------------------------------------------------

    def _wrap(self, value: int) -> int:
        return self._first if value > self._last else value

    def _check_usable(self, ip: IPv4Address) -> None:
        if ip not in self.cidr:
            raise Conflict(f"{ip} is not in pod CIDR {self.cidr}")
        if not self._first <= int(ip) <= self._last:
            raise Conflict(
                f"{ip} is reserved in pod CIDR {self.cidr} (network, gateway or broadcast)"
            )

    def _commit(self, owner: str, ip: IPv4Address, *, next_pointer: int) -> None:
        by_owner = dict(self._by_owner)
        by_owner[owner] = ip
        self._save(by_owner, next_pointer)  # persist first: a failed write changes nothing
        self._install(by_owner, next_pointer)

    def _install(self, by_owner: dict[str, IPv4Address], next_pointer: int) -> None:
        self._by_owner = by_owner
        self._by_ip = {ip: owner for owner, ip in by_owner.items()}
        self._next = next_pointer

    def _save(self, by_owner: dict[str, IPv4Address], next_pointer: int) -> None:
        data = {
            "version": STATE_VERSION,
            "cidr": str(self.cidr),
            "next": str(IPv4Address(next_pointer)),
            "allocations": {owner: str(ip) for owner, ip in sorted(by_owner.items())},
        }
        path = self.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise MembraneError(f"cannot write IPAM state {path}: {e.strerror or e}") from e
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _load(self) -> None:
        path = self.state_file
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as e:
            raise MembraneError(f"cannot read IPAM state {path}: {e.strerror or e}") from e
        try:
            data: Any = json.loads(text)
            stored_cidr = IPv4Network(data["cidr"])
            raw = data["allocations"]
            if not isinstance(raw, dict):
                raise TypeError("allocations is not an object")
            by_owner = {str(owner): IPv4Address(ip) for owner, ip in raw.items()}
            next_text = data.get("next")
            next_pointer = int(IPv4Address(next_text)) if next_text else self._first
        except (ValueError, KeyError, TypeError, AddressValueError, NetmaskValueError) as e:
            raise MembraneError(f"IPAM state {path} is corrupt ({e}): move it away") from None

        by_ip: dict[IPv4Address, str] = {}
        misfits: list[str] = []
        for owner, ip in by_owner.items():
            if ip in by_ip:
                raise MembraneError(
                    f"IPAM state {path} is corrupt: {ip} is held by {by_ip[ip]} and {owner}"
                )
            by_ip[ip] = owner
            if ip not in self.cidr or not self._first <= int(ip) <= self._last:
                misfits.append(f"{ip} ({owner})")
        if misfits:
            raise Conflict(
                f"IPAM state {path} was written for pod CIDR {stored_cidr}; "
                f"{len(misfits)} allocation(s) do not fit pod CIDR {self.cidr}: "
                f"{', '.join(misfits[:3])}{' ...' if len(misfits) > 3 else ''}"
            )
        if not self._first <= next_pointer <= self._last:
            next_pointer = self._first
        self._install(by_owner, next_pointer)
        if stored_cidr != self.cidr:
            log.info("IPAM state moved from pod CIDR %s to %s", stored_cidr, self.cidr)
            self._save(by_owner, next_pointer)
