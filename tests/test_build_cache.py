"""The builder's cache cannot be poisoned silently: every cached artefact carries the sha256 of its
content and the hash of the code that made it, and is made again when either does not match. What a
killed build leaves behind is removed by the next build."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from bundler.cache_record import RECORD, record_matches, write_record
from bundler.index import build_index
from tests.fixtures_hardening import flip_byte
from tests.sample_documents import STATION_DOCS, write_docs

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_a_cache_record_matches_only_the_same_files_and_code(tmp_path):
    folder = tmp_path / "artefact"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(b"\x00" * 1000)
    (folder / "info.json").write_text("{}")
    write_record(folder, "code-1")
    assert json.loads((folder / RECORD).read_text())["code"] == "code-1"
    assert record_matches(folder, "code-1")
    assert not record_matches(folder, "code-2")
    flip_byte(folder / "model" / "weights.bin", -1, 0x01)
    assert not record_matches(folder, "code-1")
    write_record(folder, "code-1")
    (folder / "extra.txt").write_text("planted")
    assert not record_matches(folder, "code-1")
    (folder / "extra.txt").unlink()
    (folder / "info.json").unlink()
    assert not record_matches(folder, "code-1")
    assert not record_matches(tmp_path / "missing", "code-1")


def _cached(cache: Path, kind: str, suffix: str) -> list[Path]:
    return sorted((cache / kind).rglob(f"*{suffix}"))


def test_a_changed_cached_document_is_parsed_again_not_trusted(tmp_path, index_cache):
    docs = write_docs(tmp_path / "docs")
    staging = tmp_path / "staging"
    assert build_index(docs, staging, index_cache, modes=("bm25",)).parsed == len(STATION_DOCS)
    entries = _cached(index_cache, "documents", ".json")
    assert len(entries) == len(STATION_DOCS)
    for path in entries:
        path.write_text(path.read_text().replace("valve V12", "valve V99").replace("ninety", "nine"))
    again = build_index(docs, staging, index_cache, modes=("bm25",))
    assert again.parsed == 2  # the two entries that were changed; the antenna entry was untouched
    chunks = (staging / "index" / "chunks.jsonl").read_text()
    assert "valve V12" in chunks and "V99" not in chunks and "every ninety days" in chunks
    assert build_index(docs, staging, index_cache, modes=("bm25",)).parsed == 0


def test_changed_cached_embeddings_are_computed_again_not_trusted(tmp_path, index_cache):
    import numpy as np

    docs = write_docs(tmp_path / "docs")
    staging = tmp_path / "staging"
    build_index(docs, staging, index_cache)
    vectors = _cached(index_cache, "embeddings", ".npy")
    assert len(vectors) == len(STATION_DOCS)
    original = np.load(vectors[0])
    np.save(vectors[0], np.zeros_like(original))   # a well-formed file, poisoned
    again = build_index(docs, staging, index_cache)
    assert (again.parsed, again.embedded) == (0, 1)
    # embedded again (alone, so padded differently from the first batch: equal to float noise)
    assert np.allclose(np.load(vectors[0]), original, atol=0.05) and np.abs(np.load(vectors[0])).max() > 0.05


def test_a_changed_cached_model_export_is_made_again(tiny_llama_dir, tmp_path):
    from bundler.pipeline import BuildConfig, stage

    cache = tmp_path / "cache"
    embedder = REPO_ROOT / ".cache" / "build" / "index" / "embedder"
    if embedder.is_dir():  # the embedder's own record is tested above; here only its time would be spent
        shutil.copytree(embedder, cache / "index" / "embedder")
    config = BuildConfig(model=tiny_llama_dir, docs=write_docs(tmp_path / "docs"), cache_dir=cache)

    def staged_weights(name: str) -> tuple[bool, bytes]:
        result = stage(config, tmp_path / name)
        return result.model_cached, (tmp_path / name / "model" / "model.onnx.data").read_bytes()

    cached_first, weights = staged_weights("first")
    assert not cached_first
    (model,) = (cache / "models").iterdir()
    flip_byte(model / "model" / "model.onnx.data", -1, 0x01)
    assert staged_weights("second") == (False, weights)
    assert staged_weights("third") == (True, weights)


def test_a_cached_runtime_stub_is_reused_only_while_its_record_matches(host_stub):
    from bundler.stub import host_locked_dependencies, stub_key
    from targets import host_target

    key = stub_key(host_target(), host_locked_dependencies())
    assert host_stub.parent.name.endswith(key)
    assert record_matches(host_stub.parent, key)
    assert json.loads((host_stub.parent / RECORD).read_text())["files"].keys() == {"edgebundle-runtime", "stub.json"}



def test_the_next_build_removes_what_killed_builds_left_and_spares_those_of_running_ones(
        tiny_llama_dir, host_stub, tmp_path):
    from bundler.pipeline import BuildConfig, build

    gone = subprocess.Popen(["true"])
    gone.wait()
    running = subprocess.Popen(["sleep", "600"])
    cache, dest = tmp_path / "cache", tmp_path / "out" / "station"
    embedder = REPO_ROOT / ".cache" / "build" / "index" / "embedder"
    if embedder.is_dir():
        shutil.copytree(embedder, cache / "index" / "embedder")

    def temporary(pid: int, folder: Path, stem: str, suffix: str = "") -> Path:
        return folder / f"{stem}.tmp-{pid}-k7w2q{suffix}"   # as tempfile names them after temp_prefix()

    folders = [temporary(gone.pid, cache, "staging"), temporary(gone.pid, cache, "scratch"),
               temporary(gone.pid, cache / "models", "0f3a9c"), temporary(gone.pid, cache / "stubs", "stub"),
               temporary(running.pid, cache, "staging")]
    files = [temporary(gone.pid, cache / "index" / "documents" / "ab", ".ab12.json"),
             temporary(gone.pid, dest.parent, ".station", ".part"), temporary(running.pid, dest.parent, ".station", ".part")]
    for path in folders + files:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path in folders:
            path.mkdir()
        else:
            path.write_bytes(b"half")
    left = [p for p in folders + files if f".tmp-{gone.pid}-" in p.name]
    in_use = [p for p in folders + files if f".tmp-{running.pid}-" in p.name]
    try:
        build(BuildConfig(model=tiny_llama_dir, docs=write_docs(tmp_path / "docs"), output=dest, cache_dir=cache,
                          runtime_stub=host_stub))
    finally:
        running.kill()
        running.wait()
    assert [p for p in left if p.exists()] == []
    assert all(p.exists() for p in in_use)
    assert dest.is_file()
    # nothing of the build's own is left either
    assert sorted(p.name for p in cache.rglob("*.tmp-*") if str(running.pid) not in p.name) == []
