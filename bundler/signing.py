"""ed25519 signing keys for bundles: make a key pair, sign a manifest, pin a public key into a
runtime stub (formats in runtime/signature.py; the trust model in docs/SECURITY.md)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from bundler.errors import BuildError
from bundler.payload_writer import Signer, find_stub_cookie
from runtime.payload import PYI_COOKIE
from runtime.signature import PIN_FILE, SignatureError, parse_pin, pin_slot, read_key


def generate_keypair(secret_path: Path) -> Path:
    """Write a new secret key to `secret_path` (mode 600) and its public key beside it (+".pub")."""
    from nacl.signing import SigningKey

    secret_path = Path(secret_path)
    public_path = secret_path.with_name(secret_path.name + ".pub")
    if secret_path.exists():
        raise BuildError(secret_path, "already exists; refusing to overwrite a key")
    key = SigningKey.generate()
    descriptor = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(bytes(key).hex() + "\n")
    public_path.write_text(bytes(key.verify_key).hex() + "\n")
    return public_path


def load_signer(secret_path: Path) -> Signer:
    """A function that signs manifest bytes with the secret key in `secret_path`."""
    from nacl.signing import SigningKey

    try:
        key = SigningKey(read_key(secret_path))
    except SignatureError as exc:
        raise BuildError(secret_path, str(exc).split(": ", 1)[-1]) from None
    return lambda message: key.sign(message).signature


def public_key(secret_path: Path) -> bytes:
    """The public key of the secret key in `secret_path`."""
    from nacl.signing import SigningKey

    try:
        return bytes(SigningKey(read_key(secret_path)).verify_key)
    except SignatureError as exc:
        raise BuildError(secret_path, str(exc).split(": ", 1)[-1]) from None


def pin_slot_offset(executable: Path) -> int:
    """Where the pinned-key slot lies in a runtime stub (or a bundle made from one)."""
    from PyInstaller.archive.readers import ArchiveReadError, CArchiveReader

    try:
        toc = CArchiveReader(str(executable)).toc
    except (ArchiveReadError, OSError, ValueError) as exc:
        raise BuildError(executable, f"cannot read the runtime stub's archive: {exc}") from None
    if PIN_FILE not in toc:
        raise BuildError(executable, "the runtime stub has no pinned-key slot (built by an older recipe)")
    offset, length, _, compressed, _ = toc[PIN_FILE]
    if compressed or length != len(pin_slot(None)):
        raise BuildError(executable, "the runtime stub's pinned-key slot is compressed or of the wrong size")
    cookie_at, cookie = find_stub_cookie(executable)
    archive_start = cookie_at + PYI_COOKIE.size - PYI_COOKIE.unpack(cookie)[1]
    return archive_start + offset


def read_pinned_key(executable: Path) -> Optional[bytes]:
    """The public key pinned in a stub or bundle, or None."""
    with open(executable, "rb") as handle:
        handle.seek(pin_slot_offset(executable))
        data = handle.read(len(pin_slot(None)))
    try:
        return parse_pin(data, str(executable))
    except SignatureError as exc:
        raise BuildError(executable, str(exc).split(": ", 1)[-1]) from None


def write_pinned_stub(stub: Path, key: bytes, dest: Path) -> Path:
    """A copy of `stub` at `dest` that runs only bundles whose manifest `key` signed."""
    offset = pin_slot_offset(stub)
    if read_pinned_key(stub) is not None:
        raise BuildError(stub, "the runtime stub already has a pinned key")
    shutil.copyfile(stub, dest)
    with open(dest, "r+b") as handle:
        handle.seek(offset)
        handle.write(pin_slot(key))
    return dest
