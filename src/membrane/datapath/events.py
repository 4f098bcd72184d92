"""The mb_events ring buffer, read from user space through its memory map, in bounded batches.

libbpf 1.1's `ring_buffer__poll` consumes until the ring is empty, which under a steady flood
means never returning to the caller's event loop. This reader maps the ring itself (consumer
page read-write, producer page and the twice-mapped data area read-only, as the kernel lays
them out) and takes at most `limit` records per call; the fd is pollable, so an asyncio loop
calls it when data is there and runs everything else between batches.

Records are `struct mb_event` (membrane/events.h), all of one size, decoded into `Event` tuples
of host-order values. Events the kernel had no room for are counted per CPU in mb_events_lost.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from ctypes import Structure, c_uint32, c_uint64, sizeof
from ipaddress import IPv4Address
from typing import NamedTuple

from membrane.datapath import libbpf
from membrane.datapath.abi import EventC
from membrane.datapath.maps.base import BpfMap
from membrane.errors import DatapathError

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_PAGE = mmap.PAGESIZE

# struct mb_event: host-order fields, then the network-order address/port block at offset 28.
_LE = struct.Struct("<QBBBBIIII")
_BE = struct.Struct(">IIHH")
_TAIL = struct.Struct("<BBBBIIIB")
EVENT_SIZE = sizeof(EventC)
_BE_OFF = _LE.size
_TAIL_OFF = _BE_OFF + _BE.size
_REC = (EVENT_SIZE + _HDR + 7) & ~7
assert _TAIL_OFF + _TAIL.size + 7 == EVENT_SIZE, "struct mb_event layout changed"


class Event(NamedTuple):
    """One decoded struct mb_event; addresses as host-order integers."""

    ktime: int
    type: int
    subtype: int
    direction: int
    reason: int
    ep_id: int
    ifindex: int
    src_identity: int
    dst_identity: int
    saddr: int
    daddr: int
    sport: int
    dport: int
    proto: int
    tcp_flags: int
    icmp_type: int
    match: int
    cookie: int
    len: int
    drops: int
    flags: int

    @property
    def src_ip(self) -> IPv4Address:
        return IPv4Address(self.saddr)

    @property
    def dst_ip(self) -> IPv4Address:
        return IPv4Address(self.daddr)


def decode(buf: bytes | memoryview | mmap.mmap, offset: int = 0) -> Event:
    """One struct mb_event at offset."""
    return Event._make(
        _LE.unpack_from(buf, offset) + _BE.unpack_from(buf, offset + _BE_OFF)
        + _TAIL.unpack_from(buf, offset + _TAIL_OFF)
    )


def encode(ev: Event) -> bytes:
    """The C bytes of an event (tests and the synthetic benchmark source)."""
    out = bytearray(EVENT_SIZE)
    _LE.pack_into(out, 0, *ev[:9])
    _BE.pack_into(out, _BE_OFF, *ev[9:13])
    _TAIL.pack_into(out, _TAIL_OFF, *ev[13:])
    return bytes(out)


class EventRing:
    """A reader of one BPF ring buffer map. Not thread-safe: one reader per ring."""

    def __init__(self, fd: int) -> None:
        info = libbpf.map_info(fd)
        if info.type != libbpf.BPF_MAP_TYPE_RINGBUF:
            raise DatapathError(f"map {info.name.decode()} is not a ring buffer")
        self.fd = fd
        self.size = int(info.max_entries)
        self._mask = self.size - 1
        try:
            self._cons = mmap.mmap(fd, _PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._prod = mmap.mmap(fd, _PAGE + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=_PAGE)
        except OSError as e:
            os.close(fd)
            raise DatapathError(f"cannot map the events ring buffer: {e}") from e
        # Positions and headers through typed views: each access is one aligned 4- or 8-byte
        # load or store. (struct.pack_into zeroes its target before writing: the kernel could
        # see a consumer position of 0 and refuse to reserve, losing events with room left.)
        self._cons_pos = memoryview(self._cons).cast("Q")
        self._prod_pos = memoryview(self._prod).cast("Q")
        self._words = memoryview(self._prod).cast("I")
        self.read_events = 0
        self.foreign = 0
        """Records of another size than struct mb_event (none are written today)."""

    @classmethod
    def from_pin(cls, path: str) -> EventRing:
        return cls(libbpf.obj_get(path))

    def fileno(self) -> int:
        return self.fd

    def pending_bytes(self) -> int:
        return int(self._prod_pos[0] - self._cons_pos[0])

    def read(self, limit: int = 4096) -> list[Event]:
        """Up to `limit` committed events; the ring space they used is handed back at once."""
        cons = self._cons_pos[0]
        prod = self._prod_pos[0]
        if prod == cons:
            return []
        span = min(prod - cons, limit * _REC)
        start = _PAGE + (cons & self._mask)
        # The data area is mapped twice in a row, so a record that wraps is still contiguous.
        # Each header is read from the shared page before its record's data: the kernel
        # commits a record by clearing BUSY after writing the data, and x86 (TSO) keeps loads
        # in order, so the data read after a committed header is complete.
        ring, words = self._prod, self._words
        out: list[Event] = []
        pos = 0
        le, be, tail = _LE.unpack_from, _BE.unpack_from, _TAIL.unpack_from
        make = Event._make
        while pos + _HDR <= span and len(out) < limit:
            hdr = words[(start + pos) >> 2]
            if hdr & _BUSY:
                break
            length = hdr & ~(_BUSY | _DISCARD)
            step = (length + _HDR + 7) & ~7
            if pos + step > span:
                break
            if not hdr & _DISCARD:
                if length == EVENT_SIZE:
                    o = start + pos + _HDR
                    out.append(make(le(ring, o) + be(ring, o + _BE_OFF)
                                    + tail(ring, o + _TAIL_OFF)))
                else:
                    self.foreign += 1
            pos += step
        if pos:
            self._cons_pos[0] = cons + pos
        self.read_events += len(out)
        return out

    def close(self) -> None:
        for view in (self._cons_pos, self._prod_pos, self._words):
            view.release()
        for m in (self._cons, self._prod):
            with contextlib.suppress(BufferError, ValueError):
                m.close()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class _Zero(Structure):
    _fields_ = [("index", c_uint32)]


class _Counter(Structure):
    _fields_ = [("value", c_uint64)]


class EventsLostMap(BpfMap[_Zero, _Counter]):
    """mb_events_lost: events the ring had no room for, per CPU, summed here."""

    key_type = _Zero
    value_type = _Counter
    percpu = True

    def total(self) -> int:
        values = self.lookup_c_percpu(_Zero(0)) or []
        return sum(v.value for v in values)
