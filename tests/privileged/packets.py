"""Crafted Ethernet/IPv4/TCP/UDP/ICMP/ARP frames for BPF_PROG_TEST_RUN, and their parsing."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def mac(text: str) -> bytes:
    return bytes(int(p, 16) for p in text.split(":"))


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(dst: str, src: str, proto: int, payload: bytes) -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", proto) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, ttl, proto, 0,
                      IPv4Address(src).packed, IPv4Address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def tcp(sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + data


def udp(sport: int, dport: int, data: bytes = b"x") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def icmp_echo(ident: int, seq: int = 1, reply: bool = False) -> bytes:
    body = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + b"ping"
    return body[:2] + struct.pack("!H", csum(body)) + body[4:]


def arp(sha: str, sip: str, tip: str, op: int = 1) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, op, mac(sha), IPv4Address(sip).packed,
                       b"\0" * 6, IPv4Address(tip).packed)


@dataclass(frozen=True)
class Hop:
    """The Ethernet/IPv4 facts of a frame that a delivery decision changes."""

    dst_mac: str
    src_mac: str
    ttl: int
    ip_csum_ok: bool


def hop_of(frame: bytes) -> Hop:
    ip = frame[14:34]
    return Hop(dst_mac=":".join(f"{b:02x}" for b in frame[0:6]),
               src_mac=":".join(f"{b:02x}" for b in frame[6:12]),
               ttl=ip[8], ip_csum_ok=csum(ip) == 0)
