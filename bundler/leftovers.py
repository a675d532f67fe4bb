"""Temporary files and folders that a killed build leaves behind, and their removal by the next one.

Every temporary entry the builder makes in its cache, or next to the executable it writes, is named
with `temp_prefix`: a stem, `.tmp-`, and the id of the process that made it. A later build removes
the entries whose process no longer runs; those of a running process (another build sharing the
cache, whoever started it) are never touched.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_MARK = re.compile(r"\.tmp-(\d+)-")


def temp_prefix(stem: str) -> str:
    """The start of a temporary entry's name (tempfile adds a random part after it)."""
    return f"{stem}.tmp-{os.getpid()}-"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_leftovers(folder: Path, starting: str = "") -> int:
    """Remove the entries of `folder` (names starting with `starting`) left by processes that are
    gone; returns how many."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    for entry in entries:
        mark = _MARK.search(entry.name)
        if mark is None or not entry.name.startswith(starting) or _running(int(mark.group(1))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed += 1
    return removed


def remove_build_leftovers(cache_dir: Path, dest: Path) -> int:
    """Leftovers of killed builds in every folder of the cache that holds temporary entries, and
    half-written executables next to `dest`."""
    index = cache_dir / "index"
    folders = [cache_dir, cache_dir / "models", cache_dir / "stubs", index / "embedder"]
    for parent in (index / "documents", index / "embeddings"):
        folders += [p for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    return sum(remove_leftovers(folder) for folder in folders) + remove_leftovers(dest.parent, f".{dest.name}.")
