"""The fused graph lowered for onnxruntime 1.19 (the glibc-2.31 aarch64 targets): same blocks, same logits."""
from __future__ import annotations

import subprocess

import numpy as np
import onnx
import pytest
from onnx import helper

from bundler.errors import BuildError
from bundler.fused_export import build_fused_model, save_model
from bundler.fused_graph import QuantizationPlan, build_graph
from bundler.fused_lowering import lower_for_onnxruntime_119
from bundler.llama_weights import load_llama
from bundler.target_ops import check_operators, model_operators
from runtime.bundle import Bundle
from runtime.decoder import load_decoder
from runtime.fused_decoder import FusedDecoder
from targets import load_target
from tests.gguf_files import write_typed_gguf
from tests.fixtures_model import write_model_info
from tests.fixtures_packaging import REPO_ROOT

PROMPT = [1, 17, 230, 5, 99, 3, 42, 7, 250, 64, 12, 300]
TOLERANCE = 1e-3  # max abs on logits
# Every block layout: 4-bit without and with a minimum, 8-bit without and with zero points or a
# minimum, blocks of 16 (Q6_K); each for every matrix, the tied embedding included.
BLOCK_TYPES = ("Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q5_0", "Q5_1", "Q5_K", "Q6_K")


def prompt_then_one_step(model_dir) -> np.ndarray:
    """Logits for the prompt, then for one greedy step through the KV cache."""
    decoder = FusedDecoder.from_model_dir(model_dir, threads=2, max_length=64)
    logits = decoder.forward(PROMPT)
    step = decoder.forward([int(logits[-1].argmax())])
    return np.concatenate([logits, step])


def test_an_8_bit_fused_graph_is_refused_for_the_glibc_2_31_targets_naming_the_operator(tiny_gguf, tmp_path):
    staging = tmp_path / "staging"
    write_model_info(staging, build_fused_model(tiny_gguf, "gguf-exact", staging))
    with pytest.raises(BuildError, match=r"com.microsoft:GatherBlockQuantized, com.microsoft:MatMulNBits \(8-bit\), "
                                         r"which onnxruntime 1.19.2 of target linux-aarch64 does not have "
                                         r"\(build with --graph fused-portable"):
        check_operators(staging, load_target("linux-aarch64"))


def eight_bit_matmuls(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "MatMulNBits"
            and helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits")) == 8]


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_lowered_graph_gives_the_fused_graphs_logits_for_every_block_type(qtype, tmp_path):
    """Float activations (accuracy level 0): the lowering is exact arithmetic, so only summation order
    differs. With int8 activations, a difference of 1e-6 can flip one activation's rounding."""
    weights = load_llama(write_typed_gguf(tmp_path / f"{qtype}.gguf", {"": qtype}))
    plan = QuantizationPlan("gguf-exact", accuracy_level=0)
    fused, portable = tmp_path / "fused", tmp_path / "portable"
    fused.mkdir(), portable.mkdir()
    save_model(build_graph(weights, plan), fused)
    lowered = lower_for_onnxruntime_119(build_graph(weights, plan))
    assert ("com.microsoft", "GatherBlockQuantized") not in {(n.domain, n.op_type) for n in lowered.graph.node}
    assert eight_bit_matmuls(lowered) == []
    save_model(lowered, portable)
    # the same bytes: the 8-bit codes become two 4-bit planes of half the size each
    assert abs((portable / "model.onnx.data").stat().st_size - (fused / "model.onnx.data").stat().st_size) \
        < 0.02 * (fused / "model.onnx.data").stat().st_size
    expected, got = prompt_then_one_step(fused), prompt_then_one_step(portable)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.fixture(scope="module")
def portable_staging(tiny_gguf, tmp_path_factory):
    staging = tmp_path_factory.mktemp("portable-staging")
    write_model_info(staging, build_fused_model(tiny_gguf, "gguf-exact", staging, portable=True))
    return staging


@pytest.fixture(scope="module")
def fused_staging(tiny_gguf, tmp_path_factory):
    staging = tmp_path_factory.mktemp("fused-staging")
    write_model_info(staging, build_fused_model(tiny_gguf, "gguf-exact", staging))
    return staging


def test_portable_staging_passes_the_glibc_2_31_targets_operator_check_and_opens_with_the_fused_decoder(
        portable_staging):
    check_operators(portable_staging, load_target("linux-aarch64"))
    operators = {(domain, op) for domain, op, _ in model_operators(portable_staging / "model" / "model.onnx")}
    assert ("com.microsoft", "GroupQueryAttention") in operators
    bundle = Bundle.open(portable_staging)
    assert bundle.model.graph == "fused-gqa-portable"
    assert bundle.model.weights.startswith("exact GGUF blocks")
    assert isinstance(load_decoder(bundle, threads=2, max_length=64), FusedDecoder)


EMULATED_LOGITS = """
import platform, sys
import numpy as np
import onnxruntime
sys.path.insert(0, sys.argv[1])
from runtime.fused_decoder import FusedDecoder
decoder = FusedDecoder.from_model_dir(sys.argv[2], threads=2, max_length=64)
prompt = [int(t) for t in sys.argv[4].split(",")]
logits = decoder.forward(prompt)
step = decoder.forward([int(logits[-1].argmax())])
np.save(sys.argv[3], np.concatenate([logits, step]))
print(platform.machine(), onnxruntime.__version__)
"""


def test_emulated_aarch64_runtime_gives_the_x86_64_fused_logits(aarch64_python, portable_staging, fused_staging,
                                                                tmp_path):
    """The glibc-2.31 stub's Python and onnxruntime 1.19.2 under qemu, running the runtime's decoder
    on the portable staging folder, against this host's runtime on the fused one."""
    out = tmp_path / "logits.npy"
    command = aarch64_python((REPO_ROOT, portable_staging, tmp_path)) + [
        "-c", EMULATED_LOGITS, str(REPO_ROOT), str(portable_staging / "model"), str(out), ",".join(map(str, PROMPT))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["aarch64", "1.19.2"]
    emulated = np.load(out)
    assert np.abs(emulated - prompt_then_one_step(fused_staging / "model")).max() <= TOLERANCE
