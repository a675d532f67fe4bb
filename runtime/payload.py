"""The payload format: one definition, used by the runtime to read and by the builder to write.

A bundle file is an optional executable stub followed by the payload:

    [stub][zero padding][entry 0][pad][entry 1]...[pad][manifest JSON][trailer][PyInstaller cookie copy]

- Every entry starts at a multiple of ALIGNMENT (64 KiB, as llamafile's zipalign) counted from
  the start of the file, so an entry can be memory-mapped and its tensors stay aligned.
- The manifest (runtime.manifest.Manifest as JSON) lists every entry with its absolute offset,
  size and sha256.
- The trailer (TRAILER, fixed size) gives the payload start, where the manifest lies, the
  manifest's sha256 and an optional ed25519 signature of the manifest bytes.
- When the stub is a PyInstaller one-file executable, a copy of its 88-byte archive cookie ends
  the file, with the package length extended to the new end of file: the bootloader then finds
  its archive in its first read instead of scanning the payload backwards.
  A bare payload file (no stub) ends with the trailer.

ONNX models with external data are stored relocated: every tensor's `location` is SELF_PLACEHOLDER
(a fixed-length string) and its `offset` is absolute in the bundle file, so the runtime points
onnxruntime at the bundle file itself by swapping the placeholder for a same-length path
(padded_location).
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import BinaryIO, Optional

ALIGNMENT = 64 * 1024
FORMAT_VERSION = 1

TRAILER_MAGIC = b"EDGEPAY1"
# magic, format version, flags, payload start, manifest offset, manifest size, manifest sha256, signature
TRAILER = struct.Struct("<8sIIQQQ32s64s")
FLAG_SIGNED = 1

PYI_COOKIE = struct.Struct("!8sIIII64s")
PYI_MAGIC = b"MEI\014\013\012\013\016"

# Longer than any file name Linux allows (255 bytes) by two, so every bare name can be padded to it.
SELF_PLACEHOLDER = b"@edgebundle-self@".ljust(257, b"#")


class PayloadFormatError(Exception):
    """The file does not hold a readable payload; the message says what is wrong."""


@dataclass(frozen=True)
class Trailer:
    payload_start: int
    manifest_offset: int
    manifest_size: int
    manifest_sha256: bytes
    signature: Optional[bytes]

    def pack(self) -> bytes:
        flags = FLAG_SIGNED if self.signature else 0
        return TRAILER.pack(
            TRAILER_MAGIC,
            FORMAT_VERSION,
            flags,
            self.payload_start,
            self.manifest_offset,
            self.manifest_size,
            self.manifest_sha256,
            self.signature or bytes(64),
        )


@dataclass(frozen=True)
class PayloadLayout:
    """Where things are in one bundle file, after the fast checks."""

    file_size: int
    trailer: Trailer
    trailer_offset: int
    manifest_bytes: bytes


def align_up(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def find_pyinstaller_cookie(head: bytes) -> int:
    """Offset of the last PyInstaller cookie in `head`, or -1."""
    return head.rfind(PYI_MAGIC)


def extended_cookie(cookie: bytes, cookie_offset: int, new_end: int) -> bytes:
    """A copy of the cookie found at `cookie_offset` whose package ends at `new_end` instead.

    The bootloader computes the archive start as (end of cookie - package length); keeping that
    start fixed while the cookie moves to the end of the file means adding the distance moved.
    """
    magic, length, toc_offset, toc_length, pyvers, pylib = PYI_COOKIE.unpack(cookie)
    archive_start = cookie_offset + PYI_COOKIE.size - length
    new_length = new_end - archive_start
    if new_length >= 2**32:
        raise PayloadFormatError(
            f"bundle would be {new_end} bytes; the PyInstaller cookie addresses at most 4 GiB"
        )
    return PYI_COOKIE.pack(magic, new_length, toc_offset, toc_length, pyvers, pylib)


def padded_location(path: str) -> bytes:
    """`path` padded to the length of SELF_PLACEHOLDER with "./" segments (".//" for an odd pad)."""
    raw = path.encode("utf-8")
    pad = len(SELF_PLACEHOLDER) - len(raw)
    if pad < 0 or pad == 1:
        raise PayloadFormatError(f"{path}: path too long to relocate model weights (move the file to a shorter path)")
    prefix = b"./" * (pad // 2 - 1) + b".//" if pad % 2 else b"./" * (pad // 2)
    if raw.startswith(b"/"):
        return b"/" + prefix + raw[1:]
    return prefix + raw


def read_layout(handle: BinaryIO, file_size: int, name: str) -> PayloadLayout:
    """Read and check the trailer and manifest (fast: a few small reads, one hash of the manifest)."""
    tail_size = min(file_size, TRAILER.size + PYI_COOKIE.size)
    handle.seek(file_size - tail_size)
    tail = handle.read(tail_size)
    trailer_offset = _trailer_offset(tail, file_size)
    if trailer_offset is None:
        raise PayloadFormatError(f"{name}: no payload trailer (not a bundle, or truncated)")
    raw = tail[trailer_offset - (file_size - tail_size):][: TRAILER.size]
    magic, version, flags, start, m_offset, m_size, m_sha, signature = TRAILER.unpack(raw)
    if version != FORMAT_VERSION:
        raise PayloadFormatError(f"{name}: payload format {version} is not supported (expected {FORMAT_VERSION})")
    if not (start <= m_offset and m_offset + m_size == trailer_offset and start % ALIGNMENT == 0):
        raise PayloadFormatError(f"{name}: payload trailer does not match the file size (truncated or altered)")
    handle.seek(m_offset)
    manifest_bytes = handle.read(m_size)
    if hashlib.sha256(manifest_bytes).digest() != m_sha:
        raise PayloadFormatError(f"{name}: manifest does not match its checksum (file altered)")
    trailer = Trailer(start, m_offset, m_size, m_sha, signature if flags & FLAG_SIGNED else None)
    return PayloadLayout(file_size, trailer, trailer_offset, manifest_bytes)


def _trailer_offset(tail: bytes, file_size: int) -> Optional[int]:
    """The trailer sits at the very end, or just before a PyInstaller cookie copy."""
    base = file_size - len(tail)
    candidates = [len(tail) - TRAILER.size]
    if tail[-PYI_COOKIE.size:][:8] == PYI_MAGIC:
        candidates.insert(0, len(tail) - PYI_COOKIE.size - TRAILER.size)
    for start in candidates:
        if start >= 0 and tail[start:start + len(TRAILER_MAGIC)] == TRAILER_MAGIC:
            return base + start
    return None
