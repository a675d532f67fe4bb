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



def _tensors(folder) -> tuple[list, dict]:
    """(nodes, {initializer name: its bytes}) of folder/model.onnx, reading external data by offset;
    the compact graph's placeholders (computed at run time) by their recipe entry instead."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    data = (folder / "model.onnx.data").read_bytes()
    values = {}
    for tensor in model.graph.initializer:
        external = {e.key: e.value for e in tensor.external_data}
        if not external:
            values[tensor.name] = numpy_helper.to_array(tensor).tobytes()
        elif external["location"] == "model.onnx.data":
            start = int(external["offset"])
            values[tensor.name] = data[start:start + int(external["length"])]
        else:
            values[tensor.name] = (external["location"], external["offset"], external["length"])
    return [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node], values


def test_streamed_compact_k_quant_export_holds_what_saving_the_graph_built_in_memory_holds(tmp_path):
    from bundler.fused_export import save_model, save_streamed
    from bundler.fused_graph import QuantizationPlan, build_graph
    from bundler.llama_weights import load_llama
    from runtime.kquant_expand import DATA_FILE as HEADS_FILE, RECIPE_FILE
    from tests.gguf_files import write_typed_gguf

    path = write_typed_gguf(tmp_path / "q4km.gguf", {"token_embd": "Q6_K", "attn_v": "Q6_K", "ffn_down": "Q6_K",
                                                     "attn": "Q4_K", "ffn": "Q4_K"})
    weights = load_llama(path)
    plan = QuantizationPlan("gguf-exact")
    folders = {label: tmp_path / label for label in ("in-memory", "streamed")}
    for folder in folders.values():
        folder.mkdir()
    save_model(build_graph(weights, plan, compact=True), folders["in-memory"])
    save_streamed(lambda external: build_graph(weights, plan, compact=True, external=external), folders["streamed"])

    for name in (RECIPE_FILE, HEADS_FILE):  # the K-quant heads and the recipe the runtime expands
        assert (folders["streamed"] / name).read_bytes() == (folders["in-memory"] / name).read_bytes(), name
    streamed_nodes, streamed = _tensors(folders["streamed"])
    nodes, expected = _tensors(folders["in-memory"])
    assert streamed_nodes == nodes
    assert streamed == expected
