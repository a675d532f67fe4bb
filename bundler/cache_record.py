"""What a cached artefact carries so that it is trusted again only as it was made.

Each cached folder (runtime stub, exported model with its quality report, embedder) holds a record:
the sha256 of every file in it and the hash of the code that made it. A folder whose record is
missing, names other code, or does not match its files byte for byte is not reused: the build
makes it again. A changed or truncated file in the cache therefore costs time, never correctness.
"""
from __future__ import annotations

import json
from pathlib import Path

from bundler.fs import sha256_file

RECORD = "cache-record.json"


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != RECORD)


def write_record(folder: Path, code: str) -> None:
    """Record `folder`'s files (all of them, recursively) and `code`, the hash of what made them."""
    files = {name: sha256_file(folder / name) for name in _files(folder)}
    (folder / RECORD).write_text(json.dumps({"code": code, "files": files}, indent=1, sort_keys=True))


def record_matches(folder: Path, code: str) -> bool:
    """True when `folder` holds exactly the files its record names, with those hashes, made by `code`."""
    try:
        record = json.loads((folder / RECORD).read_text())
        files = record["files"]
        if record["code"] != code or not isinstance(files, dict) or sorted(files) != _files(folder):
            return False
        return all(sha256_file(folder / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False
