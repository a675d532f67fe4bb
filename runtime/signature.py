"""ed25519 signatures over the manifest bytes (which hold every entry's size and sha256).

Keys are stored as 64 hexadecimal characters: the 32-byte public key, or the 32-byte seed of the
secret key. PyNaCl (libsodium) does the cryptography; it is imported only when a key is used.
"""
from __future__ import annotations

from pathlib import Path

KEY_BYTES = 32


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
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    key = VerifyKey(read_key(public_key_path))
    try:
        key.verify(message, signature)
    except BadSignatureError:
        raise SignatureError(f"{where}: signature does not match public key {public_key_path}") from None
