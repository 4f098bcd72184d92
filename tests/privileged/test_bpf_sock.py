"""Socket-LB (bpf/bpf_sock.c) on the kernel: a client process in the node's cgroup connects and
sends to a service frontend no interface has, reaches a backend, and sees the frontend as its
peer. The client runs in a network namespace of its own with only `lo` (the backends listen on
its 127.0.0.1), so an untranslated frontend fails with ENETUNREACH instead of leaving the
machine."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from membrane.datapath import libbpf, netns
from membrane.datapath.loader import CGROUP_HOOKS, PIN_ROOT, Datapath
from membrane.datapath.maps.lb import BackendValue, RevNatValue, SvcKey, SvcValue
from membrane.errors import DatapathError

pytestmark = pytest.mark.privileged

CGROUP2 = Path("/sys/fs/cgroup/unified")
FRONTEND = IPv4Address("10.96.0.10")
FPORT = 80
LOOPBACK = IPv4Address("127.0.0.1")
TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
MB_LB_F_AFFINITY = 1
MB_DROP_NO_SERVICE = 158

# The client: waits for its spec on stdin (so the test can move it into the cgroup first), runs
# each operation, prints one JSON result per operation.
CLIENT = r"""
import errno, json, socket, sys

def run(op):
    dst = (op["host"], op["port"])
    kind = op["kind"]
    s = socket.socket(socket.AF_INET,
                      socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        if kind == "tcp":
            s.connect(dst)
            s.sendall(b"ping")
            data, src = s.recv(100), None
        elif kind == "udp_connected":
            s.connect(dst)
            s.send(b"ping")
            data, src = s.recvfrom(100)
        else:
            s.sendto(b"ping", dst)
            data, src = s.recvfrom(100)
        peer = s.getpeername() if kind != "udp_sendto" else None
        return {"reply": data.decode(), "peer": peer and list(peer), "src": src and list(src)}
    except TimeoutError:
        return {"error": "timeout"}
    except OSError as e:
        return {"error": errno.errorcode.get(e.errno, str(e.errno))}
    finally:
        s.close()

spec = json.loads(sys.stdin.readline())
with open("/proc/self/cgroup") as f:
    cgroup = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
print(json.dumps({"cgroup": cgroup, "results": [run(op) for op in spec["ops"]]}))
"""


# --- fixtures ----------------------------------------------------------------------------------
def _own_cgroup() -> Path:
    line = next(ln for ln in Path("/proc/self/cgroup").read_text().splitlines()
                if ln.startswith("0::"))
    return CGROUP2 / line[3:].lstrip("/")


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A fresh cgroup below the cgroup2 root; removed afterwards (any process left in it goes
    back to the test's own cgroup first)."""
    path = CGROUP2 / f"membrane-test-{secrets.token_hex(4)}"
    path.mkdir()
    try:
        yield path
    finally:
        home = _own_cgroup() / "cgroup.procs"
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                home.write_text(pid)
        path.rmdir()


@pytest.fixture
def sock_lb(datapath: Datapath, cgroup: Path) -> Iterator[Datapath]:
    """The datapath with socket-LB attached to `cgroup`; detached afterwards."""
    datapath.attach_cgroup(cgroup)
    try:
        yield datapath
    finally:
        datapath.detach_cgroup(cgroup)


@pytest.fixture
def client_ns(netns_name: str) -> str:
    subprocess.run(["ip", "-n", netns_name, "link", "set", "lo", "up"], check=True)
    return netns_name


class Echo:
    """A TCP or UDP server on 127.0.0.1 of a namespace that answers `<tag>:<data>`."""

    def __init__(self, ns: str, proto: int, tag: str) -> None:
        self.tag = tag
        with netns.inside(ns):
            kind = socket.SOCK_STREAM if proto == TCP else socket.SOCK_DGRAM
            self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind((str(LOOPBACK), 0))
        self.port: int = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        if proto == TCP:
            self.sock.listen(64)
        self._thread = threading.Thread(target=self._tcp if proto == TCP else self._udp,
                                        daemon=True)
        self._thread.start()

    def _tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.sendall(f"{self.tag}:".encode() + conn.recv(100))

    def _udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(100)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sock.sendto(f"{self.tag}:".encode() + data, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def echo(client_ns: str) -> Iterator[Callable[[int, str], Echo]]:
    servers: list[Echo] = []

    def start(proto: int, tag: str) -> Echo:
        servers.append(Echo(client_ns, proto, tag))
        return servers[-1]

    try:
        yield start
    finally:
        for s in servers:
            s.close()


# --- helpers -----------------------------------------------------------------------------------
def add_service(dp: Datapath, proto: int, backends: list[tuple[int, int]], *, rev_nat: int = 7,
                flags: int = 0, affinity_timeout: int = 0) -> None:
    """FRONTEND:FPORT/proto -> backends [(backend id, port on 127.0.0.1)], as the agent writes
    it: backends, then slots, then the master entry."""
    for bid, port in backends:
        dp.lb.backends.update(bid, BackendValue(LOOPBACK, port, proto, 0))
    for slot, (bid, _) in enumerate(backends, 1):
        dp.lb.services.update(SvcKey(FRONTEND, FPORT, proto, slot), SvcValue(backend_id=bid))
    dp.lb.services.update(SvcKey(FRONTEND, FPORT, proto, 0),
                          SvcValue(nbackends=len(backends), rev_nat=rev_nat, flags=flags,
                                   affinity_timeout=affinity_timeout))
    dp.lb.rev_nat.update(rev_nat, RevNatValue(FRONTEND, FPORT))


def run_client(ns: str, cgroup: Path | None, *kinds: str,
               host: IPv4Address = FRONTEND, port: int = FPORT) -> list[dict[str, Any]]:
    """Run the client in `ns`, in `cgroup` (None: left in the test's own), one operation per
    kind ("tcp", "udp_connected", "udp_sendto")."""
    proc = subprocess.Popen([sys.executable, "-c", CLIENT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: netns.preexec_enter(ns))
    try:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(proc.pid))
        spec = {"ops": [{"kind": k, "host": str(host), "port": port} for k in kinds]}
        out, _ = proc.communicate(json.dumps(spec) + "\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    result = json.loads(out)
    if cgroup is not None:
        assert result["cgroup"] == f"/{cgroup.name}"
    return list(result["results"])


FRONT = [str(FRONTEND), FPORT]


# --- tests -------------------------------------------------------------------------------------
def test_tcp_connect_to_a_frontend_reaches_the_backend_and_the_peer_is_the_frontend(
        sock_lb: Datapath, cgroup: Path, client_ns: str, echo: Callable[[int, str], Echo]
) -> None:
    add_service(sock_lb, TCP, [(1, echo(TCP, "b1").port)])
    [r] = run_client(client_ns, cgroup, "tcp")
    assert r == {"reply": "b1:ping", "peer": FRONT, "src": None}


def test_udp_replies_come_from_the_frontend_connected_or_not(
        sock_lb: Datapath, cgroup: Path, client_ns: str, echo: Callable[[int, str], Echo]
) -> None:
    add_service(sock_lb, UDP, [(1, echo(UDP, "u1").port)])
    connected, unconnected = run_client(client_ns, cgroup, "udp_connected", "udp_sendto")
    assert connected == {"reply": "u1:ping", "peer": FRONT, "src": FRONT}
    assert unconnected == {"reply": "u1:ping", "peer": None, "src": FRONT}


def test_new_connections_spread_over_every_backend(
        sock_lb: Datapath, cgroup: Path, client_ns: str, echo: Callable[[int, str], Echo]
) -> None:
    add_service(sock_lb, TCP, [(1, echo(TCP, "b1").port), (2, echo(TCP, "b2").port)])
    results = run_client(client_ns, cgroup, *["tcp"] * 32)
    assert {r["reply"] for r in results} == {"b1:ping", "b2:ping"}  # miss: p = 2**-31
    assert all(r["peer"] == FRONT for r in results)


def test_session_affinity_keeps_the_client_on_one_backend(
        sock_lb: Datapath, cgroup: Path, client_ns: str, echo: Callable[[int, str], Echo]
) -> None:
    add_service(sock_lb, TCP, [(1, echo(TCP, "b1").port), (2, echo(TCP, "b2").port)],
                flags=MB_LB_F_AFFINITY, affinity_timeout=60)
    results = run_client(client_ns, cgroup, *["tcp"] * 16)
    assert len({r["reply"] for r in results}) == 1


def test_a_frontend_without_backends_refuses_connect_and_send_at_once(
        sock_lb: Datapath, cgroup: Path, client_ns: str
) -> None:
    for proto in (TCP, UDP):
        add_service(sock_lb, proto, [])
    tcp, udp_connected, udp_sendto = run_client(client_ns, cgroup, "tcp", "udp_connected",
                                                "udp_sendto")
    assert tcp == udp_connected == udp_sendto == {"error": "EPERM"}
    refused = [m for m in sock_lb.metrics.dump()
               if m.verdict == "dropped" and m.reason == MB_DROP_NO_SERVICE]
    assert sum(m.packets for m in refused) == 3


def test_a_process_outside_the_cgroup_is_not_translated(
        sock_lb: Datapath, cgroup: Path, client_ns: str, echo: Callable[[int, str], Echo]
) -> None:
    add_service(sock_lb, TCP, [(1, echo(TCP, "b1").port)])
    [r] = run_client(client_ns, None, "tcp")
    assert r == {"error": "ENETUNREACH"}


def test_the_backend_is_still_reachable_by_its_own_address(
        sock_lb: Datapath, cgroup: Path, client_ns: str, echo: Callable[[int, str], Echo]
) -> None:
    backend = echo(TCP, "b1")
    add_service(sock_lb, TCP, [(1, backend.port)])
    [r] = run_client(client_ns, cgroup, "tcp", host=LOOPBACK, port=backend.port)
    assert r == {"reply": "b1:ping", "peer": [str(LOOPBACK), backend.port], "src": None}


def test_attach_twice_is_one_attach_and_detach_stops_translation(
        datapath: Datapath, cgroup: Path, client_ns: str, echo: Callable[[int, str], Echo]
) -> None:
    add_service(datapath, TCP, [(1, echo(TCP, "b1").port)])
    try:
        datapath.attach_cgroup(cgroup)
        datapath.attach_cgroup(cgroup)
        assert datapath.is_cgroup_attached(cgroup) is True
        assert _attached(cgroup) == {name: [datapath.prog_id(name)] for name in CGROUP_HOOKS}
        assert run_client(client_ns, cgroup, "tcp")[0]["reply"] == "b1:ping"
    finally:
        assert datapath.detach_cgroup(cgroup) is True
    assert datapath.detach_cgroup(cgroup) is False
    assert datapath.is_cgroup_attached(cgroup) is False
    assert run_client(client_ns, cgroup, "tcp") == [{"error": "ENETUNREACH"}]


def test_attach_after_an_upgrade_replaces_the_earlier_programs(
        sock_lb: Datapath, cgroup: Path, obj_dir: Path, node_name: str, tmp_path: Path
) -> None:
    for obj in obj_dir.glob("*.o"):
        (tmp_path / obj.name).write_bytes(obj.read_bytes())
    changed = tmp_path / "bpf_sock.o"
    changed.write_bytes(changed.read_bytes() + b"\0")  # another sha256: programs load again
    with Datapath.open(node_name, tmp_path, PIN_ROOT) as upgraded:
        assert upgraded.reused is False
        upgraded.attach_cgroup(cgroup)
        assert _attached(cgroup) == {name: [upgraded.prog_id(name)] for name in CGROUP_HOOKS}
        assert sock_lb.is_cgroup_attached(cgroup) is False


def test_the_cgroup2_root_is_refused(datapath: Datapath,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("attach to a cgroup root was tried")

    monkeypatch.setattr(libbpf, "prog_attach", never)  # a refusal bug must not reach the root
    for root in (CGROUP2, Path("/sys/fs/cgroup"), CGROUP2 / "x" / ".."):
        with pytest.raises(DatapathError, match="root of a cgroup hierarchy"):
            datapath.attach_cgroup(root)


def _attached(cgroup: Path) -> dict[str, list[int]]:
    """Program ids attached directly to the cgroup, per socket-LB hook."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {name: libbpf.prog_query(fd, hook) for name, hook in CGROUP_HOOKS.items()}
    finally:
        os.close(fd)
