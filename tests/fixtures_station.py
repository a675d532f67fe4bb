"""The station bundle: a real executable of the tiny model over three documents, built once per session."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bundler.pipeline import DEFAULT_CACHE, BuildConfig, build
from tests.sample_documents import write_docs

def run_offline(executable: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the executable with an empty environment, in a network namespace with only loopback."""
    command = ["env", "-i", str(executable), *args]
    if shutil.which("unshare") and os.geteuid() == 0:
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh", *command]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def tiny_station_bundle(tiny_llama_dir, tmp_path_factory) -> Path:
    docs = write_docs(tmp_path_factory.mktemp("station-docs"))
    out = tmp_path_factory.mktemp("dist") / "station"
    result = build(BuildConfig(model=tiny_llama_dir, docs=docs, output=out, quantization="int4",
                               cache_dir=DEFAULT_CACHE))
    return result.executable
