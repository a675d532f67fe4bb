"""The station bundle: a real executable of the tiny model over three documents, built once per session."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bundler.pipeline import DEFAULT_CACHE, BuildConfig, build

STATION_DOCS = {
    "pumps/coolant-pump.md": (
        "# Coolant pump P-7\n\n"
        "The coolant pump P-7 is primed by opening bleed valve V12 for thirty seconds\n"
        "while the pump runs at idle speed. Close V12 when coolant flows without bubbles.\n"
    ),
    "power/solar-array.txt": (
        "Solar array maintenance\n\n"
        "Clean the solar array panels every ninety days with deionised water.\n"
        "Never clean panels while the array is connected to the battery bus.\n"
    ),
    "radio/antenna.md": (
        "# Antenna alignment\n\n"
        "Point the high-gain antenna at azimuth 212 degrees before the evening pass.\n"
    ),
}


def write_docs(root: Path) -> Path:
    for name, text in STATION_DOCS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


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
