"""`python -m bundler verify BUNDLE --pubkey KEY`: check a received bundle with the builder's own
code, not with code inside the file under suspicion (docs/SECURITY.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from bundler.errors import BuildError
from bundler.signing import read_pinned_key
from runtime.bundle import FileBundle
from runtime.errors import EXIT_USER_ERROR, UserError
from runtime.signature import SignatureError, read_key
from runtime.verify_command import verify_bundle


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bundler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verify = commands.add_parser("verify", help="check every byte of a bundle and its signature",
                                 description="Check every byte of BUNDLE (entries, runtime stub, padding, trailer) "
                                             "against its manifest, the manifest's ed25519 signature against KEY, "
                                             "and that every model loads.")
    verify.add_argument("bundle", type=Path, metavar="BUNDLE", help="the executable (or payload file) to check")
    verify.add_argument("--pubkey", type=Path, required=True, metavar="KEY",
                        help="the builder's public key file (64 hex characters), obtained by a trusted path")
    return parser


def run_verify(bundle_path: Path, pubkey: Path) -> str:
    try:
        key = read_key(pubkey)
    except SignatureError as exc:
        raise BuildError(None, str(exc)) from None
    if not bundle_path.is_file():
        raise BuildError(bundle_path, "no such bundle file")
    bundle = FileBundle(bundle_path)
    report = verify_bundle(bundle, pubkey)
    if not bundle.layout.trailer.payload_start:
        return report + "; no runtime stub"
    pinned = read_pinned_key(bundle_path)
    if pinned is None:
        return report + "; starts without checking its signature (built without --require-signature)"
    if pinned != key:
        raise BuildError(bundle_path, f"its stub is pinned to another key ({pinned.hex()[:16]}…): it would not start")
    return report + "; starts only while this key's signature checks (key pinned)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(run_verify(args.bundle, args.pubkey))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
