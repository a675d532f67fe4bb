"""`build.py patch OLD NEW -o FILE`: the bytes a station holding OLD needs to rebuild NEW.

The format and its reader are in runtime/patch.py; this is its only writer. Every entry of NEW
whose sha256 and size an entry of OLD has is copied from OLD at the station, as is the runtime
stub when both carry the same one; alignment padding is written as zeros; everything else (the
entries that differ, NEW's manifest, trailer and cookie copy, with NEW's signature when it is
signed) travels in the patch, zlib-compressed.
"""
from __future__ import annotations

import hashlib
import mmap
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from bundler.errors import BuildError
from bundler.fs import atomic_file
from runtime.bundle import FileBundle
from runtime.patch import CHECKSUM_SIZE, COPY, DATA, FLAG_NEW_SIGNED, ZERO, PatchHeader, Segment
from runtime.payload_coverage import CoverageError, find_stub_end

BLOCK = 4 << 20
LEVEL = 6


@dataclass
class PatchSummary:
    path: Path
    size: int                          # bytes of the patch file
    changed: list[str] = field(default_factory=list)   # NEW's entries that travel in the patch
    changed_bytes: int = 0             # their size in NEW
    copied_bytes: int = 0              # bytes the station copies from OLD


def write_patch(old_path: Path, new_path: Path, dest: Path) -> PatchSummary:
    old, new = FileBundle(Path(old_path)), FileBundle(Path(new_path))
    for bundle in (old, new):
        bundle.verify()  # a patch must not record damage as the difference
    summary = PatchSummary(path=Path(dest), size=0)
    with open(new.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        segments = _segments(old, new, data, summary)
        deflate = zlib.compressobj(LEVEL)
        compressed = []
        position = 0
        for segment in segments:
            if segment.kind == DATA:
                for start in range(position, position + segment.length, BLOCK):
                    compressed.append(deflate.compress(data[start:min(position + segment.length, start + BLOCK)]))
            position += segment.length
        compressed.append(deflate.flush())
    body = b"".join(compressed)
    header = PatchHeader(flags=FLAG_NEW_SIGNED if new.layout.trailer.signature else 0,
                         old_size=old.layout.file_size, old_sha256=bytes.fromhex(old.file_sha256()),
                         new_size=new.layout.file_size, new_sha256=bytes.fromhex(new.file_sha256()),
                         segments=tuple(segments), data_size=len(body))
    digest = hashlib.sha256()
    with atomic_file(dest, 0o644) as out:
        for part in (header.pack(), body):
            digest.update(part)
            out.write(part)
        out.write(digest.digest())
    summary.size = len(header.pack()) + len(body) + CHECKSUM_SIZE
    return summary


def _segments(old: FileBundle, new: FileBundle, data, summary: PatchSummary) -> list[Segment]:
    """NEW from its first byte to its last, as copies from OLD, zeros and data."""
    at_old = {(e.sha256, e.size): e.offset for e in old.manifest.entries}
    segments: list[Segment] = []
    position = 0
    start = new.layout.trailer.payload_start
    if start:
        try:
            end = find_stub_end(data, start, new.manifest.stub_sha256, str(new.path))
        except CoverageError as exc:
            raise BuildError(None, str(exc)) from None
        same_stub = bool(old.layout.trailer.payload_start) and old.manifest.stub_sha256 == new.manifest.stub_sha256
        _add(segments, Segment(COPY, end, 0) if same_stub else Segment(DATA, end))
        position = end
    for entry in sorted(new.manifest.entries, key=lambda e: e.offset):
        _add(segments, Segment(ZERO, entry.offset - position))
        source = at_old.get((entry.sha256, entry.size))
        if source is None:
            _add(segments, Segment(DATA, entry.size))
            summary.changed.append(entry.name)
            summary.changed_bytes += entry.size
        else:
            _add(segments, Segment(COPY, entry.size, source))
        position = entry.offset + entry.size
    _add(segments, Segment(ZERO, new.layout.trailer.manifest_offset - position))
    _add(segments, Segment(DATA, new.layout.file_size - new.layout.trailer.manifest_offset))  # manifest, trailer, cookie
    summary.copied_bytes = sum(s.length for s in segments if s.kind == COPY)
    return segments


def _add(segments: list[Segment], segment: Segment) -> None:
    """Append, merging with the previous segment where one would do."""
    if not segment.length:
        return
    last = segments[-1] if segments else None
    if last is not None and last.kind == segment.kind and (
            segment.kind != COPY or last.old_offset + last.length == segment.old_offset):
        segments[-1] = Segment(last.kind, last.length + segment.length, last.old_offset)
    else:
        segments.append(segment)
