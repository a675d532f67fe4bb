"""One model description, read once and checked before any work: a bad shape names the file."""
from __future__ import annotations

import json
import shutil

import pytest

from bundler.errors import BuildError
from bundler.model_source import resolve_model
from bundler.model_spec import spec_from_hf_config

LLAMA = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 256,
         "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64}}


def test_a_llama_3_config_reads_into_one_spec():
    spec = spec_from_hf_config(LLAMA, "config.json")
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (2, 4, 2, 16)
    assert spec.inverse_frequencies().shape == (8,)


@pytest.mark.parametrize("change, problem", [
    ({"num_key_value_heads": 3}, "4 attention heads are not a multiple of 3 key/value heads"),
    ({"num_hidden_layers": 0}, "layers must be a positive integer"),
    ({"vocab_size": None}, "wrong value"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn' is not supported"),
    ({"head_dim": 15}, "head size 15 is odd"),
])
def test_an_impossible_shape_is_refused_naming_the_file(change, problem):
    with pytest.raises(BuildError, match=problem) as caught:
        spec_from_hf_config({**LLAMA, **change}, "/models/x/config.json")
    assert str(caught.value).startswith("/models/x/config.json: ")


def test_a_missing_size_is_named():
    config = dict(LLAMA)
    del config["intermediate_size"]
    with pytest.raises(BuildError, match="config has no intermediate_size"):
        spec_from_hf_config(config, "config.json")


def test_a_folder_with_a_bad_shape_is_refused_when_resolved(tiny_llama_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    assert resolve_model(folder).spec.num_layers == config["num_hidden_layers"]
    config["num_key_value_heads"] = config["num_attention_heads"] + 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BuildError, match="key/value heads"):
        resolve_model(folder)


def test_a_gguf_source_carries_the_spec_of_its_metadata(tiny_llama_gguf, tiny_llama_dir):
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    spec = resolve_model(tiny_llama_gguf).spec
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.vocab_size) == (
        config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"], config["vocab_size"])
