"""Integrity against someone who alters a bundle in transit (docs/SECURITY.md): a trusted verifier,
executables pinned to a signing key, and manifests and arrays that are refused, not half read."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

from bundler.package import package, write_payload_file
from bundler.pipeline import REPO_ROOT
from bundler.signing import generate_keypair, load_signer, public_key, read_pinned_key
from runtime import cli
from runtime.bundle import Bundle, BundleError
from runtime.payload import Trailer
from targets import host_target
from tests.fixtures_hardening import flip_byte
from tests.fixtures_packaging import STUB_CACHE


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> tuple[Path, Path]:
    secret = tmp_path_factory.mktemp("keys") / "builder.key"
    return secret, generate_keypair(secret)


@pytest.fixture(scope="module")
def pinned_bundle(synthetic_staging, host_stub, signing_key, tmp_path_factory) -> Path:
    """The synthetic staging folder packaged as with `build.py --sign-key KEY --require-signature`."""
    secret, _ = signing_key
    dest = tmp_path_factory.mktemp("pinned") / "station"
    return package(synthetic_staging, host_target(), dest, STUB_CACHE, signer=load_signer(secret),
                   pinned_key=public_key(secret))


def run(executable: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(executable), *args], capture_output=True, text=True, env={}, timeout=300)


def trusted_verify(bundle: Path, pubkey: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bundler", "verify", str(bundle), "--pubkey", str(pubkey)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


def rewrite_manifest(path: Path, edit: Callable[[bytes], bytes], signature: Optional[bytes] = None) -> None:
    """Replace the manifest with edit(manifest) and fix its checksum, as an attacker can.

    The new manifest must keep its length in an executable (the cookie copy ends the file)."""
    layout = Bundle.open(path).layout
    data = edit(layout.manifest_bytes)
    with open(path, "r+b") as handle:
        handle.seek(layout.trailer.manifest_offset)
        handle.write(data)
        handle.write(Trailer(layout.trailer.payload_start, layout.trailer.manifest_offset, len(data),
                             hashlib.sha256(data).digest(), signature).pack())
        if not layout.trailer.payload_start:
            handle.truncate()


def change_weights_and_recompute_hashes(path: Path, keep_signature: bool) -> str:
    """Alter the model weights, then put their new sha256 into the manifest and fix its checksum."""
    bundle = Bundle.open(path)
    entry = bundle.manifest.entry("model/model.onnx.data")
    signature = bundle.layout.trailer.signature if keep_signature else None
    del bundle
    flip_byte(path, entry.offset + entry.size // 2, 0x10)
    with open(path, "rb") as handle:
        handle.seek(entry.offset)
        fresh = hashlib.sha256(handle.read(entry.size)).hexdigest()
    rewrite_manifest(path, lambda m: m.replace(entry.sha256.encode(), fresh.encode()), signature)
    return entry.name


def copy(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(path, folder / path.name))


# --- a bundle pinned to its builder's key --------------------------------------------------------

def test_pinned_bundle_starts_and_the_trusted_verifier_accepts_it(pinned_bundle, signing_key):
    assert read_pinned_key(pinned_bundle) == public_key(signing_key[0])
    started = run(pinned_bundle, "verify")
    assert started.returncode == 0, started.stderr
    assert "signature good (key pinned in this executable)" in started.stdout
    checked = trusted_verify(pinned_bundle, signing_key[1])
    assert checked.returncode == 0, checked.stderr
    assert "signature good" in checked.stdout and "key pinned" in checked.stdout


@pytest.mark.parametrize("keep_signature", [True, False], ids=["old-signature", "signature-removed"])
def test_changed_weights_with_recomputed_hashes_are_refused_by_the_verifier_and_refuse_to_start(
        pinned_bundle, signing_key, tmp_path, keep_signature):
    subject = copy(pinned_bundle, tmp_path)
    change_weights_and_recompute_hashes(subject, keep_signature)
    assert Bundle.open(subject).manifest  # the checksum the file carries matches: only a signature finds it

    checked = trusted_verify(subject, signing_key[1])
    assert checked.returncode == 2
    expected = "signature does not match public key" if keep_signature else "not signed"
    assert checked.stderr.count("\n") == 1 and checked.stderr.startswith("error: ") and expected in checked.stderr

    started = run(subject, "info")
    assert started.returncode == 2 and started.stdout == ""
    expected = "signature does not match the key pinned" if keep_signature else "runs only bundles signed"
    assert started.stderr.count("\n") == 1 and started.stderr.startswith("error: ") and expected in started.stderr


def test_changed_weights_under_the_signed_manifest_stop_the_run_before_the_model_is_used(pinned_bundle, tmp_path):
    subject = copy(pinned_bundle, tmp_path)
    entry = Bundle.open(subject).manifest.entry("model/model.onnx.data")
    flip_byte(subject, entry.offset + 100, 0x01)
    assert run(subject, "info").returncode == 0  # reads the signed manifest only
    loaded = run(subject, "verify", "--quick")  # creates the model session: its weights are hashed first
    assert loaded.returncode == 2
    assert loaded.stderr.strip().splitlines() == [
        f"error: {subject}: entry 'model/model.onnx.data' does not match its sha256 (file altered)"]


def test_pinned_executable_refuses_an_unsigned_bundle_given_with_bundle(pinned_bundle, synthetic_staging, tmp_path):
    other = write_payload_file(synthetic_staging, tmp_path / "unsigned.payload")
    started = run(pinned_bundle, "--bundle", str(other), "info")
    assert started.returncode == 2
    assert "runs only bundles signed by its pinned key" in started.stderr and started.stderr.count("\n") == 1


def test_trusted_verifier_refuses_a_bundle_pinned_to_another_key(pinned_bundle, tmp_path):
    other = generate_keypair(tmp_path / "other.key")
    checked = trusted_verify(pinned_bundle, other)
    assert checked.returncode == 2 and "signature does not match public key" in checked.stderr


def test_a_trusted_executable_checks_another_bundle_given_with_bundle(host_bundle, synthetic_staging, signing_key,
                                                                     tmp_path):
    received = write_payload_file(synthetic_staging, tmp_path / "received", signer=load_signer(signing_key[0]))
    checked = run(host_bundle, "verify", "--bundle", str(received), "--pubkey", str(signing_key[1]))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"ok: {received}: ") and "signature good" in checked.stdout
    change_weights_and_recompute_hashes(received, keep_signature=True)
    checked = run(host_bundle, "verify", "--bundle", str(received), "--pubkey", str(signing_key[1]))
    assert checked.returncode == 2 and "signature does not match public key" in checked.stderr


def test_require_signature_without_a_signing_key_is_refused_before_building(capsys):
    import build

    assert build.main(["--require-signature"]) == 2
    assert capsys.readouterr().err == "error: --require-signature needs --sign-key KEY (make a key pair with --new-sign-key KEY)\n"


def test_quick_cannot_be_combined_with_pubkey(bare_payload, signing_key, capsys):
    assert cli.main(["--bundle", str(bare_payload), "verify", "--quick", "--pubkey", str(signing_key[1])]) == 2
    assert capsys.readouterr().err.startswith("error: --quick cannot be combined with --pubkey")


# --- malformed manifests and arrays: one line, never a traceback -------------------------------------

def _entries(edit: Callable[[list], None]) -> Callable[[dict], None]:
    return lambda manifest: edit(manifest["entries"])


MANIFEST_CASES = {
    "duplicate entry name": (_entries(lambda e: e.__setitem__(1, {**e[1], "name": e[0]["name"]})), "listed twice"),
    "offset is a string": (_entries(lambda e: e[0].__setitem__("offset", "65536")), "manifest.entries[0].offset: expected int, got a string"),
    "size is true": (_entries(lambda e: e[0].__setitem__("size", True)), "manifest.entries[0].size: expected int, got true/false"),
    "size is a number with a fraction": (_entries(lambda e: e[0].__setitem__("size", 1.5)), "expected int, got a number"),
    "entries is an object": (lambda m: m.__setitem__("entries", {}), "manifest.entries: expected a list, got an object"),
    "entry is a list": (_entries(lambda e: e.__setitem__(0, [1, 2])), "manifest.entries[0]: expected an object, got a list"),
    "model name is null": (lambda m: m["model"].__setitem__("name", None), "manifest.model.name: expected str, got null"),
    "model field missing": (lambda m: m["model"].pop("vocab_size"), "manifest.model: missing vocab_size"),
    "quality is a string": (lambda m: m["model"].__setitem__("quality", "good"), "manifest.model.quality: expected an object"),
    "negative offset": (_entries(lambda e: e[0].__setitem__("offset", -65536)), "misplaced"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_malformed_manifest_is_refused_with_one_error_line(bare_payload, tmp_path, capsys, case):
    edit, expected = MANIFEST_CASES[case]
    subject = copy(bare_payload, tmp_path)

    def rewrite(data: bytes) -> bytes:
        manifest = json.loads(data)
        edit(manifest)
        return json.dumps(manifest).encode()

    rewrite_manifest(subject, rewrite)
    assert cli.main(["--bundle", str(subject), "info"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"error: {subject}: ") and expected in captured.err


def test_manifest_key_given_twice_is_refused_with_one_error_line(bare_payload, tmp_path, capsys):
    subject = copy(bare_payload, tmp_path)
    rewrite_manifest(subject, lambda data: data.replace(b'"target": "host"', b'"target": "host", "target": "x"', 1))
    assert cli.main(["--bundle", str(subject), "info"]) == 2
    assert capsys.readouterr().err == f"error: {subject}: manifest: key 'target' appears twice in one object\n"


def _npy(header: str, data: bytes = b"") -> bytes:
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


NPY_CASES = {
    "negative dimension": (_npy("{'descr': '<i8', 'fortran_order': False, 'shape': (-1,), }", bytes(800)),
                           "not a tuple of non-negative integers"),
    "more data than the shape": (_npy("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", bytes(800)),
                                 "array header says 24 bytes of data, the entry holds 800"),
    "less data than the shape": (_npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1000,), }", bytes(800)),
                                 "array header says 8000 bytes"),
    "dimensions that overflow int64": (_npy("{'descr': '<i8', 'fortran_order': False, 'shape': (4611686018427387904, 8), }"),
                                       "array header says"),
    "shape is a list": (_npy("{'descr': '<i8', 'fortran_order': False, 'shape': [100], }", bytes(800)),
                        "not a tuple"),
    "fortran_order is a string": (_npy("{'descr': '<i8', 'fortran_order': 'no', 'shape': (100,), }", bytes(800)),
                                  "fortran_order is not true or false"),
    "object dtype": (_npy("{'descr': '|O', 'fortran_order': False, 'shape': (100,), }", bytes(800)), "not allowed"),
    "unknown dtype": (_npy("{'descr': '<q9', 'fortran_order': False, 'shape': (100,), }", bytes(800)), "not understood"),
    "extra key": (_npy("{'descr': '<i8', 'fortran_order': False, 'shape': (100,), 'x': 1}", bytes(800)),
                  "not a dict of descr, shape and fortran_order"),
    "header longer than the entry": (b"\x93NUMPY\x01\x00\xff\x00{'descr'", "header runs past the entry"),
}


@pytest.mark.parametrize("case", sorted(NPY_CASES))
def test_malformed_npy_header_is_refused_with_one_line(synthetic_staging, tmp_path, case):
    content, expected = NPY_CASES[case]
    staging = tmp_path / "staging"
    shutil.copytree(synthetic_staging, staging)
    (staging / "index" / "ids.npy").write_bytes(content)
    subject = write_payload_file(staging, tmp_path / "payload")
    bundle = Bundle.open(subject)
    bundle.verify()  # the entry matches its hash: the builder wrote it so
    with pytest.raises(BundleError) as raised:
        bundle.array("index/ids.npy")
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{subject}: index/ids.npy: ") and expected in message


def test_well_formed_arrays_still_map(synthetic_staging, bare_payload):
    assert np.array_equal(Bundle.open(bare_payload).array("index/ids.npy"), np.arange(100))
