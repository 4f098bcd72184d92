"""The typed map base: an fd plus key/value ctypes structs; raw lookup/update/delete/iterate/batch.

Subclasses (one per map) convert between host-order domain values and the C structs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterable, Iterator
from ctypes import Structure
from typing import Generic, Self, TypeVar

from membrane.datapath import libbpf
from membrane.errors import DatapathError

K = TypeVar("K", bound=Structure)
V = TypeVar("V", bound=Structure)

_BATCH = 4096
_NO_BATCH = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSPC, libbpf.ENOTSUPP}


class BpfMap(Generic[K, V]):
    """One BPF map. A per-CPU map's value reads/writes are lists with one value per possible CPU.

    The object owns its fd (a dup of the loader's, or one opened from a pin) and closes it.
    """

    key_type: type[K]
    value_type: type[V]
    percpu: bool = False

    def __init__(self, fd: int, name: str, max_entries: int) -> None:
        self.fd = fd
        self.name = name
        self.max_entries = max_entries
        self._ncpus = libbpf.num_possible_cpus() if self.percpu else 1
        self._vsize = ctypes.sizeof(self.value_type)
        # The kernel lays per-CPU values out 8-byte aligned.
        self._slot = (self._vsize + 7) & ~7 if self.percpu else self._vsize
        self._batch_ok = True

    @classmethod
    def from_pin(cls, path: str) -> Self:
        fd = libbpf.obj_get(path)
        info = libbpf.map_info(fd)
        return cls(fd, info.name.decode(), int(info.max_entries))

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    # --- raw access --------------------------------------------------------------------------
    def _value_buf(self) -> ctypes.Array[ctypes.c_char]:
        return ctypes.create_string_buffer(self._slot * self._ncpus)

    def _values_of(self, raw: bytes) -> list[V]:
        return [
            self.value_type.from_buffer_copy(raw, i * self._slot) for i in range(self._ncpus)
        ]

    def lookup_c_percpu(self, key: K) -> list[V] | None:
        buf = self._value_buf()
        if not libbpf.map_lookup_elem(self.fd, key, buf):
            return None
        return self._values_of(buf.raw)

    def lookup_c(self, key: K) -> V | None:
        if self.percpu:
            raise DatapathError(f"map {self.name} is per-CPU: use lookup_c_percpu")
        value = self.value_type()
        return value if libbpf.map_lookup_elem(self.fd, key, value) else None

    def update_c(self, key: K, value: V, flags: int = libbpf.BPF_ANY) -> None:
        libbpf.map_update_elem(self.fd, key, self._pack(value), flags,
                               what=f"map {self.name} ({self.max_entries} entries)")

    def delete_c(self, key: K) -> bool:
        return libbpf.map_delete_elem(self.fd, key)

    def _pack(self, value: V) -> ctypes.Array[ctypes.c_char] | V:
        if not self.percpu:
            return value
        buf = self._value_buf()
        raw = ctypes.string_at(ctypes.addressof(value), self._vsize)
        for i in range(self._ncpus):
            ctypes.memmove(ctypes.addressof(buf) + i * self._slot, raw, self._vsize)
        return buf

    def keys(self) -> Iterator[K]:
        key: K | None = None
        while True:
            nxt = self.key_type()
            if not libbpf.map_get_next_key(self.fd, key, nxt):
                return
            yield nxt
            key = nxt

    def items_raw(self) -> list[tuple[K, bytes]]:
        """Every entry as (key, raw value bytes: one slot per CPU for per-CPU maps)."""
        if self._batch_ok:
            try:
                return self._items_batch()
            except libbpf.BpfCallError as e:
                if e.errno not in _NO_BATCH:
                    raise
                self._batch_ok = False
        out: list[tuple[K, bytes]] = []
        for key in self.keys():
            buf = self._value_buf()
            if libbpf.map_lookup_elem(self.fd, key, buf):
                out.append((key, buf.raw))
        return out

    def _items_batch(self) -> list[tuple[K, bytes]]:
        ksize, vsize = ctypes.sizeof(self.key_type), self._slot * self._ncpus
        keys = ctypes.create_string_buffer(ksize * _BATCH)
        values = ctypes.create_string_buffer(vsize * _BATCH)
        token_in: ctypes.Array[ctypes.c_char] | None = None
        token_out = ctypes.create_string_buffer(max(ksize, 8))
        out: list[tuple[K, bytes]] = []
        while True:
            n, done = libbpf.map_lookup_batch(self.fd, token_in, token_out, keys, values, _BATCH)
            kraw, vraw = keys.raw, values.raw
            for i in range(n):
                out.append((self.key_type.from_buffer_copy(kraw, i * ksize),
                            vraw[i * vsize:(i + 1) * vsize]))
            if done:
                return out
            token_in = ctypes.create_string_buffer(token_out.raw, len(token_out))

    def items_c(self) -> list[tuple[K, V]]:
        if self.percpu:
            raise DatapathError(f"map {self.name} is per-CPU: use items_c_percpu")
        return [(k, self.value_type.from_buffer_copy(v)) for k, v in self.items_raw()]

    def items_c_percpu(self) -> list[tuple[K, list[V]]]:
        return [(k, self._values_of(v)) for k, v in self.items_raw()]

    def update_batch(self, pairs: Iterable[tuple[K, V]]) -> int:
        """Write many entries in one syscall per 4096 (falls back to one by one)."""
        items = list(pairs)
        if not items:
            return 0
        ksize = ctypes.sizeof(self.key_type)
        vsize = self._slot * self._ncpus
        written = 0
        for start in range(0, len(items), _BATCH):
            chunk = items[start:start + _BATCH]
            keys = ctypes.create_string_buffer(ksize * len(chunk))
            values = ctypes.create_string_buffer(vsize * len(chunk))
            for i, (k, v) in enumerate(chunk):
                ctypes.memmove(ctypes.addressof(keys) + i * ksize, ctypes.addressof(k), ksize)
                packed = self._pack(v)
                ctypes.memmove(ctypes.addressof(values) + i * vsize, ctypes.addressof(packed),
                               vsize)
            try:
                written += libbpf.map_update_batch(self.fd, keys, values, len(chunk),
                                                   what=f"map {self.name}")
            except libbpf.BpfCallError as e:
                if e.errno not in _NO_BATCH - {errno.ENOSPC}:
                    raise
                for k, v in chunk:
                    self.update_c(k, v)
                    written += 1
        return written

    def count(self) -> int:
        return sum(1 for _ in self.keys())

    def clear(self) -> int:
        removed = 0
        for key in list(self.keys()):
            removed += self.delete_c(key)
        return removed
