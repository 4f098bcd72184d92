"""Shared fixtures of the privileged tests: the skip when BPF cannot run, a freshly compiled
bpf_lxc.o, a Datapath under a unique node name (pins removed afterwards), veths in namespaces."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BPF_CFLAGS = ["-O2", "-g", "-target", "bpf", "-Wall", "-Werror",
              f"-I{REPO / 'bpf/include'}", f"-I{REPO / 'bpf/lib'}", "-D__TARGET_ARCH_x86"]
PIN_ROOT = Path("/sys/fs/bpf/membrane")


def _why_not_privileged() -> str | None:
    if os.geteuid() != 0:
        return "needs root (BPF programs, maps and network namespaces)"
    if not Path("/sys/fs/bpf").is_dir() or not any(
        line.split()[2] == "bpf" for line in Path("/proc/self/mounts").read_text().splitlines()
    ):
        return "no bpffs: mount -t bpf bpf /sys/fs/bpf"
    if shutil.which("clang") is None:
        return "needs clang to build the BPF objects"
    try:
        import membrane.datapath.libbpf  # noqa: F401
    except Exception as e:
        return f"libbpf unavailable: {e}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _why_not_privileged()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("privileged") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def obj_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bpf/*.c compiled now, so the tests run the sources in the tree (not a stale build/)."""
    out = tmp_path_factory.mktemp("bpf")
    for src in sorted((REPO / "bpf").glob("*.c")):
        subprocess.run(["clang", *BPF_CFLAGS, "-c", str(src), "-o", str(out / f"{src.stem}.o")],
                       check=True)
    return out


@pytest.fixture
def node_name() -> Iterator[str]:
    from membrane.datapath.loader import Datapath

    name = f"t{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        Datapath.remove_pins(name, PIN_ROOT)


@pytest.fixture
def datapath(obj_dir: Path, node_name: str) -> Iterator[object]:
    from membrane.datapath.loader import Datapath

    dp = Datapath.open(node_name, obj_dir, PIN_ROOT)
    try:
        yield dp
    finally:
        dp.close()


@pytest.fixture
def netns_name() -> Iterator[str]:
    """A fresh named network namespace (mbt-<hex>), deleted afterwards."""
    from pyroute2 import netns as p2netns

    name = f"mbt-{secrets.token_hex(4)}"
    p2netns.create(name)
    try:
        yield name
    finally:
        p2netns.remove(name)
