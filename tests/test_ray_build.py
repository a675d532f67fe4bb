"""Building the index on a Ray cluster writes the index the local build writes."""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

from bundler.errors import BuildError
from bundler.index import build_index, document_key, read_vectors, vectors_folder
from bundler.ingest import find_documents
from bundler.chunking import ChunkingConfig
from bundler.ingest import DEFAULT_MAX_FILE_BYTES
from runtime import layout

IDENTICAL = [layout.SETTINGS, layout.CHUNKS, layout.CHUNK_OFFSETS, layout.BM25_VOCAB, layout.BM25_INDPTR,
             layout.BM25_DOC_IDS, layout.BM25_WEIGHTS]


def write_documents(folder: Path) -> Path:
    folder.mkdir()
    (folder / "pumps.md").write_text("# Pumps\n\nPrime the coolant pump before starting it.\n\n"
                                     "## Seals\n\nReplace worn seals every year; a dripping seal wastes coolant.\n")
    (folder / "radio.txt").write_text("Radio\n\nThe antenna mast must be grounded.\n\n" + "Check the coax. " * 120)
    (folder / "solar.rst").write_text("Solar\n=====\n\nClean the panels monthly.\n\nCheck the charge controller fuses.\n")
    (folder / "notes.txt.gz").write_bytes(gzip.compress(b"Winter notes\n\nDrain the water lines before frost.\n"))
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return folder


def fresh_cache(folder: Path, embedder) -> Path:
    (folder / "embedder").mkdir(parents=True)
    (folder / "embedder" / embedder.key).symlink_to(embedder.folder.resolve())
    return folder


@pytest.mark.slow
def test_index_built_on_a_two_worker_ray_cluster_matches_the_local_build(tmp_path, shared_embedder):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    docs = write_documents(tmp_path / "docs")
    local_cache, ray_cache = fresh_cache(tmp_path / "local-cache", shared_embedder), fresh_cache(tmp_path / "ray-cache", shared_embedder)
    local = build_index(docs, tmp_path / "local", local_cache)
    from bundler.ray_build import LOCAL, connect

    connect(LOCAL, cpus=2)  # a local cluster of two worker CPUs, with this checkout's code
    try:
        remote = build_index(docs, tmp_path / "ray", ray_cache, ray=LOCAL)
    finally:
        ray.shutdown()

    assert remote.parsed == local.parsed == 4 and remote.embedded == local.embedded == 4
    assert remote.chunks_embedded == local.chunks_embedded and [s.path for s in remote.skipped] == ["picture.png"]
    for name in IDENTICAL:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    for source in find_documents(docs).found:
        key = document_key(source, source.path.read_bytes(), ChunkingConfig(), DEFAULT_MAX_FILE_BYTES)
        mine, theirs = (read_vectors(vectors_folder(cache, shared_embedder.key), key, shared_embedder.key)
                        for cache in (local_cache, ray_cache))
        assert mine.shape == theirs.shape and np.abs(mine - theirs).max() <= 1e-6, source.relative
    vectors = [np.load(tmp_path / side / layout.DENSE_VECTORS) * np.load(tmp_path / side / layout.DENSE_SCALES)[:, None]
               for side in ("local", "ray")]
    assert np.abs(vectors[0] - vectors[1]).max() <= 1e-6


def test_ray_option_without_ray_installed_is_one_clear_build_error(tmp_path, monkeypatch, index_cache):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(BuildError, match=r"--ray needs Ray .*pip install -e '\.\[ray\]'") as error:
        build_index(write_documents(tmp_path / "docs"), tmp_path / "out", index_cache, ray="local")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out" / "index").exists()
