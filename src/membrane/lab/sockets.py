"""Sockets inside pods: the built-in echo servers and the connectivity probes.

A socket belongs to the network namespace its creating thread was in at `socket()` time, so
one asyncio process serves and probes every pod: it enters a pod's namespace only for the
`socket()` call, and everything after runs on the event loop as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from dataclasses import dataclass
from typing import cast

from membrane.datapath import netns

log = logging.getLogger(__name__)
PROBE_PAYLOAD = b"membrane-probe\n"
HOSTNAME_REQUEST = b"hostname\n"
"""Asked exactly this, an echo server answers with its pod's NS/NAME (agnhost's /hostname),
so a client of a service can tell which backend it reached."""


def socket_in(ns_path: str, kind: int) -> socket.socket:
    with netns.inside(ns_path):
        sock = socket.socket(socket.AF_INET, kind)
    sock.setblocking(False)
    return sock


class _UDPEcho(asyncio.DatagramProtocol):
    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport in 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(self.name if data == HOSTNAME_REQUEST else data, addr)


async def _tcp_echo(name: bytes, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(name if data == HOSTNAME_REQUEST else data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


@dataclass(slots=True)
class EchoServers:
    """The echo servers of one pod: one per declared (port, protocol)."""

    servers: list[asyncio.Server]
    transports: list[asyncio.DatagramTransport]

    def close(self) -> None:
        for s in self.servers:
            s.close()
        for t in self.transports:
            t.close()


async def start_echo(ns_path: str, ports: list[tuple[int, str]], name: str = "") -> EchoServers:
    loop = asyncio.get_running_loop()
    me = name.encode() + b"\n"
    echo = EchoServers([], [])
    try:
        for port, proto in ports:
            if proto == "TCP":
                sock = socket_in(ns_path, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", port))
                sock.listen(512)
                echo.servers.append(await asyncio.start_server(
                    functools.partial(_tcp_echo, me), sock=sock))
            elif proto == "UDP":
                sock = socket_in(ns_path, socket.SOCK_DGRAM)
                sock.bind(("0.0.0.0", port))
                transport, _ = await loop.create_datagram_endpoint(lambda: _UDPEcho(me), sock=sock)
                echo.transports.append(transport)
            # SCTP: this kernel cannot carry it; the port is declared but not served.
    except BaseException:
        echo.close()
        raise
    return echo


async def probe_one(ns_path: str, ip: str, port: int, proto: str, timeout: float) -> bool:
    """True when a request to ip:port from inside the namespace gets its echo back in time."""
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
    try:
        sock = socket_in(ns_path, kind)
    except OSError as e:
        log.warning("probe socket in %s failed: %s", ns_path, e)
        return False
    try:
        async with asyncio.timeout(timeout):
            if proto == "TCP":
                await loop.sock_connect(sock, (ip, port))
                await loop.sock_sendall(sock, PROBE_PAYLOAD)
                got = b""
                while len(got) < len(PROBE_PAYLOAD):
                    chunk = await loop.sock_recv(sock, 1024)
                    if not chunk:
                        return False
                    got += chunk
                return got == PROBE_PAYLOAD
            sock.connect((ip, port))
            # Resend while waiting: a lost first datagram must not read as "refused".
            while True:
                await loop.sock_sendall(sock, PROBE_PAYLOAD)
                try:
                    async with asyncio.timeout(min(0.2, timeout)):
                        data = await loop.sock_recv(sock, 1024)
                    return data == PROBE_PAYLOAD
                except TimeoutError:
                    continue
    except (TimeoutError, OSError):
        return False
    finally:
        sock.close()
