"""The builder's long steps report progress from their start to their end (a 3B model's hash and
embedding take half a minute each), and the model's weights are read for hashing once per build."""
from __future__ import annotations

import hashlib


def _recorder():
    calls = []
    return calls, lambda step, done, total: calls.append((step, done, total))


def test_fingerprint_reports_progress_in_mb_and_reads_the_weights_only_once(tiny_llama_dir):
    from bundler.model_source import HASH_STEP, resolve_model

    source = resolve_model(tiny_llama_dir)
    calls, progress = _recorder()
    first = source.fingerprint(progress)
    again_calls, again = _recorder()
    assert source.fingerprint(again) == first
    assert again_calls == []  # remembered: the cache key and the manifest ask for it

    files = sorted(tiny_llama_dir.glob("*.json")) + sorted(tiny_llama_dir.glob("*.safetensors"))
    expected = hashlib.sha256()
    for path in files:
        expected.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).hexdigest().encode())
    assert first == expected.hexdigest()
    total = -(-sum(p.stat().st_size for p in files) // (1 << 20))
    assert calls[0] == (HASH_STEP, 0, total) and calls[-1] == (HASH_STEP, total, total)
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)


def test_a_gguf_fingerprint_is_the_files_sha256(tiny_gguf):
    from bundler.model_source import resolve_model

    assert resolve_model(tiny_gguf).fingerprint() == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()


def test_fused_export_progress_counts_the_embedding_each_layer_and_the_write(tiny_gguf, tmp_path):
    from bundler.fused_export import STEP, build_fused_model
    from bundler.model_source import resolve_model

    source = resolve_model(tiny_gguf)
    calls, progress = _recorder()
    build_fused_model(source, "gguf-exact", tmp_path, progress)
    steps = 2 + source.spec.num_layers  # embedding, each layer, writing the file
    graph_calls = [c for c in calls if c[0] == STEP]
    assert [done for _, done, _ in graph_calls] == list(range(steps + 1))
    assert {total for _, _, total in graph_calls} == {steps}
    assert (tmp_path / "model" / "model.onnx").is_file()
