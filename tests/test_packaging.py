"""Packaging: payload format, zero-copy loading, integrity, signatures, budget, the one-file executable."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bundler.errors import BuildError
from bundler.package import check_stub_format, package, write_payload_file
from bundler.signing import generate_keypair, load_signer
from runtime import cli
from runtime.bundle import Bundle, BundleError, FileBundle
from runtime.payload import ALIGNMENT, PYI_COOKIE, PYI_MAGIC, TRAILER, Trailer
from targets import TargetError, host_target, load_target, profile_names
from tests.fixtures_packaging import STUB_CACHE, expected_rows, make_staging


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0xFF]))


def run_bundle(executable: Path, *args: str, cwd: Path, offline: bool = False) -> subprocess.CompletedProcess:
    command = ["env", "-i", str(executable), *args]
    if offline:
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def payload_file(synthetic_staging, tmp_path) -> Path:
    return write_payload_file(synthetic_staging, tmp_path / "payload.bin")


@pytest.fixture
def bundle_copy(host_bundle, tmp_path) -> Path:
    copy = tmp_path / "station"
    shutil.copy2(host_bundle, copy)
    return copy


# --- payload format -------------------------------------------------------------------------

def test_payload_round_trip_keeps_every_file_aligned(synthetic_staging, payload_file):
    bundle = Bundle.open(payload_file)
    assert isinstance(bundle, FileBundle)
    staged = sorted(p.relative_to(synthetic_staging).as_posix() for p in synthetic_staging.rglob("*")
                    if p.is_file() and p.name != "manifest.json")
    assert bundle.names() == staged
    for entry in bundle.manifest.entries:
        assert entry.offset % ALIGNMENT == 0
        if not entry.name.endswith(".onnx"):  # models are stored relocated, everything else verbatim
            assert bytes(bundle.read(entry.name)) == (synthetic_staging / entry.name).read_bytes()
    vectors = bundle.array("index/vectors.npy")
    assert np.array_equal(vectors, np.load(synthetic_staging / "index" / "vectors.npy"))
    assert not vectors.flags.writeable
    bundle.verify()


def test_staging_manifest_fields_survive_packaging(synthetic_staging, payload_file):
    stored = Bundle.open(payload_file).manifest
    assert stored.model.name == "synthetic-lookup"
    assert stored.index.chunks == 100
    assert len(stored.entries) == 5


def test_model_weights_are_mapped_from_the_bundle_file_not_copied(synthetic_staging, payload_file):
    bundle = Bundle.open(payload_file)
    session = bundle.onnx_session("model/model.onnx", ort.SessionOptions())
    ids = [3, 0, 4000]
    assert np.array_equal(session.run(None, {"ids": np.array(ids)})[0], expected_rows(synthetic_staging, ids))
    weights = bundle.manifest.entry("model/model.onnx.data").size - 4096
    file_size = payload_file.stat().st_size
    # Bundle itself maps the whole file; onnxruntime's own mapping covers just the weights
    mapped = [line for line in Path("/proc/self/smaps").read_text().splitlines() if str(payload_file) in line]
    sizes = []
    for line in mapped:
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        sizes.append(end - start)
    assert any(weights <= size < file_size for size in sizes), f"no mapping of just the weights: {mapped}"


def test_renamed_payload_file_still_finds_its_weights(synthetic_staging, payload_file, tmp_path):
    renamed = tmp_path / ("a renamed bundle with a long name " + "x" * 180)
    os.replace(payload_file, renamed)
    session = Bundle.open(renamed).onnx_session("model/model.onnx", ort.SessionOptions())
    assert np.array_equal(session.run(None, {"ids": np.array([7])})[0], expected_rows(synthetic_staging, [7]))


def test_staging_folder_and_payload_file_answer_alike(synthetic_staging, payload_file):
    folder, single = Bundle.open(synthetic_staging), Bundle.open(payload_file)
    assert folder.names() == single.names()
    assert np.array_equal(folder.array("index/ids.npy"), single.array("index/ids.npy"))


# --- integrity -------------------------------------------------------------------------------

def test_flipped_byte_in_manifest_is_refused_at_open(payload_file):
    layout = Bundle.open(payload_file).layout
    flip_byte(payload_file, layout.trailer.manifest_offset + 10)
    with pytest.raises(BundleError, match="manifest does not match its checksum"):
        Bundle.open(payload_file)


@pytest.mark.parametrize("entry_name", ["index/vectors.npy", "model/model.onnx.data", "model/model.onnx"])
def test_flipped_byte_in_an_entry_is_refused_by_verify(payload_file, entry_name):
    entry = Bundle.open(payload_file).manifest.entry(entry_name)
    flip_byte(payload_file, entry.offset + entry.size // 2)
    with pytest.raises(BundleError, match=f"{entry_name}.*does not match its sha256"):
        Bundle.open(payload_file).verify()


def test_truncated_file_is_refused_at_open(payload_file):
    size = payload_file.stat().st_size
    os.truncate(payload_file, size - 1000)
    with pytest.raises(BundleError, match="no payload trailer"):
        Bundle.open(payload_file)


def test_entry_pointing_past_the_manifest_is_refused(payload_file):
    # a consistent manifest (hash and all) whose entry runs past its end: caught by the size checks
    bundle = Bundle.open(payload_file)
    manifest = bundle.manifest
    manifest.entries[-1].size += 10 * ALIGNMENT
    data = manifest.to_json().encode()
    layout = bundle.layout
    del bundle
    with open(payload_file, "r+b") as handle:
        handle.seek(layout.trailer.manifest_offset)
        handle.write(data)
        handle.write(Trailer(layout.trailer.payload_start, layout.trailer.manifest_offset, len(data),
                             hashlib.sha256(data).digest(), None).pack())
        handle.truncate()
    with pytest.raises(BundleError, match="entries run past the manifest"):
        Bundle.open(payload_file)


# --- signatures --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def key_pair(tmp_path_factory) -> tuple[Path, Path]:
    secret = tmp_path_factory.mktemp("keys") / "station.key"
    return secret, generate_keypair(secret)


@pytest.fixture
def signed_payload(synthetic_staging, key_pair, tmp_path) -> Path:
    return write_payload_file(synthetic_staging, tmp_path / "signed.bin", signer=load_signer(key_pair[0]))


def test_good_signature_verifies(signed_payload, key_pair, capsys):
    assert cli.main(["--bundle", str(signed_payload), "verify", "--pubkey", str(key_pair[1])]) == 0
    assert "signature good" in capsys.readouterr().out


def test_signature_by_another_key_is_refused(signed_payload, tmp_path, capsys):
    other = generate_keypair(tmp_path / "other.key")
    assert cli.main(["--bundle", str(signed_payload), "verify", "--pubkey", str(other)]) != 0
    assert "signature does not match public key" in capsys.readouterr().err


def test_unsigned_bundle_is_refused_when_a_signature_is_required(payload_file, key_pair, capsys):
    assert cli.main(["--bundle", str(payload_file), "verify", "--pubkey", str(key_pair[1])]) != 0
    assert "not signed" in capsys.readouterr().err


def test_tampered_signature_is_refused(signed_payload, key_pair, capsys):
    layout = Bundle.open(signed_payload).layout
    flip_byte(signed_payload, layout.trailer_offset + TRAILER.size - 5)  # inside the signature
    assert cli.main(["--bundle", str(signed_payload), "verify", "--pubkey", str(key_pair[1])]) != 0
    assert "signature does not match" in capsys.readouterr().err


def test_unreadable_key_file_is_named_in_the_error(synthetic_staging, tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not hex")
    with pytest.raises(BuildError, match="bad.key"):
        load_signer(bad)


# --- targets and budget ---------------------------------------------------------------------------

def test_every_profile_loads_with_its_runtime_version():
    names = profile_names()
    for required in ("linux-x86_64", "linux-aarch64", "raspberry-pi-5", "jetson-orin-nano", "arm-board-1gb",
                     "airgapped-x86-workstation", "host"):
        assert required in names
    for name in names:
        profile = load_target(name)
        assert profile.arch in ("x86_64", "aarch64") and profile.onnxruntime and profile.glibc_floor


def test_target_profiles_import_nothing_from_the_builder():
    done = subprocess.run([sys.executable, "-c", "import sys, targets; targets.load_target('raspberry-pi-5'); "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] == 'bundler'))"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_unknown_target_is_refused_with_the_choices():
    with pytest.raises(TargetError, match="unknown target 'vax'.*raspberry-pi-5"):
        load_target("vax")


def staging_of_size(folder: Path, weight_bytes: int, **model) -> Path:
    """A staging folder whose manifest describes `model` and whose weights file is `weight_bytes` long."""
    staging = make_staging(folder, weight_bytes=1 << 20)
    manifest_path = staging / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"].update(model)
    manifest_path.write_text(json.dumps(manifest))
    with open(staging / "model" / "model.onnx.data", "r+b") as handle:
        handle.truncate(weight_bytes)  # sparse: the size counts, the disk stays free
    return staging


def test_budget_refuses_a_model_too_big_for_a_1gb_board(tmp_path):
    staging = staging_of_size(tmp_path / "staging", 1_600_000_000, parameters=1_500_000_000, quantization="int8",
                              num_layers=28, num_kv_heads=8, head_dim=128, context_length=32768)
    dest = tmp_path / "dist" / "station"
    with pytest.raises(BuildError) as caught:
        package(staging, load_target("arm-board-1gb"), dest, STUB_CACHE)
    message = str(caught.value)
    assert "target arm-board-1gb allows 512 MB" in message
    assert "weights 1526" in message and "KV cache at 1024 tokens 224" in message
    assert "would fit" in message or "nothing smaller fits" in message
    assert not dest.parent.exists()


def test_budget_suggests_what_would_fit(tmp_path):
    staging = staging_of_size(tmp_path / "staging", 300_000_000 * 4, parameters=300_000_000, quantization="fp32",
                              num_layers=16, num_kv_heads=5, head_dim=64, context_length=8192)
    with pytest.raises(BuildError, match=r"would fit: --quantization int4 \(~200 MB weights\)"):
        package(staging, load_target("arm-board-1gb"), tmp_path / "station", STUB_CACHE)


def test_budget_suggests_a_smaller_context_and_the_build_context_option_is_honoured(tmp_path):
    from bundler.budget import check_budget
    from runtime.manifest import Manifest

    staging = staging_of_size(tmp_path / "staging", 110_000_000, parameters=100_000_000, quantization="int8",
                              num_layers=28, num_kv_heads=8, head_dim=128, context_length=32768)
    manifest = Manifest.from_json((staging / "manifest.json").read_text())
    board = load_target("arm-board-1gb")
    with pytest.raises(BuildError, match=r"would fit: .*--ctx 512 \(a context of at most 512 tokens\)"):
        check_budget(staging, manifest, board)
    report = check_budget(staging, manifest, board, context=512)
    assert report.fits and report.memory.context == 512
    with pytest.raises(BuildError, match="KV cache at 1024 tokens"):  # --ctx only ever lowers the context
        check_budget(staging, manifest, board, context=100_000)


# --- stubs ----------------------------------------------------------------------------------------

def test_macos_stub_is_refused_clearly(synthetic_staging, tmp_path):
    stub = tmp_path / "stub-macos"
    stub.write_bytes(b"\xcf\xfa\xed\xfe" + bytes(4092))
    with pytest.raises(BuildError, match="macOS runtime stubs are not supported"):
        check_stub_format(stub, host_target())


def test_stub_for_another_architecture_is_refused(tmp_path):
    stub = tmp_path / "stub-arm"
    elf = bytearray(64)
    elf[:6] = b"\x7fELF\x02\x01"
    elf[18:20] = (183).to_bytes(2, "little")
    stub.write_bytes(bytes(elf))
    with pytest.raises(BuildError, match="built for aarch64, target host is x86_64"):
        check_stub_format(stub, host_target())


def test_cached_stub_is_reused_and_keyed_by_runtime_sources(host_stub, monkeypatch, tmp_path):
    from bundler import stub as stub_module
    from bundler import stub_recipe

    assert stub_module.build_stub(host_target(), STUB_CACHE) == host_stub
    target = host_target()
    locked = stub_module.host_locked_dependencies()
    before = stub_module.stub_key(target, locked)
    changed = tmp_path / "runtime"
    shutil.copytree(stub_recipe.RUNTIME_DIR, changed, ignore=shutil.ignore_patterns("__pycache__"))
    with open(changed / "cli.py", "a") as handle:
        handle.write("\n# changed\n")
    monkeypatch.setattr(stub_recipe, "RUNTIME_DIR", changed)
    assert stub_module.stub_key(target, locked) != before
    assert stub_module.stub_key(load_target("linux-aarch64"), locked) != before


# --- the executable -------------------------------------------------------------------------------

def test_executable_ends_with_a_cookie_pyinstaller_itself_can_follow(host_bundle, host_stub):
    from PyInstaller.archive.readers import CArchiveReader

    with open(host_bundle, "rb") as handle:
        handle.seek(-PYI_COOKIE.size, os.SEEK_END)
        assert handle.read(len(PYI_MAGIC)) == PYI_MAGIC
    stub_names = set(CArchiveReader(str(host_stub)).toc)
    assert set(CArchiveReader(str(host_bundle)).toc) == stub_names and "PYZ.pyz" in stub_names


def test_renamed_executable_runs_offline_from_an_empty_environment_in_another_folder(host_bundle, tmp_path):
    renamed = tmp_path / "bin" / "pump manual assistant"
    renamed.parent.mkdir()
    shutil.copy2(host_bundle, renamed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_bundle(renamed, "verify", cwd=elsewhere, offline=True)
    assert result.returncode == 0, result.stderr
    assert "5 entries" in result.stdout and "1 model(s) load" in result.stdout
    assert list(elsewhere.iterdir()) == [], "nothing of the payload may be unpacked"


def test_executable_with_flipped_manifest_byte_refuses_to_start(bundle_copy, tmp_path):
    layout = Bundle.open(bundle_copy).layout
    flip_byte(bundle_copy, layout.trailer.manifest_offset + 3)
    result = run_bundle(bundle_copy, "info", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: {bundle_copy}: manifest does not match its checksum (file altered)"]


def test_executable_with_flipped_model_byte_fails_verify(bundle_copy, tmp_path):
    entry = Bundle.open(bundle_copy).manifest.entry("model/model.onnx.data")
    flip_byte(bundle_copy, entry.offset + 5000)
    result = run_bundle(bundle_copy, "verify", cwd=tmp_path)
    assert result.returncode != 0
    assert "model/model.onnx.data' does not match its sha256" in result.stderr


def test_truncated_executable_refuses_to_start(bundle_copy, tmp_path):
    os.truncate(bundle_copy, bundle_copy.stat().st_size - 100_000)
    result = run_bundle(bundle_copy, "info", cwd=tmp_path)
    assert result.returncode != 0
    assert "no payload trailer" in result.stderr


def test_failed_package_leaves_nothing_at_the_destination(synthetic_staging, tmp_path):
    staging = tmp_path / "staging"
    shutil.copytree(synthetic_staging, staging)
    (staging / "index" / "link.npy").symlink_to(staging / "index" / "ids.npy")
    dest_dir = tmp_path / "dist"
    with pytest.raises(BuildError, match="symbolic links cannot be bundled"):
        package(staging, host_target(), dest_dir / "station", STUB_CACHE)
    assert list(dest_dir.iterdir()) == []


def test_cookie_copy_keeps_the_archive_start(host_bundle, host_stub):
    from bundler.payload_writer import find_stub_cookie

    offset, cookie = find_stub_cookie(host_stub)
    length = struct.unpack("!8sIIII64s", cookie)[1]
    with open(host_bundle, "rb") as handle:
        handle.seek(-PYI_COOKIE.size, os.SEEK_END)
        new_length = struct.unpack("!8sIIII64s", handle.read())[1]
        end = handle.tell()
    assert end - new_length == offset + PYI_COOKIE.size - length


# --- aarch64, built on this x86_64 host and run under qemu user emulation -------------------------

def test_aarch64_bundle_answers_under_emulation_citing_the_right_file(aarch64_bundle):
    from bundler.stub_chroot import rootfs_command, rootfs_path

    with open(aarch64_bundle, "rb") as handle:
        header = handle.read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    root = rootfs_path(load_target("linux-aarch64"), STUB_CACHE)
    folder = aarch64_bundle.parent
    # unshare -n: no network at all, as on an air-gapped board
    command = ["unshare", "-n", *rootfs_command(root, ["/usr/bin/env", "-i", "HOME=/tmp", f"QEMU_CPU={os.environ['QEMU_CPU']}", str(aarch64_bundle), "ask",
                                                       "How is the coolant pump P-7 primed?", "--max-tokens", "4"],
                                                binds=(folder,))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    answer, _, sources = done.stdout.partition("Sources:")
    assert answer.strip()
    assert "pumps/coolant-pump.md:" in sources
    manifest = Bundle.open(aarch64_bundle).manifest
    assert manifest.target_profile.arch == "aarch64" and manifest.target_profile.glibc_floor == "2.31"
    assert (manifest.model.graph, manifest.model.quantization) == ("fused-gqa-portable", "gguf-exact")


@pytest.mark.parametrize("path", ["station", "st", "/tmp/a folder/station", "n" * 255, "n" * 254])
def test_weight_locations_are_padded_to_the_placeholder_length(path):
    from runtime.payload import SELF_PLACEHOLDER, padded_location

    location = padded_location(path)
    assert len(location) == len(SELF_PLACEHOLDER)
    assert os.path.normpath(location.decode()) == os.path.normpath(path)


def test_operator_missing_from_the_targets_onnxruntime_is_refused_at_build_time(synthetic_staging, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    staging = tmp_path / "staging"
    shutil.copytree(synthetic_staging, staging)
    node = helper.make_node("GatherBlockQuantized", ["table", "ids", "scales"], ["rows"], domain="com.microsoft")
    graph = helper.make_graph([node], "fused", [
        helper.make_tensor_value_info("table", TensorProto.UINT8, [None, None]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [None, None]),
    ], [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, None])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)]),
              str(staging / "model" / "fused.onnx"))
    dest = tmp_path / "dist" / "station"
    with pytest.raises(BuildError, match=r"fused.onnx: uses com.microsoft:GatherBlockQuantized, which onnxruntime "
                                         r"1.19.2 of target linux-aarch64 does not have"):
        package(staging, load_target("linux-aarch64"), dest, STUB_CACHE)
    assert not dest.parent.exists()
