"""Whole-model check of the KV cache precision: the same fused graph with a float32 and a float16 cache
(the graph's past/present types rewritten; weights shared through the model folder), WikiText-2
perplexity with each window fed through the cache in chunks (so attention reads the stored keys and
values), and the largest logit difference (docs/MEASUREMENTS.md#kv-cache-precision).

    python bench/probe_kv_precision.py MODEL_DIR [--windows 4] [--context 512] [--chunk 64]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_record  # noqa: F401,E402  (telemetry off before onnxruntime loads)
import bench_fused  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from runtime.fused_decoder import FusedDecoder, session_options  # noqa: E402
from runtime.tokenizer import ChatTokenizer  # noqa: E402


def decoder(model_dir: Path, cache_type: int, max_length: int) -> FusedDecoder:
    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.elem_type = cache_type
    options = session_options(2)
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(model_dir))
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    keys = [i for i in session.get_inputs() if i.name.startswith("past_key_values.") and i.name.endswith(".key")]
    _, kv_heads, _, head_dim = keys[0].shape
    return FusedDecoder(session, len(keys), kv_heads, head_dim, max_length)


def window_logits(dec: FusedDecoder, window: list[int], chunk: int) -> np.ndarray:
    dec.reset()
    return np.concatenate([dec.forward(window[i:i + chunk]) for i in range(0, len(window), chunk)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=Path, default=bench_fused.DEFAULT_DATA)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=64)
    args = parser.parse_args()
    ids = bench_fused.wiki_ids(args.data, ChatTokenizer.from_folder(args.model_dir), args.windows * args.context)
    result = {}
    reference = None
    for label, cache_type in (("float32", onnx.TensorProto.FLOAT), ("float16", onnx.TensorProto.FLOAT16)):
        dec = decoder(args.model_dir, cache_type, args.context)
        nll, count, diff = 0.0, 0, 0.0
        for w, start in enumerate(range(0, args.windows * args.context, args.context)):
            window = ids[start:start + args.context]
            logits = window_logits(dec, window, args.chunk)
            if reference is None or len(reference) <= w:
                reference = (reference or []) + [logits]
            else:
                diff = max(diff, float(np.abs(logits - reference[w]).max()))
            logits = logits[:-1].astype(np.float64)
            logits -= logits.max(axis=-1, keepdims=True)
            norm = np.log(np.exp(logits).sum(axis=-1))
            nll += float(np.sum(norm - logits[np.arange(len(window) - 1), window[1:]]))
            count += len(window) - 1
        result[label] = {"ppl": math.exp(nll / count), "tokens": count, "max_abs_logit_diff": diff}
        del dec
    print(json.dumps(result))


if __name__ == "__main__":
    main()
