"""Recent flows in memory (a bounded ring), live subscribers, and the optional JSON-lines export
with size-based rotation. Nothing is lost silently: what a slow subscriber misses is counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from membrane.flows.filter import FlowFilter
from membrane.flows.model import Flow

DEFAULT_CAPACITY = 16384


class Subscription:
    """A live follower: flows matching its filter are queued for it; when its queue is full
    the flow is counted in `lost` (and in the store's total) instead of blocking the pipeline."""

    def __init__(self, flt: FlowFilter, maxsize: int) -> None:
        self.filter = flt
        self.queue: asyncio.Queue[Flow] = asyncio.Queue(maxsize)
        self.lost = 0


class FlowStore:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("flow ring capacity must be at least 1")
        self.capacity = capacity
        self._ring: deque[Flow] = deque(maxlen=capacity)
        self._subs: set[Subscription] = set()
        self.seen = 0
        self.subscriber_lost = 0
        self.exporter: JsonlExporter | None = None

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, flows: list[Flow]) -> None:
        self._ring.extend(flows)
        self.seen += len(flows)
        for sub in self._subs:
            for f in flows:
                if sub.filter.matches(f):
                    try:
                        sub.queue.put_nowait(f)
                    except asyncio.QueueFull:
                        sub.lost += 1
                        self.subscriber_lost += 1
        if self.exporter is not None:
            self.exporter.write(flows)

    def query(self, flt: FlowFilter, last: int | None = None) -> list[Flow]:
        """Matching flows, oldest first; the newest `last` of them when given."""
        if last is None:
            return [f for f in self._ring if flt.matches(f)]
        out: list[Flow] = []
        for f in reversed(self._ring):
            if len(out) >= last:
                break
            if flt.matches(f):
                out.append(f)
        out.reverse()
        return out

    def __iter__(self) -> Iterator[Flow]:
        return iter(self._ring)

    def subscribe(self, flt: FlowFilter, maxsize: int = 4096) -> Subscription:
        sub = Subscription(flt, maxsize)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.close()
            self.exporter = None


class JsonlExporter:
    """Appends each flow's JSON (Hubble's shape) as one line to `path`; past `max_bytes` the
    file becomes `path.1` (older ones shift up to `path.<backups>`, the oldest is removed)."""

    def __init__(self, path: Path, max_bytes: int = 64 << 20, backups: int = 3) -> None:
        if max_bytes < 1024:
            raise ValueError("flow export max size must be at least 1 KiB")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = max(backups, 0)
        self.written = 0
        self.rotations = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = self._f.tell()

    def write(self, flows: Iterable[Flow]) -> None:
        for f in flows:
            line = json.dumps(f.to_json(), separators=(",", ":")) + "\n"
            if self._size + len(line) > self.max_bytes and self._size:
                self._rotate()
            self._f.write(line)
            self._size += len(line)
            self.written += 1
        self._f.flush()

    def _rotate(self) -> None:
        self._f.close()
        if self.backups:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self.rotations += 1
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
