"""Stub + payload → one executable, written atomically."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from bundler.errors import BuildError
from bundler.fs import atomic_file, sha256_file
from bundler.payload_writer import Signer, write_bundle
from bundler.progress import ProgressCallback, no_progress
from bundler.sbom import stub_licenses
from bundler.signing import write_pinned_stub
from bundler.stub import build_stub
from runtime.bundle import MANIFEST_NAME
from runtime.manifest import Manifest, TargetInfo
from runtime.memory import MB
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
    context: Optional[int] = None,
    pinned_key: Optional[bytes] = None,
) -> Path:
    """Write `dest`: the target's runtime stub (cached, or `runtime_stub`) with the staging folder appended.

    Checks the RAM budget and the operators the target's onnxruntime has first. `dest` is replaced in one step; a failed build leaves no file there.
    With `pinned_key` (the signer's public key) the executable starts only while its signature checks.
    """
    from bundler.budget import check_budget
    from bundler.target_ops import check_operators

    staging_dir, dest = Path(staging_dir), Path(dest)
    manifest = _read_manifest(staging_dir)
    budget = check_budget(staging_dir, manifest, target, context)
    check_operators(staging_dir, target)
    if runtime_stub is not None:
        stub = Path(runtime_stub)
        check_stub_format(stub, target)
    else:
        stub = build_stub(target, stub_cache, progress)
    manifest.target = target.name
    manifest.target_profile = TargetInfo(
        name=target.name, arch=target.arch, glibc_floor=target.glibc_floor, onnxruntime=target.onnxruntime,
        python=target.python, ram_mb=target.ram_mb, threads=target.threads, context=budget.memory.context,
        memory_mb=-(-budget.total // MB),
    )
    manifest.licenses = stub_licenses(stub)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if pinned_key is None:
        return _write_stub_and_payload(dest, stub, staging_dir, manifest, signer, progress)
    if signer is None:
        raise BuildError(None, "a pinned key needs a signing key")
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        pinned = write_pinned_stub(stub, pinned_key, Path(tmp) / stub.name)
        return _write_stub_and_payload(dest, pinned, staging_dir, manifest, signer, progress)


def _write_stub_and_payload(dest: Path, stub: Path, staging_dir: Path, manifest: Manifest,
                            signer: Optional[Signer], progress: ProgressCallback) -> Path:
    manifest.stub_sha256 = sha256_file(stub)
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
    """Never a half file at dest (bundler/fs.py)."""
    with atomic_file(dest, mode) as handle:
        write(handle)
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


