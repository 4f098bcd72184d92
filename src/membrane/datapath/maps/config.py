"""mb_config (node-wide datapath flags) and mb_meta (the loader's record of its object)."""

from __future__ import annotations

import ctypes
from ctypes import c_uint32
from dataclasses import dataclass, replace

from membrane.datapath.abi import (
    CFG_F_POLICY_EVENTS,
    CFG_F_REDIRECT_PEER,
    CFG_F_TRACE_EVENTS,
    Meta,
    NodeConfig,
)
from membrane.datapath.maps.base import BpfMap


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfigValue:
    redirect_peer: bool = False
    trace_events: bool = False
    """Connection milestones (first packet, first reply, close) into the events ring."""
    policy_events: bool = False
    """Policy verdicts of new connections of enforced endpoints into the events ring."""
    drop_notify_ms: int = 0
    """At most one drop event per flow per interval; 0: every drop (drops are always on)."""
    maglev_size: int = 0
    """Entries of each Maglev table (a prime); 0 until the load-balancer configures it."""
    wakeup_bytes: int = 0
    """Wake the events reader only when this many bytes wait in the ring; 0: per event."""


class _Key(ctypes.Structure):
    _fields_ = [("index", c_uint32)]


class NodeConfigMap(BpfMap[_Key, NodeConfig]):
    key_type = _Key
    value_type = NodeConfig

    def get(self) -> NodeConfigValue:
        value = self.lookup_c(_Key(0)) or NodeConfig()
        return NodeConfigValue(
            redirect_peer=bool(value.flags & CFG_F_REDIRECT_PEER),
            trace_events=bool(value.flags & CFG_F_TRACE_EVENTS),
            policy_events=bool(value.flags & CFG_F_POLICY_EVENTS),
            drop_notify_ms=int(value.drop_notify_ms),
            maglev_size=int(value.maglev_size),
            wakeup_bytes=int(value.wakeup_bytes),
        )

    def put(self, value: NodeConfigValue) -> None:
        flags = (
            (CFG_F_REDIRECT_PEER if value.redirect_peer else 0)
            | (CFG_F_TRACE_EVENTS if value.trace_events else 0)
            | (CFG_F_POLICY_EVENTS if value.policy_events else 0)
        )
        self.update_c(_Key(0), NodeConfig(flags=flags, drop_notify_ms=value.drop_notify_ms,
                                           maglev_size=value.maglev_size,
                                           wakeup_bytes=value.wakeup_bytes))

    def set(self, *, redirect_peer: bool) -> None:
        """Set the kernel's capability, keep the visibility settings."""
        self.put(replace(self.get(), redirect_peer=redirect_peer))


class MetaMap(BpfMap[_Key, Meta]):
    key_type = _Key
    value_type = Meta

    def get_digest(self) -> bytes:
        value = self.lookup_c(_Key(0))
        return bytes(value.obj_sha256) if value is not None else b""

    def set_digest(self, digest: bytes) -> None:
        value = Meta()
        ctypes.memmove(value.obj_sha256, digest[:32], min(32, len(digest)))
        self.update_c(_Key(0), value)
