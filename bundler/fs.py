"""Files and folders that appear whole or not at all, and the one sha256 of a file.

Everything the builder writes for others to read (executables, caches, reports) goes through a
temporary name in the destination's own folder and one `os.replace`, so a build killed at any
moment leaves either the old artefact or the new one, never half of one; the temporary names come
from bundler/leftovers.py, so the next build removes what a killed one left.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from bundler.leftovers import temp_prefix


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(dest: str | Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file handle whose contents become `dest` (fsynced, with `mode`) when the block ends
    without an error; on an error nothing is left behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(prefix=temp_prefix(f".{dest.name}"), suffix=".part", dir=dest.parent,
                                         delete=False)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, mode)
        os.replace(handle.name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)
        raise


def write_atomic(dest: str | Path, data: bytes | str, mode: int = 0o644) -> None:
    with atomic_file(dest, mode) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_folder(dest: str | Path) -> Iterator[Path]:
    """An empty work folder beside `dest` that replaces `dest` (if any) when the block ends without an
    error; on an error it is removed and `dest` is left as it was."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=temp_prefix(f".{dest.name}"), suffix=".part", dir=dest.parent))
    try:
        yield work
        replace_folder(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def replace_folder(new: Path, dest: Path) -> None:
    """Put folder `new` in the place of `dest`: the old one is moved aside first, so `dest` is never
    missing a part."""
    if dest.exists():
        old = dest.with_name(temp_prefix(f".{dest.name}") + "old")
        os.replace(dest, old)
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dest)
