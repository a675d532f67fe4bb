"""Bundle patches: rebuild a new bundle from the old one and the bytes that differ.

Format (version 1; written by bundler/patch_writer.py, documented in docs/PACKAGING.md):

    [header: HEADER][segments: count x SEGMENT][data: one zlib stream][sha256 of everything before: 32 B]

- HEADER "<8sIIQ32sQ32sIQ": magic "EDGEPAT1", format version, flags (bit 0: the new bundle is
  signed), old file size, old file sha256, new file size, new file sha256, segment count, size of
  the compressed data.
- SEGMENT "<BQQ": kind, length, old offset. The segments describe the new file from its first
  byte to its last: COPY `length` bytes of the old file from `old offset`; DATA: the next
  `length` bytes of the decompressed data; ZERO: `length` zero bytes (alignment padding).

Applying checks the patch's own checksum, that the old file is the one the patch was made for
(size and sha256), and the new file's sha256 before anything replaces the destination: the
result is written to a temporary file beside it and renamed only once it matched.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from runtime.errors import UserError

MAGIC = b"EDGEPAT1"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQ32sQ32sIQ")
SEGMENT = struct.Struct("<BQQ")
CHECKSUM_SIZE = 32
FLAG_NEW_SIGNED = 1
COPY, DATA, ZERO = 0, 1, 2
BLOCK = 4 << 20
MAX_NEW_SIZE = 1 << 32  # a bundle's PyInstaller cookie addresses at most 4 GiB (runtime/payload.py)


class PatchError(UserError):
    """The patch cannot be applied; the message names the file and the problem."""


@dataclass(frozen=True)
class Segment:
    kind: int
    length: int
    old_offset: int = 0


@dataclass(frozen=True)
class PatchHeader:
    flags: int
    old_size: int
    old_sha256: bytes
    new_size: int
    new_sha256: bytes
    segments: tuple[Segment, ...]
    data_size: int

    def pack(self) -> bytes:
        head = HEADER.pack(MAGIC, FORMAT_VERSION, self.flags, self.old_size, self.old_sha256, self.new_size,
                           self.new_sha256, len(self.segments), self.data_size)
        return head + b"".join(SEGMENT.pack(s.kind, s.length, s.old_offset) for s in self.segments)


def read_header(handle: BinaryIO, file_size: int, name: str) -> PatchHeader:
    """The header and segments, checked against each other and the file size (not yet the checksum)."""
    raw = handle.read(HEADER.size)
    if len(raw) < HEADER.size or not raw.startswith(MAGIC):
        raise PatchError(f"{name}: not a bundle patch")
    magic, version, flags, old_size, old_sha, new_size, new_sha, count, data_size = HEADER.unpack(raw)
    if version != FORMAT_VERSION:
        raise PatchError(f"{name}: patch format {version} is not supported (expected {FORMAT_VERSION})")
    if HEADER.size + count * SEGMENT.size + data_size + CHECKSUM_SIZE != file_size:
        raise PatchError(f"{name}: patch size does not match its header (truncated or altered)")
    table = handle.read(count * SEGMENT.size)
    segments = tuple(Segment(*SEGMENT.unpack_from(table, i * SEGMENT.size)) for i in range(count))
    for segment in segments:
        if segment.kind not in (COPY, DATA, ZERO) or (segment.kind == COPY
                                                      and segment.old_offset + segment.length > old_size):
            raise PatchError(f"{name}: malformed segment table (altered)")
    if new_size > MAX_NEW_SIZE:
        raise PatchError(f"{name}: the new bundle would be {new_size} bytes, more than a bundle can be (altered)")
    if sum(s.length for s in segments) != new_size:
        raise PatchError(f"{name}: segments do not add up to the new file's size (altered)")
    return PatchHeader(flags, old_size, old_sha, new_size, new_sha, segments, data_size)


@contextlib.contextmanager
def rebuilt_file(old: Path, patch: Path, dest: Path) -> Iterator[tuple[Path, PatchHeader]]:
    """The rebuilt file at a temporary path beside `dest`; it becomes `dest` when the block ends
    without an error (the caller may check it first), else it is removed."""
    with _temporary_result(dest) as (out, temporary):
        header = rebuild(old, patch, out)
        out.flush()
        os.fsync(out.fileno())
        os.chmod(temporary, 0o755)
        yield temporary, header


@contextlib.contextmanager
def _temporary_result(dest: Path) -> Iterator[tuple[BinaryIO, Path]]:
    dest = Path(dest)
    try:
        handle = tempfile.NamedTemporaryFile(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent or ".",
                                             delete=False)
    except OSError as exc:
        raise PatchError(f"{dest}: cannot write ({exc.strerror})") from None
    temporary = Path(handle.name)
    try:
        with handle:
            yield handle, temporary
        os.replace(temporary, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def rebuild(old: Path, patch: Path, out: BinaryIO) -> PatchHeader:
    """Write the new file to `out`; raises PatchError (wrong old file, damaged patch, wrong result)."""
    name = str(patch)
    try:
        with open(patch, "rb") as handle, open(old, "rb") as source:
            size = os.fstat(handle.fileno()).st_size
            header = read_header(handle, size, name)
            _check_checksum(handle, size, name)
            old_size = os.fstat(source.fileno()).st_size
            old_digest = _sha256(source)
            if old_size != header.old_size or old_digest != header.old_sha256:
                raise PatchError(f"{name}: made for the bundle with sha256 {header.old_sha256.hex()}, "
                                 f"but {old} has sha256 {old_digest.hex()}")
            handle.seek(HEADER.size + len(header.segments) * SEGMENT.size)
            digest = _write_segments(header, handle, source, out, name)
    except OSError as exc:
        raise PatchError(f"{exc.filename or name}: {exc.strerror}") from None
    if digest != header.new_sha256:
        raise PatchError(f"{name}: the rebuilt bundle does not match the patch's sha256 (patch altered)")
    return header


def _check_checksum(handle: BinaryIO, size: int, name: str) -> None:
    handle.seek(0)
    digest = hashlib.sha256()
    remaining = size - CHECKSUM_SIZE
    while remaining:
        block = handle.read(min(BLOCK, remaining))
        digest.update(block)
        remaining -= len(block)
    if handle.read(CHECKSUM_SIZE) != digest.digest():
        raise PatchError(f"{name}: patch does not match its checksum (truncated or altered)")


def _sha256(handle: BinaryIO) -> bytes:
    handle.seek(0)
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(BLOCK), b""):
        digest.update(block)
    return digest.digest()


def _write_segments(header: PatchHeader, patch: BinaryIO, old: BinaryIO, out: BinaryIO, name: str) -> bytes:
    digest = hashlib.sha256()
    data = _Decompressed(patch, header.data_size, name)
    for segment in header.segments:
        remaining = segment.length
        if segment.kind == COPY:
            old.seek(segment.old_offset)
        while remaining:
            step = min(BLOCK, remaining)
            if segment.kind == COPY:
                block = old.read(step)
            elif segment.kind == DATA:
                block = data.read(step)
            else:
                block = bytes(step)
            digest.update(block)
            out.write(block)
            remaining -= step
    data.finish()
    return digest.digest()


class _Decompressed:
    """The patch's zlib stream, read in exact amounts."""

    def __init__(self, patch: BinaryIO, size: int, name: str):
        self.patch, self.left, self.name = patch, size, name
        self.inflate = zlib.decompressobj()
        self.buffer = b""

    def read(self, count: int) -> bytes:
        try:
            while len(self.buffer) < count:
                if self.inflate.unconsumed_tail:
                    chunk = self.inflate.decompress(self.inflate.unconsumed_tail, BLOCK)
                elif self.left:
                    raw = self.patch.read(min(BLOCK, self.left))
                    self.left -= len(raw)
                    chunk = self.inflate.decompress(raw, BLOCK)
                else:
                    raise PatchError(f"{self.name}: patch data ends early (altered)")
                self.buffer += chunk
        except zlib.error:
            raise PatchError(f"{self.name}: patch data is not a valid zlib stream (altered)") from None
        block, self.buffer = self.buffer[:count], self.buffer[count:]
        return block

    def finish(self) -> None:
        try:
            rest = self.inflate.decompress(self.inflate.unconsumed_tail + self.patch.read(self.left)) + self.inflate.flush()
        except zlib.error:
            raise PatchError(f"{self.name}: patch data is not a valid zlib stream (altered)") from None
        if self.buffer or rest or not self.inflate.eof:
            raise PatchError(f"{self.name}: patch data longer than its segments (altered)")
