"""The lab node: its namespaces, its world, its agent and runtime processes; up and down.

Everything a lab makes is recorded in its state file *before* it is made, so `lab down`
removes it all, also after a `lab up` that failed half-way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from membrane.datapath import netns
from membrane.datapath.netlink import NamespaceLinks
from membrane.endpoint.ipam import validate_pod_cidr
from membrane.endpoint.model import write_json_atomic
from membrane.errors import Conflict, InputError, MembraneError, NotFound

RUN_DIR = Path(os.environ.get("MEMBRANE_RUN_DIR", "/run/membrane"))
LAB_ROOT = RUN_DIR / "lab"
PIN_ROOT = Path("/sys/fs/bpf/membrane")
DEFAULT_POD_CIDR = "10.200.0.0/16"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$")

# The world: documentation addresses only.
WORLD_LINK = IPv4Network("192.0.2.0/24")
NODE_WORLD_IP = IPv4Address("192.0.2.1")
WORLD_IP = IPv4Address("192.0.2.2")
WORLD_PREFIXES = (IPv4Network("198.51.100.0/24"), IPv4Network("203.0.113.0/24"))
EXT_IFNAME = "mb-ext"
"""The node's external interface (towards the world): NodePort is served there."""


def cgroup_root() -> Path:
    """The cgroup2 hierarchy lab nodes' cgroups go in: /sys/fs/cgroup/unified on a hybrid
    machine, /sys/fs/cgroup on a unified one."""
    from membrane.datapath.loader import CGROUP_ROOTS, cgroup2_mounts

    mounts = cgroup2_mounts()
    if not mounts:
        raise MembraneError("no cgroup2 hierarchy is mounted (socket-LB needs one)")
    return next((m for m in mounts if m in CGROUP_ROOTS), mounts[0])


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InputError("--name", f"{name!r} is not a lab name (lowercase letters, digits and "
                         "'-', at most 20, starting and ending alphanumeric)")
    return name


@dataclass(frozen=True, slots=True)
class LabPaths:
    name: str

    @property
    def dir(self) -> Path:
        return LAB_ROOT / self.name

    @property
    def state(self) -> Path:
        return self.dir / "lab.json"

    @property
    def agent_state(self) -> Path:
        return self.dir / "agent"

    @property
    def runtime_socket(self) -> Path:
        return self.dir / "runtime.sock"

    @property
    def agent_socket(self) -> Path:
        return RUN_DIR / f"{self.name}.sock"

    @property
    def node_ns(self) -> str:
        return f"mb-{self.name}.node"

    @property
    def ext_ns(self) -> str:
        return f"mb-{self.name}.ext"

    @property
    def node_cgroup(self) -> Path:
        """The node's socket-LB cgroup (the agent creates it; `lab down` removes it)."""
        return cgroup_root() / f"membrane.{self.name}"

    def pod_ns(self, namespace: str, pod: str) -> str:
        return f"mb-{self.name}.{namespace}.{pod}"

    @property
    def ns_prefix(self) -> str:
        return f"mb-{self.name}."


def load_state(paths: LabPaths) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(paths.state.read_text())
        return data
    except FileNotFoundError:
        raise NotFound(f"no lab named {paths.name!r} (start it with `membrane lab up "
                       f"--name {paths.name}`)") from None


def _save(paths: LabPaths, state: dict[str, Any]) -> None:
    write_json_atomic(paths.state, state)


def _agent_marker(paths: LabPaths) -> str:
    return f" agent --node {paths.name} "


def _runtime_marker(paths: LabPaths) -> str:
    return f" runtime --name {paths.name} "


def _pid_alive(pid: int, marker: str) -> bool:
    """Alive and still ours: the pid may have been reused by another program."""
    try:
        cmdline = " " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "membrane" in cmdline and marker in cmdline


def _stop_process(pid: int | None, marker: str, timeout: float = 10.0) -> None:
    if not pid or not _pid_alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _pid_alive(pid, marker) or _is_zombie(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def remove_cgroup(path: Path, timeout: float = 5.0) -> None:
    """End the processes in a lab's cgroup (by id: `lab exec node` put them there) and remove
    it; its socket-LB programs go with it."""
    procs = path / "cgroup.procs"
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except FileNotFoundError:
            return
        if not pids:
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise MembraneError(f"cannot remove cgroup {path}: {e.strerror}") from e
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline - timeout / 2:
            sig = signal.SIGKILL
        if time.monotonic() > deadline:
            raise MembraneError(f"cannot remove cgroup {path}: processes {pids} do not end")
        time.sleep(0.02)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def _spawn(argv: list[str], log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    return proc.pid


def _wait_ready(sock: Path, pid: int, marker: str, log: Path, what: str,
                timeout: float = 30.0) -> None:
    from membrane.cli.client import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.exists():
            with contextlib.suppress(MembraneError, OSError):
                Client(sock, timeout=2.0).get("/v1/status")
                return
        if not _pid_alive(pid, marker) or _is_zombie(pid):
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            raise MembraneError(f"{what} exited during start: {tail[0] if tail else 'no output'}"
                                f" (log: {log})")
        time.sleep(0.05)
    raise MembraneError(f"{what} did not become ready in {timeout:.0f} s (log: {log})")


def agent_argv(state: dict[str, Any]) -> list[str]:
    paths = LabPaths(state["name"])
    return [
        sys.executable, "-m", "membrane", "agent", "--node", state["name"],
        "--state-dir", str(paths.agent_state), "--pod-cidr", state["pod_cidr"],
        "--netns", paths.node_ns, "--run-dir", str(RUN_DIR), "--devices", EXT_IFNAME,
        *(["--socket-lb-cgroup", state["cgroup"]] if state.get("cgroup") else []),
        *state.get("agent_args", []),
    ]


def start_agent(paths: LabPaths, state: dict[str, Any]) -> None:
    log = paths.dir / "agent.log"
    state["agent_pid"] = _spawn(agent_argv(state), log)
    _save(paths, state)
    _wait_ready(paths.agent_socket, state["agent_pid"], _agent_marker(paths), log, "the agent")


def stop_agent(paths: LabPaths, state: dict[str, Any]) -> None:
    _stop_process(state.get("agent_pid"), _agent_marker(paths))


def restart_agent(name: str) -> int:
    paths = LabPaths(validate_name(name))
    state = load_state(paths)
    stop_agent(paths, state)
    start_agent(paths, state)
    return int(state["agent_pid"])


def _build_world(paths: LabPaths, pod_cidr: IPv4Network) -> None:
    node = NamespaceLinks(paths.node_ns)
    ext = NamespaceLinks(paths.ext_ns)
    node.up("lo")
    ext.up("lo")
    node.veth_to(EXT_IFNAME, paths.ext_ns, "eth0")
    node.add_address(EXT_IFNAME, NODE_WORLD_IP, WORLD_LINK.prefixlen)
    ext.add_address("eth0", WORLD_IP, WORLD_LINK.prefixlen)
    for prefix in WORLD_PREFIXES:
        ext.add_address("lo", prefix[1], prefix.prefixlen)
    node.up(EXT_IFNAME)
    ext.up("eth0")
    for prefix in WORLD_PREFIXES:
        node.add_route(prefix, WORLD_IP)
    ext.add_route(pod_cidr, NODE_WORLD_IP)
    node.sysctl("net.ipv4.ip_forward", "1")


def up(name: str, pod_cidr_text: str = DEFAULT_POD_CIDR,
       agent_args: list[str] | None = None) -> dict[str, Any]:
    """agent_args: more `membrane agent` options (e.g. `--metrics-addr=127.0.0.1:9962`)."""
    paths = LabPaths(validate_name(name))
    pod_cidr = validate_pod_cidr(pod_cidr_text)
    if any(pod_cidr.overlaps(p) for p in (WORLD_LINK, *WORLD_PREFIXES)):
        raise InputError("--pod-cidr", f"{pod_cidr} overlaps the lab's world (192.0.2.0/24, "
                         "198.51.100.0/24, 203.0.113.0/24)")
    if os.geteuid() != 0:
        raise MembraneError("membrane lab up must run as root (namespaces and BPF)")
    if paths.state.exists():
        raise Conflict(f"lab {name!r} is already up (or half-made: `membrane lab down "
                       f"--name {name}` removes it)")
    if netns.list_names(paths.ns_prefix):
        raise Conflict(f"namespaces of lab {name!r} exist without its state: "
                       f"`membrane lab down --name {name}` removes them")
    paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state: dict[str, Any] = {
        "name": name, "pod_cidr": str(pod_cidr), "namespaces": [paths.node_ns, paths.ext_ns],
        "agent_pid": None, "runtime_pid": None, "created": time.time(),
        "agent_args": list(agent_args or []), "cgroup": str(paths.node_cgroup),
    }
    _save(paths, state)
    try:
        netns.create(paths.node_ns)
        netns.create(paths.ext_ns)
        _build_world(paths, pod_cidr)
        start_agent(paths, state)
        log = paths.dir / "runtime.log"
        state["runtime_pid"] = _spawn(
            [sys.executable, "-m", "membrane", "lab", "runtime", "--name", name], log
        )
        _save(paths, state)
        _wait_ready(paths.runtime_socket, state["runtime_pid"], _runtime_marker(paths), log,
                    "the lab runtime")
    except BaseException:
        down(name)
        raise
    return state


def down(name: str) -> bool:
    """Remove everything the lab made; False when there was nothing to remove."""
    paths = LabPaths(validate_name(name))
    try:
        state = load_state(paths)
    except NotFound:
        state = {}
    found = bool(state) or paths.dir.exists()
    _stop_process(state.get("runtime_pid"), _runtime_marker(paths))
    _stop_process(state.get("agent_pid"), _agent_marker(paths))
    names = set(state.get("namespaces", [])) | set(netns.list_names(paths.ns_prefix))
    # Pods first, the node last: removing the node also removes every endpoint's veth.
    for ns_name in sorted(names, key=lambda n: (n == paths.node_ns, n)):
        found |= netns.remove(ns_name)
    cgroup = Path(state["cgroup"]) if state.get("cgroup") else None
    if cgroup is None:
        with contextlib.suppress(MembraneError):
            cgroup = paths.node_cgroup
    if cgroup is not None and cgroup.is_dir():
        remove_cgroup(cgroup)
        found = True
    from membrane.datapath.loader import Datapath

    pins = PIN_ROOT / name
    if pins.exists():
        Datapath.remove_pins(name, PIN_ROOT)
        found = True
    for leftover in (paths.agent_socket, RUN_DIR / f"{name}.ready"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    if paths.dir.exists():
        import shutil

        shutil.rmtree(paths.dir, ignore_errors=True)
    return found


def list_labs() -> list[str]:
    if not LAB_ROOT.is_dir():
        return []
    return sorted(p.name for p in LAB_ROOT.iterdir() if (p / "lab.json").exists())
