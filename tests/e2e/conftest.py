"""E2E fixtures: a lab with a unique name, always taken down, and the CLI as a user runs it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from labkit import Lab, mb, unique_name

REPO = Path(__file__).resolve().parents[2]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "e2e tests need root (namespaces, BPF)"
    if not Path("/sys/fs/bpf").is_dir():
        return "no /sys/fs/bpf"
    if not (REPO / "build" / "bpf" / "bpf_lxc.o").exists():
        return "BPF objects not built (make build)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _why_not()
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    name = unique_name()
    mb("lab", "up", "--name", name, "--pod-cidr", "10.201.0.0/24")
    try:
        yield Lab(name, tmp_path)
    finally:
        mb("lab", "down", "--name", name, check=False)
