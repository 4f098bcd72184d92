"""Thin typed ctypes binding of libbpf 1.1 (`libbpf.so.1`): objects, maps, programs, tc, cgroups,
test runs.

Only what membrane uses is bound. libbpf 1.x returns `-errno` from int functions and NULL (with
errno set) from pointer functions; every failure here raises `DatapathError` naming what failed,
where, and the kernel's errno text. libbpf's own log is captured (`libbpf_set_print`) so that a
verifier rejection can quote the verifier's last lines.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_size_t,
    c_uint,
    c_uint32,
    c_uint64,
    c_void_p,
)

from membrane.errors import DatapathError

log = logging.getLogger(__name__)

LIBBPF_SONAME = "libbpf.so.1"

# enum bpf_prog_type / bpf_tc_attach_point / bpf_tc_flags / map update flags (uapi, libbpf.h)
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_MAP_TYPE_RINGBUF = 27
BPF_TC_INGRESS = 1 << 0
BPF_TC_EGRESS = 1 << 1
BPF_TC_F_REPLACE = 1 << 0
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
# bpf_func_id (uapi)
BPF_FUNC_redirect_peer = 155
# enum bpf_attach_type (uapi) of the cgroup socket-LB hooks, and BPF_PROG_ATTACH flags
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_INET4_GETPEERNAME = 29
BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1
BPF_F_REPLACE = 1 << 2

_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


class BpfTestRunOpts(Structure):
    """struct bpf_test_run_opts (bpf.h, libbpf 1.1)."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class BpfMapBatchOpts(Structure):
    """struct bpf_map_batch_opts (bpf.h)."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class BpfTcHook(Structure):
    """struct bpf_tc_hook (libbpf.h); the trailing `size_t :0` pads to 8 bytes."""

    _fields_ = [
        ("sz", c_size_t),
        ("ifindex", c_int),
        ("attach_point", c_uint),
        ("parent", c_uint32),
        ("_pad", c_uint32),
    ]


class BpfTcOpts(Structure):
    """struct bpf_tc_opts (libbpf.h)."""

    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
        ("_pad", c_uint32),
    ]


class BpfObjInfoHead(Structure):
    """The leading fields shared by struct bpf_prog_info and bpf_map_info (uapi bpf.h)."""

    _fields_ = [("type", c_uint32), ("id", c_uint32)]


class BpfProgAttachOpts(Structure):
    """struct bpf_prog_attach_opts (bpf.h, libbpf 1.1)."""

    _fields_ = [("sz", c_size_t), ("flags", c_uint), ("replace_prog_fd", c_int)]


class BpfProgInfo(Structure):
    """The first fields of struct bpf_prog_info (uapi bpf.h), up to its name."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", ctypes.c_char * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class BpfMapInfo(Structure):
    """The first fields of struct bpf_map_info (uapi bpf.h); the kernel accepts a prefix."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", ctypes.c_char * 16),
    ]


def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
    except OSError as e:
        raise DatapathError(f"cannot load {LIBBPF_SONAME}: {e}: install libbpf1") from e
    vp, i, u32 = c_void_p, c_int, c_uint32
    sigs: dict[str, tuple[list[object], object]] = {
        "libbpf_set_print": ([_PRINT_FN], vp),
        "libbpf_num_possible_cpus": ([], i),
        "libbpf_probe_bpf_helper": ([i, i, vp], i),
        "bpf_object__open_file": ([c_char_p, vp], vp),
        "bpf_object__load": ([vp], i),
        "bpf_object__close": ([vp], None),
        "bpf_object__find_program_by_name": ([vp, c_char_p], vp),
        "bpf_object__find_map_by_name": ([vp, c_char_p], vp),
        "bpf_object__next_map": ([vp, vp], vp),
        "bpf_map__name": ([vp], c_char_p),
        "bpf_map__fd": ([vp], i),
        "bpf_map__max_entries": ([vp], u32),
        "bpf_map__set_pin_path": ([vp, c_char_p], i),
        "bpf_map__set_max_entries": ([vp, c_uint32], i),
        "bpf_program__fd": ([vp], i),
        "bpf_obj_pin": ([i, c_char_p], i),
        "bpf_obj_get": ([c_char_p], i),
        "bpf_obj_get_info_by_fd": ([i, vp, POINTER(u32)], i),
        "bpf_map_lookup_elem": ([i, vp, vp], i),
        "bpf_map_update_elem": ([i, vp, vp, c_uint64], i),
        "bpf_map_delete_elem": ([i, vp], i),
        "bpf_map_get_next_key": ([i, vp, vp], i),
        "bpf_map_lookup_batch": ([i, vp, vp, vp, vp, POINTER(u32), vp], i),
        "bpf_map_update_batch": ([i, vp, vp, POINTER(u32), vp], i),
        "bpf_prog_test_run_opts": ([i, vp], i),
        "bpf_tc_hook_create": ([vp], i),
        "bpf_tc_hook_destroy": ([vp], i),
        "bpf_tc_attach": ([vp, vp], i),
        "bpf_tc_detach": ([vp, vp], i),
        "bpf_tc_query": ([vp, vp], i),
        "bpf_prog_attach_opts": ([i, i, c_int, vp], i),
        "bpf_prog_detach2": ([i, i, c_int], i),
        "bpf_prog_query": ([i, c_int, u32, POINTER(u32), POINTER(u32), POINTER(u32)], i),
        "bpf_prog_get_fd_by_id": ([u32], i),
    }
    for name, (argtypes, restype) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    return lib


_lib = _load()
_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int

# --- libbpf's log ----------------------------------------------------------------------------
_log_lock = threading.Lock()
_log_lines: list[str] = []
_capturing = False
_LOG_KEEP = 400


# One buffer big enough for a whole verifier log: libbpf prints it in a single call, and a
# va_list cannot be measured first and formatted again from ctypes.
_print_buf = ctypes.create_string_buffer(1 << 20)
_print_lock = threading.Lock()  # not _log_lock: captured_log() holds that across a load


def _print_py(level: int, fmt: bytes | None, args: int | None) -> int:
    with _print_lock:
        _libc.vsnprintf(_print_buf, len(_print_buf), fmt, args)
        text = _print_buf.value.decode(errors="replace").rstrip()
        if text.startswith("libbpf: "):
            text = text[len("libbpf: "):]
        if _capturing:
            _log_lines.extend(text.splitlines())
            del _log_lines[:-_LOG_KEEP]
    # Netlink's extended ack ("Exclusivity flag on", "Parent Qdisc doesn't exists") comes with
    # the errno the caller handles or raises as DatapathError: not worth a warning by itself.
    if level == 0 and "Kernel error message" not in text:
        log.warning("libbpf: %s", text)
    else:
        log.debug("libbpf: %s", text)
    return len(text)


_print = _PRINT_FN(_print_py)  # kept referenced: libbpf holds the pointer for ever
_lib.libbpf_set_print(_print)


@contextmanager
def captured_log() -> Iterator[list[str]]:
    """Collect libbpf's messages (including the verifier log of a failed load) in a block."""
    global _capturing
    with _log_lock:
        _log_lines.clear()
        _capturing = True
        try:
            yield _log_lines
        finally:
            _capturing = False


# --- errors ------------------------------------------------------------------------------------
class BpfCallError(DatapathError):
    """A libbpf call failed; `errno` lets callers handle e.g. EOPNOTSUPP."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.errno = code


ENOTSUPP = 524  # the kernel-internal "not supported" some map types return


def _err(what: str, ret: int | None = None) -> BpfCallError:
    code = -ret if ret is not None and ret < 0 else ctypes.get_errno()
    name = errno.errorcode.get(code, "ENOTSUPP" if code == ENOTSUPP else str(code))
    text = "operation not supported" if code == ENOTSUPP else os.strerror(code)
    return BpfCallError(f"{what}: {text} ({name})", code)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise _err(what, ret)
    return ret


def _ptr(ret: int | None, what: str) -> int:
    if not ret:
        raise _err(what)
    return ret


def _errno_of(ret: int) -> int:
    return -ret if ret < 0 else 0


# --- objects -----------------------------------------------------------------------------------
class BpfObject:
    """An opened (and later loaded) ELF object; close() frees libbpf's copy, not pinned state."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._obj: int | None = _ptr(
            _lib.bpf_object__open_file(path.encode(), None), f"open BPF object {path}"
        )

    @property
    def handle(self) -> int:
        if self._obj is None:
            raise DatapathError(f"BPF object {self.path} is closed")
        return self._obj

    def map_names(self) -> list[str]:
        names: list[str] = []
        m = _lib.bpf_object__next_map(self.handle, None)
        while m:
            raw = _lib.bpf_map__name(m)
            names.append(raw.decode() if raw else "")
            m = _lib.bpf_object__next_map(self.handle, m)
        return names

    def _map(self, name: str) -> int:
        return _ptr(
            _lib.bpf_object__find_map_by_name(self.handle, name.encode()),
            f"map {name} in {self.path}",
        )

    def _prog(self, name: str) -> int:
        return _ptr(
            _lib.bpf_object__find_program_by_name(self.handle, name.encode()),
            f"program {name} in {self.path}",
        )

    def set_pin_path(self, map_name: str, path: str) -> None:
        """Before load: libbpf reuses a compatible map pinned there, or creates and pins it."""
        _check(
            _lib.bpf_map__set_pin_path(self._map(map_name), path.encode()),
            f"set pin path of map {map_name} to {path}",
        )

    def set_max_entries(self, map_name: str, n: int) -> None:
        """Before load: size a map (a ring buffer's size in bytes)."""
        _check(
            _lib.bpf_map__set_max_entries(self._map(map_name), n),
            f"set max_entries of map {map_name} to {n}",
        )

    def load(self) -> None:
        """Load maps and programs; a verifier rejection names the program and quotes the log."""
        with captured_log() as lines:
            ret = _lib.bpf_object__load(self.handle)
            tail = list(lines)
        if ret < 0:
            prog = next(
                (ln.split("prog '", 1)[1].split("'", 1)[0] for ln in tail if "prog '" in ln),
                "?",
            )
            detail = " | ".join(ln.strip() for ln in tail[-12:] if ln.strip())
            raise DatapathError(
                f"loading {self.path} failed (program {prog}): "
                f"{os.strerror(-ret)}; libbpf/verifier log: {detail}"
            )

    def map_fd(self, name: str) -> int:
        return _check(_lib.bpf_map__fd(self._map(name)), f"fd of map {name}")

    def map_max_entries(self, name: str) -> int:
        return int(_lib.bpf_map__max_entries(self._map(name)))

    def prog_fd(self, name: str) -> int:
        return _check(_lib.bpf_program__fd(self._prog(name)), f"fd of program {name}")

    def close(self) -> None:
        if self._obj is not None:
            _lib.bpf_object__close(self._obj)
            self._obj = None


# --- pins and info -----------------------------------------------------------------------------
def obj_pin(fd: int, path: str) -> None:
    _check(_lib.bpf_obj_pin(fd, path.encode()), f"pin fd {fd} at {path}")


def obj_get(path: str) -> int:
    """Open a pinned map or program; the caller owns (and closes) the returned fd."""
    return _check(_lib.bpf_obj_get(path.encode()), f"open pinned object {path}")


def obj_id(fd: int) -> int:
    info = BpfObjInfoHead()
    size = c_uint32(ctypes.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           f"info of BPF fd {fd}")
    return int(info.id)


def map_info(fd: int) -> BpfMapInfo:
    info = BpfMapInfo()
    size = c_uint32(ctypes.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           f"info of map fd {fd}")
    return info


# --- map elements --------------------------------------------------------------------------------
def map_lookup_elem(fd: int, key: ctypes.Array[ctypes.c_char] | Structure,
                    value: ctypes.Array[ctypes.c_char] | Structure) -> bool:
    """Fill `value`; False when the key is absent."""
    ret = _lib.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if _errno_of(ret) == errno.ENOENT:
        return False
    _check(ret, f"lookup in map fd {fd}")
    return True


def map_update_elem(fd: int, key: ctypes.Array[ctypes.c_char] | Structure,
                    value: ctypes.Array[ctypes.c_char] | Structure, flags: int = BPF_ANY,
                    what: str = "") -> None:
    ret = _lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), flags)
    if ret < 0:
        if _errno_of(ret) == errno.E2BIG:
            raise DatapathError(f"{what or f'map fd {fd}'} is full: raise its size or remove "
                                "entries")
        raise _err(f"update in {what or f'map fd {fd}'}", ret)


def map_delete_elem(fd: int, key: ctypes.Array[ctypes.c_char] | Structure) -> bool:
    """False when the key was absent."""
    ret = _lib.bpf_map_delete_elem(fd, ctypes.byref(key))
    if _errno_of(ret) == errno.ENOENT:
        return False
    _check(ret, f"delete in map fd {fd}")
    return True


def map_get_next_key(fd: int, key: ctypes.Array[ctypes.c_char] | Structure | None,
                     next_key: ctypes.Array[ctypes.c_char] | Structure) -> bool:
    """False at the end of the map."""
    ret = _lib.bpf_map_get_next_key(fd, ctypes.byref(key) if key is not None else None,
                                    ctypes.byref(next_key))
    if _errno_of(ret) == errno.ENOENT:
        return False
    _check(ret, f"iterate map fd {fd}")
    return True


def map_lookup_batch(fd: int, in_batch: ctypes.Array[ctypes.c_char] | None,
                     out_batch: ctypes.Array[ctypes.c_char], keys: ctypes.Array[ctypes.c_char],
                     values: ctypes.Array[ctypes.c_char], count: int) -> tuple[int, bool]:
    """Read up to `count` entries after the batch token `in_batch` (None: from the start).

    Returns (entries read, done). `out_batch` receives the token for the next call.
    """
    n = c_uint32(count)
    opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
    ret = _lib.bpf_map_lookup_batch(
        fd, ctypes.byref(in_batch) if in_batch is not None else None, ctypes.byref(out_batch),
        ctypes.byref(keys), ctypes.byref(values), ctypes.byref(n), ctypes.byref(opts),
    )
    if _errno_of(ret) == errno.ENOENT:
        return int(n.value), True
    _check(ret, f"batch lookup in map fd {fd}")
    return int(n.value), False


def map_update_batch(fd: int, keys: ctypes.Array[ctypes.c_char],
                     values: ctypes.Array[ctypes.c_char], count: int, what: str = "") -> int:
    n = c_uint32(count)
    opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
    ret = _lib.bpf_map_update_batch(fd, ctypes.byref(keys), ctypes.byref(values),
                                    ctypes.byref(n), ctypes.byref(opts))
    if ret < 0:
        raise _err(f"batch update of {what or f'map fd {fd}'} ({n.value} of {count} written)",
                   ret)
    return int(n.value)


# --- programs ------------------------------------------------------------------------------------
def prog_test_run(prog_fd: int, data: bytes, ctx: Structure | None = None, repeat: int = 1,
                  data_out_size: int | None = None) -> tuple[int, bytes, int]:
    """Run a program on `data` (BPF_PROG_TEST_RUN): (retval, data_out, ns per repetition).

    `ctx` (e.g. struct __sk_buff with `ifindex`) is the input context; it is not written back,
    so the same object can be reused (the kernel rejects a context with output fields set).
    """
    buf_in = ctypes.create_string_buffer(data, len(data))
    out_size = data_out_size if data_out_size is not None else len(data) + 256
    buf_out = ctypes.create_string_buffer(out_size)
    opts = BpfTestRunOpts(sz=ctypes.sizeof(BpfTestRunOpts))
    opts.data_in = ctypes.cast(buf_in, c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.cast(buf_out, c_void_p)
    opts.data_size_out = out_size
    opts.repeat = repeat
    if ctx is not None:
        opts.ctx_in = ctypes.addressof(ctx)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    _check(_lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)),
           f"test run of program fd {prog_fd}")
    return int(opts.retval), buf_out.raw[: opts.data_size_out], int(opts.duration)


def probe_helper(prog_type: int, helper_id: int) -> bool:
    """Whether the kernel lets `prog_type` programs call the helper."""
    return bool(_lib.libbpf_probe_bpf_helper(prog_type, helper_id, None) > 0)


def num_possible_cpus() -> int:
    return _check(_lib.libbpf_num_possible_cpus(), "number of possible CPUs")


# --- tc (clsact) ----------------------------------------------------------------------------------
def _hook(ifindex: int, attach_point: int) -> BpfTcHook:
    return BpfTcHook(sz=ctypes.sizeof(BpfTcHook), ifindex=ifindex, attach_point=attach_point)


def _point(attach_point: int) -> str:
    return "ingress" if attach_point == BPF_TC_INGRESS else "egress"


def tc_hook_create(ifindex: int) -> None:
    """Add the clsact qdisc on `ifindex` (in the calling thread's netns); existing is fine."""
    hook = _hook(ifindex, BPF_TC_INGRESS)
    ret = _lib.bpf_tc_hook_create(ctypes.byref(hook))
    if ret < 0 and _errno_of(ret) != errno.EEXIST:
        raise _err(f"create clsact qdisc on ifindex {ifindex}", ret)


def tc_attach(ifindex: int, attach_point: int, prog_fd: int, handle: int, priority: int) -> None:
    hook = _hook(ifindex, attach_point)
    opts = BpfTcOpts(sz=ctypes.sizeof(BpfTcOpts), prog_fd=prog_fd, flags=BPF_TC_F_REPLACE,
                     handle=handle, priority=priority)
    _check(_lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
           f"attach tc {_point(attach_point)} program on ifindex {ifindex}")


def tc_detach(ifindex: int, attach_point: int, handle: int, priority: int) -> bool:
    """False when nothing was attached there (or the device/qdisc is gone)."""
    hook = _hook(ifindex, attach_point)
    opts = BpfTcOpts(sz=ctypes.sizeof(BpfTcOpts), handle=handle, priority=priority)
    ret = _lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
    if _errno_of(ret) in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
        return False
    _check(ret, f"detach tc {_point(attach_point)} program on ifindex {ifindex}")
    return True


def tc_query(ifindex: int, attach_point: int, handle: int, priority: int) -> int | None:
    """Program id attached at (handle, priority), or None."""
    hook = _hook(ifindex, attach_point)
    opts = BpfTcOpts(sz=ctypes.sizeof(BpfTcOpts), handle=handle, priority=priority)
    ret = _lib.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
    if _errno_of(ret) in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
        return None
    _check(ret, f"query tc {_point(attach_point)} on ifindex {ifindex}")
    return int(opts.prog_id)


# --- cgroup programs ------------------------------------------------------------------------------
def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0, *,
                replace_prog_fd: int | None = None, what: str = "") -> None:
    """BPF_PROG_ATTACH (e.g. a cgroup program to a cgroup directory fd). With BPF_F_REPLACE
    (and BPF_F_ALLOW_MULTI), `replace_prog_fd` is swapped for `prog_fd` atomically."""
    opts = BpfProgAttachOpts(sz=ctypes.sizeof(BpfProgAttachOpts), flags=flags,
                             replace_prog_fd=replace_prog_fd or 0)
    _check(_lib.bpf_prog_attach_opts(prog_fd, target_fd, attach_type, ctypes.byref(opts)),
           f"attach program fd {prog_fd} to {what or f'fd {target_fd}'} "
           f"(attach type {attach_type})")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int, what: str = "") -> bool:
    """BPF_PROG_DETACH of exactly this program; False when it was not attached there."""
    ret = _lib.bpf_prog_detach2(prog_fd, target_fd, attach_type)
    if _errno_of(ret) == errno.ENOENT:
        return False
    _check(ret, f"detach program fd {prog_fd} from {what or f'fd {target_fd}'} "
                f"(attach type {attach_type})")
    return True


def prog_query(target_fd: int, attach_type: int, what: str = "") -> list[int]:
    """Ids of the programs attached directly to the target (not inherited), in run order."""
    count = 16
    while True:
        ids = (c_uint32 * count)()
        n = c_uint32(count)
        attach_flags = c_uint32(0)
        ret = _lib.bpf_prog_query(target_fd, attach_type, 0, ctypes.byref(attach_flags), ids,
                                  ctypes.byref(n))
        if _errno_of(ret) == errno.ENOSPC:
            count = max(n.value, count * 2)
            continue
        _check(ret, f"query programs of {what or f'fd {target_fd}'} (attach type {attach_type})")
        return [int(ids[i]) for i in range(n.value)]


def prog_get_fd_by_id(prog_id: int) -> int:
    """Open a loaded program by id; the caller owns (and closes) the fd."""
    return _check(_lib.bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")


def prog_name(fd: int) -> str:
    """The program's name as loaded (the kernel keeps the first 15 characters)."""
    info = BpfProgInfo()
    size = c_uint32(ctypes.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           f"info of program fd {fd}")
    return bytes(info.name).decode(errors="replace")
