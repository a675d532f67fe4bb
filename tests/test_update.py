"""`build.py update`: a bundle for new documents made from the old bundle alone equals a full build,
and `build.py patch` + `EXE apply-patch` rebuild the new bundle byte for byte at the station."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from bundler.pipeline import DEFAULT_CACHE, BuildConfig, build
from bundler.update import UpdateConfig, update
from runtime import layout
from runtime.bundle import FileBundle
from tests.fixtures_station import STATION_DOCS

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
    assert json.loads(found.stdout)["hits"][0]["path"] == "radio/beacon.md"
    checked = run_offline(updated.executable, "verify", cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout.startswith("ok:"), checked.stderr


def test_update_of_a_file_that_is_not_a_bundle_is_refused(tmp_path):
    from runtime.errors import UserError

    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a bundle")
    with pytest.raises(UserError, match="no payload trailer"):
        update(UpdateConfig(old=bogus, docs=tmp_path, output=tmp_path / "new", cache_dir=tmp_path / "cache"))
    assert not (tmp_path / "new").exists()
