"""Refuse at build time a model whose operators the target's onnxruntime does not have.

The glibc floor of a target decides its Python and so its newest onnxruntime (1.19.2 for Python
3.9 on aarch64); a graph using a newer contrib operator would only fail when the station starts it.
"""
from __future__ import annotations

from pathlib import Path

from bundler.errors import BuildError
from targets import TargetProfile

# First onnxruntime release with each operator, for operators newer than the oldest runtime a
# target uses; (domain, op, bits) where the bit width decides. GatherBlockQuantized: missing from
# 1.19.2 (measured: "not a registered function/op"); 8-bit MatMulNBits: no CPU kernel before 1.22.
MIN_ONNXRUNTIME = {
    ("com.microsoft", "GatherBlockQuantized", None): (1, 20),
    ("com.microsoft", "MatMulNBits", 8): (1, 22),
}


def model_operators(model_path: Path) -> set[tuple[str, str, int | None]]:
    """(domain, op_type, bits attribute or None) of every node of the model and its subgraphs."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    found, graphs = set(), [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            bits = next((attribute.i for attribute in node.attribute if attribute.name == "bits"), None)
            found.add((node.domain or "ai.onnx", node.op_type, bits))
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return found


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def _first_release(domain: str, op: str, bits: int | None) -> tuple[int, int]:
    return max(MIN_ONNXRUNTIME.get((domain, op, bits), (0, 0)), MIN_ONNXRUNTIME.get((domain, op, None), (0, 0)))


def _label(domain: str, op: str, bits: int | None) -> str:
    width = f" ({bits}-bit)" if bits is not None and (domain, op, bits) in MIN_ONNXRUNTIME else ""
    return f"{domain}:{op}{width}"


def check_operators(staging: Path, target: TargetProfile) -> None:
    runtime = _version(target.onnxruntime)
    for model_path in sorted(staging.rglob("*.onnx")):
        missing = sorted({_label(domain, op, bits) for domain, op, bits in model_operators(model_path)
                          if _first_release(domain, op, bits) > runtime})
        if missing:
            raise BuildError(model_path, f"uses {', '.join(missing)}, which onnxruntime {target.onnxruntime} of target "
                                         f"{target.name} does not have (build with --graph fused-portable for this "
                                         f"target)")
