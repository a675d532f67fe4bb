"""Command line of the bundle executable: ask, search, info."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from runtime.bundle import Bundle, BundleError

PROG = "bundle"


def default_bundle_path() -> Optional[Path]:
    """The executable itself carries the payload once frozen by PyInstaller."""
    return Path(sys.executable) if getattr(sys, "frozen", False) else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name if getattr(sys, "frozen", False) else PROG,
        description="Answer questions about the documents inside this bundle, offline.",
    )
    parser.add_argument("--bundle", type=Path, default=default_bundle_path(),
                        help="bundle file or staging folder (default: this executable)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: all cores)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = commands.add_parser("ask", help="answer a question from the documents, citing sources")
    ask.add_argument("question")
    ask.add_argument("--k", type=int, default=4, help="passages to retrieve (default 4)")
    ask.add_argument("--mode", default=None, help="retrieval mode: bm25, dense or hybrid (default: best available)")
    ask.add_argument("--max-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    ask.add_argument("--ctx", type=int, default=None, help="context window in tokens (default: the bundle's)")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    search = commands.add_parser("search", help="show the passages that best match a query")
    search.add_argument("query")
    search.add_argument("--k", type=int, default=5, help="passages to show (default 5)")
    search.add_argument("--mode", default=None, help="retrieval mode: bm25, dense or hybrid (default: best available)")
    search.add_argument("--json", action="store_true", help="print JSON instead of text")

    info = commands.add_parser("info", help="describe the model, documents and build of this bundle")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bundle is None:
        print("error: no bundle given (use --bundle PATH)", file=sys.stderr)
        return 2
    try:
        bundle = Bundle.open(args.bundle)
        return COMMANDS[args.command](bundle, args)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run_ask(bundle: Bundle, args: argparse.Namespace) -> int:
    from runtime.assistant import Assistant
    from runtime.generation import GenerationConfig

    assistant = Assistant.from_bundle(bundle, threads=args.threads, ctx=args.ctx)
    answer = assistant.ask(args.question, k=args.k, mode=args.mode,
                           config=GenerationConfig(max_new_tokens=args.max_tokens))
    if args.json:
        answer.finish()
        print(json.dumps({
            "answer": answer.text.strip(),
            "sources": [hit_json(hit) for hit in answer.cited],
            "stats": {**vars(answer.stats), "decode_tokens_per_s": answer.stats.decode_tokens_per_s},
        }, indent=1))
        return 0
    for delta in answer:
        sys.stdout.write(delta)
        sys.stdout.flush()
    print("\n\nSources:")
    for number, hit in enumerate(answer.sources, 1):
        if hit in answer.cited:
            print(f"  [{number}] {hit.chunk.source.cite()}")
    return 0


def run_search(bundle: Bundle, args: argparse.Namespace) -> int:
    from runtime.retrieval import Retriever

    retriever = Retriever.from_bundle(bundle)
    mode = args.mode or ("hybrid" if "hybrid" in retriever.modes else retriever.modes[0])
    hits = retriever.search(args.query, k=args.k, mode=mode)
    if args.json:
        print(json.dumps({"query": args.query, "mode": mode, "hits": [hit_json(h) for h in hits]}, indent=1))
        return 0
    for hit in hits:
        print(f"{hit.rank}. {hit.chunk.source.cite()}  score {hit.score:.3f}")
        for line in hit.chunk.text.strip().splitlines()[:4]:
            print(f"     {line}")
        print()
    return 0


def run_info(bundle: Bundle, args: argparse.Namespace) -> int:
    manifest = bundle.manifest
    if args.json:
        print(manifest.to_json())
        return 0
    model, index, build = manifest.model, manifest.index, manifest.build
    size = Path(bundle.path).stat().st_size if Path(bundle.path).is_file() else sum(e.size for e in manifest.entries)
    lines = [
        f"model:         {model.name} ({model.architecture}, {model.parameters / 1e6:.1f}M parameters)",
        f"quantization:  {model.quantization} ({model.graph} graph)",
        f"context:       {model.context_length} tokens",
    ]
    if model.quality is not None:
        q = model.quality
        lines.append(f"quality:       perplexity {q.bundle_ppl:.3f} vs source {q.source_ppl:.3f} "
                     f"(ratio {q.ratio:.4f}, limit {q.max_ratio}) on {q.text}, {q.tokens} tokens")
    lines += [
        f"documents:     {index.documents} files, {index.chunks} passages; search: {', '.join(index.modes)}",
        f"built:         {build.created} by edgebundle {build.builder_version} on {build.host}",
        f"target:        {manifest.target}",
        f"size:          {size / 1e6:.1f} MB",
    ]
    for entry in manifest.entries:
        lines.append(f"  {entry.size / 1e6:9.2f} MB  {entry.name}")
    print("\n".join(lines))
    return 0


def hit_json(hit) -> dict:
    source = hit.chunk.source
    return {"rank": hit.rank, "score": hit.score, "citation": source.cite(), "text": hit.chunk.text,
            "source": vars(source)}


COMMANDS = {"ask": run_ask, "search": run_search, "info": run_info}
