"""Reproducible bundles: the same inputs give the same executable, byte for byte."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from bundler.index import build_index
from bundler.pipeline import BuildConfig, build
from runtime import layout
from runtime.bundle import Bundle
from tests.sample_documents import STATION_DOCS, write_docs


def _changed_parts(first: Path, second: Path) -> list[str]:
    a, b = Bundle.open(first).manifest, Bundle.open(second).manifest
    changed = [e.name for e, f in zip(a.entries, b.entries) if e != f]
    return changed + (["manifest"] if a.to_json() != b.to_json() else [])


def test_same_inputs_built_twice_from_empty_caches_in_other_folders_at_other_times_are_identical(
        tiny_llama_dir, host_stub, tmp_path, monkeypatch):
    """Everything from the documents to the payload is rebuilt from empty caches each time: model
    export, quality gate, parsing, embedder export, embeddings, index, payload. The runtime stub is
    the cached one (`runtime_stub`): building it twice costs minutes, so its own reproducibility is
    measured, not tested here (docs/PACKAGING.md)."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    outputs = []
    for name, mtime in (("first", 1_000_000_000), ("second", 1_700_000_000)):
        root = tmp_path / name
        docs = write_docs(root / f"documents-{name}")
        for path in docs.rglob("*"):
            os.utime(path, (mtime, mtime))
        result = build(BuildConfig(model=tiny_llama_dir, docs=docs, output=root / "dist" / f"station-{name}",
                                   quantization="int4", cache_dir=root / "cache", runtime_stub=host_stub))
        assert result.sha256 == hashlib.sha256(result.executable.read_bytes()).hexdigest()
        outputs.append(result)
        time.sleep(1)  # another second on the clock
    first, second = outputs
    assert first.sha256 == second.sha256, f"differs in {_changed_parts(first.executable, second.executable)}"


def test_dense_index_does_not_depend_on_which_documents_the_cache_already_held(tmp_path, index_cache, shared_embedder):
    """The int8 embedder scales activations per batch: batches that mixed cached and new documents
    made a document's vectors depend on what an earlier build had cached."""
    docs = write_docs(tmp_path / "docs")
    build_index(docs, tmp_path / "cold", index_cache)

    warm_cache = tmp_path / "warm-cache"
    (warm_cache / "embedder").mkdir(parents=True)
    (warm_cache / "embedder" / shared_embedder.key).symlink_to(shared_embedder.folder.resolve())
    one = sorted(STATION_DOCS)[0]
    (tmp_path / "one" / Path(one).parent).mkdir(parents=True)
    (tmp_path / "one" / one).write_text(STATION_DOCS[one])
    build_index(tmp_path / "one", tmp_path / "first", warm_cache)
    warm = build_index(docs, tmp_path / "warm", warm_cache)

    assert warm.embedded == len(STATION_DOCS) - 1
    for name in (layout.DENSE_VECTORS, layout.DENSE_SCALES, layout.CHUNKS, layout.BM25_WEIGHTS):
        assert (tmp_path / "cold" / name).read_bytes() == (tmp_path / "warm" / name).read_bytes(), name


def test_info_prints_the_sha256_of_the_whole_file(bare_payload, capsys):
    from runtime import cli

    assert cli.main(["--bundle", str(bare_payload), "info"]) == 0
    digest = hashlib.sha256(bare_payload.read_bytes()).hexdigest()
    assert f"sha256:        {digest} (the whole file, as sha256sum prints it)" in capsys.readouterr().out.splitlines()


def test_build_date_is_source_date_epoch_when_set_and_absent_otherwise(monkeypatch):
    import pytest

    from bundler.errors import BuildError
    from bundler.pipeline import build_date

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert build_date() == ""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert build_date() == "2023-11-14T22:13:20+00:00"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BuildError, match="SOURCE_DATE_EPOCH='yesterday' is not a number"):
        build_date()
