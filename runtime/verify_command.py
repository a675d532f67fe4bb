"""`verify`: check every entry's sha256, that every model loads from where it is stored, and with
--pubkey the ed25519 signature of the manifest."""
from __future__ import annotations

import argparse
from pathlib import Path

import onnxruntime as ort

from runtime.bundle import Bundle, BundleError, FileBundle
from runtime.signature import SignatureError, check_signature


def add_verify_parser(commands) -> None:
    verify = commands.add_parser("verify", help="check the integrity of every stored file (and the signature)")
    verify.add_argument("--pubkey", type=Path, default=None,
                        help="ed25519 public key file (64 hex characters): require a valid signature by it")
    verify.add_argument("--quick", action="store_true",
                        help="only the start-up checks (trailer, sizes, manifest hash) and loading the models")


def run_verify(bundle: Bundle, args: argparse.Namespace) -> int:
    if not args.quick:
        bundle.verify()
    signed = isinstance(bundle, FileBundle) and bundle.layout.trailer.signature is not None
    if args.pubkey is not None:
        if not signed:
            raise BundleError(f"{bundle.path}: not signed, but --pubkey asks for a signature")
        try:
            check_signature(bundle.layout.manifest_bytes, bundle.layout.trailer.signature, args.pubkey, str(bundle.path))
        except SignatureError as exc:
            raise BundleError(str(exc)) from None
    models = [name for name in bundle.names() if name.endswith(".onnx")]
    for name in models:
        try:
            bundle.onnx_session(name, ort.SessionOptions())
        except Exception as exc:  # onnxruntime raises its own exception types for a bad model
            raise BundleError(f"{bundle.path}: model {name} does not load: {str(exc).splitlines()[0]}") from None
    total = sum(entry.size for entry in bundle.manifest.entries)
    state = "signature good" if args.pubkey is not None else ("signed, not checked (use --pubkey)" if signed else "unsigned")
    checked = "sizes checked" if args.quick else "verified"
    print(f"ok: {bundle.path}: {len(bundle.manifest.entries)} entries, {total / 1e6:.1f} MB {checked}, "
          f"{len(models)} model(s) load; {state}")
    return 0
