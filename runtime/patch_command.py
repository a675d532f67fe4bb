"""`apply-patch PATCH -o NEW`: rebuild a newer bundle from this one and a patch made by
`build.py patch OLD NEW` (format: runtime/patch.py), at a station that never receives the model again.

The result must match the sha256 the patch records before it replaces anything. With --pubkey,
or in an executable pinned to a key, it must also carry that key's signature and pass `verify`
(docs/SECURITY.md): a patch checksum only says the bytes arrived as they were sent.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from runtime.bundle import Bundle, BundleError, FileBundle
from runtime.patch import FLAG_NEW_SIGNED, PatchError, rebuilt_file
from runtime.signature import SignatureError, pinned_key
from runtime.terminal_text import visible


def add_apply_patch_parser(commands) -> None:
    apply = commands.add_parser("apply-patch", help="rebuild a newer bundle from this one and a patch (build.py patch)",
                                description="Rebuild NEW from this bundle and PATCH (made by `build.py patch OLD NEW`); "
                                            "NEW is written only once its sha256 matches the patch's.")
    apply.add_argument("patch", type=Path, metavar="PATCH", help="the patch file")
    apply.add_argument("-o", "--output", type=Path, required=True, metavar="NEW",
                       help="where to write the new bundle (replaced in one step; may be this executable's own path)")
    apply.add_argument("--pubkey", type=Path, default=None,
                       help="ed25519 public key file: the new bundle must be signed by it and pass verify first")


def run_apply_patch(bundle: Bundle, args: argparse.Namespace) -> int:
    from runtime.verify_command import verify_bundle

    if not isinstance(bundle, FileBundle):
        raise PatchError(f"{bundle.path}: apply-patch needs a bundle file, not a staging folder")
    try:
        key = pinned_key()
    except SignatureError as exc:
        raise BundleError(str(exc)) from None
    with rebuilt_file(bundle.path, args.patch, args.output) as (temporary, header):
        if args.pubkey is not None or key is not None:
            try:
                new = FileBundle(temporary)
                if key is not None:
                    new.require_signature(key)
                verify_bundle(new, args.pubkey)
            except BundleError as exc:  # name the destination, not the temporary file beside it
                raise PatchError(str(exc).replace(str(temporary), str(args.output))) from None
    signed = "signed" if header.flags & FLAG_NEW_SIGNED else "unsigned"
    checked = "; signature and entries verified" if args.pubkey is not None or key is not None else ""
    print(f"wrote {visible(str(args.output))}: {header.new_size / 1e6:.1f} MB, sha256 {header.new_sha256.hex()} "
          f"(as the patch records), {signed}{checked}")
    return 0
