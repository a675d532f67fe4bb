"""Packaging fixtures: a small synthetic staging folder and the host runtime stub (built once, cached)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bundler.pipeline import DEFAULT_CACHE
from runtime.bundle import MANIFEST_NAME
from runtime.manifest import BuildInfo, IndexInfo, Manifest, ModelInfo

REPO_ROOT = Path(__file__).resolve().parent.parent
STUB_CACHE = DEFAULT_CACHE / "stubs"
EMBED_DIM = 256


def make_staging(root: Path, weight_bytes: int = 4 << 20, seed: int = 0) -> Path:
    """A staging folder shaped like a real one: an ONNX model whose weights are external data,
    index arrays and chunk records. The model is one Gather (an embedding lookup): onnxruntime
    does not prepack it, so its weights stay exactly where the file mapping puts them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows = max(1, weight_bytes // (EMBED_DIM * 4))
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((rows, EMBED_DIM), dtype=np.float32)
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "index").mkdir(parents=True, exist_ok=True)
    data_name = "model.onnx.data"
    # a leading pad shows that inner offsets are kept relative to the data file
    pad = 4096
    with open(root / "model" / data_name, "wb") as handle:
        handle.write(bytes(pad))
        handle.write(weights.tobytes())
    tensor = numpy_helper.from_array(weights, "embedding")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data_name), ("offset", str(pad)), ("length", str(weights.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embedding", "ids"], ["vectors"])], "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, [None, EMBED_DIM])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, str(root / "model" / "model.onnx"))
    np.save(root / "index" / "vectors.npy", rng.standard_normal((100, 32)).astype(np.float32))
    np.save(root / "index" / "ids.npy", np.arange(100, dtype=np.int64))
    (root / "index" / "chunks.jsonl").write_text("".join(f'{{"id": {i}, "text": "passage {i}"}}\n' for i in range(100)))
    manifest = Manifest(
        model=ModelInfo(name="synthetic-lookup", source="tests", architecture="lookup", graph="plain",
                        quantization="fp32", parameters=int(weights.size), num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=16, hidden_size=EMBED_DIM, vocab_size=rows,
                        context_length=512),
        index=IndexInfo(documents=3, chunks=100, modes=["bm25"]),
        build=BuildInfo(created="2026-01-01T00:00:00+00:00", builder_version="test", host="test", python="3"),
        target="host",
    )
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return root


def expected_rows(root: Path, ids: list[int]) -> np.ndarray:
    data = np.fromfile(root / "model" / "model.onnx.data", dtype=np.float32, offset=4096)
    return data.reshape(-1, EMBED_DIM)[ids]


@pytest.fixture(scope="session")
def synthetic_staging(tmp_path_factory) -> Path:
    return make_staging(tmp_path_factory.mktemp("staging"))


@pytest.fixture(scope="session")
def host_stub() -> Path:
    """The host runtime stub, cached under .cache/stubs by its key (sources, deps, recipe, target)."""
    from bundler.stub import build_stub
    from targets import host_target

    return build_stub(host_target(), STUB_CACHE)


@pytest.fixture(scope="session")
def host_bundle(synthetic_staging, host_stub, tmp_path_factory) -> Path:
    from bundler.package import package
    from targets import host_target

    dest = tmp_path_factory.mktemp("dist") / "station"
    return package(synthetic_staging, host_target(), dest, STUB_CACHE)


AARCH64_DOCS = {
    "pumps/coolant-pump.md": (
        "# Coolant pump P-7\n\n"
        "The coolant pump P-7 is primed by opening bleed valve V12 for thirty seconds\n"
        "while the pump runs at idle speed. Close V12 when coolant flows without bubbles.\n"
    ),
    "radio/antenna.md": "# Antenna alignment\n\nPoint the high-gain antenna at azimuth 212 degrees before the evening pass.\n",
}


@pytest.fixture(scope="session")
def aarch64_bundle(tiny_gguf, tmp_path_factory) -> Path:
    """The tiny GGUF and two documents, built for linux-aarch64 (stub from the emulated bullseye root)
    with the target's defaults: the fused-portable graph and the GGUF's exact blocks."""
    from bundler.pipeline import BuildConfig, build

    docs = tmp_path_factory.mktemp("aarch64-docs")
    for name, text in AARCH64_DOCS.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text)
    out = tmp_path_factory.mktemp("aarch64-dist") / "station-arm64"
    return build(BuildConfig(model=tiny_gguf, docs=docs, output=out, target="linux-aarch64",
                             cache_dir=DEFAULT_CACHE)).executable


@pytest.fixture(scope="session")
def aarch64_python():
    """binds -> command prefix running the linux-aarch64 stub's Python (onnxruntime 1.19.2) under qemu,
    with those host folders mounted at the same paths. The root and its venv are the stub build's."""
    from bundler.errors import BuildError
    from bundler.progress import no_progress
    from bundler.stub_chroot import QEMU_BINFMT, chroot_python_command, ensure_rootfs, ensure_stub_environment
    from targets import load_target

    target = load_target("linux-aarch64")
    try:
        root = ensure_rootfs(target, STUB_CACHE, no_progress)
    except BuildError as exc:
        pytest.skip(f"no emulated aarch64 root: {exc}")
    if not Path("/proc/sys/fs/binfmt_misc", QEMU_BINFMT[target.arch]).exists():
        pytest.skip("qemu-aarch64 is not registered with binfmt_misc (apt-get install qemu-user-static)")
    ensure_stub_environment(root, target, no_progress)
    return lambda binds: chroot_python_command(target, STUB_CACHE, tuple(binds))
