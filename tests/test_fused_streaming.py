"""The fused export streams each initializer into model.onnx.data as it is made (memory holds one
layer, not the model): the file it writes is the graph built in memory, node for node, byte for byte."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def test_streamed_export_holds_the_same_nodes_and_weights_as_the_graph_built_in_memory(tiny_gguf, tmp_path):
    from bundler.fused_export import DATA_FILE, MODEL_FILE, build_fused_model, save_model
    from bundler.fused_graph import EXTERNAL_ALIGN, QuantizationPlan, build_graph
    from bundler.llama_weights import load_llama

    build_fused_model(tiny_gguf, "gguf-exact", tmp_path / "streamed")
    in_memory = tmp_path / "in-memory"
    in_memory.mkdir()
    save_model(build_graph(load_llama(tiny_gguf), QuantizationPlan("gguf-exact")), in_memory)

    streamed = onnx.load(str(tmp_path / "streamed" / "model" / MODEL_FILE))
    reference = onnx.load(str(in_memory / MODEL_FILE))
    assert [(n.op_type, list(n.input), list(n.output)) for n in streamed.graph.node] == \
           [(n.op_type, list(n.input), list(n.output)) for n in reference.graph.node]
    got = {t.name: numpy_helper.to_array(t) for t in streamed.graph.initializer}
    expected = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer}
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name

    # every large initializer lives in the data file, at a page-aligned offset
    external = onnx.load(str(tmp_path / "streamed" / "model" / MODEL_FILE), load_external_data=False)
    offsets = [int(e.value) for t in external.graph.initializer for e in t.external_data if e.key == "offset"]
    assert offsets and all(offset % EXTERNAL_ALIGN == 0 for offset in offsets)
    assert {e.value for t in external.graph.initializer for e in t.external_data if e.key == "location"} == {DATA_FILE}
