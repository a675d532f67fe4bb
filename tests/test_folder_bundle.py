"""A plain folder opens as a bundle as it is: entries are its files, the manifest is read when asked for."""
from __future__ import annotations

import pytest

from runtime import layout
from runtime.bundle import Bundle, BundleError
from runtime.cli import main
from runtime.errors import EXIT_USER_ERROR
from runtime.manifest import ModelInfo

MODEL = ModelInfo("tiny", "tiny.gguf", "llama", "fused-gqa", "gguf-exact", 1000, 2, 4, 2, 16, 64, 256, 2048)


def test_a_folder_without_a_manifest_lists_its_files_and_names_the_missing_manifest_when_asked(tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / layout.CHUNKS).write_text('{"id": 0, "text": "pump"}\n')
    bundle = Bundle.open(tmp_path)
    assert bundle.names() == [layout.CHUNKS]
    assert bundle.read(layout.CHUNKS) == b'{"id": 0, "text": "pump"}\n'
    with pytest.raises(BundleError, match=f"{layout.MANIFEST}: missing manifest"):
        bundle.manifest


def test_info_on_a_folder_without_a_manifest_is_one_error_line(tmp_path, capsys):
    assert main(["--bundle", str(tmp_path), "info"]) == EXIT_USER_ERROR
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 1 and errors[0].startswith("error:") and str(tmp_path / layout.MANIFEST) in errors[0]


def test_an_exported_model_folder_is_described_by_its_model_info(tmp_path):
    (tmp_path / layout.MODEL_INFO).write_text(MODEL.to_json())
    bundle = Bundle.open(tmp_path)
    assert bundle.model == MODEL
    assert bundle.target_profile is None  # the runtime's defaults: no build has approved a profile
    assert bundle.names() == []  # the description is not an entry


def test_a_malformed_model_info_names_the_file(tmp_path):
    (tmp_path / layout.MODEL_INFO).write_text('{"name": "tiny"}')
    with pytest.raises(BundleError, match=f"{layout.MODEL_INFO}: .*missing"):
        Bundle.open(tmp_path).model
