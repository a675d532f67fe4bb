"""Atomic files and folders: the destination holds the old artefact or the new one, never a part."""
from __future__ import annotations

import hashlib

import pytest

from bundler.fs import atomic_file, atomic_folder, sha256_file, write_atomic


def test_a_file_appears_whole_with_its_mode_and_a_failed_write_leaves_the_old_one(tmp_path):
    dest = tmp_path / "out" / "station"
    write_atomic(dest, b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(dest, mode=0o755) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("killed")
    assert dest.read_bytes() == b"old"
    with atomic_file(dest, mode=0o755) as handle:
        handle.write(b"new")
    assert dest.read_bytes() == b"new" and dest.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in dest.parent.iterdir()) == ["station"]


def test_a_folder_is_replaced_in_one_step_and_a_failed_one_leaves_nothing(tmp_path):
    dest = tmp_path / "cache" / "model"
    with atomic_folder(dest) as work:
        (work / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_folder(dest) as work:
            (work / "a.txt").write_text("second, unfinished")
            raise RuntimeError("killed")
    assert (dest / "a.txt").read_text() == "first"
    with atomic_folder(dest) as work:
        (work / "b.txt").write_text("third")
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]


def test_sha256_of_a_file_is_hashlibs(tmp_path):
    data = bytes(range(256)) * 40_000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
