"""KV cache precision in onnxruntime's CPU GroupQueryAttention (float32 activations), one-node graphs:
whether a float16 or int8 cache runs, and how far its outputs move from the float32 cache's after a
40-token prefill and 8 one-token steps (docs/MEASUREMENTS.md#kv-cache-precision).

    python bench/probe_kv_cache.py
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_record  # noqa: F401,E402  (telemetry off before onnxruntime loads)
import numpy as np, onnxruntime as ort
from onnx import helper, TensorProto as T
H, KV, D, L = 8, 2, 64, 64
rng = np.random.default_rng(0)
def session(cache_type, attrs, scales):
    inputs = ["q", "", "", "pk", "pv", "seqlens", "total"]
    ins = [helper.make_tensor_value_info("q", T.FLOAT, [1, "s", (H + 2 * KV) * D]),
           helper.make_tensor_value_info("pk", cache_type, [1, KV, L, D]),
           helper.make_tensor_value_info("pv", cache_type, [1, KV, L, D]),
           helper.make_tensor_value_info("seqlens", T.INT32, [1]),
           helper.make_tensor_value_info("total", T.INT32, [])]
    inits = []
    if scales:
        inputs += ["", "", "", "", "", "ks", "vs"]
        inits = [helper.make_tensor("ks", T.FLOAT, [1], [scales]), helper.make_tensor("vs", T.FLOAT, [1], [scales])]
    node = helper.make_node("GroupQueryAttention", inputs, ["o", "k", "v"], domain="com.microsoft",
                            num_heads=H, kv_num_heads=KV, **attrs)
    outs = [helper.make_tensor_value_info("o", T.FLOAT, None), helper.make_tensor_value_info("k", cache_type, None),
            helper.make_tensor_value_info("v", cache_type, None)]
    m = helper.make_model(helper.make_graph([node], "g", ins, outs, inits),
                          opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
def run(cache_type, np_cache, attrs={}, scales=None):
    s = session(cache_type, attrs, scales)
    k = np.zeros((1, KV, L, D), np_cache); v = k.copy(); outs = []
    r = np.random.default_rng(1)
    steps = [40] + [1] * 8; done = 0
    for n in steps:
        q = r.standard_normal((1, n, (H + 2 * KV) * D)).astype(np.float32)
        o, k, v = s.run(None, {"q": q, "pk": k, "pv": v, "seqlens": np.array([done + n - 1], np.int32),
                               "total": np.array(done + n, np.int32)})
        done += n; outs.append(o[0, -1])
    return np.array(outs)
ref = run(T.FLOAT, np.float32)
for label, args in [("float16", (T.FLOAT16, np.float16)),
                    ("int8 per-tensor scale 4/127", (T.INT8, np.int8, dict(k_quant_type="PER_TENSOR", v_quant_type="PER_TENSOR", kv_cache_bit_width=8), 4 / 127))]:
    try:
        out = run(*args)
        print(f"{label}: max abs error {np.abs(out - ref).max():.2e} (outputs up to {np.abs(ref).max():.2f})")
    except Exception as e:
        print(label, "refused:", str(e).splitlines()[0][:200])
print("onnxruntime", ort.__version__)
