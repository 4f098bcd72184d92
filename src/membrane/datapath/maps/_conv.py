"""Byte-order and address conversions shared by the map modules: decided here, once."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address


def ip4_to_be(ip: IPv4Address) -> int:
    """An address as the u32 whose memory holds it in network order (what C's __be32 holds)."""
    return int.from_bytes(ip.packed, "little")


def ip4_from_be(raw: int) -> IPv4Address:
    return IPv4Address(raw.to_bytes(4, "little"))


def port_to_be(port: int) -> int:
    return socket.htons(port)


def port_from_be(raw: int) -> int:
    return socket.ntohs(raw)


def mac_to_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return bytes(int(p, 16) for p in parts)


def mac_from_bytes(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
