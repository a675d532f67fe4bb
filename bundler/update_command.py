"""Command line of `build.py update` and `build.py patch` (build.py hands these two words here)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from bundler.pipeline import DEFAULT_CACHE
from runtime.errors import EXIT_USER_ERROR, UserError
from runtime.terminal_text import visible

COMMANDS = ("update", "patch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="build.py", description="Update a bundle without its model, or write a patch.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    update = commands.add_parser(
        "update", help="a new bundle for new documents, made from OLD alone (no model file needed)",
        description="Write NEW: OLD's runtime stub, model, target and index settings with the documents of DIR. "
                    "Unchanged documents keep OLD's passages and vectors; only added and modified ones are parsed "
                    "and embedded (with OLD's own embedder). NEW is what a full build of DIR writes.")
    update.add_argument("old", type=Path, metavar="OLD_EXECUTABLE", help="the bundle to start from")
    update.add_argument("--docs", type=Path, required=True, metavar="DIR", help="the new documents folder")
    update.add_argument("-o", "--output", type=Path, required=True, metavar="NEW", help="where to write the new bundle")
    update.add_argument("--sign-key", type=Path, default=None,
                        help="ed25519 secret key file: sign NEW (required, and must be the pinned key, when OLD's "
                             "stub is pinned with --require-signature)")
    update.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="parse and vector cache of changed documents (optional: OLD holds all an update needs)")
    update.add_argument("--strict", action="store_true", help="fail when any document is skipped")
    update.add_argument("--include-hidden", action="store_true",
                        help="also index hidden files and folders, key files and symlinks to them (as build.py)")
    update.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    patch = commands.add_parser(
        "patch", help="the bytes a station holding OLD needs to rebuild NEW (apply with `OLD apply-patch`)",
        description="Write a patch holding only NEW's entries that OLD lacks, NEW's manifest and trailer (with "
                    "its signature when NEW is signed); at the station `OLD apply-patch FILE -o NEW` rebuilds NEW "
                    "byte for byte.")
    patch.add_argument("old", type=Path, metavar="OLD", help="the bundle the station has")
    patch.add_argument("new", type=Path, metavar="NEW", help="the bundle the station should have")
    patch.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="where to write the patch")
    patch.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        summary = run_update(args) if args.command == "update" else run_patch(args)
    except UserError as exc:
        print(f"error: {visible(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    summary["seconds"] = round(time.perf_counter() - started, 2)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(visible(summary.pop("line").format(**summary)))
    return 0


def run_update(args: argparse.Namespace) -> dict:
    from bundler.update import UpdateConfig, update

    result = update(UpdateConfig(old=args.old, docs=args.docs, output=args.output, sign_key=args.sign_key,
                                 cache_dir=args.cache_dir, strict=args.strict, include_hidden=args.include_hidden))
    if not args.json:
        for line in result.warnings:
            print(f"warning: {visible(line)}", file=sys.stderr)
        if result.skip_summary:
            print(f"warning: {visible(result.skip_summary)}", file=sys.stderr)
    return {"line": "updated {executable} in {seconds} s: {documents} documents ({reused} taken from the old bundle, "
                    "{parsed} parsed, {embedded} embedded, {removed} removed), {chunks} passages\nsha256 {sha256}",
            "executable": str(result.executable), "sha256": result.sha256, "documents": result.manifest.index.documents,
            "chunks": result.manifest.index.chunks, "reused": result.reused, "parsed": result.parsed,
            "embedded": result.embedded, "removed": result.removed, "report": str(result.report)}


def run_patch(args: argparse.Namespace) -> dict:
    from bundler.patch_writer import write_patch

    summary = write_patch(args.old, args.new, args.output)
    ratio = summary.size / summary.changed_bytes if summary.changed_bytes else None
    return {"line": "wrote patch {patch} in {seconds} s: {bytes} bytes for {changed_entries} changed entries of "
                    "{changed_bytes} bytes (ratio {ratio}); {copied_bytes} bytes are copied from the old bundle",
            "patch": str(summary.path), "bytes": summary.size, "changed_entries": len(summary.changed),
            "changed_bytes": summary.changed_bytes, "copied_bytes": summary.copied_bytes,
            "ratio": round(ratio, 4) if ratio is not None else None, "changed": summary.changed}
