"""Refuse at build time a model whose operators the target's onnxruntime does not have.

The glibc floor of a target decides its Python and so its newest onnxruntime (1.19.2 for Python
3.9 on aarch64); a graph using a newer contrib operator would only fail when the station starts it.
"""
from __future__ import annotations

from pathlib import Path

from bundler.errors import BuildError
from targets import TargetProfile

# First onnxruntime release with each operator, for operators newer than the oldest runtime a
# target uses. GatherBlockQuantized: missing from 1.19.2 (measured: "not a registered function/op").
MIN_ONNXRUNTIME = {
    ("com.microsoft", "GatherBlockQuantized"): (1, 20),
}


def model_operators(model_path: Path) -> set[tuple[str, str]]:
    """(domain, op_type) of every node of the model and its subgraphs."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    found, graphs = set(), [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            found.add((node.domain or "ai.onnx", node.op_type))
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return found


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def check_operators(staging: Path, target: TargetProfile) -> None:
    runtime = _version(target.onnxruntime)
    for model_path in sorted(staging.rglob("*.onnx")):
        missing = sorted(f"{domain}:{op}" for domain, op in model_operators(model_path)
                         if MIN_ONNXRUNTIME.get((domain, op), (0, 0)) > runtime)
        if missing:
            raise BuildError(model_path, f"uses {', '.join(missing)}, which onnxruntime {target.onnxruntime} of target "
                                         f"{target.name} does not have (build with --graph optimum for this target)")
