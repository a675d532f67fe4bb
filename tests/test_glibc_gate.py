"""The glibc gate: an executable on a machine whose glibc is older than its target's floor refuses with one
line naming what it needs, instead of the dynamic loader's message (bundler/stub_gate.py)."""
from __future__ import annotations

import dataclasses
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.stub_gate import GLIBC_BASE, REAL_LIBRARY, bootloader_functions, compile_gate, compiler_for, \
    glibc_versions_needed
from runtime.errors import EXIT_USER_ERROR
from targets import host_target, load_target
from tests.fixtures_packaging import STUB_CACHE

HOST_GLIBC = platform.libc_ver()[1]


def _needs_compiler(arch: str) -> None:
    if shutil.which(compiler_for(arch)) is None:
        pytest.skip(f"{compiler_for(arch)} is not installed (.ci/system-packages)")


def test_gate_refuses_an_older_glibc_with_one_line_naming_the_floor(tmp_path):
    _needs_compiler(platform.machine())
    target = dataclasses.replace(host_target(), glibc_floor="99.0")
    gate = compile_gate(target, tmp_path)
    done = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(gate)!r}); print('loaded')"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USER_ERROR and done.stdout == ""
    assert done.stderr == (f"error: {sys.executable}: needs {platform.machine()} Linux with glibc 99.0 or newer; "
                           f"this machine has glibc {HOST_GLIBC}\n")


def test_gate_at_or_below_this_glibc_loads_the_real_library_beside_it(tmp_path):
    """No real libpython beside it: the gate passed the glibc check and went on to load it."""
    _needs_compiler(platform.machine())
    gate = compile_gate(dataclasses.replace(host_target(), glibc_floor=HOST_GLIBC), tmp_path)
    done = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(gate)!r})"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USER_ERROR
    assert done.stderr.startswith("error: cannot load the Python library: ") and REAL_LIBRARY in done.stderr


@pytest.mark.parametrize("target_name", ["linux-x86_64", "raspberry-pi-5", "linux-aarch64"])
def test_gate_needs_only_the_first_glibc_of_its_architecture(target_name, tmp_path):
    target = load_target(target_name)
    _needs_compiler(target.arch)
    gate = compile_gate(target, tmp_path)
    assert glibc_versions_needed(gate) == [GLIBC_BASE[target.arch]]


def test_gate_forwards_every_python_function_the_bootloader_names():
    names = bootloader_functions()
    # looked up by the bootloader; the last one's name is stored as the tail of a longer string
    for name in ("Py_InitializeFromConfig", "PyConfig_InitIsolatedConfig", "Py_DecRef", "PyUnicode_AsUTF8"):
        assert name in names
    assert not [name for name in names if not name.lstrip("_").startswith("Py")]


def test_host_stub_stores_the_gate_under_libpythons_name_and_starts(host_stub):
    from PyInstaller.archive.readers import CArchiveReader

    toc = CArchiveReader(str(host_stub)).toc
    python_names = [name for name in toc if name.startswith("libpython")]
    assert sorted(python_names) == [REAL_LIBRARY, f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"]
    done = subprocess.run([str(host_stub), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "usage:" in done.stdout


@pytest.mark.executable
@pytest.mark.emulation
@pytest.mark.needs_root
def test_bookworm_executable_refuses_in_a_bullseye_root_naming_glibc_2_36(synthetic_staging, tmp_path):
    """The Raspberry Pi 5 executable (glibc 2.36) started on Debian bullseye (glibc 2.31), under qemu."""
    from bundler.package import package
    from bundler.stub_chroot import rootfs_command, rootfs_path

    old_root = rootfs_path(load_target("linux-aarch64"), STUB_CACHE)
    new_root = rootfs_path(load_target("raspberry-pi-5"), STUB_CACHE)
    if not (old_root / ".edgebundle-base").is_file() or not (new_root / ".edgebundle-base").is_file():
        pytest.skip("the emulated bullseye and bookworm roots are made by the aarch64 stub builds")
    exe = package(synthetic_staging, load_target("raspberry-pi-5"), tmp_path / "station", STUB_CACHE)
    refused = subprocess.run(rootfs_command(old_root, [str(exe), "--help"], binds=(tmp_path,)),
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == EXIT_USER_ERROR and refused.stdout == ""
    assert refused.stderr == f"error: {exe}: needs aarch64 Linux with glibc 2.36 or newer; this machine has glibc 2.31\n"
    started = subprocess.run(rootfs_command(new_root, [str(exe), "--help"], binds=(tmp_path,)),
                             capture_output=True, text=True, timeout=600)
    assert started.returncode == 0 and "usage:" in started.stdout
