"""Stub + payload → one executable, written atomically."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from bundler.errors import BuildError
from bundler.leftovers import temp_prefix
from bundler.payload_writer import Signer, write_bundle
from bundler.progress import ProgressCallback, no_progress
from bundler.sbom import stub_licenses
from bundler.stub import build_stub
from runtime.bundle import MANIFEST_NAME
from runtime.manifest import Manifest, TargetInfo
from targets import TargetProfile

# e_machine of ELF headers, Machine of PE headers, for the architectures targets name
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}
PE_MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64"}
MACHO_MAGICS = (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe")


def package(
    staging_dir: Path,
    target: TargetProfile,
    dest: Path,
    stub_cache: Path,
    progress: ProgressCallback = no_progress,
    runtime_stub: Optional[Path] = None,
    signer: Optional[Signer] = None,
) -> Path:
    """Write `dest`: the target's runtime stub (cached, or `runtime_stub`) with the staging folder appended.

    Checks the RAM budget and the operators the target's onnxruntime has first. `dest` is replaced in one step; a failed build leaves no file there.
    """
    from bundler.budget import check_budget
    from bundler.target_ops import check_operators

    staging_dir, dest = Path(staging_dir), Path(dest)
    manifest = _read_manifest(staging_dir)
    check_budget(staging_dir, manifest, target)
    check_operators(staging_dir, target)
    if runtime_stub is not None:
        stub = Path(runtime_stub)
        check_stub_format(stub, target)
    else:
        stub = build_stub(target, stub_cache, progress)
    manifest.target = target.name
    manifest.target_profile = TargetInfo(
        name=target.name, arch=target.arch, glibc_floor=target.glibc_floor, onnxruntime=target.onnxruntime,
        python=target.python, ram_mb=target.ram_mb, threads=target.threads, context=target.context,
    )
    manifest.stub_sha256 = _sha256(stub)
    manifest.licenses = stub_licenses(stub)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return _write_atomically(dest, lambda out: write_bundle(out, staging_dir, manifest, stub=stub, signer=signer,
                                                            progress=progress), mode=0o755)


def write_payload_file(staging_dir: Path, dest: Path, signer: Optional[Signer] = None,
                       progress: ProgressCallback = no_progress) -> Path:
    """A bare payload file (no stub): what `python -m runtime --bundle FILE` and tests open."""
    staging_dir, dest = Path(staging_dir), Path(dest)
    manifest = _read_manifest(staging_dir)
    return _write_atomically(dest, lambda out: write_bundle(out, staging_dir, manifest, signer=signer,
                                                            progress=progress), mode=0o644)


def _write_atomically(dest: Path, write: Callable[[BinaryIO], object], mode: int) -> Path:
    """Write through a temp file in dest's folder, fsync, chmod, rename: never a half file at dest."""
    handle = tempfile.NamedTemporaryFile(prefix=temp_prefix(f".{dest.name}"), suffix=".part", dir=dest.parent, delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, mode)
        os.replace(handle.name, dest)
    except BaseException:
        os.unlink(handle.name)
        raise
    return dest


def check_stub_format(stub: Path, target: TargetProfile) -> None:
    """Accept ELF and PE stubs for the target's architecture; refuse Mach-O and anything else.

    Mach-O executables are code-signed over their whole length: appended data breaks the signature.
    """
    try:
        with open(stub, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise BuildError(stub, f"cannot read runtime stub: {exc.strerror}") from None
    if head[:4] == b"\x7fELF":
        arch = ELF_MACHINES.get(int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"))
    elif head[:2] == b"MZ":
        pe = int.from_bytes(head[0x3C:0x40], "little")
        if head[pe:pe + 4] != b"PE\0\0":
            raise BuildError(stub, "runtime stub is an MZ file without a PE header")
        arch = PE_MACHINES.get(int.from_bytes(head[pe + 4:pe + 6], "little"))
    elif head[:4] in MACHO_MAGICS:
        raise BuildError(stub, "macOS runtime stubs are not supported: appending a payload breaks their code signature")
    else:
        raise BuildError(stub, "runtime stub is neither an ELF nor a PE executable")
    if arch != target.arch:
        raise BuildError(stub, f"runtime stub is built for {arch or 'an unknown architecture'}, target {target.name} is {target.arch}")


def _read_manifest(staging_dir: Path) -> Manifest:
    path = staging_dir / MANIFEST_NAME
    try:
        return Manifest.from_json(path.read_bytes())
    except FileNotFoundError:
        raise BuildError(path, "missing manifest") from None
    except (ValueError, TypeError) as exc:
        raise BuildError(path, f"bad manifest: {exc}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
