"""The whole product: build.py → one executable → a cited answer, offline, with no Python around."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.pipeline import DEFAULT_CACHE, REPO_ROOT, BuildConfig, build
from tests.fixtures_station import run_offline
from tests.sample_documents import STATION_DOCS, write_docs


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory) -> Path:
    """The README's bundle: embedded default model, sample documents."""
    out = tmp_path_factory.mktemp("dist-default") / "python-docs"
    return build(BuildConfig(output=out, cache_dir=DEFAULT_CACHE)).executable


def test_executable_answers_offline_citing_the_file_that_holds_the_answer(tiny_station_bundle, tmp_path):
    done = run_offline(tiny_station_bundle, "ask", "How is the coolant pump P-7 primed?", "--max-tokens", "8",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answer, _, sources = done.stdout.partition("Sources:")
    assert answer.strip(), done.stdout
    assert "pumps/coolant-pump.md:" in sources
    assert list(tmp_path.iterdir()) == [], "the executable must not write into the current folder"


def test_executable_search_ranks_the_known_passage_first(tiny_station_bundle, tmp_path):
    done = run_offline(tiny_station_bundle, "search", "solar panels cleaning deionised water", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)["hits"]
    assert hits[0]["citation"].startswith("power/solar-array.txt:")
    assert "deionised water" in hits[0]["text"]


def test_executable_info_describes_model_and_documents(tiny_station_bundle, tmp_path):
    done = run_offline(tiny_station_bundle, "info", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["model"]["quantization"].startswith("int4")
    assert manifest["model"]["quality"]["ratio"] <= 1.05
    assert manifest["index"]["documents"] == len(STATION_DOCS)


def test_default_bundle_answers_the_sample_question_with_its_source(default_bundle, tmp_path):
    done = run_offline(default_bundle, "ask", "How do I create a virtual environment?", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "virtual environment" in result["answer"].lower()
    assert any(s["citation"].startswith("tutorial/venv.txt:") for s in result["sources"]), result["sources"]


def build_cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "build.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_missing_model_path_is_one_clear_error_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    done = build_cli("--model", str(tmp_path / "absent.gguf"), "--docs", str(write_docs(tmp_path / "d")),
                     "-o", str(out))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "absent.gguf" in lines[0], done.stderr
    assert not out.exists()


@pytest.mark.parametrize("make_docs", ["missing", "empty"])
def test_missing_or_empty_documents_folder_is_refused(tmp_path, make_docs):
    docs = tmp_path / "docs"
    if make_docs == "empty":
        docs.mkdir()
    out = tmp_path / "never"
    done = build_cli("--docs", str(docs), "-o", str(out))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(docs) in lines[0], done.stderr
    assert not out.exists()
