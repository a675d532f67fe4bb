"""The graph registry: one description per graph kind, used by the CLI, the manifest and the runtime,
and cache keys that follow the code that makes a model."""
from __future__ import annotations

import pytest

from bundler import code_digest as code_digest_module
from bundler.code_digest import import_closure
from bundler.errors import BuildError
from bundler.graph_kinds import GRAPH_KINDS, QUANTIZATIONS, choose
from bundler.model_source import ModelSource
from runtime.decoder import IMPLEMENTATIONS

GGUF = ModelSource(path="m.gguf", kind="gguf", architecture="llama", name="m", license="x")
HF = ModelSource(path="m", kind="hf", architecture="llama", name="m", license="x")


def test_every_graph_kind_has_a_runtime_decoder_and_accepts_its_own_defaults():
    for kind in GRAPH_KINDS.values():
        assert kind.manifest_name in IMPLEMENTATIONS
        assert {kind.default_quantization(GGUF), kind.default_quantization(HF)} <= set(kind.quantizations)
        assert set(kind.quantizations) <= set(QUANTIZATIONS)


@pytest.mark.parametrize("onnxruntime, source, expected", [
    ("1.32.0", GGUF, ("fused", "gguf-exact")),
    ("1.32.0", HF, ("fused", "int4")),
    ("1.19.2", GGUF, ("fused-portable", "gguf-exact")),
    ("1.19.2", HF, ("fused-portable", "int4")),
    ("1.17.3", GGUF, ("optimum", "int8")),
])
def test_the_default_is_the_best_graph_the_targets_onnxruntime_runs(onnxruntime, source, expected):
    kind, quantization = choose(source, onnxruntime, None, None)
    assert (kind.name, quantization) == expected


def test_a_quantization_the_graph_cannot_carry_names_the_graph_that_can():
    with pytest.raises(BuildError, match="gguf-exact needs the fused or fused-portable graph, not optimum"):
        choose(GGUF, "1.32.0", "optimum", "gguf-exact")
    with pytest.raises(BuildError, match="unknown graph 'tensorrt'"):
        choose(GGUF, "1.32.0", "tensorrt", None)
    with pytest.raises(BuildError, match="unknown quantization 'int3'"):
        choose(GGUF, "1.32.0", None, "int3")


def test_the_model_cache_key_covers_every_module_the_exporters_import():
    from bundler.pipeline import MODEL_MAKERS

    closure = import_closure(*MODEL_MAKERS)
    for module in ("bundler.fused_graph", "bundler.block_quant", "bundler.gguf_reader", "bundler.export_onnx",
                   "bundler.quality_gate", "runtime.fused_decoder", "runtime.decoder"):
        assert module in closure, module


def test_changing_one_imported_module_changes_the_code_digest(tmp_path, monkeypatch):
    for package in ("bundler", "runtime"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "bundler" / "maker.py").write_text("from runtime import helper\n")
    (tmp_path / "runtime" / "helper.py").write_text("X = 1\n")
    monkeypatch.setattr(code_digest_module, "REPO_ROOT", tmp_path)
    code_digest_module.code_digest.cache_clear()
    before = code_digest_module.code_digest("bundler.maker")
    (tmp_path / "runtime" / "helper.py").write_text("X = 2\n")
    code_digest_module.code_digest.cache_clear()
    assert code_digest_module.code_digest("bundler.maker") != before
    code_digest_module.code_digest.cache_clear()
