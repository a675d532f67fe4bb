"""The bytes of a bundle file that no entry's sha256 covers: the stub, alignment padding, the
trailer's unused fields and the PyInstaller cookie copy. `verify` checks them too, so that a
change to any byte of the file is found, not only a change inside an entry.
"""
from __future__ import annotations

import hashlib

from runtime.manifest import Manifest
from runtime.payload import ALIGNMENT, FLAG_SIGNED, PYI_COOKIE, PYI_MAGIC, TRAILER, PayloadLayout, extended_cookie


# as bundler.payload_writer: the cookie ends the stub's archive; only ELF section headers follow it
COOKIE_SEARCH = 1 << 20


class CoverageError(Exception):
    """A byte outside every entry differs from what the builder wrote; the message says where."""


def check_uncovered_bytes(data, layout: PayloadLayout, manifest: Manifest, name: str) -> None:
    """`data`: the whole file (bytes, mmap or memoryview). Raises CoverageError."""
    start = layout.trailer.payload_start
    stub_end = find_stub_end(data, start, manifest.stub_sha256, name) if start else None
    previous_end = start
    for entry in sorted(manifest.entries, key=lambda e: e.offset):
        _zeros(data, previous_end, entry.offset, name, f"padding before entry {entry.name!r}")
        previous_end = entry.offset + entry.size
    _zeros(data, previous_end, layout.trailer.manifest_offset, name, "padding before the manifest")
    _check_trailer(data, layout, name)
    _check_cookie_copy(data, layout, stub_end, name)


def find_stub_end(data, payload_start: int, stub_sha256: str, name: str) -> int:
    """Where the runtime stub ends: only zero padding follows it up to the payload, and its bytes
    hash to the manifest's stub_sha256. The stub itself may end in zero bytes, so every end
    inside the trailing zeros is a candidate (one running hash, one byte at a time)."""
    window_start = max(0, payload_start - ALIGNMENT)
    window = bytes(data[window_start:payload_start])
    last = len(window.rstrip(b"\0")) + window_start
    if not stub_sha256:
        return last
    digest = hashlib.sha256()
    for block in range(0, last, 1 << 22):
        digest.update(data[block:min(last, block + (1 << 22))])
    for end in range(last, payload_start + 1):
        if digest.hexdigest() == stub_sha256:
            return end
        digest.update(b"\0")
    raise CoverageError(f"{name}: the runtime stub does not match its sha256 (file altered)")


def _zeros(data, begin: int, end: int, name: str, what: str) -> None:
    if end > begin and any(data[begin:end]):
        raise CoverageError(f"{name}: {what} is not zero (file altered)")


def _check_trailer(data, layout: PayloadLayout, name: str) -> None:
    raw = bytes(data[layout.trailer_offset:layout.trailer_offset + TRAILER.size])
    _, _, flags, *_, signature = TRAILER.unpack(raw)
    if flags & ~FLAG_SIGNED:
        raise CoverageError(f"{name}: unknown flags {flags:#x} in the payload trailer (file altered)")
    if not flags & FLAG_SIGNED and any(signature):
        raise CoverageError(f"{name}: unsigned bundle with a non-empty signature field (file altered)")


def _check_cookie_copy(data, layout: PayloadLayout, stub_end, name: str) -> None:
    tail_start = layout.trailer_offset + TRAILER.size
    tail = bytes(data[tail_start:layout.file_size])
    if stub_end is None:
        if tail:
            raise CoverageError(f"{name}: {len(tail)} unexpected bytes after the payload trailer (file altered)")
        return
    original_at = bytes(data[max(0, stub_end - COOKIE_SEARCH):stub_end]).rfind(PYI_MAGIC)
    if original_at < 0:
        raise CoverageError(f"{name}: the runtime stub has no PyInstaller cookie (file altered)")
    original_at += max(0, stub_end - COOKIE_SEARCH)
    expected = extended_cookie(bytes(data[original_at:original_at + PYI_COOKIE.size]), original_at, layout.file_size)
    if tail != expected:
        raise CoverageError(f"{name}: the copy of the PyInstaller cookie at the end differs from the stub's (file altered)")
