"""Drop the weight-file pages a session read once while loading from this process's resident set.

onnxruntime maps external weights and repacks most of them into its own buffers at session start
(MatMulNBits, Gemm): the file pages it read stay mapped and counted in the resident set, beside their
packed copies, until the session ends; the tied embedding's codes, read whole to pack the lm_head,
stay mapped for the lookup, which needs only a few rows per token. madvise(MADV_DONTNEED) on
those mappings unmaps the pages; whatever is still read (the lookup's rows, unpacked tensors) comes
back from the page cache on the next access, with the same bytes (docs/MEASUREMENTS.md#runtime-memory).
Only mappings nothing has written to are touched, so no private copy of a page is ever lost. Call
release_file_pages once a session exists, never while one is being made: a mapping unmapped and its
addresses reused between reading smaps and madvise would lose live memory (tried from a second thread
during session start: heap corruption).

While a session is being made, `paging_out` does the safe half from a second thread: MADV_PAGEOUT only
asks the kernel to reclaim pages, never discards data (a clean file page is read again when next
touched; an anonymous page, should the addresses have been reused, is swapped or, without swap, left
alone), so a stale range costs at most a re-read. The pages onnxruntime has already packed or keeps
only as a reference (MatMulNBits' scales and zero points on x86, the tied embedding's codes) then
leave the resident set during the start, not after it (docs/MEASUREMENTS.md#runtime-memory).

Paging out also drops those pages from the page cache, so what the session still reads in place (the
embedding lookup's rows, from codes, scales and zero points) would come back from the disk, a few
milliseconds per new token. `prefetch_file_pages` asks the kernel to read the files' mapped ranges
back into the page cache (MADV_WILLNEED), without mapping them into the resident set.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import contextlib
import os
import re
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_PAGEOUT = 21  # Linux 5.4+; older kernels answer EINVAL and nothing happens
# Linux reads at most one readahead window (read_ahead_kb, often 128 kB) per MADV_WILLNEED call
# and drops the rest of the range: a mapping is asked for in steps of this many bytes.
PREFETCH_STEP = 128 << 10
PAGEOUT_INTERVAL_S = 0.25
SMAPS = Path("/proc/self/smaps")
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s*(.*)$")


class Mapping(NamedTuple):
    start: int
    end: int
    offset: int  # in the file
    path: str
    anonymous_kb: int  # pages copied on write: they live only here


def _mappings(paths: set[str]) -> Iterator[Mapping]:
    """Each mapping of one of `paths`."""
    current = None
    with open(SMAPS, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            header = _HEADER.match(line)
            if header:
                current = header if header[4] in paths else None
            elif current is not None and line.startswith("Anonymous:"):
                yield Mapping(int(current[1], 16), int(current[2], 16), int(current[3], 16), current[4], int(line.split()[1]))
                current = None


def _paths(targets) -> set[str]:
    paths = set()
    for target in targets:
        target = Path(target).resolve()
        paths |= {str(p) for p in target.rglob("*") if p.is_file()} if target.is_dir() else {str(target)}
    return paths


def _madvise():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise


def _advise(paths: set[str], advice: int, wanted: Callable[[Mapping], bool] = lambda mapping: True,
            step: int = 0) -> int:
    """madvise every mapping of `paths` that `wanted` accepts, `step` bytes at a time (0: at once)."""
    madvise = _madvise()
    covered = 0
    for mapping in list(_mappings(paths)):
        if mapping.anonymous_kb != 0 or not wanted(mapping):  # a page copied on write lives only here
            continue
        chunk = step or mapping.end - mapping.start
        for first in range(mapping.start, mapping.end, chunk):
            length = min(chunk, mapping.end - first)
            if madvise(first, length, advice) == 0:
                covered += length
    return covered


def _supported() -> bool:
    return sys.platform.startswith("linux") and SMAPS.exists()


def release_file_pages(*targets: Path) -> int:
    """Unmap the resident pages of `targets` (files, or every file under folders) that this process
    maps without having modified them; bytes of address space covered. 0 where Linux's smaps and
    madvise are not available."""
    if not _supported():
        return 0
    return _advise(_paths(targets), MADV_DONTNEED)


def prefetch_file_pages(*targets: Path) -> int:
    """Start reading this process's mappings of parts of `targets` into the page cache (asynchronously;
    the resident set does not grow until a page is touched); bytes of address space covered. A mapping
    of a whole file is a reader's view of all of it (a bundle's own), not a tensor onnxruntime maps,
    and is left alone. 0 where Linux's smaps and madvise are not available."""
    if not _supported():
        return 0
    sizes = {}
    for path in _paths(targets):
        with contextlib.suppress(OSError):  # removed since it was listed
            sizes[path] = os.path.getsize(path)

    def part_of_a_file(mapping: Mapping) -> bool:
        return mapping.path in sizes and (mapping.offset > 0 or mapping.end - mapping.start < sizes[mapping.path])

    return _advise(set(sizes), MADV_WILLNEED, part_of_a_file, PREFETCH_STEP)


@contextlib.contextmanager
def paging_out(*targets: Path) -> Iterator[None]:
    """While the body runs (a session being made), a thread asks the kernel every PAGEOUT_INTERVAL_S
    to reclaim this process's resident pages of `targets` (files, or every file under folders; files
    made inside the body are seen too). Never loses data (see the module's docstring)."""
    if not _supported():
        yield
        return
    done = threading.Event()

    def page_out() -> None:
        while not done.wait(PAGEOUT_INTERVAL_S):
            with contextlib.suppress(OSError, ValueError):  # a file removed while listed
                _advise(_paths(targets), MADV_PAGEOUT)

    thread = threading.Thread(target=page_out, name="edgebundle-pageout", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
