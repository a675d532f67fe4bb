"""Build-time RAM budget: does the bundle fit the target's share of memory?

The estimate is the runtime's own (runtime.memory): resident weights + KV cache and prefill
activations at the context the bundle will run with + index + runtime overhead must fit target.ram_mb x target.ram_share, or the build
stops with the numbers and what would fit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bundler.errors import BuildError
from runtime.kquant_expand import expansion_bytes
from runtime.layout import DENSE_MODEL
from runtime.manifest import Manifest
from runtime.memory import (MB, WEIGHTS_RESIDENT_FACTOR, MemoryEstimate, context_tokens, estimate_memory,
                            index_resident_bytes)
from targets import TargetProfile

# Stored bytes per parameter for each weight format (block scales included), from the exported models.
BYTES_PER_PARAMETER = {"int4": 0.7, "int8": 1.1, "fp32": 4.0}
CONTEXT_STEP = 256


@dataclass(frozen=True)
class BudgetReport:
    memory: MemoryEstimate
    budget: int

    @property
    def total(self) -> int:
        return self.memory.total

    @property
    def fits(self) -> bool:
        return self.total <= self.budget


def estimate(staging: Path, manifest: Manifest, target: TargetProfile, context: Optional[int] = None) -> BudgetReport:
    """context: the build's --ctx, which can only lower min(model, profile)."""
    context = context_tokens(manifest.model, target.context, context)
    memory = estimate_memory(manifest.model, _model_bytes(staging / "model"), _index_bytes(staging), context)
    return BudgetReport(memory=memory, budget=target.ram_budget_bytes)


def check_budget(staging: Path, manifest: Manifest, target: TargetProfile,
                 context: Optional[int] = None) -> BudgetReport:
    report = estimate(staging, manifest, target, context)
    if not report.fits:
        raise BuildError(None, _refusal(report, manifest, target))
    return report


def _refusal(report: BudgetReport, manifest: Manifest, target: TargetProfile) -> str:
    m = report.memory
    need = (f"needs {report.total / MB:.0f} MB (weights {m.weights / MB:.0f} + KV cache at "
            f"{m.context} tokens {m.kv_cache / MB:.0f} + prefill {m.activations / MB:.0f} + index "
            f"{m.index / MB:.0f} + runtime "
            f"{m.overhead / MB:.0f}) but target {target.name} allows {report.budget / MB:.0f} MB "
            f"({target.ram_share:.0%} of {target.ram_mb} MB)")
    options = []
    current = BYTES_PER_PARAMETER.get(manifest.model.quantization)
    for quantization, per_parameter in sorted(BYTES_PER_PARAMETER.items(), key=lambda kv: kv[1]):
        if current is not None and per_parameter >= current:
            continue
        weights = int(manifest.model.parameters * per_parameter)
        if weights * WEIGHTS_RESIDENT_FACTOR + m.kv_cache + m.activations + m.index + m.overhead <= report.budget:
            options.append(f"--quantization {quantization} (~{weights / MB:.0f} MB weights)")
    stored = m.weights / WEIGHTS_RESIDENT_FACTOR
    context = next((c for c in range(m.context // CONTEXT_STEP * CONTEXT_STEP, 0, -CONTEXT_STEP)
                    if estimate_memory(manifest.model, stored, m.index, c).total <= report.budget), 0)
    if context >= CONTEXT_STEP:
        options.append(f"--ctx {context} (a context of at most {context} tokens)")
    would_fit = "; would fit: " + " or ".join(options) if options else "; nothing smaller fits: choose a smaller model"
    return need + would_fit


def _model_bytes(folder: Path) -> int:
    """The model as loaded: a compact K-quant graph's computed tensors count, not their heads (runtime/kquant_expand.py)."""
    return _folder_bytes(folder) + expansion_bytes(folder)


def _index_bytes(staging: Path) -> int:
    dense_model = staging / DENSE_MODEL
    return index_resident_bytes(_folder_bytes(staging / "index"),
                                dense_model.stat().st_size if dense_model.is_file() else 0)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
