"""A build prints its own progress and real warnings, never the libraries' known, harmless noise."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# What transformers, optimum and torch print during an export when nothing silences them
# (bundler/silence.py says why each is harmless).
KNOWN_NOISE = (
    "`torch_dtype` is deprecated",
    "is lower than the recommended minimum opset",
    "TracerWarning",
    "torch.tensor results are registered as constants in the trace",
    "Converting a tensor to a Python boolean might cause the trace to be incorrect",
)

EXPORT = """
import sys
from pathlib import Path
from bundler.export_onnx import export_model
from bundler.model_source import resolve_model
export_model(resolve_model(Path(sys.argv[1])), "int4", Path(sys.argv[2]))
"""


def test_exporting_a_model_prints_none_of_the_known_library_noise(tiny_llama_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-c", EXPORT, str(tiny_llama_dir), str(tmp_path / "model")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model" / "model.onnx").is_file()
    noise = [line for line in (done.stdout + done.stderr).splitlines() if any(n in line for n in KNOWN_NOISE)]
    assert noise == []


def test_what_the_libraries_write_besides_known_noise_still_reaches_the_user(caplog):
    from bundler.silence import silence_third_party

    with caplog.at_level(logging.WARNING, logger="bundler"), silence_third_party():
        sys.stderr.write("Loading checkpoint shards: 40%|████      | 2/5\r100%|██████████| 5/5\n")
        sys.stderr.write("`torch_dtype` is deprecated! Use `dtype` instead!\n")
        sys.stderr.write("weights of layer 3 are all zero\n")
    assert [record.getMessage() for record in caplog.records] == ["weights of layer 3 are all zero"]
