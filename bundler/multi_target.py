"""One build, many targets: one staging folder per (graph, quantization) the targets need, one executable per target.

The index and each model export are made once (and cached as in a single build); every target's RAM
budget and operators are checked before any executable is written, so a target that cannot take the
bundle stops the build before it writes anything.
"""
from __future__ import annotations

import dataclasses
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bundler.errors import BuildError
from bundler.pipeline import BuildConfig, BuildResult, package_staged, signing_of, stage, staging_folder
from bundler.progress import ProgressCallback, no_progress


@dataclass
class TargetBuild:
    """One target's executable and what it was checked against."""

    target: str
    graph: str              # --graph name of the kind the executable carries
    quantization: str
    result: BuildResult
    estimate_bytes: int     # the bundle's RAM estimate on this target (model, KV cache, index, runtime)
    budget_bytes: int       # the target's RAM share

    def as_json(self) -> dict:
        exe = self.result.executable
        return {"target": self.target, "graph": self.graph, "quantization": self.quantization,
                "executable": str(exe), "bytes": exe.stat().st_size, "sha256": self.result.sha256,
                "estimate_bytes": self.estimate_bytes, "budget_bytes": self.budget_bytes}


def parse_targets(text: str) -> list[str]:
    """`--target a,b,c` as names, in order, each once."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise BuildError(None, f"--target {text!r} names no target")
    return names


def output_paths(config: BuildConfig, names: list[str]) -> dict[str, Path]:
    """Where each target's executable goes: `-o` itself for one target; for several, `<-o>-<target>`,
    or `<-o>/<docs folder name>-<target>` when -o is an existing folder (default: dist/<docs>-<target>)."""
    base = config.output_path()
    if len(names) == 1:
        return {names[0]: base}
    if base.is_dir():
        base = base / config.docs.resolve().name
    return {name: base.with_name(f"{base.name}-{name}") for name in names}


def build_targets(config: BuildConfig, names: list[str], progress: ProgressCallback = no_progress
                  ) -> list[TargetBuild]:
    """An executable per target in `names` (config.target and config.output are ignored); in `names` order."""
    from bundler.budget import check_budget
    from bundler.graph_kinds import choose
    from bundler.model_source import default_model_path, resolve_model
    from bundler.target_ops import check_operators
    from targets import load_target

    targets = {name: load_target(name) for name in names}
    outputs = output_paths(config, names)
    signing = signing_of(config)
    source = resolve_model(config.model or default_model_path())
    groups: dict[tuple[str, str], list[str]] = {}
    for name, target in targets.items():
        kind, quantization = choose(source, target.onnxruntime, config.graph, config.quantization)
        groups.setdefault((kind.name, quantization), []).append(name)
    with ExitStack() as stack:
        staged = {}
        for (graph, quantization), members in groups.items():
            staging = stack.enter_context(staging_folder(config.cache_dir, *(outputs[n] for n in members)))
            # the group's first target chooses the export; the others need the same (graph, quantization)
            group_config = dataclasses.replace(config, target=members[0], graph=graph, quantization=quantization)
            staged[graph, quantization] = staging, stage(group_config, staging, progress)
        budgets = {}
        for (graph, quantization), members in groups.items():
            staging, result = staged[graph, quantization]
            for name in members:
                budgets[name] = check_budget(staging, result.manifest, targets[name], config.context)
                check_operators(staging, targets[name])
        builds = []
        for (graph, quantization), members in groups.items():
            staging, result = staged[graph, quantization]
            for name in members:
                target_config = dataclasses.replace(config, target=name, output=outputs[name])
                built = package_staged(target_config, staging, result, signing, progress)
                builds.append(TargetBuild(target=name, graph=graph, quantization=quantization,
                                          result=built, estimate_bytes=budgets[name].total,
                                          budget_bytes=budgets[name].budget))
    return sorted(builds, key=lambda b: names.index(b.target))


def table_lines(builds: list[TargetBuild], relative_to: Path) -> list[str]:
    """What a multi-target build wrote, one row per target, for the terminal."""
    rows = [("target", "graph", "quantization", "file", "size", "RAM estimate / budget")]
    for b in builds:
        exe = b.result.executable
        shown = os.path.relpath(exe, relative_to)
        rows.append((b.target, b.graph, b.quantization, str(exe) if shown.startswith("..") else shown,
                     f"{exe.stat().st_size / 1e6:.1f} MB",
                     f"{b.estimate_bytes / 2**20:.0f} / {b.budget_bytes / 2**20:.0f} MB"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
