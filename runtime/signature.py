"""ed25519 signatures over the manifest bytes (which hold every entry's size and sha256 and the
runtime stub's sha256), and the public key an executable may be pinned to.

Keys are stored as 64 hexadecimal characters: the 32-byte public key, or the 32-byte seed of the
secret key. PyNaCl (libsodium) does the cryptography; it is imported only when a key is used.

A pinned key lives in the stub's own archive (PIN_FILE), so that it is covered by the stub's
sha256 in the signed manifest: bundles built with --require-signature carry it there, every
other stub carries an empty slot (docs/SECURITY.md).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

KEY_BYTES = 32
PIN_FILE = "runtime/pinned_key"   # its name in the stub's archive, and under the unpacked folder
PIN_MAGIC = b"EDGEPIN1"


class SignatureError(Exception):
    """A key cannot be read or a signature does not match; the message names the file."""


def read_key(path: Path) -> bytes:
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"{path}: not a key file of 64 hexadecimal characters ({exc})") from None
    if len(key) != KEY_BYTES:
        raise SignatureError(f"{path}: key is {len(key)} bytes, expected {KEY_BYTES}")
    return key


def check_signature(message: bytes, signature: bytes, public_key_path: Path, where: str) -> None:
    """Raise SignatureError unless `signature` is the key's signature of `message`."""
    check_signature_by(message, signature, read_key(public_key_path), where, f"public key {public_key_path}")


def check_signature_by(message: bytes, signature: bytes, public_key: bytes, where: str, key_name: str) -> None:
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(public_key).verify(message, signature)
    except BadSignatureError:
        raise SignatureError(f"{where}: signature does not match {key_name}") from None


def pin_slot(public_key: Optional[bytes]) -> bytes:
    """The bytes of PIN_FILE: the magic, then the key (zeros: no key pinned)."""
    return PIN_MAGIC + (public_key or bytes(KEY_BYTES))


def parse_pin(data: bytes, where: str) -> Optional[bytes]:
    if len(data) != len(PIN_MAGIC) + KEY_BYTES or not data.startswith(PIN_MAGIC):
        raise SignatureError(f"{where}: the pinned-key slot is damaged")
    key = data[len(PIN_MAGIC):]
    return key if any(key) else None


def pinned_key() -> Optional[bytes]:
    """The public key this executable was pinned to at build time; None when none is (or when
    running from sources)."""
    unpacked = getattr(sys, "_MEIPASS", None)
    if unpacked is None:
        return None
    path = Path(unpacked) / PIN_FILE
    try:
        data = path.read_bytes()
    except OSError:
        raise SignatureError(f"{sys.executable}: the runtime stub has no pinned-key slot (damaged)") from None
    return parse_pin(data, sys.executable)
