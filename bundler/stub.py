"""Runtime stubs: a PyInstaller one-file executable of runtime/ per target, built once and cached.

A bundle is a stub plus an appended payload, so changing documents or the model never rebuilds
the stub. The cache key covers the runtime's sources, the locked runtime dependencies, the
PyInstaller recipe and the target.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from bundler.cache_record import record_matches, write_record
from bundler.fs import replace_folder
from bundler.errors import BuildError
from bundler.leftovers import temp_prefix
from bundler.progress import ProgressCallback, no_progress
from bundler.stub_gate import COMPILE_FLAGS, GATE_SOURCE, REAL_LIBRARY, bootloader_functions, compile_gate
from bundler.stub_recipe import (ENTRY_SCRIPT, EXCLUDED_MODULES, HIDDEN_IMPORTS, REPRODUCIBLE_ENV, RUNTIME_DISTRIBUTIONS,
                                 SPEC_TEMPLATE, STUB_NAME, prepare_sources, runtime_source_digest, write_spec)
from runtime.signature import PIN_FILE, pin_slot
from targets import TargetProfile

def host_locked_dependencies() -> dict[str, str]:
    """Versions of the runtime's distributions in the environment PyInstaller collects from."""
    versions = {}
    for name in RUNTIME_DISTRIBUTIONS + ("pyinstaller",):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def stub_key(target: TargetProfile, locked: dict[str, str]) -> str:
    recipe = {
        "runtime": runtime_source_digest(),
        "deps": locked,
        "recipe": [ENTRY_SCRIPT, SPEC_TEMPLATE, list(EXCLUDED_MODULES), HIDDEN_IMPORTS, REPRODUCIBLE_ENV, PIN_FILE,
                   pin_slot(None).hex()],
        "gate": [GATE_SOURCE.read_text(), REAL_LIBRARY, list(COMPILE_FLAGS), bootloader_functions()],
        "target": [target.os, target.arch, target.glibc_floor, target.python if target.stub_builder != "host" else "",
                   target.onnxruntime if target.stub_builder != "host" else "",
                   target.stub_builder, target.debian_suite],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


def build_stub(target: TargetProfile, cache_dir: Path, progress: ProgressCallback = no_progress) -> Path:
    """Path of the cached stub for `target`, building it first when the cache has none."""
    cache_dir = Path(cache_dir).resolve()
    if target.stub_builder == "host":
        if target.arch != platform.machine():
            raise BuildError(None, f"target {target.name} is {target.arch}; this host builds {platform.machine()} stubs")
        locked = host_locked_dependencies()
    elif target.stub_builder == "debian-chroot":
        from bundler.stub_chroot import chroot_locked_dependencies

        locked = chroot_locked_dependencies(target)
    else:
        raise BuildError(None, f"target {target.name}: unknown stub builder {target.stub_builder!r}")
    key = stub_key(target, locked)
    cached = cache_dir / f"{target.os}-{target.arch}-{key}" / STUB_NAME
    if record_matches(cached.parent, key):
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    progress("runtime stub", 0, 1)
    with tempfile.TemporaryDirectory(prefix=temp_prefix("stub"), dir=cache_dir) as tmp:
        work = Path(tmp)
        if target.stub_builder == "host":
            built = _build_on_host(target, work)
        else:
            from bundler.stub_chroot import build_in_chroot

            built = build_in_chroot(target, work, cache_dir, progress)
        (work / "stub.json").write_text(json.dumps({"target": target.name, "deps": locked}, indent=1))
        staged = work / "result"
        staged.mkdir()
        os.replace(built, staged / STUB_NAME)
        os.replace(work / "stub.json", staged / "stub.json")
        write_record(staged, key)
        cached.parent.parent.mkdir(parents=True, exist_ok=True)
        replace_folder(staged, cached.parent)
    progress("runtime stub", 1, 1)
    return cached


def _build_on_host(target: TargetProfile, work: Path) -> Path:
    prepare_sources(work)
    compile_gate(target, work)
    command = [sys.executable, "-m", "PyInstaller", *write_spec(work, work)]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, env={**os.environ, **REPRODUCIBLE_ENV})
    if result.returncode != 0:
        raise BuildError(None, f"PyInstaller failed building the runtime stub: {_last_lines(result.stderr)}")
    return work / "dist" / STUB_NAME


def _last_lines(text: str, count: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-count:])
