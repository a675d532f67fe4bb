"""The offline promise at the process level: onnxruntime's telemetry never starts, in the builder or the runtime."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Run an onnxruntime session the way each side of the product imports it.
PROBE = """
import {first}
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
session = ort.InferenceSession(helper.make_model(graph).SerializeToString())
print(session.run(None, {{"x": np.ones(1, np.float32)}})[0][0])
"""


@pytest.mark.parametrize("first", ["runtime.bundle", "bundler.index", "targets", "bench_record"])
def test_loading_onnxruntime_through_the_product_leaves_no_telemetry_files(first, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": f"{REPO}:{REPO / 'bench'}", "ORT_DISABLE_TELEMETRY": "0"}
    done = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1.0"
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


@pytest.mark.parametrize("script", sorted((REPO / "bench").glob("bench_*.py")), ids=lambda p: p.name)
def test_every_benchmark_imports_the_product_before_onnxruntime(script):
    """A benchmark that imported onnxruntime first would write a device id and an event queue."""
    product = ("bench_record", "runtime", "bundler", "targets")
    for node in ast.walk(ast.parse(script.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for name in names:
            root = name.split(".")[0]
            if root in product:
                return
            assert root != "onnxruntime", f"{script.name} imports onnxruntime before the product"
