"""One build for several targets, and the Raspberry Pi 5's bookworm runtime under qemu user emulation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.graph_kinds import graph_for_target
from bundler.multi_target import TargetBuild, output_paths, parse_targets, table_lines
from bundler.pipeline import BuildConfig, BuildResult
from runtime.bundle import Bundle
from targets import load_target
from tests.fixtures_packaging import AARCH64_DOCS, STUB_CACHE

REPO_ROOT = Path(__file__).resolve().parent.parent
# the host, the bookworm stub (onnxruntime 1.32: the fused graph) and the bullseye stub (onnxruntime 1.19.2)
TARGETS = ["linux-x86_64", "raspberry-pi-5", "linux-aarch64"]
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


@pytest.fixture(scope="session")
def multi_target_build(tiny_gguf, tmp_path_factory) -> list[dict]:
    """`build.py --target linux-x86_64,raspberry-pi-5,linux-aarch64 --json` of the tiny GGUF and two documents."""
    docs = tmp_path_factory.mktemp("multi-docs")
    for name, text in AARCH64_DOCS.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text)
    out = tmp_path_factory.mktemp("multi-dist") / "station"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "build.py"), "--model", str(tiny_gguf), "--docs", str(docs),
                           "-o", str(out), "--target", ",".join(TARGETS), "--json"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=3600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_several_targets_get_one_executable_each_named_after_the_target(multi_target_build):
    assert [row["target"] for row in multi_target_build] == TARGETS
    for row in multi_target_build:
        exe = Path(row["executable"])
        assert exe.name == f"station-{row['target']}"
        target = load_target(row["target"])
        with open(exe, "rb") as handle:
            header = handle.read(20)
        assert int.from_bytes(header[18:20], "little") == ELF_MACHINE[target.arch]
        manifest = Bundle.open(exe).manifest
        assert manifest.target == row["target"] and manifest.target_profile.glibc_floor == target.glibc_floor
        assert manifest.target_profile.onnxruntime == target.onnxruntime
        assert row["graph"] == graph_for_target(target.onnxruntime).name
        assert manifest.model.quantization == row["quantization"] and row["bytes"] == exe.stat().st_size
        assert 0 < row["estimate_bytes"] <= row["budget_bytes"] == target.ram_budget_bytes


def test_targets_sharing_a_graph_share_the_staged_payload(multi_target_build):
    """x86_64 and the Pi 5 both take the fused graph with the GGUF's exact blocks: one export, one index."""
    rows = {row["target"]: row for row in multi_target_build}
    host, pi = (Bundle.open(Path(rows[name]["executable"])).manifest for name in ("linux-x86_64", "raspberry-pi-5"))
    assert rows["raspberry-pi-5"]["graph"] == rows["linux-x86_64"]["graph"] == "fused"
    assert rows["raspberry-pi-5"]["quantization"] == "gguf-exact"
    assert pi.model == host.model and pi.index == host.index


def test_raspberry_pi_5_bundle_answers_under_emulation_in_a_bookworm_root(multi_target_build):
    from bundler.stub_chroot import rootfs_command, rootfs_path

    exe = Path(next(row["executable"] for row in multi_target_build if row["target"] == "raspberry-pi-5"))
    manifest = Bundle.open(exe).manifest
    assert manifest.model.graph == graph_for_target("1.32.0").manifest_name
    assert manifest.model.quantization == "gguf-exact" and manifest.model.weights.startswith("exact GGUF blocks")
    assert manifest.target_profile.glibc_floor == "2.36" and manifest.target_profile.python == "3.11"
    target = load_target("raspberry-pi-5")
    root = rootfs_path(target, STUB_CACHE)
    assert "bookworm" in (root / ".edgebundle-base").read_text()
    command = rootfs_command(root, ["/usr/bin/env", "-i", "HOME=/tmp", f"QEMU_CPU={os.environ['QEMU_CPU']}", str(exe), "ask",
                                    "How is the coolant pump P-7 primed?", "--max-tokens", "4"], binds=(exe.parent,))
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    answer, _, sources = done.stdout.partition("Sources:")
    assert answer.strip()
    assert "pumps/coolant-pump.md:" in sources


def test_target_list_is_split_on_commas_once_per_name():
    assert parse_targets("linux-x86_64, raspberry-pi-5,,linux-x86_64") == ["linux-x86_64", "raspberry-pi-5"]


def test_several_targets_are_written_beside_the_output_name_or_into_an_output_folder(tmp_path):
    docs = tmp_path / "manuals"
    config = BuildConfig(docs=docs, output=tmp_path / "dist" / "station")
    assert output_paths(config, ["host"]) == {"host": tmp_path / "dist" / "station"}
    assert output_paths(config, ["linux-x86_64", "raspberry-pi-5"]) == {
        "linux-x86_64": tmp_path / "dist" / "station-linux-x86_64",
        "raspberry-pi-5": tmp_path / "dist" / "station-raspberry-pi-5"}
    (tmp_path / "dist").mkdir()
    config = BuildConfig(docs=docs, output=tmp_path / "dist")
    assert output_paths(config, ["linux-x86_64", "jetson-orin-nano"]) == {
        "linux-x86_64": tmp_path / "dist" / "manuals-linux-x86_64",
        "jetson-orin-nano": tmp_path / "dist" / "manuals-jetson-orin-nano"}


def test_build_table_has_a_row_per_target_with_its_budget(tmp_path):
    exe = tmp_path / "station-raspberry-pi-5"
    exe.write_bytes(bytes(2_500_000))
    built = TargetBuild(target="raspberry-pi-5", graph="fused", quantization="gguf-exact",
                        result=BuildResult(executable=exe, manifest=None, sha256="0" * 64),
                        estimate_bytes=300 * 2**20, budget_bytes=4915 * 2**20)
    header, row = table_lines([built], tmp_path)
    assert header.split() == ["target", "graph", "quantization", "file", "size", "RAM", "estimate", "/", "budget"]
    assert row.split() == ["raspberry-pi-5", "fused", "gguf-exact", "station-raspberry-pi-5", "2.5", "MB",
                           "300", "/", "4915", "MB"]
