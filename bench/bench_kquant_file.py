"""The model file of a K-quant GGUF against the GGUF, and its session start (docs/MEASUREMENTS.md#k-quant-file-size).

  python bench/bench_kquant_file.py build GGUF OUT_DIR   # the fused graph as a bundle carries it; sizes
  python bench/bench_kquant_file.py open MODEL_DIR       # session start, a 16-token prompt, peak RSS

Run `open` in its own process per model (peak RSS is the process's own).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import runtime  # noqa: E402,F401  (onnxruntime's telemetry off before it is imported)


def build(gguf: Path, out: Path) -> None:
    from bundler.fused_export import save_model
    from bundler.fused_graph import QuantizationPlan, build_graph
    from bundler.llama_weights import load_llama

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    save_model(build_graph(load_llama(gguf), QuantizationPlan("gguf-exact"), compact=True), out)
    total = 0
    for path in sorted(p for p in out.iterdir() if p.is_file()):
        total += path.stat().st_size
        print(f"  {path.name}: {path.stat().st_size / 1e6:.1f} MB")
    size = gguf.stat().st_size
    print(f"built in {time.time() - started:.0f} s; model {total / 1e6:.1f} MB, GGUF {size / 1e6:.1f} MB, "
          f"{total / size:.3f}x")


def open_model(model_dir: Path) -> None:
    from runtime.fused_decoder import FusedDecoder

    started = time.time()
    decoder = FusedDecoder.from_model_dir(model_dir, threads=2, max_length=4096)
    opened = time.time() - started
    started = time.time()
    decoder.forward(list(range(1, 17)), rows=1)
    print(f"session {opened:.2f} s, 16-token prompt {time.time() - started:.2f} s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "open"))
    parser.add_argument("path", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    args = parser.parse_args()
    if args.command == "build":
        if args.out is None:
            parser.error("build needs GGUF and OUT_DIR")
        build(args.path, args.out)
    else:
        open_model(args.path)


if __name__ == "__main__":
    main()
