"""`verify`: check every entry's sha256, the bytes around them (stub, padding, trailer), that every
model loads from where it is stored, and with --pubkey the ed25519 signature of the manifest.

Run from the suspect file itself this proves little: whoever altered the file could alter this
code too. Check a received bundle from a verifier you already trust (docs/SECURITY.md): the
builder's `python -m bundler verify BUNDLE --pubkey KEY`, or a trusted executable's
`verify --bundle BUNDLE --pubkey KEY`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import onnxruntime as ort

from runtime.bundle import Bundle, BundleError, FileBundle
from runtime.errors import EXIT_USER_ERROR
from runtime.signature import SignatureError, check_signature

QUICK_WITH_PUBKEY = "--quick cannot be combined with --pubkey: a signature vouches only for entries that are hashed"


def add_verify_parser(commands) -> None:
    verify = commands.add_parser("verify", help="check the integrity of every stored file (and the signature)")
    verify.add_argument("--bundle", type=Path, default=argparse.SUPPRESS,
                        help="check this bundle file instead of this executable (run from an executable you trust)")
    verify.add_argument("--pubkey", type=Path, default=None,
                        help="ed25519 public key file (64 hex characters): require a valid signature by it")
    verify.add_argument("--quick", action="store_true",
                        help="only the start-up checks (trailer, sizes, manifest hash) and loading the models")


def verify_bundle(bundle: Bundle, pubkey: Optional[Path], quick: bool = False) -> str:
    """Raise BundleError at the first problem; return the one-line report."""
    if quick and pubkey is not None:
        raise ValueError(QUICK_WITH_PUBKEY)
    signed = isinstance(bundle, FileBundle) and bundle.layout.trailer.signature is not None
    if pubkey is not None:
        if not signed:
            raise BundleError(f"{bundle.path}: not signed, but --pubkey asks for a signature")
        if bundle.layout.trailer.payload_start and not bundle.manifest.stub_sha256:
            raise BundleError(f"{bundle.path}: the signed manifest does not cover the runtime stub (no stub_sha256)")
        try:
            check_signature(bundle.layout.manifest_bytes, bundle.layout.trailer.signature, pubkey, str(bundle.path))
        except SignatureError as exc:
            raise BundleError(str(exc)) from None
    if not quick:
        bundle.verify()
    models = [name for name in bundle.names() if name.endswith(".onnx")]
    for name in models:
        try:
            bundle.onnx_session(name, ort.SessionOptions())
        except BundleError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for a bad model
            raise BundleError(f"{bundle.path}: model {name} does not load: {str(exc).splitlines()[0]}") from None
    total = sum(entry.size for entry in bundle.manifest.entries)
    if pubkey is not None:
        state = "signature good"
    elif isinstance(bundle, FileBundle) and bundle.pinned_signature:
        state = "signature good (key pinned in this executable)"
    else:
        state = "signed, not checked (use --pubkey)" if signed else "unsigned"
    checked = "sizes checked" if quick else "verified"
    return (f"ok: {bundle.path}: {len(bundle.manifest.entries)} entries, {total / 1e6:.1f} MB {checked}, "
            f"{len(models)} model(s) load; {state}")


def run_verify(bundle: Bundle, args: argparse.Namespace) -> int:
    if args.quick and args.pubkey is not None:
        print(f"error: {QUICK_WITH_PUBKEY}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(verify_bundle(bundle, args.pubkey, args.quick))
    return 0
