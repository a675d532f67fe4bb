"""Build-time RAM budget: does the bundle fit the target's share of memory?

weights + KV cache at the maximum context + index + runtime overhead must fit
target.ram_mb × target.ram_share, or the build stops with the numbers and what would fit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bundler.errors import BuildError
from runtime.manifest import Manifest
from targets import TargetProfile

MB = 1024 * 1024
# Python, numpy, onnxruntime and tokenizers with a session loaded (~70 MB RSS besides the weights,
# bench/bench_startup.py) plus the ~130 MB the stub unpacks at start, which is RAM where /tmp is tmpfs.
RUNTIME_OVERHEAD_BYTES = 200 * MB
KV_BYTES_PER_VALUE = 4  # the exported graphs keep the KV cache in float32
# Stored bytes per parameter for each weight format (block scales included), from the exported models.
BYTES_PER_PARAMETER = {"int4": 0.7, "int8": 1.1, "fp32": 4.0}
CONTEXT_STEP = 256


@dataclass(frozen=True)
class BudgetReport:
    weights: int
    kv_cache: int
    index: int
    overhead: int
    context: int
    budget: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.index + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.budget


def kv_bytes_per_token(manifest: Manifest) -> int:
    model = manifest.model
    return 2 * model.num_layers * model.num_kv_heads * model.head_dim * KV_BYTES_PER_VALUE


def estimate(staging: Path, manifest: Manifest, target: TargetProfile) -> BudgetReport:
    context = min(target.context, manifest.model.context_length)
    return BudgetReport(
        weights=_folder_bytes(staging / "model"),
        kv_cache=kv_bytes_per_token(manifest) * context,
        index=_folder_bytes(staging / "index"),
        overhead=RUNTIME_OVERHEAD_BYTES,
        context=context,
        budget=target.ram_budget_bytes,
    )


def check_budget(staging: Path, manifest: Manifest, target: TargetProfile) -> BudgetReport:
    report = estimate(staging, manifest, target)
    if not report.fits:
        raise BuildError(None, _refusal(report, manifest, target))
    return report


def _refusal(report: BudgetReport, manifest: Manifest, target: TargetProfile) -> str:
    need = (f"needs {report.total / MB:.0f} MB (weights {report.weights / MB:.0f} + KV cache at "
            f"{report.context} tokens {report.kv_cache / MB:.0f} + index {report.index / MB:.0f} + runtime "
            f"{report.overhead / MB:.0f}) but target {target.name} allows {report.budget / MB:.0f} MB "
            f"({target.ram_share:.0%} of {target.ram_mb} MB)")
    options = []
    current = BYTES_PER_PARAMETER.get(manifest.model.quantization)
    for quantization, per_parameter in sorted(BYTES_PER_PARAMETER.items(), key=lambda kv: kv[1]):
        if current is not None and per_parameter >= current:
            continue
        weights = int(manifest.model.parameters * per_parameter)
        if weights + report.kv_cache + report.index + report.overhead <= report.budget:
            options.append(f"--quantization {quantization} (~{weights / MB:.0f} MB weights)")
    room = report.budget - report.weights - report.index - report.overhead
    context = (room // kv_bytes_per_token(manifest)) // CONTEXT_STEP * CONTEXT_STEP if room > 0 else 0
    if context >= CONTEXT_STEP:
        options.append(f"a context of at most {context} tokens")
    would_fit = "; would fit: " + " or ".join(options) if options else "; nothing smaller fits: choose a smaller model"
    return need + would_fit


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
