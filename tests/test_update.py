"""`build.py update`: a bundle for new documents made from the old bundle alone equals a full build,
and `build.py patch` + `EXE apply-patch` rebuild the new bundle byte for byte at the station."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bundler.pipeline import DEFAULT_CACHE, BuildConfig, build
from bundler.update import UpdateConfig, update
from runtime import layout
from runtime.bundle import FileBundle
from tests.sample_documents import STATION_DOCS

# OLD holds a compressed copy of the pump page (another file, another content key): its passages
# are indexed once, under the first file, with the copy in their `also_in`.
PUMP_COPY = gzip.compress(STATION_DOCS["pumps/coolant-pump.md"].encode(), mtime=0)
OLD_DOCS = {**STATION_DOCS, "pumps/zz-coolant-pump-copy.md.gz": PUMP_COPY}
NEW_DOCS = {
    # the original pump page is gone: the copy now holds the passages under its own name
    "pumps/zz-coolant-pump-copy.md.gz": PUMP_COPY,
    "power/solar-array.txt": STATION_DOCS["power/solar-array.txt"].replace("ninety", "sixty"),   # modified
    "radio/antenna.md": STATION_DOCS["radio/antenna.md"],                                          # unchanged
    "radio/beacon.md": "# Emergency beacon\n\nTest the emergency beacon on the first day of each month.\n",  # added
}


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def full_build(model: Path, docs: Path, out: Path, **options) -> Path:
    return build(BuildConfig(model=model, docs=docs, output=out, quantization="int4", cache_dir=DEFAULT_CACHE,
                             **options)).executable


@pytest.fixture(scope="module")
def station_versions(tiny_llama_dir, host_stub, tmp_path_factory):
    """OLD (full build), NEW by update from OLD alone (empty cache), and a full build of NEW's documents."""
    root = tmp_path_factory.mktemp("update")
    new_docs = write_tree(root / "new-docs", NEW_DOCS)
    old = full_build(tiny_llama_dir, write_tree(root / "old-docs", OLD_DOCS), root / "old" / "station")
    updated = update(UpdateConfig(old=old, docs=new_docs, output=root / "new" / "station",
                                  cache_dir=root / "empty-cache"))
    full = full_build(tiny_llama_dir, new_docs, root / "full" / "station")
    return old, updated, full


def test_update_writes_the_bundle_a_full_build_of_the_new_documents_writes(station_versions):
    old, updated, full = station_versions
    new, reference = FileBundle(updated.executable), FileBundle(full)
    assert new.names() == reference.names()
    for name in new.names():
        assert new.manifest.entry(name).sha256 == reference.manifest.entry(name).sha256, name
    np.testing.assert_array_equal(new.array(layout.DENSE_VECTORS), reference.array(layout.DENSE_VECTORS))
    np.testing.assert_array_equal(new.array(layout.BM25_WEIGHTS), reference.array(layout.BM25_WEIGHTS))
    assert new.manifest.to_json() == reference.manifest.to_json()
    assert updated.sha256 == FileBundle(full).file_sha256()
    # the antenna page came from OLD; the pump copy (its passages indexed under another file in OLD), the solar
    # page (modified) and the beacon page (added) were parsed and embedded again
    assert (updated.reused, updated.parsed, updated.embedded, updated.removed) == (1, 3, 3, 1)
    chunks = [json.loads(line) for line in bytes(new.read(layout.CHUNKS)).splitlines()]
    assert {c["path"] for c in chunks} == set(NEW_DOCS)
    assert any("sixty" in c["text"] for c in chunks) and not any("ninety" in c["text"] for c in chunks)


def test_an_updated_bundle_answers_from_its_new_documents(station_versions, tmp_path):
    from tests.fixtures_station import run_offline

    _, updated, _ = station_versions
    found = run_offline(updated.executable, "search", "emergency beacon", "--json", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"][0]["source"]["path"] == "radio/beacon.md"
    checked = run_offline(updated.executable, "verify", cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout.startswith("ok:"), checked.stderr


@pytest.fixture(scope="module")
def station_patch(station_versions, tmp_path_factory):
    from bundler.patch_writer import write_patch

    old, updated, _ = station_versions
    return write_patch(old, updated.executable, tmp_path_factory.mktemp("patch") / "station.patch")


def test_patch_holds_only_the_changed_entries_and_rebuilds_the_new_bundle_byte_for_byte(station_versions,
                                                                                       station_patch, tmp_path):
    from tests.fixtures_station import run_offline

    old, updated, _ = station_versions
    # the model's weights and the embedder are copied at the station; the index and the model's graph
    # (whose weight offsets moved) travel
    assert "model/model.onnx.data" not in station_patch.changed and layout.CHUNKS in station_patch.changed
    # with so few documents NEW's manifest (which the patch must carry) weighs as much as the changed entries
    new = FileBundle(updated.executable).layout
    assert station_patch.size <= 1.1 * (station_patch.changed_bytes + new.file_size - new.trailer.manifest_offset)
    assert station_patch.size < 0.01 * updated.executable.stat().st_size
    station = tmp_path / "station"
    station.mkdir()
    shutil.copy2(old, station / "station")
    applied = run_offline(station / "station", "apply-patch", str(station_patch.path), "-o", "station-v2",
                          cwd=station)
    assert applied.returncode == 0, applied.stderr
    assert updated.sha256 in applied.stdout
    assert FileBundle(station / "station-v2").file_sha256() == updated.sha256
    assert (station / "station-v2").stat().st_mode & 0o111
    checked = run_offline(station / "station-v2", "verify", cwd=station)
    assert checked.returncode == 0 and checked.stdout.startswith("ok:"), checked.stderr


def apply_in_process(old: Path, patch: Path, dest: Path, capsys) -> tuple[int, list[str]]:
    from runtime import cli

    code = cli.main(["--bundle", str(old), "apply-patch", str(patch), "-o", str(dest)])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_a_patch_for_another_bundle_is_refused_naming_both_digests_and_nothing_is_written(
        station_versions, station_patch, tmp_path, capsys):
    old, updated, full = station_versions
    code, errors = apply_in_process(updated.executable, station_patch.path, tmp_path / "new", capsys)
    assert code == 2 and len(errors) == 1
    assert FileBundle(old).file_sha256() in errors[0] and updated.sha256 in errors[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage, problem", [
    (lambda data: data[:len(data) // 2], "does not match its header"),
    (lambda data: data[:-40] + bytes([data[-40] ^ 1]) + data[-39:], "does not match its checksum"),
    (lambda data: b"PK\x03\x04" + data[4:], "not a bundle patch"),
], ids=["truncated", "tampered", "not a patch"])
def test_a_damaged_patch_is_refused_with_one_line_and_nothing_is_written(station_versions, station_patch, tmp_path,
                                                                        capsys, damage, problem):
    old, _, _ = station_versions
    damaged = tmp_path / "damaged.patch"
    damaged.write_bytes(damage(station_patch.path.read_bytes()))
    out = tmp_path / "out"
    out.mkdir()
    code, errors = apply_in_process(old, damaged, out / "new", capsys)
    assert code == 2 and len(errors) == 1 and problem in errors[0] and str(damaged) in errors[0]
    assert list(out.iterdir()) == []


def test_a_patch_whose_data_and_checksum_were_both_replaced_leaves_the_existing_file_untouched(
        station_versions, station_patch, tmp_path, capsys):
    import hashlib
    import zlib

    from runtime.patch import CHECKSUM_SIZE, HEADER, SEGMENT, read_header

    old, _, _ = station_versions
    raw = station_patch.path.read_bytes()
    with open(station_patch.path, "rb") as handle:
        header = read_header(handle, len(raw), "patch")
    start = HEADER.size + len(header.segments) * SEGMENT.size
    data = bytearray(zlib.decompress(raw[start:-CHECKSUM_SIZE]))
    data[100] ^= 0xFF   # a forged passage, sent with a checksum that matches it
    body = zlib.compress(bytes(data))
    forged = raw[:HEADER.size - 8] + len(body).to_bytes(8, "little") + raw[HEADER.size:start] + body
    (tmp_path / "forged.patch").write_bytes(forged + hashlib.sha256(forged).digest())
    existing = tmp_path / "station-v2"
    existing.write_bytes(b"the station's current file")
    code, errors = apply_in_process(old, tmp_path / "forged.patch", existing, capsys)
    assert code == 2 and len(errors) == 1 and "does not match the patch's sha256" in errors[0]
    assert existing.read_bytes() == b"the station's current file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forged.patch", "station-v2"]


def test_a_signed_update_carries_the_key_through_the_patch_and_apply_patch_checks_it(station_versions, tmp_path,
                                                                                     capsys):
    from bundler.patch_writer import write_patch
    from bundler.signing import generate_keypair
    from runtime import cli
    from runtime.verify_command import verify_bundle

    old, updated, _ = station_versions
    public = generate_keypair(tmp_path / "builder")
    other = generate_keypair(tmp_path / "other")
    signed = update(UpdateConfig(old=old, docs=updated.executable.parent.parent / "new-docs",
                                 output=tmp_path / "signed", sign_key=tmp_path / "builder", cache_dir=tmp_path / "c"))
    assert "signature good" in verify_bundle(FileBundle(signed.executable), public)
    patch = write_patch(old, signed.executable, tmp_path / "signed.patch").path
    station = tmp_path / "station"
    station.mkdir()
    refused = cli.main(["--bundle", str(old), "apply-patch", str(patch), "-o", str(station / "new"), "--pubkey", str(other)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert refused == 2 and len(errors) == 1 and "signature does not match" in errors[0] and ".part" not in errors[0]
    assert list(station.iterdir()) == []
    assert cli.main(["--bundle", str(old), "apply-patch", str(patch), "-o", str(station / "new"),
                     "--pubkey", str(public)]) == 0
    assert "signed; signature and entries verified" in capsys.readouterr().out
    assert FileBundle(station / "new").file_sha256() == signed.sha256


def test_an_old_bundle_pinned_to_a_key_is_updated_only_with_that_key(tiny_llama_dir, host_stub, tmp_path):
    from bundler.signing import generate_keypair
    from runtime.errors import UserError
    from tests.fixtures_station import run_offline

    generate_keypair(tmp_path / "builder")
    generate_keypair(tmp_path / "other")
    pinned = full_build(tiny_llama_dir, write_tree(tmp_path / "docs", STATION_DOCS), tmp_path / "pinned",
                        sign_key=tmp_path / "builder", require_signature=True)
    new_docs = write_tree(tmp_path / "docs", {"radio/beacon.md": NEW_DOCS["radio/beacon.md"]})
    for key, problem in ((None, "pinned to a signing key"), (tmp_path / "other", "is not the key")):
        with pytest.raises(UserError, match=problem):
            update(UpdateConfig(old=pinned, docs=new_docs, output=tmp_path / "new", sign_key=key,
                                cache_dir=tmp_path / "cache"))
        assert not (tmp_path / "new").exists()
    new = update(UpdateConfig(old=pinned, docs=new_docs, output=tmp_path / "new", sign_key=tmp_path / "builder",
                              cache_dir=tmp_path / "cache"))
    found = run_offline(new.executable, "search", "emergency beacon", "--json", cwd=tmp_path)
    assert found.returncode == 0, found.stderr   # the pinned stub starts: NEW is signed by its key
    assert json.loads(found.stdout)["hits"][0]["source"]["path"] == "radio/beacon.md"
