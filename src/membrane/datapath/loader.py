"""Load the BPF objects once per node, pin their maps and programs, attach them.

bpf_lxc.o serves endpoint veths, bpf_host.o the node's external interface, bpf_sock.o the
node's cgroup (socket-LB); they share every map (pinned by name).

Pins live under `<pin_root>/<node>/` (maps) and `<pin_root>/<node>/progs/` (programs). The kernel
state outlives the agent: on open, pinned maps are reused as they are, and pinned programs are
reused too when they were loaded from an object with the same sha256 (recorded in the pinned
`mb_meta` map, since bpffs holds only BPF objects). A new object is loaded against the same maps
and its programs replace the pinned ones; attached veths keep the old programs until re-attached.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
from pathlib import Path

from membrane.datapath import libbpf
from membrane.datapath.events import EventRing, EventsLostMap
from membrane.datapath.maps.config import MetaMap, NodeConfigMap
from membrane.datapath.maps.ct import CTMap
from membrane.datapath.maps.endpoints import EndpointMap
from membrane.datapath.maps.ipcache import IPCacheMap
from membrane.datapath.maps.lb import LBMaps
from membrane.datapath.maps.metrics import MetricsMap
from membrane.datapath.maps.policy import PolicyMaps
from membrane.errors import DatapathError

log = logging.getLogger(__name__)

BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "membrane"
PROG_FROM = "mb_from_container"
PROG_TO = "mb_to_container"
PROG_NETDEV = "mb_from_netdev"
# Socket-LB (bpf_sock.o): each program and the cgroup hook it is attached at.
CGROUP_HOOKS: dict[str, int] = {
    "mb_sock_connect4": libbpf.BPF_CGROUP_INET4_CONNECT,
    "mb_sock_sendmsg4": libbpf.BPF_CGROUP_UDP4_SENDMSG,
    "mb_sock_recvmsg4": libbpf.BPF_CGROUP_UDP4_RECVMSG,
    "mb_sock_getpeername4": libbpf.BPF_CGROUP_INET4_GETPEERNAME,
}
OBJECTS: dict[str, tuple[str, ...]] = {
    "bpf_lxc.o": (PROG_FROM, PROG_TO),
    "bpf_host.o": (PROG_NETDEV,),
    "bpf_sock.o": tuple(CGROUP_HOOKS),
}
PROGRAMS = tuple(p for progs in OBJECTS.values() for p in progs)
# Our filters' fixed place on every veth, so attach replaces exactly our own filter.
TC_HANDLE = 0x6D62
TC_PRIORITY = 1


def _bpffs_mounts() -> list[Path]:
    mounts: list[Path] = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "bpf":
                mounts.append(Path(parts[1].replace("\\040", " ")))
    return mounts


def _check_bpffs(pin_root: Path) -> None:
    root = pin_root.resolve()
    if not any(root == m or m in root.parents for m in _bpffs_mounts()):
        raise DatapathError(
            f"{pin_root} is not on a BPF filesystem: mount it with "
            f"`mount -t bpf bpf {BPFFS}`"
        )


def _sha256(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


class Datapath:
    """The node's loaded datapath: typed maps, program fds, tc attach/detach."""

    def __init__(self, *, node: str, pin_dir: Path, reused: bool) -> None:
        self.node = node
        self.pin_dir = pin_dir
        self.reused = reused
        """True when the pinned programs were reused (same object), not loaded again."""
        self._endpoints = EndpointMap.from_pin(str(pin_dir / "mb_endpoints"))
        self._ipcache = IPCacheMap.from_pin(str(pin_dir / "mb_ipcache"))
        self._ipblock = IPCacheMap.from_pin(str(pin_dir / "mb_ipblock"))
        self._policy = PolicyMaps.from_pins(str(pin_dir / "mb_policy"),
                                            str(pin_dir / "mb_policy_ranges"))
        self._ct = CTMap.from_pin(str(pin_dir / "mb_ct"))
        self._metrics = MetricsMap.from_pin(str(pin_dir / "mb_metrics"))
        self._config = NodeConfigMap.from_pin(str(pin_dir / "mb_config"))
        self._meta = MetaMap.from_pin(str(pin_dir / "mb_meta"))
        self._events_lost = EventsLostMap.from_pin(str(pin_dir / "mb_events_lost"))
        self._lb = LBMaps(pin_dir)
        self._events: EventRing | None = None
        self._progs = {name: libbpf.obj_get(str(pin_dir / "progs" / name)) for name in PROGRAMS}
        self._prog_ids = {name: libbpf.obj_id(fd) for name, fd in self._progs.items()}

    # --- open ----------------------------------------------------------------------------
    @classmethod
    def open(cls, node: str, obj_dir: Path, pin_root: Path = PIN_ROOT, *,
             events_ring_bytes: int | None = None) -> Datapath:
        """events_ring_bytes sizes the events ring (a power of two, at least a page); a
        pinned ring of another size is replaced (its unread events are lost)."""
        _check_bpffs(pin_root)
        obj_paths = [Path(obj_dir) / name for name in OBJECTS]
        for obj_path in obj_paths:
            if not obj_path.is_file():
                raise DatapathError(f"BPF object {obj_path} is missing: run `make build`")
        digest = hashlib.sha256(b"".join(_sha256(p) for p in obj_paths)).digest()
        pin_dir = Path(pin_root) / node
        progs_dir = pin_dir / "progs"
        try:
            progs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatapathError(f"cannot create pin directory {progs_dir}: {e}") from e

        ring_ok = _check_ring_size(pin_dir / "mb_events", events_ring_bytes)
        reused = ring_ok and cls._pinned_digest(pin_dir) == digest and all(
            (progs_dir / p).exists() for p in PROGRAMS
        )
        if not reused:
            for obj_path in obj_paths:
                cls._load(obj_path, pin_dir, events_ring_bytes)
            meta = MetaMap.from_pin(str(pin_dir / "mb_meta"))
            try:
                meta.set_digest(digest)
            finally:
                meta.close()
        dp = cls(node=node, pin_dir=pin_dir, reused=reused)
        try:
            dp._config.set(redirect_peer=redirect_peer_supported())
        except Exception:
            dp.close()
            raise
        log.info("datapath of node %s %s from %s", node,
                 "reused pinned programs" if reused else "loaded", obj_dir)
        return dp

    @staticmethod
    def _pinned_digest(pin_dir: Path) -> bytes:
        path = pin_dir / "mb_meta"
        if not path.exists():
            return b""
        meta = MetaMap.from_pin(str(path))
        try:
            return meta.get_digest()
        finally:
            meta.close()

    @staticmethod
    def _load(obj_path: Path, pin_dir: Path, events_ring_bytes: int | None = None) -> None:
        obj = libbpf.BpfObject(str(obj_path))
        try:
            for name in obj.map_names():
                if name.startswith("mb_"):
                    obj.set_pin_path(name, str(pin_dir / name))
            if events_ring_bytes:
                obj.set_max_entries("mb_events", events_ring_bytes)
            try:
                obj.load()
            except DatapathError as e:
                raise DatapathError(
                    f"{e} (if a pinned map under {pin_dir} no longer matches the object, remove "
                    "the node's pins: `membrane lab down` or Datapath.remove_pins)"
                ) from e
            for prog in OBJECTS[obj_path.name]:
                final = pin_dir / "progs" / prog
                # bpffs refuses names with a dot (reserved for its own files).
                tmp = final.with_name(f"{prog}_new")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                libbpf.obj_pin(obj.prog_fd(prog), str(tmp))
                os.replace(tmp, final)  # atomic on bpffs: never a moment without a pin
        finally:
            obj.close()

    # --- maps ------------------------------------------------------------------------------
    @property
    def endpoints(self) -> EndpointMap:
        return self._endpoints

    @property
    def ipcache(self) -> IPCacheMap:
        return self._ipcache

    @property
    def ipblock(self) -> IPCacheMap:
        return self._ipblock

    @property
    def policy(self) -> PolicyMaps:
        return self._policy

    @property
    def ct(self) -> CTMap:
        return self._ct

    @property
    def lb(self) -> LBMaps:
        return self._lb

    @property
    def metrics(self) -> MetricsMap:
        return self._metrics

    @property
    def config(self) -> NodeConfigMap:
        return self._config

    @property
    def events_lost(self) -> EventsLostMap:
        return self._events_lost

    def events(self) -> EventRing:
        """The events ring's reader (one per datapath: a ring has one consumer position)."""
        if self._events is None:
            self._events = EventRing.from_pin(str(self.pin_dir / "mb_events"))
        return self._events

    def prog_fd(self, name: str) -> int:
        try:
            return self._progs[name]
        except KeyError:
            raise DatapathError(f"no program {name} (have {', '.join(PROGRAMS)})") from None

    def prog_id(self, name: str) -> int:
        return self._prog_ids[name]

    # --- tc ------------------------------------------------------------------------------------
    def attach(self, ifindex: int) -> None:
        """Attach from_container at tc ingress and to_container at tc egress of a host-side veth,
        in the calling thread's namespace. Replaces what membrane attached before; idempotent."""
        libbpf.tc_hook_create(ifindex)
        libbpf.tc_attach(ifindex, libbpf.BPF_TC_INGRESS, self._progs[PROG_FROM], TC_HANDLE,
                         TC_PRIORITY)
        libbpf.tc_attach(ifindex, libbpf.BPF_TC_EGRESS, self._progs[PROG_TO], TC_HANDLE,
                         TC_PRIORITY)

    def attach_netdev(self, ifindex: int) -> None:
        """Attach from_netdev at tc ingress of the node's external interface (NodePort and
        external IPs), in the calling thread's namespace. Idempotent."""
        libbpf.tc_hook_create(ifindex)
        libbpf.tc_attach(ifindex, libbpf.BPF_TC_INGRESS, self._progs[PROG_NETDEV], TC_HANDLE,
                         TC_PRIORITY)

    def is_attached(self, ifindex: int) -> bool:
        """Whether exactly this datapath's programs are attached at both hooks."""
        ing = libbpf.tc_query(ifindex, libbpf.BPF_TC_INGRESS, TC_HANDLE, TC_PRIORITY)
        eg = libbpf.tc_query(ifindex, libbpf.BPF_TC_EGRESS, TC_HANDLE, TC_PRIORITY)
        return ing == self._prog_ids[PROG_FROM] and eg == self._prog_ids[PROG_TO]

    def detach(self, ifindex: int) -> bool:
        """Remove membrane's filters from the veth; False when none were there."""
        a = libbpf.tc_detach(ifindex, libbpf.BPF_TC_INGRESS, TC_HANDLE, TC_PRIORITY)
        b = libbpf.tc_detach(ifindex, libbpf.BPF_TC_EGRESS, TC_HANDLE, TC_PRIORITY)
        return a or b

    # --- cgroup (socket-LB) --------------------------------------------------------------------
    def attach_cgroup(self, path: Path) -> None:
        """Attach the socket-LB programs to a cgroup v2 directory: sockets of its processes and
        of its descendants connect and send to a backend when they address a frontend.

        BPF_F_ALLOW_MULTI, so other programs on the cgroup keep running and sub-cgroups may add
        their own. Idempotent: this datapath's program already there is left alone; a membrane
        program of an earlier load (same name) is swapped for it atomically (BPF_F_REPLACE), so
        sockets are never without socket-LB during an upgrade. The root of a cgroup2 hierarchy
        is refused: it holds every process of the machine."""
        fd = _open_cgroup(path)
        try:
            for name, hook in CGROUP_HOOKS.items():
                self._attach_hook(fd, path, name, hook)
        finally:
            os.close(fd)

    def _attach_hook(self, cg_fd: int, path: Path, name: str, hook: int) -> None:
        what = f"cgroup {path}"
        ours = self._prog_ids[name]
        named = _named_progs(cg_fd, hook, name, what)
        stale = [i for i in named if i != ours]
        if ours not in named:
            replace = stale.pop(0) if stale else None
            rfd = libbpf.prog_get_fd_by_id(replace) if replace is not None else None
            flags = libbpf.BPF_F_ALLOW_MULTI | (libbpf.BPF_F_REPLACE if rfd is not None else 0)
            try:
                libbpf.prog_attach(self._progs[name], cg_fd, hook, flags, replace_prog_fd=rfd,
                                   what=what)
            except libbpf.BpfCallError as e:
                if e.errno != errno.EPERM:
                    raise
                raise DatapathError(
                    f"{e}: {path} has a program attached without BPF_F_ALLOW_MULTI at that "
                    f"hook (see `bpftool cgroup show {path}`); detach it first"
                ) from e
            finally:
                if rfd is not None:
                    os.close(rfd)
        for prog_id in stale:  # duplicates (several loads attached by hand): only ours runs
            _detach_id(cg_fd, hook, prog_id, what)

    def is_cgroup_attached(self, path: Path) -> bool:
        """Whether this datapath's four socket-LB programs are attached to the cgroup."""
        fd = _open_cgroup(path)
        try:
            return all(self._prog_ids[name] in libbpf.prog_query(fd, hook, f"cgroup {path}")
                       for name, hook in CGROUP_HOOKS.items())
        finally:
            os.close(fd)

    def detach_cgroup(self, path: Path) -> bool:
        """Remove membrane's socket-LB programs (this load's or an earlier one's) from the
        cgroup; False when none were there. Sockets already connected keep their backend."""
        fd = _open_cgroup(path)
        what = f"cgroup {path}"
        detached = False
        try:
            for name, hook in CGROUP_HOOKS.items():
                for prog_id in _named_progs(fd, hook, name, what):
                    detached = _detach_id(fd, hook, prog_id, what) or detached
        finally:
            os.close(fd)
        return detached

    # --- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close our fds; pinned maps and programs (and attached filters) stay."""
        for m in (self._endpoints, self._ipcache, self._ipblock, self._policy, self._ct,
                  self._metrics, self._config, self._meta, self._events_lost, self._lb):
            m.close()
        if self._events is not None:
            self._events.close()
            self._events = None
        for fd in self._progs.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._progs = {}

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def remove_pins(node: str, pin_root: Path = PIN_ROOT) -> bool:
        """Unpin a node's maps and programs (`lab down`); False when there were none."""
        pin_dir = Path(pin_root) / node
        if not pin_dir.exists():
            return False
        for dirpath, dirnames, filenames in os.walk(pin_dir, topdown=False):
            for f in filenames:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, f))
            for d in dirnames:
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(os.path.join(dirpath, d))
        with contextlib.suppress(FileNotFoundError):
            pin_dir.rmdir()
        return True


def _check_ring_size(path: Path, size: int | None) -> bool:
    """False (and the pin removed) when a pinned ring buffer has another size than asked."""
    if size is None:
        return True
    if size < 4096 or size & (size - 1):
        raise DatapathError(f"events ring size {size} must be a power of two of at least 4096")
    if not path.exists():
        return True
    fd = libbpf.obj_get(str(path))
    try:
        pinned = int(libbpf.map_info(fd).max_entries)
    finally:
        os.close(fd)
    if pinned == size:
        return True
    log.info("events ring %s is %d bytes, %d asked: replacing it", path, pinned, size)
    path.unlink()
    return False


# The machine's cgroup roots: never a place for socket-LB, whatever the mounts say.
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def cgroup2_mounts() -> list[Path]:
    """Where cgroup2 hierarchies are mounted, in mount order."""
    with open("/proc/self/mounts") as f:
        return [Path(parts[1].replace("\\040", " ")) for parts in map(str.split, f)
                if len(parts) > 2 and parts[2] == "cgroup2"]


def _open_cgroup(path: Path) -> int:
    """An fd of a cgroup v2 directory below a hierarchy's root; the caller closes it."""
    real = Path(path).resolve()
    mounts = cgroup2_mounts()
    if real in CGROUP_ROOTS or real in mounts:
        raise DatapathError(f"{path} is the root of a cgroup hierarchy, which holds every "
                            "process of the machine: give socket-LB a cgroup of its own below it")
    if not any(m in real.parents for m in mounts):
        raise DatapathError(f"{path} is not a cgroup v2 directory (cgroup2 is mounted at "
                            f"{', '.join(map(str, mounts)) or 'no place'})")
    try:
        return os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise DatapathError(f"cannot open cgroup {path}: {e.strerror}") from e


def _named_progs(cg_fd: int, hook: int, name: str, what: str) -> list[int]:
    """Ids of the programs attached to the cgroup at the hook whose name is `name` (as the
    kernel keeps it: 15 characters): membrane's, of this load or an earlier one."""
    ids: list[int] = []
    for prog_id in libbpf.prog_query(cg_fd, hook, what):
        try:
            fd = libbpf.prog_get_fd_by_id(prog_id)
        except libbpf.BpfCallError as e:
            if e.errno == errno.ENOENT:  # detached and freed since the query
                continue
            raise
        try:
            if libbpf.prog_name(fd) == name[:15]:
                ids.append(prog_id)
        finally:
            os.close(fd)
    return ids


def _detach_id(cg_fd: int, hook: int, prog_id: int, what: str) -> bool:
    try:
        fd = libbpf.prog_get_fd_by_id(prog_id)
    except libbpf.BpfCallError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    try:
        return libbpf.prog_detach(fd, cg_fd, hook, what)
    finally:
        os.close(fd)


_redirect_peer: bool | None = None


def redirect_peer_supported() -> bool:
    """Whether tc programs may call bpf_redirect_peer() (kernel >= 5.10); probed once."""
    global _redirect_peer
    if _redirect_peer is None:
        _redirect_peer = libbpf.probe_helper(libbpf.BPF_PROG_TYPE_SCHED_CLS,
                                             libbpf.BPF_FUNC_redirect_peer)
    return _redirect_peer
