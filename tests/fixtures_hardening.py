"""Hardening fixtures: the hostile corpus indexed once, a bare payload file to tamper with."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bundler.isolated_parse import ParseLimits

# Generous for a 2-core CI machine shared with other jobs; a hang is cut here, not by the test.
CORPUS_PARSE_LIMITS = ParseLimits(time_s=30.0, memory_bytes=1 << 30)


@pytest.fixture(scope="session")
def hostile_build(tmp_path_factory):
    """(kinds, IndexResult, staging): the generated corpus indexed once (BM25 only: parsing is what is tested)."""
    from bundler.index import build_index
    from tests.hostile_corpus import generate

    root = tmp_path_factory.mktemp("hostile")
    kinds = generate(root / "docs")
    result = build_index(root / "docs", root / "staging", root / "cache", modes=("bm25",), limits=CORPUS_PARSE_LIMITS)
    return kinds, result, root / "staging"


@pytest.fixture(scope="session")
def bare_payload(synthetic_staging, tmp_path_factory) -> Path:
    """A payload file without a stub (about 4 MB): the cheap subject of most tamper checks."""
    from bundler.package import write_payload_file

    return write_payload_file(synthetic_staging, tmp_path_factory.mktemp("payload") / "station.payload")


def flip_byte(path: Path, offset: int, mask: int) -> int:
    """XOR one byte in place (a negative offset counts from the end); returns the original value."""
    with open(path, "r+b") as handle:
        handle.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        original = handle.read(1)[0]
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([original ^ mask]))
    return original


def restore_byte(path: Path, offset: int, value: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes([value]))


def copy_to(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(path, folder / path.name))
