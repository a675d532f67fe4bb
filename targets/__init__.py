"""Target profiles: what a bundle must fit and which runtime stub runs there.

Profiles are data, one JSON file per profile in targets/profiles/. `host` is this machine,
measured rather than declared.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from runtime.errors import UserError  # importing runtime also turns onnxruntime's telemetry off

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
HOST = "host"


class TargetError(UserError):
    """An unknown target name or a malformed profile file; the message names it."""


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    arch: str                    # uname -m of the target: x86_64, aarch64
    glibc_floor: str             # oldest glibc the stub runs on (set by where the stub is built)
    ram_mb: int
    ram_share: float             # fraction of RAM the bundle may use; the rest is the system's
    threads: int
    quantization: str            # default weight format for this target
    context: int                 # default maximum context in tokens
    python: str                  # Python inside the stub
    onnxruntime: str             # onnxruntime inside the stub: decides which contrib ops the graph may use
    stub_builder: str            # "host": PyInstaller here; "debian-chroot": inside an emulated Debian root
    debian_suite: Optional[str] = None
    os: str = "linux"

    @property
    def ram_budget_bytes(self) -> int:
        return int(self.ram_mb * self.ram_share * 1024 * 1024)


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json")) + [HOST]


def load_target(name: str) -> TargetProfile:
    """A named profile, or `host` for this machine; raises TargetError for an unknown name."""
    if name == HOST:
        return host_target()
    path = PROFILES_DIR / f"{name}.json"
    if not path.is_file():
        raise TargetError(f"unknown target {name!r} (choose from {', '.join(profile_names())})")
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(TargetProfile)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        return TargetProfile(name=name, **data)
    except (ValueError, TypeError) as exc:
        raise TargetError(f"{path}: bad target profile: {exc}") from None


def host_target() -> TargetProfile:
    """This machine: its architecture, glibc, RAM and cores, with the installed onnxruntime."""
    import onnxruntime

    libc, version = platform.libc_ver()
    return TargetProfile(
        name=HOST,
        description=f"this machine ({platform.system()} {platform.machine()})",
        arch=platform.machine(),
        glibc_floor=version if libc == "glibc" else "unknown",
        ram_mb=os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20,
        ram_share=0.5,
        threads=os.cpu_count() or 1,
        quantization="int4",
        context=2048,
        python=platform.python_version(),
        onnxruntime=onnxruntime.__version__,
        stub_builder="host",
    )

