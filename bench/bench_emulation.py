"""The glibc-2.31 aarch64 build under qemu user emulation: logits, start, RSS, decode (issue 11).

For one model (default: SmolLM2-135M-Instruct Q4_1) and one small docs folder:
- stages it for linux-aarch64 twice, with the fused-portable graph (the target's default) and with
  optimum's graph in int4 (the reference; its int8 needs onnxruntime 1.22), and once for
  linux-x86_64 (the fused graph), through the builder's own caches; packages the two aarch64
  executables;
- logits: the runtime's decoder inside the emulated root's Python (the stub's onnxruntime 1.19.2)
  on the fused-portable folder against this host's decoder on the x86_64 fused folder, one prompt
  plus one greedy step; max abs difference;
- start: wall time of `EXE verify --quick` under emulation (trailer, manifest, model session);
- peak RSS: of an `EXE ask` under emulation (qemu's own memory included), no network (unshare -n);
- decode tok/s of each graph under the same emulation, and their ratio (a proxy for a board:
  emulated absolute speed says nothing about one).

Needs root and the emulated bullseye root (made by the first aarch64 build). Minutes per run.

Usage: python bench/bench_emulation.py [--model FILE.gguf] [--tokens 16] [--threads 2] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from bench_record import BenchRecord  # noqa: E402

from bundler.model_source import default_model_path  # noqa: E402
from bundler.package import package  # noqa: E402
from bundler.pipeline import DEFAULT_CACHE, BuildConfig, stage  # noqa: E402
from bundler.stub_chroot import chroot_python_command, rootfs_command, rootfs_path  # noqa: E402
from runtime.bundle import MANIFEST_NAME  # noqa: E402
from targets import load_target  # noqa: E402

ARM = "linux-aarch64"
DOCS = {"pumps/coolant-pump.md": "# Coolant pump P-7\n\nThe coolant pump P-7 is primed by opening bleed valve V12 "
                                 "for thirty seconds while the pump runs at idle speed.\n"}
QUESTION = "How is the coolant pump P-7 primed?"

# Run by this host's Python and by the emulated root's: logits of a prompt plus one greedy step
# (saved), then decode speed over `tokens` greedy steps after a fresh prefill.
PROBE = """
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from runtime.bundle import DirectoryBundle
from runtime.decoder import load_decoder
staging, out, tokens, threads = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
prompt = [int(t) for t in sys.argv[6].split(",")]
decoder = load_decoder(DirectoryBundle(__import__("pathlib").Path(staging)), threads=threads, max_length=256)
logits = decoder.forward(prompt)
step = decoder.forward([int(logits[-1].argmax())])
np.save(out, np.concatenate([logits, step])[-2:])
decoder.reset()
started = time.perf_counter()
last = decoder.forward(prompt, rows=1)[-1]
prefill = time.perf_counter() - started
started = time.perf_counter()
for _ in range(tokens):
    last = decoder.forward([int(last.argmax())], rows=1)[-1]
decode = time.perf_counter() - started
print(json.dumps({"prefill_s": prefill, "decode_tok_s": tokens / decode}))
"""
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712,
          8182, 2, 198, 1, 4093, 198, 2683, 314, 260, 1922, 17730, 340, 30, 2]


def run_measured(command: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float, int]:
    """(result, wall seconds, peak RSS in bytes of the command's largest process, by GNU time)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *command], capture_output=True,
                              text=True, timeout=timeout)
        wall = time.perf_counter() - started
        return done, wall, int(rss.read().split()[-1]) * 1024


def probe(prefix: list[str], staging: Path, out: Path, tokens: int, threads: int) -> dict:
    command = prefix + ["-c", PROBE, str(REPO_ROOT), str(staging), str(out), str(tokens), str(threads),
                        ",".join(map(str, PROMPT))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"probe failed on {staging}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def emulated(root: Path, folder: Path, argv: list[str]) -> list[str]:
    """argv inside the emulated root with no network (unshare -n), `folder` mounted."""
    return ["unshare", "-n", *rootfs_command(root, ["/usr/bin/env", "-i", "HOME=/tmp", *argv], binds=(folder,))]


def main() -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a .gguf file (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--tokens", type=int, default=16, help="greedy decode steps timed per graph")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of the decoders")
    parser.add_argument("--work", type=Path, default=None, help="keep staging folders and executables here")
    args = parser.parse_args()
    model = args.model or default_model_path()
    arm = load_target(ARM)
    root = rootfs_path(arm, DEFAULT_CACHE / "stubs")
    if os.geteuid() != 0 or not root.is_dir():
        raise SystemExit(f"needs root and the emulated root {root} (made by the first {ARM} build)")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-emulation-"))
    docs = work / "docs"
    for name, text in DOCS.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text)

    with BenchRecord("emulation", {**vars(args), "model": model.name}) as record:
        staged = {}
        # optimum's graph in int4: its int8 export uses 8-bit MatMulNBits, which 1.19.2 lacks (the build refuses
        # it); requantized to int4 it fails the quality gate, so the gate is lifted for this speed reference
        # and its perplexity ratio recorded.
        for label, target, graph, quantization in (("portable", ARM, "fused-portable", None),
                                                   ("optimum", ARM, "optimum", "int4"),
                                                   ("x86_64", "linux-x86_64", None, None)):
            staging = work / f"staging-{label}"
            if not (staging / "model").is_dir():
                config = BuildConfig(model=model, docs=docs, output=work / label, target=target, graph=graph,
                                     quantization=quantization, cache_dir=DEFAULT_CACHE,
                                     max_ppl_ratio=float("inf") if label == "optimum" else BuildConfig.max_ppl_ratio)
                stage(config, staging)
            staged[label] = staging
            info = json.loads((staging / MANIFEST_NAME).read_text())["model"]
            record.figures.setdefault("graphs", {})[label] = {
                "graph": info["graph"], "quantization": info["quantization"],
                "ppl_ratio": info["quality"]["ratio"]}

        arm_python = chroot_python_command(arm, DEFAULT_CACHE / "stubs", (REPO_ROOT, work))
        figures = {}
        for label in ("portable", "optimum"):
            figures[label] = probe(arm_python, staged[label], work / f"logits-{label}.npy", args.tokens, args.threads)
        probe([sys.executable], staged["x86_64"], work / "logits-x86_64.npy", 1, args.threads)
        reference = np.load(work / "logits-x86_64.npy")
        record.figures["max_abs_logit_difference_portable_aarch64_vs_fused_x86_64"] = float(
            np.abs(np.load(work / "logits-portable.npy") - reference).max())
        record.figures["max_abs_logit_difference_optimum_aarch64_vs_fused_x86_64"] = float(
            np.abs(np.load(work / "logits-optimum.npy") - reference).max())

        for label in ("portable", "optimum"):
            executable = work / f"station-{label}"
            if not executable.is_file():
                package(staged[label], arm, executable, DEFAULT_CACHE / "stubs")
            done, start_s, _ = run_measured(emulated(root, work, [str(executable), "verify", "--quick"]), 900)
            if done.returncode != 0:
                raise SystemExit(f"{executable} verify --quick failed: {done.stderr.strip()}")
            done, ask_s, rss = run_measured(emulated(root, work, [str(executable), "ask", QUESTION,
                                                                  "--max-tokens", str(args.tokens)]), 1800)
            if done.returncode != 0:
                raise SystemExit(f"{executable} ask failed: {done.stderr.strip()}")
            figures[label].update(start_s=round(start_s, 1), ask_s=round(ask_s, 1), ask_peak_rss_mb=round(rss / 1e6),
                                  cites_the_file="pumps/coolant-pump.md" in done.stdout.partition("Sources:")[2],
                                  executable_mb=round(executable.stat().st_size / 1e6, 1))
        record.figures.update(figures)
        record.figures["decode_ratio_portable_to_optimum"] = (figures["portable"]["decode_tok_s"]
                                                              / figures["optimum"]["decode_tok_s"])
        print(json.dumps(record.figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
