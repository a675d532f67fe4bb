"""The glibc gate: a small library standing in for the stub's libpython, compiled here for the target.

PyInstaller's prebuilt bootloader needs only GLIBC_2.14 (x86_64) / GLIBC_2.17 (aarch64), so on a
machine with an older glibc than the stub's libpython it starts and stops at its dlopen of libpython
with a loader message. The gate takes libpython's place in the archive: on a glibc older than the
target's floor it refuses with one `error:` line naming what it needs; otherwise it loads the real
libpython and forwards the functions the bootloader looks up (bundler/data/python_gate.c).
It is compiled on the build host (a cross compiler for another architecture) against that
architecture's oldest glibc symbol versions, which `compile_gate` checks.
"""
from __future__ import annotations

import json
import platform
import re
import subprocess
from pathlib import Path

from bundler.errors import BuildError
from targets import TargetProfile

GATE_SOURCE = Path(__file__).resolve().parent / "data" / "python_gate.c"
GATE_NAME = "python-gate.so"
# the real libpython's name inside the stub, beside the gate that takes its name
REAL_LIBRARY = "libpython-real.so"
# each architecture's first glibc symbol version: what every glibc release for it still provides
GLIBC_BASE = {"x86_64": "GLIBC_2.2.5", "aarch64": "GLIBC_2.17"}
PYINSTALLER_PLATFORM = {"x86_64": "Linux-64bit-intel", "aarch64": "Linux-64bit-arm"}
# -s: no symbol table, which would name the source file; with relative names, nothing of the build folder
# stays in the library, so the stub remains reproducible (docs/PACKAGING.md#reproducible-bundles)
COMPILE_FLAGS = ("-shared", "-fPIC", "-O2", "-s", "-fno-stack-protector", "-U_FORTIFY_SOURCE", "-Wl,-z,noexecstack")


def compiler_for(arch: str) -> str:
    return "gcc" if arch == platform.machine() else f"{arch}-linux-gnu-gcc"


def bootloader_functions() -> list[str]:
    """The Python functions PyInstaller's bootloader looks up by name, read from the host's copy of it.

    The bootloader's C source is the same on every platform and PyInstaller is pinned to one version for
    the host and the emulated roots, so the host's copy names what every target's bootloader asks for.
    """
    import PyInstaller

    folder = Path(PyInstaller.__file__).parent / "bootloader" / PYINSTALLER_PLATFORM.get(platform.machine(), "")
    data = (folder / "run").read_bytes()
    # every NUL-terminated identifier, and its tails: the linker stores a name that ends another string as that tail
    names = set()
    for word in re.findall(rb"[A-Za-z0-9_]+(?=\0)", data):
        names.update(word[i:].decode() for i in range(len(word)) if re.match(rb"_?Py[A-Za-z_]", word[i:]))
    return sorted(names)


def gate_source(target: TargetProfile, functions: list[str]) -> str:
    """The C file compiled for `target`: its constants, the common source, one forwarder per function.

    Only the architecture and glibc floor go in, so the profiles sharing a stub share one gate."""
    constants = {"GATE_GLIBC_FLOOR": target.glibc_floor, "GATE_ARCH": target.arch,
                 "GATE_GLIBC_BASE": GLIBC_BASE[target.arch], "GATE_REAL_LIBRARY": REAL_LIBRARY}
    head = "".join(f"#define {name} {json.dumps(value)}\n" for name, value in constants.items())
    forwards = "".join(f"GATE_FORWARD({name})\n" for name in functions)
    return head + GATE_SOURCE.read_text() + forwards


def compile_gate(target: TargetProfile, work: Path) -> Path:
    """Compile the gate for `target` into `work`; refuses one that needs a newer glibc than its architecture's first."""
    if target.arch not in GLIBC_BASE:
        raise BuildError(None, f"target {target.name}: no glibc gate for {target.arch}")
    if not re.fullmatch(r"\d+\.\d+", target.glibc_floor):
        raise BuildError(None, f"target {target.name}: glibc floor {target.glibc_floor!r} is not a version like 2.36")
    source = work / "python_gate.c"
    source.write_text(gate_source(target, bootloader_functions()))
    out = work / GATE_NAME
    command = [compiler_for(target.arch), *COMPILE_FLAGS, "-o", out.name, source.name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=work)
    except FileNotFoundError:
        raise BuildError(None, f"{command[0]} is not installed: it compiles the {target.arch} stub's glibc gate "
                               f"(.ci/system-packages)") from None
    if done.returncode != 0:
        raise BuildError(None, f"compiling the glibc gate failed: {' | '.join(done.stderr.strip().splitlines()[-5:])}")
    newer = [v for v in glibc_versions_needed(out) if _version(v) > _version(GLIBC_BASE[target.arch])]
    if newer:
        raise BuildError(out, f"the glibc gate needs {', '.join(newer)}; it must run on any {target.arch} glibc")
    return out


def glibc_versions_needed(library: Path) -> list[str]:
    """The GLIBC_x.y symbol versions a shared library needs (readelf works for any architecture)."""
    done = subprocess.run(["readelf", "--version-info", "--wide", str(library)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(library, f"readelf failed: {done.stderr.strip()}")
    needs = done.stdout.partition("Version needs section")[2]
    return sorted(set(re.findall(r"Name: (GLIBC_[\d.]+)", needs)), key=_version)


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.removeprefix("GLIBC_").split("."))
