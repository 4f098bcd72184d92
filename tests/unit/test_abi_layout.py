"""The ctypes mirrors in membrane.datapath.abi match bpf/include/membrane/*.h: sizes, field
offsets and constants, checked by the compiler with _Static_assert (drift fails CI)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from ctypes import Structure
from pathlib import Path

import pytest

from membrane.datapath.abi import ABI_CONSTANTS, ABI_STRUCTS

REPO = Path(__file__).resolve().parents[2]
HEADERS = sorted((REPO / "bpf/include/membrane").glob("*.h"))

pytestmark = pytest.mark.skipif(shutil.which("clang") is None,
                                reason="needs clang to compile the layout assertions")


def layout_asserts(structs: dict[str, type[Structure]], constants: dict[str, int]) -> str:
    lines = ["#include <stddef.h>"]
    lines += [f"#include <membrane/{h.name}>" for h in HEADERS]
    for cname, mirror in structs.items():
        lines.append(f'_Static_assert(sizeof({cname}) == {ctypes.sizeof(mirror)}, '
                     f'"sizeof {cname}");')
        for field, *_ in mirror._fields_:
            off = getattr(mirror, field).offset
            lines.append(f'_Static_assert(offsetof({cname}, {field}) == {off}, '
                         f'"{cname}.{field}");')
    for name, value in constants.items():
        lines.append(f'_Static_assert({name} == {value}, "{name}");')
    return "\n".join(lines) + "\n"


def compile_asserts(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "abi_layout.c"
    path.write_text(source)
    return subprocess.run(["clang", "-target", "bpf", "-fsyntax-only", f"-I{REPO / 'bpf/include'}",
                           f"-I{REPO / 'bpf/lib'}",
                           str(path)], capture_output=True, text=True, check=False)


def test_every_mirror_matches_its_header(tmp_path: Path) -> None:
    res = compile_asserts(layout_asserts(ABI_STRUCTS, ABI_CONSTANTS), tmp_path)
    assert res.returncode == 0, res.stderr


def test_every_header_struct_has_a_mirror() -> None:
    declared = set()
    for h in HEADERS:
        for line in h.read_text().splitlines():
            if line.startswith("struct ") and line.rstrip().endswith("{"):
                declared.add(line.split("{")[0].strip())
    assert declared == set(ABI_STRUCTS)


def test_a_drifted_mirror_fails_the_check(tmp_path: Path) -> None:
    class Drifted(Structure):
        _fields_ = [("ip4", ctypes.c_uint32), ("family", ctypes.c_uint8)]

    res = compile_asserts(layout_asserts({"struct mb_endpoint_key": Drifted},
                                         {"MB_DROP_POLICY": 134}), tmp_path)
    assert res.returncode != 0
    assert "sizeof struct mb_endpoint_key" in res.stderr
    assert "struct mb_endpoint_key.family" in res.stderr
    assert "MB_DROP_POLICY" in res.stderr
