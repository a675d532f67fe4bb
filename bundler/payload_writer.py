"""Write a bundle: stub, then every staging file as an aligned entry, manifest, trailer, cookie copy.

The format itself is defined in runtime/payload.py; this is its only writer.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from bundler.errors import BuildError
from bundler.onnx_relocate import external_data_files, relocate
from bundler.progress import ProgressCallback, no_progress
from runtime.bundle import MANIFEST_NAME
from runtime.manifest import Entry, Manifest
from runtime.payload import (PYI_COOKIE, TRAILER, PayloadFormatError, Trailer, align_up, extended_cookie,
                             find_pyinstaller_cookie)

COPY_BLOCK = 4 << 20
COOKIE_SEARCH = 1 << 20  # the cookie ends the stub's archive; only ELF section headers follow it

Signer = Callable[[bytes], bytes]


def staging_files(staging: Path) -> list[str]:
    """Every regular file of the staging folder but the manifest, as sorted POSIX names."""
    names = []
    for path in sorted(staging.rglob("*")):
        if path.is_symlink():
            raise BuildError(path, "symbolic links cannot be bundled")
        if path.is_file() and path.relative_to(staging).as_posix() != MANIFEST_NAME:
            names.append(path.relative_to(staging).as_posix())
    return names


def find_stub_cookie(stub: Path) -> tuple[int, bytes]:
    """Offset and bytes of the PyInstaller archive cookie in `stub`."""
    size = stub.stat().st_size
    with open(stub, "rb") as handle:
        start = max(0, size - COOKIE_SEARCH)
        handle.seek(start)
        tail = handle.read()
    position = find_pyinstaller_cookie(tail)
    if position < 0 or position + PYI_COOKIE.size > len(tail):
        raise BuildError(stub, "not a PyInstaller one-file executable (no archive cookie found)")
    return start + position, tail[position:position + PYI_COOKIE.size]


def write_bundle(
    out: BinaryIO,
    staging: Path,
    manifest: Manifest,
    stub: Optional[Path] = None,
    signer: Optional[Signer] = None,
    progress: ProgressCallback = no_progress,
) -> Manifest:
    """Write stub + payload to `out` (positioned at 0); returns the manifest as stored (entries filled)."""
    names = staging_files(staging)
    models = [n for n in names if n.endswith(".onnx")]
    plain = [n for n in names if n not in models]
    sizes = {n: (staging / n).stat().st_size for n in names}
    total = sum(sizes.values())
    cookie = find_stub_cookie(stub) if stub is not None else None

    written = 0
    if stub is not None:
        written = _copy(stub, out, None)
    entries: list[Entry] = []
    payload_start = align_up(written)
    done = 0
    # Plain files first: their offsets must be known before the models that point into them.
    for name in plain:
        written = _pad(out, written)
        digest = hashlib.sha256()
        size = _copy(staging / name, out, digest)
        entries.append(Entry(name=name, offset=written, size=size, sha256=digest.hexdigest()))
        written += size
        done += size
        progress("payload", done, total)
    offsets = {e.name: e.offset for e in entries}
    for name in models:
        referenced = external_data_files(staging / name, staging)
        data = relocate(staging / name, staging, offsets, sizes) if referenced else (staging / name).read_bytes()
        written = _pad(out, written)
        out.write(data)
        entries.append(Entry(name=name, offset=written, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
        written += len(data)
        done += sizes[name]
        progress("payload", done, total)

    manifest.entries = entries
    manifest_bytes = manifest.to_json().encode("utf-8")
    manifest_offset = written
    out.write(manifest_bytes)
    written += len(manifest_bytes)
    signature = signer(manifest_bytes) if signer is not None else None
    trailer = Trailer(payload_start, manifest_offset, len(manifest_bytes),
                      hashlib.sha256(manifest_bytes).digest(), signature)
    out.write(trailer.pack())
    written += TRAILER.size
    if cookie is not None:
        try:
            out.write(extended_cookie(cookie[1], cookie[0], written + PYI_COOKIE.size))
        except PayloadFormatError as exc:
            raise BuildError(None, str(exc)) from None
    return manifest


def _pad(out: BinaryIO, written: int) -> int:
    aligned = align_up(written)
    out.write(bytes(aligned - written))
    return aligned


def _copy(path: Path, out: BinaryIO, digest: Optional["hashlib._Hash"]) -> int:
    size = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(COPY_BLOCK)
            if not block:
                return size
            if digest is not None:
                digest.update(block)
            out.write(block)
            size += len(block)
