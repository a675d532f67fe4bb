"""Memory that fits the board: the context and threads come from the target profile, and the
bundle's resident memory stays inside what the build's budget check approved."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

from runtime.bundle import Bundle
from runtime.manifest import BuildInfo, IndexInfo, Manifest, ModelInfo, TargetInfo
from runtime.memory import DEFAULT_CONTEXT, MB, bundle_context, bundle_threads

# Llama-3.2-1B's shape: it declares 131,072 tokens of context.
LLAMA_1B = ModelInfo("Llama-3.2-1B", "x.gguf", "llama", "fused-gqa", "gguf-exact", 1_235_814_400, 16, 32, 8, 64,
                     2048, 128256, 131072)


def manifest_for(profile_context=None, threads=4) -> Manifest:
    profile = None
    if profile_context is not None:
        profile = TargetInfo("board", "aarch64", "2.31", "1.19.2", "3.9", 4096, threads, profile_context)
    return Manifest(model=LLAMA_1B, index=IndexInfo(0, 0), build=BuildInfo("", "", "", ""), target="board",
                    target_profile=profile)


def test_context_is_the_smallest_of_model_profile_and_request():
    assert bundle_context(manifest_for()) == DEFAULT_CONTEXT == 4096  # no profile: the default, not 131,072
    assert bundle_context(manifest_for(2048)) == 2048
    assert bundle_context(manifest_for(2048), requested=1024) == 1024
    assert bundle_context(manifest_for(2048), requested=8192) == 2048  # --ctx never exceeds what was approved
    small = replace(manifest_for(8192), model=replace(LLAMA_1B, context_length=1024))
    assert bundle_context(small) == 1024


def test_threads_default_from_the_profile_but_never_above_the_cores():
    assert bundle_threads(manifest_for(2048, threads=1)) == 1
    assert bundle_threads(manifest_for(2048, threads=4096)) == os.cpu_count()
    assert bundle_threads(manifest_for(2048, threads=1), requested=3) == 3
    assert bundle_threads(manifest_for()) is None  # no profile: onnxruntime's default


def test_llama_1b_budget_at_the_default_context_fits_a_4gb_board(tmp_path):
    from bundler.budget import estimate
    from targets import load_target

    staging = tmp_path / "staging"
    (staging / "model").mkdir(parents=True)
    with open(staging / "model" / "model.onnx.data", "wb") as handle:
        handle.truncate(1_200_000_000)  # ~ a 1B Q4_K_M carried exactly (sparse: only the size counts)
    board = load_target("linux-aarch64")  # 4 GB, half of it for the bundle
    report = estimate(staging, manifest_for(), board)
    # KV cache: 2 x 16 layers x 8 heads x 64 x 4 bytes = 64 KiB per token of the context, not of 131,072 (8 GB)
    assert report.memory.context == min(board.context, DEFAULT_CONTEXT)
    assert report.memory.kv_cache == 65536 * report.memory.context
    assert report.fits


MEASURE = ("import resource, subprocess, sys\n"
           "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
           "sys.stderr.write(done.stderr)\n"
           "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def test_peak_rss_of_ask_stays_inside_the_budget_the_build_approved(tiny_station_bundle, tmp_path):
    profile = Bundle.open(tiny_station_bundle).manifest.target_profile
    assert profile.memory_mb > 0
    # A fresh process measures only its own descendants: the stub and the Python it starts.
    done = subprocess.run([sys.executable, "-c", MEASURE, "env", "-i", str(tiny_station_bundle), "ask",
                           "How is the coolant pump P-7 primed?", "--max-tokens", "16"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    code, peak_kb = (int(x) for x in done.stdout.split())
    assert code == 0, done.stderr
    assert 0 < peak_kb * 1024 <= profile.memory_mb * MB, (peak_kb // 1024, profile.memory_mb)
