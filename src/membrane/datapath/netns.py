"""Network namespaces: create, remove, enter and leave them (setns), without forking.

pyroute2's `netns.create` forks a child per namespace; doing the unshare + bind mount in the
calling thread (as `ip netns add` does) is several times cheaper and keeps endpoint creation
within its latency budget. Every function acts on the calling thread only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from membrane.errors import DatapathError

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [
    ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def path_of(name_or_path: str) -> Path:
    """A namespace given by name lives under /run/netns; a path is taken as it is."""
    if "/" in name_or_path:
        return Path(name_or_path)
    return NETNS_RUN_DIR / name_or_path


def exists(name_or_path: str) -> bool:
    return path_of(name_or_path).exists()


def _setns_fd(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise _oserror("setns")


def enter(name_or_path: str) -> None:
    """Move the calling thread into a namespace for good (the agent does this at start)."""
    path = path_of(name_or_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DatapathError(f"network namespace {path} does not exist") from None
    try:
        _setns_fd(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(name_or_path: str) -> Iterator[None]:
    """Run a block inside a namespace, then return to the one the thread was in."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(name_or_path)
        try:
            yield
        finally:
            _setns_fd(here)
    finally:
        os.close(here)


def _share_run_dir() -> None:
    NETNS_RUN_DIR.mkdir(parents=True, exist_ok=True)
    run_dir = bytes(NETNS_RUN_DIR)
    # As iproute2 does: /run/netns must be a shared mount so namespace mounts propagate.
    if _libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if _libc.mount(run_dir, run_dir, b"none", MS_BIND | MS_REC, None) != 0:
        raise _oserror(f"bind mount {NETNS_RUN_DIR}")
    if _libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None) != 0:
        raise _oserror(f"share {NETNS_RUN_DIR}")


def create(name: str) -> Path:
    """Create a named namespace (like `ip netns add`); an existing one is an error."""
    path = NETNS_RUN_DIR / name
    _share_run_dir()
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        raise DatapathError(f"network namespace {name} already exists") from None
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise _oserror("unshare")
        try:
            src = b"/proc/thread-self/ns/net"
            if _libc.mount(src, bytes(path), b"none", MS_BIND, None) != 0:
                raise _oserror(f"bind mount {path}")
        finally:
            _setns_fd(here)
    except OSError as e:
        with contextlib.suppress(OSError):
            path.unlink()
        raise DatapathError(f"cannot create network namespace {name}: {e}") from e
    finally:
        os.close(here)
    return path


def ensure(name: str) -> Path:
    """Create the namespace unless it exists; return its path."""
    path = NETNS_RUN_DIR / name
    if path.exists():
        return path
    return create(name)


def remove(name_or_path: str) -> bool:
    """Unmount and remove a named namespace; False when it was not there."""
    path = path_of(name_or_path)
    if not path.exists():
        return False
    if _libc.umount2(bytes(path), MNT_DETACH) != 0 and ctypes.get_errno() != errno.EINVAL:
        raise _oserror(f"umount {path}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


def list_names(prefix: str = "") -> list[str]:
    if not NETNS_RUN_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_RUN_DIR.iterdir() if p.name.startswith(prefix))


def inode(name_or_path: str) -> int:
    return os.stat(path_of(name_or_path)).st_ino


def current_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def preexec_enter(name_or_path: str) -> None:
    """For subprocess `preexec_fn`: put the child into the namespace before exec."""
    enter(name_or_path)
