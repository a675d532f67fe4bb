"""What a cached artefact carries so that it is trusted again only as it was made.

Each cached folder (runtime stub, exported model with its quality report, embedder) holds a record:
the sha256 of every file in it and the hash of the code that made it. A folder whose record is
missing, names other code, or does not match its files byte for byte is not reused: the build
makes it again. A changed or truncated file in the cache therefore costs time, never correctness.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

from bundler.leftovers import temp_prefix

RECORD = "cache-record.json"
BUNDLER_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def code_digest(names: tuple[str, ...]) -> str:
    """sha256 over the named modules of bundler/ (a folder stands for its .py files), names and bytes."""
    digest = hashlib.sha256()
    for name in names:
        path = BUNDLER_DIR / name
        for module in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            digest.update(module.relative_to(BUNDLER_DIR).as_posix().encode())
            digest.update(module.read_bytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != RECORD)


def write_record(folder: Path, code: str) -> None:
    """Record `folder`'s files (all of them, recursively) and `code`, the hash of what made them."""
    files = {name: file_sha256(folder / name) for name in _files(folder)}
    (folder / RECORD).write_text(json.dumps({"code": code, "files": files}, indent=1, sort_keys=True))


def record_matches(folder: Path, code: str) -> bool:
    """True when `folder` holds exactly the files its record names, with those hashes, made by `code`."""
    try:
        record = json.loads((folder / RECORD).read_text())
        files = record["files"]
        if record["code"] != code or not isinstance(files, dict) or sorted(files) != _files(folder):
            return False
        return all(file_sha256(folder / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def replace_folder(new: Path, dest: Path) -> None:
    """Put `new` at `dest`, moving a previous folder there aside first: readers of the old one see
    it vanish at one instant, never half removed."""
    aside = dest.with_name(temp_prefix(f".{dest.name}") + "old")
    try:
        os.replace(dest, aside)
    except FileNotFoundError:
        pass
    os.replace(new, dest)
    shutil.rmtree(aside, ignore_errors=True)
