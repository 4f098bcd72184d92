"""mb_config (node-wide datapath flags) and mb_meta (the loader's record of its object)."""

from __future__ import annotations

import ctypes
from ctypes import c_uint32
from dataclasses import dataclass

from membrane.datapath.abi import CFG_F_REDIRECT_PEER, Meta, NodeConfig
from membrane.datapath.maps.base import BpfMap


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfigValue:
    redirect_peer: bool = False


class _Key(ctypes.Structure):
    _fields_ = [("index", c_uint32)]


class NodeConfigMap(BpfMap[_Key, NodeConfig]):
    key_type = _Key
    value_type = NodeConfig

    def get(self) -> NodeConfigValue:
        value = self.lookup_c(_Key(0)) or NodeConfig()
        return NodeConfigValue(redirect_peer=bool(value.flags & CFG_F_REDIRECT_PEER))

    def set(self, *, redirect_peer: bool) -> None:
        self.update_c(_Key(0), NodeConfig(flags=CFG_F_REDIRECT_PEER if redirect_peer else 0))


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
