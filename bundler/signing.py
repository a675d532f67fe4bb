"""ed25519 signing keys for bundles: make a key pair, sign a manifest (format in runtime/signature.py)."""
from __future__ import annotations

import os
from pathlib import Path

from bundler.errors import BuildError
from bundler.payload_writer import Signer
from runtime.signature import SignatureError, read_key


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
