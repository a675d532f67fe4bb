"""Both aarch64 builds under qemu user emulation: logits, start, RSS, decode (issue 11).

For one model (default: SmolLM2-135M-Instruct Q4_1) and one small docs folder, per aarch64 runtime
(bullseye: glibc 2.31, onnxruntime 1.19.2, `linux-aarch64`; bookworm: glibc 2.36, onnxruntime 1.32,
`raspberry-pi-5`):
- stages the target's default graph (fused-portable on bullseye, fused on bookworm) and optimum's
  graph in int4 (the reference, on both: its int8 needs onnxruntime 1.22), through the builder's own
  caches; packages one executable per runtime and graph;
- logits: the runtime's decoder inside the emulated root (the stub's Python and onnxruntime) against
  this host's decoder (the x86_64 stub's onnxruntime) on the same staging folder, one prompt plus one
  greedy step; max abs difference. Twice: as built (MatMulNBits accuracy level 4, int8 activations,
  whose kernels differ between releases and CPUs) and with every MatMulNBits at accuracy level 1
  (float32 activations; a copy of the folder with only that attribute changed): the second shows
  that both machines compute the same function, the first what a user gets
  (docs/PACKAGING.md#accuracy-level);
- start: wall time of `EXE verify --quick` under emulation (trailer, manifest, model session);
- peak RSS: of an `EXE ask` under emulation (qemu's own memory included), no network (unshare -n);
- decode tok/s of each graph under the same emulation (qemu emulating a Cortex-A76, the Pi 5's core), both
  decoders in one process with their steps alternated, so that both see the same load,
  and the ratio of the target's graph to optimum's (a proxy for a board: emulated absolute speed says
  nothing about one).

Needs root and both emulated roots (made by the first build for each). Emulated float32 matmuls are
slow (softfloat): the accuracy-level-1 logits take minutes. `--runtimes` picks a subset.

Usage: python bench/bench_emulation.py [--model FILE.gguf] [--tokens 16] [--threads 2] [--work DIR]
                                       [--runtimes bullseye,bookworm]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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

# runtime -> (target, its default graph)
RUNTIMES = {"bullseye": ("linux-aarch64", "fused-portable"), "bookworm": ("raspberry-pi-5", "fused")}
# The CPU qemu emulates: the Raspberry Pi 5's core (Armv8.2 with dot products, no SVE/SME; the Jetson
# Orin Nano's Cortex-A78AE is of the same class and not in qemu 7.2). qemu's default, `max`, offers
# SVE and SME, which onnxruntime 1.32 then uses and qemu runs ~8x slower than NEON
# (docs/MEASUREMENTS.md#fused-portable-under-emulation): not a board's speed.
QEMU_CPU = "cortex-a76"
DOCS = {"pumps/coolant-pump.md": "# Coolant pump P-7\n\nThe coolant pump P-7 is primed by opening bleed valve V12 "
                                 "for thirty seconds while the pump runs at idle speed.\n"}
QUESTION = "How is the coolant pump P-7 primed?"

# Run by this host's Python and by the emulated roots': logits of a prompt plus one greedy step (saved).
PROBE = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from runtime.bundle import DirectoryBundle
from runtime.decoder import load_decoder
staging, out, threads = sys.argv[2], sys.argv[3], int(sys.argv[4])
prompt = [int(t) for t in sys.argv[5].split(",")]
decoder = load_decoder(DirectoryBundle(__import__("pathlib").Path(staging)), threads=threads, max_length=256)
logits = decoder.forward(prompt)
step = decoder.forward([int(logits[-1].argmax())])
np.save(out, np.concatenate([logits, step])[-2:])
"""
# Run by an emulated root's Python: decode speed of both graphs in one process, their greedy steps
# alternated (default, optimum, then optimum, default, ...), so both see the same load; timed apart,
# the two graphs' ratio moved from 0.74 to 1.2 with the 2-core host's load
# (docs/MEASUREMENTS.md#fused-portable-under-emulation).
SPEED_PROBE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from runtime.bundle import DirectoryBundle
from runtime.decoder import load_decoder
folders = dict(zip(("default", "optimum"), sys.argv[2:4]))
tokens, threads = int(sys.argv[4]), int(sys.argv[5])
prompt = [int(t) for t in sys.argv[6].split(",")]
figures, last, steps = {}, {}, {}
decoders = {label: load_decoder(DirectoryBundle(Path(folder)), threads=threads, max_length=256)
            for label, folder in folders.items()}
for label, decoder in decoders.items():
    started = time.perf_counter()
    last[label] = decoder.forward(prompt, rows=1)[-1]
    figures[label] = {"prefill_s": time.perf_counter() - started}
    steps[label] = 0.0
for step in range(tokens):
    for label in (("default", "optimum") if step % 2 == 0 else ("optimum", "default")):
        started = time.perf_counter()
        last[label] = decoders[label].forward([int(last[label].argmax())], rows=1)[-1]
        steps[label] += time.perf_counter() - started
for label in decoders:
    figures[label]["decode_tok_s"] = tokens / steps[label]
print(json.dumps(figures))
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


def probe(prefix: list[str], staging: Path, out: Path, threads: int) -> None:
    """Logits of the prompt plus one greedy step, saved to `out`."""
    run_probe(prefix + ["-c", PROBE, str(REPO_ROOT), str(staging), str(out), str(threads),
                        ",".join(map(str, PROMPT))], staging)


def speed_probe(prefix: list[str], default: Path, optimum: Path, tokens: int, threads: int) -> dict:
    """{"default": {prefill_s, decode_tok_s}, "optimum": {...}}, both decoders in one process."""
    output = run_probe(prefix + ["-c", SPEED_PROBE, str(REPO_ROOT), str(default), str(optimum), str(tokens),
                                 str(threads), ",".join(map(str, PROMPT))], default)
    return json.loads(output.strip().splitlines()[-1])  # onnxruntime may warn first (e.g. on qemu's CPU vendor)


def run_probe(command: list[str], staging: Path) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=7200,
                          env={**os.environ, "QEMU_CPU": QEMU_CPU})
    if done.returncode != 0:
        raise SystemExit(f"probe failed on {staging}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def emulated(root: Path, folder: Path, argv: list[str]) -> list[str]:
    """argv inside the emulated root with no network (unshare -n), `folder` mounted."""
    return ["unshare", "-n", *rootfs_command(root, ["/usr/bin/env", "-i", "HOME=/tmp", f"QEMU_CPU={QEMU_CPU}", *argv],
                                             binds=(folder,))]


def at_accuracy_level(staging: Path, level: int, out: Path) -> Path:
    """A copy of `staging` (files hard-linked) whose model has every MatMulNBits at accuracy `level`."""
    import onnx

    if out.is_dir():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(staging, partial, copy_function=os.link)
    graph = partial / "model" / "model.onnx"
    model = onnx.load(str(graph), load_external_data=False)
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "MatMulNBits" and attribute.name == "accuracy_level":
                attribute.i = level
    graph.unlink()  # a hard link: the original must stay as it is
    onnx.save(model, str(graph))
    os.replace(partial, out)
    return out


def max_abs(a: Path, b: Path) -> float:
    import numpy as np

    return float(np.abs(np.load(a) - np.load(b)).max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a .gguf file (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--tokens", type=int, default=16, help="greedy decode steps timed per graph")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of the decoders")
    parser.add_argument("--work", type=Path, default=None, help="keep staging folders and executables here")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated subset of "
                                                                        + ", ".join(RUNTIMES))
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    if not set(runtimes) <= set(RUNTIMES):
        raise SystemExit(f"--runtimes: choose from {', '.join(RUNTIMES)}")
    model = args.model or default_model_path()
    stubs = DEFAULT_CACHE / "stubs"
    for name in runtimes:
        root = rootfs_path(load_target(RUNTIMES[name][0]), stubs)
        if os.geteuid() != 0 or not root.is_dir():
            raise SystemExit(f"needs root and the emulated root {root} (made by the first {RUNTIMES[name][0]} build)")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-emulation-"))
    docs = work / "docs"
    for name, text in DOCS.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text)

    with BenchRecord("emulation", {**vars(args), "model": model.name}) as record:
        # optimum's graph in int4: its int8 export uses 8-bit MatMulNBits, which 1.19.2 lacks (the build refuses
        # it); requantized to int4 it fails the quality gate, so the gate is lifted for this speed reference
        # and its perplexity ratio recorded.
        figures = {}
        for name in runtimes:
            target_name, default_graph = RUNTIMES[name]
            target = load_target(target_name)
            staged = {}
            for label, graph, quantization in (("default", default_graph, None), ("optimum", "optimum", "int4")):
                staging = work / f"staging-{name}-{label}"
                if not (staging / "model").is_dir():
                    config = BuildConfig(model=model, docs=docs, output=work / label, target=target_name, graph=graph,
                                         quantization=quantization, cache_dir=DEFAULT_CACHE,
                                         max_ppl_ratio=float("inf") if label == "optimum" else BuildConfig.max_ppl_ratio)
                    stage(config, staging)
                staged[label] = staging
                info = json.loads((staging / MANIFEST_NAME).read_text())["model"]
                record.figures.setdefault("graphs", {})[f"{name}-{label}"] = {
                    "graph": info["graph"], "quantization": info["quantization"],
                    "ppl_ratio": info["quality"]["ratio"]}

            python = chroot_python_command(target, stubs, (REPO_ROOT, work))
            root = rootfs_path(target, stubs)
            figures[name] = runtime_figures = {}
            # logits on the same staging folder, emulated aarch64 against this host, at both accuracy levels
            level1 = at_accuracy_level(staged["default"], 1, work / f"staging-{name}-default-level1")
            for level, folder in ((4, staged["default"]), (1, level1)):
                probe(python, folder, work / f"logits-{name}-{level}.npy", args.threads)
                probe([sys.executable], folder, work / f"logits-{name}-{level}-x86_64.npy", args.threads)
                runtime_figures[f"max_abs_logit_difference_level{level}"] = max_abs(
                    work / f"logits-{name}-{level}.npy", work / f"logits-{name}-{level}-x86_64.npy")
            runtime_figures.update(speed_probe(python, staged["default"], staged["optimum"], args.tokens, args.threads))
            for label in ("default", "optimum"):
                executable = work / f"station-{name}-{label}"
                if not executable.is_file():
                    package(staged[label], target, executable, stubs)
                done, start_s, _ = run_measured(emulated(root, work, [str(executable), "verify", "--quick"]), 900)
                if done.returncode != 0:
                    raise SystemExit(f"{executable} verify --quick failed: {done.stderr.strip()}")
                done, ask_s, rss = run_measured(emulated(root, work, [str(executable), "ask", QUESTION,
                                                                      "--max-tokens", str(args.tokens)]), 1800)
                if done.returncode != 0:
                    raise SystemExit(f"{executable} ask failed: {done.stderr.strip()}")
                runtime_figures[label].update(
                    start_s=round(start_s, 1), ask_s=round(ask_s, 1), ask_peak_rss_mb=round(rss / 1e6),
                    cites_the_file="pumps/coolant-pump.md" in done.stdout.partition("Sources:")[2],
                    executable_mb=round(executable.stat().st_size / 1e6, 1))
            runtime_figures["decode_ratio_default_to_optimum"] = (runtime_figures["default"]["decode_tok_s"]
                                                                  / runtime_figures["optimum"]["decode_tok_s"])
        record.figures.update(figures)
        print(json.dumps(record.figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
