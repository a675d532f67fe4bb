"""Reproducible bundles: the same inputs give the same executable, byte for byte."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from bundler.pipeline import BuildConfig, build
from runtime.bundle import Bundle
from tests.fixtures_station import write_docs


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
