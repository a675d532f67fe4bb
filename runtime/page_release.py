"""Drop the weight-file pages a session read once while loading from this process's resident set.

onnxruntime maps external weights and repacks most of them into its own buffers at session start
(MatMulNBits, Gemm): the file pages it read stay mapped and counted in the resident set, beside their
packed copies, until the session ends; the tied embedding's codes, read whole to pack the lm_head,
stay mapped for the lookup, which needs only a few rows per token. madvise(MADV_DONTNEED) on
those mappings unmaps the pages; whatever is still read (the lookup's rows, unpacked tensors) comes
back from the page cache on the next access, with the same bytes (docs/MEASUREMENTS.md#runtime-memory).
Only mappings nothing has written to are touched, so no private copy of a page is ever lost. Call it
once a session exists, never while one is being made: a mapping unmapped and its addresses reused between
reading smaps and madvise would lose live memory (tried from a second thread during session start: heap
corruption).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import re
import sys
from pathlib import Path
from typing import Iterator

MADV_DONTNEED = 4
SMAPS = Path("/proc/self/smaps")
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$")


def _mappings(paths: set[str]) -> Iterator[tuple[int, int, int]]:
    """(start, end, anonymous kB) of each mapping of one of `paths`."""
    current = None
    with open(SMAPS, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            header = _HEADER.match(line)
            if header:
                current = [int(header[1], 16), int(header[2], 16), -1] if header[4] in paths else None
            elif current is not None and line.startswith("Anonymous:"):
                current[2] = int(line.split()[1])
                yield tuple(current)
                current = None


def release_file_pages(target: Path) -> int:
    """Unmap the resident pages of `target` (a file, or every file under a folder) that this process
    maps without having modified them; bytes of address space covered. 0 where Linux's smaps and
    madvise are not available."""
    if not sys.platform.startswith("linux") or not SMAPS.exists():
        return 0
    target = Path(target).resolve()
    paths = {str(p) for p in target.rglob("*") if p.is_file()} if target.is_dir() else {str(target)}
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for start, end, anonymous in list(_mappings(paths)):
        if anonymous != 0:  # a page copied on write lives only here: dropping it would lose it
            continue
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            released += end - start
    return released
